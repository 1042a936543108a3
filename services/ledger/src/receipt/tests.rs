use std::collections::HashMap;

use super::*;
use crate::merkle::{Frontier, inclusion_proof, leaf_hash};
use crate::note::Signer;

const ORIGIN: &str = "crossflow.example/ledger";

fn entry(i: u64) -> Vec<u8> {
    format!("entry {i}").into_bytes()
}

/// A signed log of `n` entries and a receipt for each.
fn receipts(n: u64) -> (Signer, Vec<String>) {
    let signer = Signer::from_seed(ORIGIN, &[9; 32]).unwrap();
    let mut frontier = Frontier::new();
    let mut nodes = HashMap::new();
    for i in 0..n {
        for (level, index, hash) in frontier.append(leaf_hash(&entry(i))) {
            nodes.insert((level, index), hash);
        }
    }
    let body = Checkpoint::new(ORIGIN, n, frontier.root())
        .to_body()
        .unwrap();
    let note = signer.sign(&body).unwrap();
    let texts = (0..n)
        .map(|index| {
            Receipt {
                extra: (index % 2 == 0).then(|| vec![index as u8, 0xff]),
                index,
                proof: inclusion_proof(index, n, &nodes).unwrap(),
                checkpoint_note: note.clone(),
            }
            .to_text()
        })
        .collect();
    (signer, texts)
}

#[test]
fn every_receipt_verifies_and_round_trips() {
    let (signer, texts) = receipts(13);
    let v = signer.verifier();
    for (i, text) in texts.iter().enumerate() {
        let cp = verify_receipt(text, &entry(i as u64), &v, ORIGIN).unwrap();
        assert_eq!((cp.origin.as_str(), cp.size), (ORIGIN, 13));
        assert_eq!(Receipt::parse(text).unwrap().to_text(), *text);
    }
    assert!(texts[1].starts_with("c2sp.org/tlog-proof@v1\nindex 1\n"));
    assert!(texts[2].starts_with("c2sp.org/tlog-proof@v1\nextra Av8=\nindex 2\n"));
}

#[test]
fn wrong_entry_key_or_origin_is_rejected() {
    let (signer, texts) = receipts(5);
    let v = signer.verifier();
    assert_eq!(
        verify_receipt(&texts[3], &entry(4), &v, ORIGIN),
        Err(ReceiptError::Proof(ProofError::RootMismatch))
    );
    assert!(matches!(
        verify_receipt(&texts[3], &entry(3), &v, "other.example/log"),
        Err(ReceiptError::OriginMismatch { .. })
    ));
    let stranger = Signer::from_seed(ORIGIN, &[8; 32]).unwrap().verifier();
    assert_eq!(
        verify_receipt(&texts[3], &entry(3), &stranger, ORIGIN),
        Err(ReceiptError::Note(NoteError::NoKnownSignature))
    );
    let moved = texts[3].replace("index 3", "index 2");
    assert!(matches!(
        verify_receipt(&moved, &entry(3), &v, ORIGIN),
        Err(ReceiptError::Proof(_))
    ));
}

#[test]
fn malformed_receipts_name_the_line() {
    let (_, texts) = receipts(5);
    let good = &texts[1]; // no extra line: header, index, 3 hashes, blank, note
    let line_of = |text: &str| match Receipt::parse(text) {
        Err(ReceiptError::Malformed { line, .. }) => line,
        other => panic!("{other:?} for {text:?}"),
    };
    assert_eq!(line_of(&good.replace("tlog-proof@v1", "tlog-proof@v2")), 1);
    assert_eq!(line_of(&good.replace("index 1", "index 01")), 2);
    assert_eq!(line_of(&good.replace("index 1", "index +1")), 2);
    assert_eq!(line_of(&good.replace("index 1", "extra !!\nindex 1")), 2);
    let mut lines: Vec<&str> = good.split('\n').collect();
    lines[3] = "AAAA";
    assert_eq!(line_of(&lines.join("\n")), 4);
    assert_eq!(line_of(&good[..good.find("\n\n").unwrap() + 1]), 6);
    assert_eq!(line_of(&good[..good.find("\n\n").unwrap() + 2]), 7);
    let long = format!(
        "{HEADER}\nindex 0\n{}\n{}",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n".repeat(65),
        &good[good.find("\n\n").unwrap() + 2..]
    );
    assert_eq!(line_of(&long), 67);
}
