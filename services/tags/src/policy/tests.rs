use super::*;

/// a<->b, b<->c, a->c (one way), d<->b; c->d none.
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
[[partners]]
id = "c"
[[partners]]
id = "d"

[[agreements]]
id = "a-b"
between = ["a", "b"]
[[agreements.flows]]
from = "a"
to = "b"
tag_scopes = ["iab-audience", "life-stage", "health"]
[[agreements.flows]]
from = "b"
to = "a"

[[agreements]]
id = "b-c"
between = ["b", "c"]
[[agreements.flows]]
from = "b"
to = "c"
tag_scopes = ["iab-audience", "style"]

[[agreements]]
id = "a-c"
between = ["a", "c"]
[[agreements.flows]]
from = "a"
to = "c"
tag_scopes = ["iab-audience", "life-stage", "style"]

[[agreements]]
id = "b-d"
between = ["b", "d"]
[[agreements.flows]]
from = "b"
to = "d"
tag_scopes = ["iab-audience"]

[tags]
sensitive = ["health", "iab-audience/381", "life-stage/expecting"]
[[tags.namespaces]]
name = "iab-audience"
taxonomy = "iab-audience-1.1"
[[tags.namespaces]]
name = "life-stage"
values = ["expecting", "newborn"]
[[tags.namespaces]]
name = "style"
pattern = "[a-z]+"
[[tags.namespaces]]
name = "health"
pattern = "[a-z]+"
"#;

fn settings(text: &str) -> Settings {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), "x").unwrap();
    Settings::from_toml(text, &dir.path().join("c.toml")).unwrap()
}

fn landing(chain: &[&str], to: &str) -> Landing {
    Landing {
        referral_id: [1; 16],
        agreement_id: String::new(),
        from: chain[chain.len() - 1].into(),
        to: to.into(),
        chain: chain.iter().map(|s| (*s).to_owned()).collect(),
        hop: chain.len() as u32,
        parent: None,
        target: "t".into(),
        origin: chain[0].into(),
        origin_uid: [2; 32],
        dest_uid: [3; 32],
        issued_at_ms: 0,
        expires_at_ms: 0,
        redeemed_at_ms: 0,
        tag_access: true,
    }
}

fn scopes(s: &Settings, chain: &[&str], to: &str) -> Option<Vec<String>> {
    grant(s, &landing(chain, to)).map(|g| g.scopes.into_iter().collect())
}

#[test]
fn direct_hop_gets_its_flow_scopes_minus_sensitive_namespaces() {
    let s = settings(CONFIG);
    let g = grant(&s, &landing(&["a"], "b")).unwrap();
    assert_eq!(g.agreement_id, "a-b");
    // "health" is in the flow but sensitive.
    assert_eq!(
        g.scopes.into_iter().collect::<Vec<_>>(),
        ["iab-audience", "life-stage"]
    );
    // A flow without tag_scopes grants nothing (but is an agreement).
    assert_eq!(scopes(&s, &["b"], "a").unwrap(), Vec::<String>::new());
}

#[test]
fn onward_hop_is_the_intersection_along_the_chain() {
    let s = settings(CONFIG);
    // a->c allows iab-audience, life-stage, style; a->b drops style, b->c
    // drops life-stage.
    let g = grant(&s, &landing(&["a", "b"], "c")).unwrap();
    assert_eq!(g.agreement_id, "a-c");
    assert_eq!(g.scopes.into_iter().collect::<Vec<_>>(), ["iab-audience"]);
    // The origin has no flow to d: nothing, whatever the chain allows.
    assert_eq!(scopes(&s, &["a", "b"], "d"), None);
    // A hop whose flow is gone (c->a does not exist) allows nothing.
    let chain_with_gap = landing(&["a", "c", "b"], "c");
    assert!(grant(&s, &chain_with_gap).unwrap().scopes.is_empty());
}

#[test]
fn sensitive_values_and_subtrees() {
    let s = settings(CONFIG);
    let t = &s.tags;
    assert!(is_sensitive(t, "health", "flu"));
    assert!(is_sensitive(t, "life-stage", "expecting"));
    assert!(!is_sensitive(t, "life-stage", "newborn"));
    // 381 Health and Medical Services and its descendants (383 Medical
    // Services, 386 Health Care and Physicians).
    for id in ["381", "383", "386"] {
        assert!(is_sensitive(t, "iab-audience", id), "{id}");
    }
    assert!(!is_sensitive(t, "iab-audience", "354"));
    assert!(!is_sensitive(t, "iab-audience", "206"), "the parent is not");
    assert!(check_settings(&s).is_empty());
    let typo = settings(&CONFIG.replace("iab-audience/381", "iab-audience/9999"));
    assert_eq!(
        check_settings(&typo),
        [
            "tags.sensitive names an id that is not in the IAB Audience Taxonomy 1.1, got \"iab-audience/9999\""
        ]
    );
}
