//! Signed notes and checkpoints: `Verifier::parse`, `verify_note` (free and
//! method), `Checkpoint::parse_body`. The first byte picks the mode; mode 3
//! signs the rest with a real key first, so the fuzzer reaches the body
//! parser through a valid signature.
#![no_main]

use std::sync::OnceLock;

use crossflow_ledger::note::verify_note;
use crossflow_ledger::{Checkpoint, Signer, Verifier};
use libfuzzer_sys::fuzz_target;

fn signer() -> &'static Signer {
    static S: OnceLock<Signer> = OnceLock::new();
    S.get_or_init(|| {
        Signer::from_seed("crossflow.example/ledger", &[42u8; 32])
            .unwrap_or_else(|e| panic!("signer: {e}"))
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let signer = signer();
    let verifier = signer.verifier();
    match mode % 4 {
        0 => {
            if let Ok(v) = Verifier::parse(text) {
                // Display is the inverse of parse.
                assert_eq!(Verifier::parse(&v.to_string()).ok(), Some(v));
            }
        }
        1 => {
            let _ = verifier.verify_note(text);
            let _ = verify_note(text, &[verifier.clone(), verifier.clone()]);
        }
        2 => {
            if let Ok(c) = Checkpoint::parse_body(text) {
                // Whatever parses formats back to the same bytes.
                assert_eq!(c.to_body().ok().as_deref(), Some(text));
            }
        }
        _ => {
            if let Ok(note) = signer.sign(text) {
                let body = verifier
                    .verify_note(&note)
                    .unwrap_or_else(|e| panic!("own signature refused: {e}"));
                assert_eq!(body, text);
                let _ = Checkpoint::parse_body(body);
            }
        }
    }
});
