use std::sync::atomic::{AtomicI64, Ordering};

use crossflow_settings::Settings;
use crossflow_store::{Landing, LandingStore, Sqlite};

use super::*;

const DAY: i64 = DAY_MS;

struct TestClock(AtomicI64);

impl Clock for TestClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

const CONFIG: &str = r#"
[gateway]
federation = "crossflow.example"
[gateway.tls]
ca = "f"
cert = "f"
key = "f"
[[partners]]
id = "a"
[[partners]]
id = "b"
[[agreements]]
id = "a-b"
between = ["a", "b"]
[[agreements.flows]]
from = "a"
to = "b"
tag_scopes = ["iab-audience", "life-stage"]

[tags]
max_ttl_secs = 3600
pseudonym_overlap_days = 10
sensitive = ["iab-audience/381"]
[[tags.namespaces]]
name = "iab-audience"
taxonomy = "iab-audience-1.1"
[[tags.namespaces]]
name = "life-stage"
values = ["newborn"]
"#;

struct Fixture {
    dir: tempfile::TempDir,
    store: Sqlite,
    clock: Arc<TestClock>,
    settings: SettingsHandle,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), "x").unwrap();
        let settings = Settings::from_toml(CONFIG, &dir.path().join("c.toml")).unwrap();
        KeyRing::generate(&dir.path().join("keys")).unwrap();
        let store = Sqlite::open(&dir.path().join("data")).unwrap();
        Fixture {
            dir,
            store,
            clock: Arc::new(TestClock(AtomicI64::new(DAY))),
            settings: SettingsHandle::new(settings),
        }
    }

    fn tags(&self) -> Tags<Sqlite> {
        let keys = KeyRing::load(&self.dir.path().join("keys")).unwrap();
        Tags::new(
            self.store.clone(),
            Arc::new(keys),
            self.settings.clone(),
            self.clock.clone(),
        )
    }

    fn set_now(&self, ms: i64) {
        self.clock.0.store(ms, Ordering::SeqCst);
    }
}

fn input(ns: &str, v: &str, ttl: Option<Result<u64, ()>>) -> TagInput {
    TagInput {
        namespace: ns.into(),
        value: v.into(),
        ttl_secs: ttl,
    }
}

#[tokio::test]
async fn publish_names_every_bad_field() {
    let f = Fixture::new();
    let t = f.tags();
    let bad = [
        input("iab-audience", "354", Some(Ok(7200))),
        input("iab-audience", "99999", None),
        input("wealth", "x", None),
        input("life-stage", "retired", None),
        input("iab-audience", "386", None),
        input("iab-audience", "354", Some(Err(()))),
    ];
    let e = t
        .publish("a", "user-1", &bad, "")
        .await
        .unwrap_err()
        .problem();
    let fields: Vec<&str> = e.violations.iter().map(|v| v.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "tags[0].ttl",
            "tags[1].value",
            "tags[2].namespace",
            "tags[3].value",
            "tags[4].value",
            "tags[5].value",
            "tags[5].ttl"
        ]
    );
    assert!(e.violations[4].description.contains("sensitive"), "{e:?}");
    assert!(e.violations[5].description.contains("repeats"), "{e:?}");
    let ok = t
        .publish("a", "user-1", &[input("iab-audience", "354", None)], "")
        .await
        .unwrap();
    // No TTL: the configured maximum.
    assert_eq!(ok[0].expires_at_ms, DAY + 3_600_000);
}

fn landing(origin_uid: [u8; 32]) -> Landing {
    Landing {
        referral_id: [1; 16],
        agreement_id: "a-b".into(),
        from: "a".into(),
        to: "b".into(),
        chain: vec!["a".into()],
        hop: 1,
        parent: None,
        target: "t".into(),
        origin: "a".into(),
        origin_uid,
        dest_uid: [3; 32],
        issued_at_ms: 0,
        expires_at_ms: 0,
        redeemed_at_ms: 0,
        tag_access: true,
    }
}

#[tokio::test]
async fn old_pseudonyms_resolve_during_the_overlap_only() {
    let f = Fixture::new();
    let uid = f.tags().keys.uid("a", "user-1");
    f.store.redeem(landing(uid.0)).await.unwrap();
    let before = f.tags().read("b", &"01".repeat(16)).await.unwrap();
    assert!(before.previous_pseudonyms.is_empty());

    KeyRing::rotate(&f.dir.path().join("keys"), 2 * DAY).unwrap();
    f.set_now(3 * DAY);
    let after = f.tags().read("b", &"01".repeat(16)).await.unwrap();
    assert_eq!(after.pseudonym.epoch, before.pseudonym.epoch + 1);
    assert_ne!(after.pseudonym.value, before.pseudonym.value);
    assert_eq!(
        after.previous_pseudonyms,
        std::slice::from_ref(&before.pseudonym)
    );

    // Ten days after the rotation the old epoch no longer resolves.
    f.set_now(12 * DAY - 1);
    let r = f.tags().read("b", &"01".repeat(16)).await.unwrap();
    assert_eq!(r.previous_pseudonyms.len(), 1);
    f.set_now(12 * DAY);
    let r = f.tags().read("b", &"01".repeat(16)).await.unwrap();
    assert!(r.previous_pseudonyms.is_empty());
}
