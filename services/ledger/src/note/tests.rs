use super::*;

// The example key and note of golang.org/x/mod/sumdb/note: Ed25519 is
// deterministic, so matching them byte for byte proves Go interoperability.
const VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
const SKEY: &str = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
const TEXT: &str = "If you think cryptography is the answer to your problem,\n\
                    then you don't know what your problem is.\n";
const SIG: &str = "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

fn go_note() -> String {
    format!("{TEXT}\n{SIG}")
}

fn signer(name: &str, seed: u8) -> Signer {
    Signer::from_seed(name, &[seed; 32]).unwrap()
}

/// Appends `signer`'s signature line for `note`'s text, as a cosigner would.
fn cosign(note: &str, signer: &Signer) -> String {
    let text = &note[..=note.rfind("\n\n").unwrap()];
    let own = signer.sign(text).unwrap();
    format!("{note}{}", &own[text.len() + 1..])
}

#[test]
fn matches_go_reference_vector() {
    let s = Signer::from_private_key(SKEY).unwrap();
    assert_eq!(s.name(), "PeterNeumann");
    assert_eq!(hex(&s.key_id()), "c74f20a3");
    assert_eq!(s.verifier_key(), VKEY);
    assert_eq!(s.sign(TEXT).unwrap(), go_note());
    let seed: [u8; 32] = B64.decode(SKEY.splitn(5, '+').last().unwrap()).unwrap()[1..]
        .try_into()
        .unwrap();
    assert_eq!(encode_private_key("PeterNeumann", &seed).unwrap(), SKEY);

    let v: Verifier = VKEY.parse().unwrap();
    assert_eq!(v.to_string(), VKEY);
    assert_eq!(v, s.verifier());
    assert_eq!(v.verify_note(&go_note()), Ok(TEXT));
    assert!(matches!(
        v.verify_note(&go_note().replace("cryptography", "cryptographY")),
        Err(NoteError::InvalidSignature { .. })
    ));
}

#[test]
fn mangled_verifier_keys_are_rejected() {
    let b = VKEY.as_bytes();
    for i in 0..b.len() {
        for j in i + 1..=b.len() {
            if (i, j) != (0, b.len()) {
                assert!(Verifier::parse(&VKEY[i..j]).is_err(), "{}", &VKEY[i..j]);
            }
        }
        let mut m = b.to_vec();
        m[i] += 1;
        let m = String::from_utf8(m).unwrap();
        assert!(Verifier::parse(&m).is_err(), "{m}");
    }
    let err = |s: &str| Verifier::parse(s).unwrap_err();
    assert!(matches!(
        err("PeterNeumann+00000000+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"),
        NoteError::KeyIdMismatch { .. }
    ));
    assert_eq!(
        err("PeterNeumann+c74f20a3+AhpcyQcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"),
        NoteError::UnsupportedAlgorithm(2)
    );
    assert!(matches!(
        err("Peter Neumann+c74f20a3+AQ=="),
        NoteError::InvalidKeyName(_)
    ));
    // Upper-case hex is accepted like Go does; the canonical form is lower case.
    assert_eq!(
        Verifier::parse(&VKEY.replace("c74f20a3", "C74F20A3"))
            .unwrap()
            .to_string(),
        VKEY
    );
}

#[test]
fn unknown_signatures_are_ignored_and_several_accepted() {
    let log = signer("log.example/a", 1);
    let witness = signer("witness.example", 2);
    let impostor = signer("log.example/a", 3); // same name, different key ID
    let body = "log.example/a\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n";

    let note = cosign(&cosign(&witness.sign(body).unwrap(), &log), &impostor);
    assert_eq!(log.verifier().verify_note(&note), Ok(body));
    assert_eq!(witness.verifier().verify_note(&note), Ok(body));
    assert_eq!(
        verify_note(&note, &[witness.verifier(), log.verifier()]),
        Ok(body)
    );
    assert_eq!(
        verify_note(&witness.sign(body).unwrap(), &[log.verifier()]),
        Err(NoteError::NoKnownSignature)
    );
    assert_eq!(verify_note(&note, &[]), Err(NoteError::NoKnownSignature));
}

#[test]
fn text_may_contain_blank_lines() {
    let s = signer("k", 1);
    let note = s.sign("a\n\nb\n\n").unwrap();
    assert_eq!(s.verifier().verify_note(&note), Ok("a\n\nb\n\n"));
}

#[test]
fn malformed_notes_are_rejected() {
    let v = Verifier::parse(VKEY).unwrap();
    let note = go_note();
    let bad_line = |line| Err(NoteError::MalformedSignature { line, reason: "" });
    let check = |text: &str, want: Result<&str, NoteError>| {
        let got = v.verify_note(text);
        match (&got, &want) {
            (
                Err(NoteError::MalformedSignature { line: a, .. }),
                Err(NoteError::MalformedSignature { line: b, .. }),
            ) => {
                assert_eq!(a, b, "{text:?}")
            }
            _ => assert_eq!(got, want, "{text:?}"),
        }
    };
    check(TEXT, Err(NoteError::NoSignatureBlock));
    check(note.trim_end(), Err(NoteError::SignatureBlockNotTerminated));
    check(
        &format!("{TEXT}\n"),
        Err(NoteError::SignatureBlockNotTerminated),
    );
    check(&note.replace('—', "-"), bad_line(1));
    check(
        &note.replace("— PeterNeumann ", "— PeterNeumann"),
        bad_line(1),
    );
    check(
        &note.replace("— PeterNeumann ", "— Peter+Neumann "),
        bad_line(1),
    );
    check(&note.replace("JnAM=", "JnAM"), bad_line(1));
    check(&format!("{note}— x AAAA\n"), bad_line(2));
    check(&format!("{note}— x \n"), bad_line(2));
    let cr = TEXT.find(',').unwrap() + 1;
    check(
        &note.replace("problem,", "problem,\r"),
        Err(NoteError::ControlCharacter {
            offset: cr,
            code: 13,
        }),
    );
    check(
        &note.replace("\n\n", "\n \n"),
        Err(NoteError::NoSignatureBlock),
    );
    let many = format!("{TEXT}\n{}", "— x AAAAAAA=\n".repeat(MAX_SIGNATURES + 1));
    check(&many, Err(NoteError::TooManySignatures));
    let ok_many = format!(
        "{TEXT}\n{}{SIG}",
        "— x AAAAAAA=\n".repeat(MAX_SIGNATURES - 1)
    );
    check(&ok_many, Ok(TEXT));
}

#[test]
fn sign_rejects_bad_text_and_names() {
    let s = signer("k", 1);
    assert_eq!(s.sign(""), Err(NoteError::TextNotTerminated));
    assert_eq!(s.sign("a"), Err(NoteError::TextNotTerminated));
    assert_eq!(
        s.sign("a\tb\n"),
        Err(NoteError::ControlCharacter { offset: 1, code: 9 })
    );
    for name in ["", "a b", "a+b", "a\u{a0}b", "a\u{7f}"] {
        assert!(
            matches!(
                Signer::from_seed(name, &[1; 32]),
                Err(NoteError::InvalidKeyName(_))
            ),
            "{name:?}"
        );
    }
    assert!(matches!(
        Signer::from_seed("k", &[1; 31]),
        Err(NoteError::MalformedPrivateKey(_))
    ));
    assert!(matches!(
        Signer::from_private_key(&SKEY.replace("c74f20a3", "c74f20a4")),
        Err(NoteError::KeyIdMismatch { .. })
    ));
}

#[test]
fn checkpoint_body_round_trips() {
    let mut cp = Checkpoint::new("crossflow.example/ledger", 20852163, [7; 32]);
    let body = cp.to_body().unwrap();
    assert_eq!(
        body,
        "crossflow.example/ledger\n20852163\nBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n"
    );
    assert_eq!(Checkpoint::parse_body(&body), Ok(cp.clone()));
    cp.extensions = vec!["ext one".into(), "two".into()];
    let body = cp.to_body().unwrap();
    assert!(body.ends_with("=\next one\ntwo\n"));
    assert_eq!(Checkpoint::parse_body(&body), Ok(cp.clone()));
    cp.extensions = vec![String::new()];
    assert!(cp.to_body().is_err());
    cp.extensions.clear();
    cp.origin = "a\nb".into();
    assert!(cp.to_body().is_err());
}

#[test]
fn checkpoint_parse_is_strict() {
    let root = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";
    assert_eq!(
        Checkpoint::parse_body(&format!("o\n0\n{root}\n"))
            .unwrap()
            .size,
        0
    );
    for body in [
        format!("o\n1\n{root}"),
        format!("\n1\n{root}\n"),
        "o\n1\n".to_owned(),
        "o\n".to_owned(),
        format!("o\n01\n{root}\n"),
        format!("o\n+1\n{root}\n"),
        format!("o\n-1\n{root}\n"),
        format!("o\n 1\n{root}\n"),
        format!("o\n18446744073709551616\n{root}\n"),
        "o\n1\nBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBw==\n".to_owned(),
        "o\n1\nBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc\n".to_owned(),
        format!("o\n1\n{root}\n\n"),
        format!("o\n1\n{root}\next\n\n"),
        format!("o\r\n1\n{root}\n"),
    ] {
        assert!(
            matches!(
                Checkpoint::parse_body(&body),
                Err(NoteError::MalformedCheckpoint(_))
            ),
            "{body:?}"
        );
    }
}

// === proof texts ===

#[test]
fn consistency_text_round_trips_and_names_bad_lines() {
    let note = signer("log", 3)
        .sign("example/log\n5\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n")
        .unwrap();
    let c = ConsistencyText {
        old: 5,
        new: 9,
        proof: vec![[1; 32], [2; 32]],
        old_note: Some(note.clone()),
    };
    let text = c.to_text();
    assert!(text.starts_with("crossflow-consistency@v1\nold 5\nnew 9\nAQEB"));
    assert!(text.ends_with(&format!("\n\n{note}")));
    assert_eq!(ConsistencyText::parse(&text).unwrap(), c);

    let first = ConsistencyText {
        old: 0,
        new: 4,
        proof: Vec::new(),
        old_note: None,
    };
    assert_eq!(first.to_text(), "crossflow-consistency@v1\nold 0\nnew 4\n");
    assert_eq!(ConsistencyText::parse(&first.to_text()).unwrap(), first);
    // An empty period: no hashes, then the blank line and the note.
    let same = ConsistencyText {
        old: 5,
        new: 5,
        proof: Vec::new(),
        old_note: Some(note.clone()),
    };
    assert_eq!(ConsistencyText::parse(&same.to_text()).unwrap(), same);

    let line_of = |t: &str| ConsistencyText::parse(t).unwrap_err().line;
    assert_eq!(line_of(&text.replacen("old 5", "old 05", 1)), 2);
    assert_eq!(line_of(&text.replacen("AQEB", "AQE", 1)), 4);
    assert_eq!(line_of(&text.replacen("v1", "v2", 1)), 1);
    assert_eq!(line_of("crossflow-consistency@v1\nold 0\nnew 4\nx\n"), 4);
    assert_eq!(line_of("crossflow-consistency@v1\nold 3\nnew 4\n"), 4);
}

#[test]
fn multiproof_text_round_trips_and_names_bad_lines() {
    let m = MultiProofText {
        size: 12,
        proof: vec![[7; 32], [8; 32], [9; 32]],
    };
    let text = m.to_text();
    assert_eq!(text.lines().count(), 5);
    assert_eq!(MultiProofText::parse(&text).unwrap(), m);
    let err = MultiProofText::parse(&text.replacen("CAgI", "!AgI", 1)).unwrap_err();
    assert_eq!(err.line, 4);
    let err = MultiProofText::parse(text.trim_end()).unwrap_err();
    assert_eq!(err.line, 5);
    assert_eq!(
        MultiProofText::parse("crossflow-multiproof@v1\nsize x\n")
            .unwrap_err()
            .line,
        2
    );
}
