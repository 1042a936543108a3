//! End-to-end through the real `crossflow` binary: `serve` as a child
//! process (its logs captured), and `config check`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use crossflow_tests::{
    ALPHA, BETA, FEDERATION, GAMMA, TestGateway, assert_refused, create_req, file_contains,
    files_under, gateway_section, get_req, onward_req, partner_toml, redeem_req, run_cli,
    workspace_dir,
};
use tonic::Code;

/// Every file that must not contain a raw subject: the whole federation
/// directory (config, pki, keys, data with the SQLite db and its WAL) and the
/// captured log.
fn stored_files(dir: &Path, log: &Path) -> Vec<PathBuf> {
    let mut files = files_under(dir);
    files.push(log.to_path_buf());
    files
}

fn assert_absent(files: &[PathBuf], subjects: &[String]) {
    for f in files {
        for s in subjects {
            assert!(
                !file_contains(f, s.as_bytes()),
                "raw subject {s:?} found in {}",
                f.display()
            );
        }
    }
}

#[tokio::test]
async fn raw_subjects_are_never_stored_or_logged() {
    let mut gw = TestGateway::builder().spawn(&[("RUST_LOG", "debug")]).await;
    // Distinctive, and different for every role they play.
    let s = |role: &str| format!("RawSubj{role}Qx7Zk9");
    let origin = s("Origin");
    let at_beta = s("AtBeta");
    let other_at_beta = s("OtherAtBeta");
    let at_gamma = s("AtGamma");
    let too_long = format!("{}{}", s("TooLong"), "x".repeat(300));
    let all = [
        origin.clone(),
        at_beta.clone(),
        other_at_beta.clone(),
        at_gamma.clone(),
        s("TooLong"),
    ];

    let mut a = gw.referrals(ALPHA).await;
    let mut b = gw.referrals(BETA).await;
    let mut g = gw.referrals(GAMMA).await;
    let made = a
        .create_referral(create_req(&origin, BETA, "room-1"))
        .await
        .unwrap()
        .into_inner();
    let id = made.referral.as_ref().unwrap().referral_id.clone();
    b.redeem_referral(redeem_req(&made.token, &at_beta))
        .await
        .unwrap();
    b.redeem_referral(redeem_req(&made.token, &at_beta))
        .await
        .unwrap();
    assert_refused(
        b.redeem_referral(redeem_req(&made.token, &other_at_beta))
            .await,
        Code::AlreadyExists,
        "ALREADY_REDEEMED",
    );
    assert_refused(
        b.create_referral(onward_req(&other_at_beta, GAMMA, "room-2", &id))
            .await,
        Code::FailedPrecondition,
        "PARENT_SUBJECT_MISMATCH",
    );
    assert_refused(
        a.create_referral(create_req(&too_long, BETA, "room-1"))
            .await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    );
    let onward = b
        .create_referral(onward_req(&at_beta, GAMMA, "room-2", &id))
        .await
        .unwrap()
        .into_inner();
    g.redeem_referral(redeem_req(&onward.token, &at_gamma))
        .await
        .unwrap();
    a.get_referral(get_req(&id)).await.unwrap();

    // The search can fail: it finds the subjects in a transcript we wrote.
    let control = tempfile::tempdir().unwrap();
    let transcript = control.path().join("transcript.txt");
    std::fs::write(&transcript, all.join("\n")).unwrap();
    for subject in &all {
        assert!(file_contains(&transcript, subject.as_bytes()));
    }

    // While serving: the store with its WAL.
    let data = gw.dir().join("data");
    let names: Vec<String> = files_under(&data)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().any(|n| n.ends_with("-wal")),
        "expected a WAL in {names:?}"
    );
    assert_absent(&stored_files(gw.dir(), gw.log_path()), &all);

    let status = gw.stop().await;
    assert!(status.success(), "crossflow serve exited with {status}");

    // The log really holds the debug traffic it is searched for.
    let log = gw.log_text();
    assert!(log.contains("DEBUG"), "no debug lines in the log:\n{log}");
    assert!(log.contains(&id), "referral id not logged:\n{log}");
    assert!(log.contains("referral redeemed"), "{log}");
    assert_absent(&stored_files(gw.dir(), gw.log_path()), &all);
}

#[test]
fn config_check_reports_every_error_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    // A gateway section whose TLS files do not exist (no pki/ was made).
    let text = format!(
        r#"{}
{}{}{}
[[agreements]]
id = "alpha-beta"
between = ["alpha", "zeta"]
max_hops = 0

[[agreements.flows]]
from = "alpha"
to = "zeta"
commission = {{ default_bps = 10001 }}
"#,
        gateway_section(FEDERATION, "127.0.0.1:0"),
        partner_toml(ALPHA, true),
        partner_toml(BETA, true),
        partner_toml(ALPHA, true),
    );
    let file = dir.path().join("broken.toml");
    std::fs::write(&file, text).unwrap();
    let out = run_cli(&["config", "check", file.to_str().unwrap()]);
    assert!(!out.status.success(), "{out:?}");
    let said = format!("{}{}", out.stdout, out.stderr);
    for want in [
        "gateway.tls.ca names a file that does not exist",
        "gateway.tls.cert names a file that does not exist",
        "gateway.tls.key names a file that does not exist",
        "partners[2].id duplicates an earlier partner id \"alpha\"",
        "agreements[0].between[1] names an unknown partner \"zeta\"",
        "agreements[0].max_hops must be 1-8, got 0",
        "agreements[0].flows[0].commission.default_bps must be ≤ 10000 bps, got 10001",
    ] {
        assert!(said.contains(want), "{want:?} missing from:\n{said}");
    }

    // An unknown key is an error too, named with its place in the file.
    let typo = dir.path().join("typo.toml");
    std::fs::write(
        &typo,
        format!(
            "{}\n[[partners]]\nid = \"alpha\"\nenabeld = true\n",
            gateway_section(FEDERATION, "127.0.0.1:0")
        ),
    )
    .unwrap();
    let out = run_cli(&["config", "check", typo.to_str().unwrap()]);
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("enabeld"), "{out:?}");

    let missing = dir.path().join("missing.toml");
    let out = run_cli(&["config", "check", missing.to_str().unwrap()]);
    assert!(!out.status.success(), "{out:?}");
}

#[test]
fn config_check_accepts_the_example_config() {
    let dir = tempfile::tempdir().unwrap();
    let example = workspace_dir().join("config/crossflow.toml");
    let copy = dir.path().join("crossflow.toml");
    std::fs::copy(&example, &copy).unwrap();
    let pki = dir.path().join("pki");
    let out = run_cli(&[
        "pki",
        "dev",
        "--out",
        pki.to_str().unwrap(),
        "--federation",
        "crossflow.example",
        "--partner",
        "mombaby-live",
        "--partner",
        "homedecor-live",
        "--partner",
        "beauty-live",
    ]);
    assert!(out.status.success(), "{out:?}");
    let out = run_cli(&["config", "check", copy.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.contains("ok"), "{out:?}");
}
