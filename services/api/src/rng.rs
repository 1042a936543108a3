//! SplitMix64: a small seeded generator for the tools (crash harness, load
//! generator), so their runs are replayable from a seed without another
//! dependency. Not for anything secret.

/// Golden-ratio increment of the generator's state.
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

// === impl SplitMix64 ===

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    /// An independent stream for `(a, b)` (e.g. cycle and worker).
    pub fn fork(&self, a: u64, b: u64) -> SplitMix64 {
        let mut r = SplitMix64(self.0 ^ a.wrapping_mul(GAMMA) ^ b.rotate_left(32));
        r.next();
        r
    }

    /// The first output of a generator seeded with `seed`: a stateless hash
    /// of `seed`, e.g. to pick a request's kind from its sequence number.
    pub fn mix(seed: u64) -> u64 {
        SplitMix64(seed).next()
    }

    // Not `Iterator`: the stream never ends, and callers want `u64`, not
    // `Option<u64>`.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GAMMA);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 if `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        (self.next() % n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi.saturating_sub(lo) + 1)
    }

    pub fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

#[cfg(test)]
mod tests {
    use super::SplitMix64;

    #[test]
    fn matches_the_reference_outputs() {
        // Vigna's splitmix64.c seeded with 1234567.
        let mut r = SplitMix64::new(1_234_567);
        let got: Vec<u64> = (0..5).map(|_| r.next()).collect();
        assert_eq!(
            got,
            [
                6_457_827_717_110_365_317,
                3_203_168_211_198_807_973,
                9_817_491_932_198_370_423,
                4_593_380_528_125_082_431,
                16_408_922_859_458_223_821,
            ]
        );
        assert_eq!(SplitMix64::mix(0), 0xE220_A839_7B1D_CDAF);
    }

    #[test]
    fn ranges_hold() {
        let mut r = SplitMix64::new(7);
        assert_eq!(r.below(0), 0);
        for _ in 0..1000 {
            assert!(r.below(3) < 3);
            assert!((5..=9).contains(&r.between(5, 9)));
        }
        assert!(!r.chance(-1.0));
        assert!(r.chance(1.0));
    }
}
