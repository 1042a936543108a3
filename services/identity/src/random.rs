//! Random bytes from the system generator, fetched in blocks, for values
//! that must be unpredictable but whose repetition does no harm: the salt
//! of every ledger entry.
//!
//! Asked for one salt at a time, `getrandom` was one syscall per report:
//! about 1 % of the gateway's CPU at full rate. [`fill`] serves them from a
//! per-thread block of [`BLOCK`] bytes, refilled from the same system
//! generator ([`ring::rand::SystemRandom`]) when it runs out; within a
//! thread no byte is served twice (the block's cursor only moves forward),
//! and a served byte is zeroed so it does not linger in memory.
//!
//! Not for nonces, keys or ids: a block held in memory is duplicated by a
//! `fork` or a restored VM snapshot, and both copies would serve the same
//! bytes. An AES-GCM nonce served twice under one key is catastrophic, and
//! the kernel's generator guards against exactly this; referral token
//! nonces, referral ids and keys ask it directly.

use std::cell::RefCell;

use ring::rand::{SecureRandom, SystemRandom};

/// Bytes fetched per `getrandom`: 256 salts of 16 bytes.
pub const BLOCK: usize = 4096;

/// The system generator failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the system random generator failed")]
pub struct Unavailable;

struct Pool {
    bytes: [u8; BLOCK],
    /// Bytes of `bytes` already served (or not yet fetched: starts at BLOCK).
    used: usize,
}

thread_local! {
    static POOL: RefCell<Pool> = const {
        RefCell::new(Pool {
            bytes: [0; BLOCK],
            used: BLOCK,
        })
    };
}

/// Fills `out` with bytes from the system generator. Requests of more than
/// [`BLOCK`] bytes go to the generator directly.
pub fn fill(out: &mut [u8]) -> Result<(), Unavailable> {
    if out.len() > BLOCK {
        return SystemRandom::new().fill(out).map_err(|_| Unavailable);
    }
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let mut filled = 0;
        while filled < out.len() {
            if pool.used == BLOCK {
                SystemRandom::new()
                    .fill(&mut pool.bytes)
                    .map_err(|_| Unavailable)?;
                pool.used = 0;
            }
            let n = (out.len() - filled).min(BLOCK - pool.used);
            let at = pool.used;
            out[filled..filled + n].copy_from_slice(&pool.bytes[at..at + n]);
            pool.bytes[at..at + n].fill(0);
            pool.used += n;
            filled += n;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn draws_are_distinct_across_refills_and_sizes() {
        // Three blocks' worth in 16-byte draws, then sizes that straddle a
        // refill: no two draws equal (8 bytes and up: a repeat is a 2^-64
        // chance), and none all zero.
        let mut seen = HashSet::new();
        for _ in 0..3 * BLOCK / 16 {
            let mut b = [0u8; 16];
            fill(&mut b).unwrap();
            assert_ne!(b, [0; 16]);
            assert!(seen.insert(b), "a 16-byte draw repeated");
        }
        for len in [8, 33, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK] {
            let (mut a, mut b) = (vec![0u8; len], vec![0u8; len]);
            fill(&mut a).unwrap();
            fill(&mut b).unwrap();
            assert_ne!(a, b, "two draws of {len} bytes equal");
            if len >= 16 {
                assert!(
                    a.windows(16).all(|w| w != [0; 16]),
                    "{len} bytes hold zeros"
                );
            }
        }
    }

    #[test]
    fn a_served_byte_is_cleared_from_the_pool() {
        let mut b = [0u8; 16];
        fill(&mut b).unwrap();
        POOL.with(|p| {
            let p = p.borrow();
            assert!(p.bytes[..p.used].iter().all(|&x| x == 0));
        });
    }
}
