use crate::{Settings, TagValues};

const HEAD: &str = r#"
[gateway]
federation = "crossflow.example"

[gateway.tls]
ca = "ca.crt"
cert = "ca.crt"
key = "ca.crt"

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
"#;

const TAGS: &str = r#"
[tags]
max_ttl_secs = 3600
pseudonym_overlap_days = 7
sensitive = ["iab-audience/381", "life-stage/expecting", "health"]

[[tags.namespaces]]
name = "iab-audience"
taxonomy = "iab-audience-1.1"

[[tags.namespaces]]
name = "life-stage"
values = ["expecting", "newborn"]

[[tags.namespaces]]
name = "health"
pattern = "[a-z]+"

[[tags.namespaces]]
name = "style"
values = ["minimal"]
"#;

fn load(text: &str) -> Result<Settings, Vec<String>> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.crt"), "x").unwrap();
    Settings::from_toml(text, &dir.path().join("c.toml"))
        .map_err(|e| e.errors.iter().map(ToString::to_string).collect())
}

#[test]
fn absent_table_allows_only_the_iab_taxonomy() {
    let text = HEAD.replace(", \"life-stage\"", "");
    let s = load(&text).unwrap();
    assert_eq!(s.tags.max_ttl_secs, 30 * 86_400);
    assert_eq!(s.tags.pseudonym_overlap_days, 90);
    assert_eq!(
        s.tags.namespaces.keys().collect::<Vec<_>>(),
        ["iab-audience"]
    );
    assert!(s.tags.sensitive_namespaces.is_empty());
}

#[test]
fn full_table_is_read() {
    let s = load(&format!("{HEAD}{TAGS}")).unwrap();
    let t = &s.tags;
    assert_eq!((t.max_ttl_secs, t.pseudonym_overlap_days), (3600, 7));
    assert!(matches!(t.namespaces["life-stage"], TagValues::Listed(_)));
    assert_eq!(t.allows("health", "flu"), Some(true));
    // Patterns are anchored.
    assert_eq!(t.allows("health", "flu 2"), Some(false));
    assert_eq!(t.allows("life-stage", "toddler"), Some(false));
    assert_eq!(t.allows("iab-audience", "0354"), Some(false));
    assert_eq!(t.allows("nope", "x"), None);
    assert!(t.sensitive_namespaces.contains("health"));
    assert!(
        t.sensitive_values
            .contains(&("iab-audience".into(), "381".into()))
    );
}

#[test]
fn every_rule_names_key_and_value() {
    let cases = [
        (
            "max_ttl_secs = 3600",
            "max_ttl_secs = 0",
            "tags.max_ttl_secs must be 1-31536000 seconds, got 0",
        ),
        (
            "pseudonym_overlap_days = 7",
            "pseudonym_overlap_days = 4000",
            "tags.pseudonym_overlap_days must be 0-3650 days, got 4000",
        ),
        (
            "pattern = \"[a-z]+\"",
            "pattern = \"[a-z\"",
            "tags.namespaces[2].pattern is not a valid regular expression",
        ),
        (
            "pattern = \"[a-z]+\"",
            "pattern = \"x\"\nvalues = [\"y\"]",
            "tags.namespaces[2] must set exactly one of values, pattern or taxonomy, got 2",
        ),
        (
            "taxonomy = \"iab-audience-1.1\"",
            "taxonomy = \"iab-2\"",
            "tags.namespaces[0].taxonomy must be \"iab-audience-1.1\", got \"iab-2\"",
        ),
        (
            "name = \"style\"",
            "name = \"Style\"",
            "tags.namespaces[3].name must be 1-64 lowercase letters",
        ),
        (
            "values = [\"expecting\", \"newborn\"]",
            "values = [\"expecting\", \"expecting\"]",
            "tags.namespaces[1].values[1] repeats \"expecting\"",
        ),
        (
            "\"life-stage/expecting\"",
            "\"life-stage/retired\"",
            "tags.sensitive[1] names a value namespace \"life-stage\" does not allow, got \"life-stage/retired\"",
        ),
        (
            "\"health\"]",
            "\"wealth\"]",
            "tags.sensitive[2] names a namespace not declared in tags.namespaces, got \"wealth\"",
        ),
        (
            "[\"iab-audience\", \"life-stage\"]",
            "[\"iab-audience\", \"lifestage\"]",
            "agreements[0].flows[0].tag_scopes[1] names a namespace not declared in tags.namespaces, got \"lifestage\"",
        ),
    ];
    for (from, to, want) in cases {
        let text = format!("{HEAD}{TAGS}");
        assert_eq!(text.matches(from).count(), 1, "{from}");
        let errors = load(&text.replace(from, to)).unwrap_err();
        assert_eq!(errors.len(), 1, "{to}: {errors:#?}");
        assert!(errors[0].starts_with(want), "{to}: {}", errors[0]);
    }
}

#[test]
fn unknown_field_is_refused() {
    let e = load(&format!("{HEAD}{TAGS}\nzz = 1\n")).unwrap_err();
    assert!(e[0].contains("unknown field `zz`"), "{e:?}");
}
