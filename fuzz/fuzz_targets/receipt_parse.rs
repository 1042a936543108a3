//! Inclusion receipts: `Receipt::parse` and `verify_receipt`. Mode 0 takes
//! the rest as receipt text; mode 1 builds a receipt from structured input
//! (index, tree size, proof hashes, entry) around a checkpoint signed by a
//! real key, so the fuzzer reaches the proof check with every index/size
//! combination.
#![no_main]

use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use crossflow_ledger::{Checkpoint, Receipt, Signer, verify_receipt};
use libfuzzer_sys::fuzz_target;

const ORIGIN: &str = "crossflow.example/ledger";

fn signer() -> &'static Signer {
    static S: OnceLock<Signer> = OnceLock::new();
    S.get_or_init(|| {
        Signer::from_seed(ORIGIN, &[42u8; 32]).unwrap_or_else(|e| panic!("signer: {e}"))
    })
}

#[derive(Debug, Arbitrary)]
struct Built {
    extra: Option<Vec<u8>>,
    index: u64,
    size: u64,
    root: [u8; 32],
    proof: Vec<[u8; 32]>,
    entry: Vec<u8>,
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let verifier = signer().verifier();
    if mode & 1 == 0 {
        let Ok(text) = std::str::from_utf8(rest) else {
            return;
        };
        if let Ok(r) = Receipt::parse(text) {
            assert_eq!(Receipt::parse(&r.to_text()).ok(), Some(r));
        }
        let _ = verify_receipt(text, b"entry", &verifier, ORIGIN);
        return;
    }
    let Ok(b) = Built::arbitrary(&mut Unstructured::new(rest)) else {
        return;
    };
    let Ok(body) = Checkpoint::new(ORIGIN, b.size, b.root).to_body() else {
        return;
    };
    let Ok(note) = signer().sign(&body) else {
        return;
    };
    let receipt = Receipt {
        extra: b.extra,
        index: b.index,
        proof: b.proof,
        checkpoint_note: note,
    };
    let text = receipt.to_text();
    if receipt.proof.len() <= 64 {
        assert_eq!(Receipt::parse(&text).as_ref().ok(), Some(&receipt));
    }
    let _ = verify_receipt(&text, &b.entry, &verifier, ORIGIN);
});
