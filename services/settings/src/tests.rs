//! Every validation rule, with the exact key and value it names, and the
//! annotated example federation in `config/crossflow.toml`.

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use tempfile::TempDir;

use super::*;

/// The example that operations read as documentation; it must always load.
const EXAMPLE: &str = include_str!("../../../config/crossflow.toml");

/// A small valid file: three partners (beauty-live disabled) and one
/// agreement with one direction. Tests edit it with [`edit`].
const BASE: &str = r#"
[gateway]
federation = "crossflow.example"

[gateway.tls]
ca = "pki/ca.crt"
cert = "pki/gateway.crt"
key = "pki/gateway.key"

[[partners]]
id = "mombaby-live"

[[partners]]
id = "homedecor-live"

[[partners]]
id = "beauty-live"
enabled = false

[[agreements]]
id = "mombaby-homedecor"
between = ["mombaby-live", "homedecor-live"]

[[agreements.flows]]
from = "mombaby-live"
to = "homedecor-live"

[agreements.flows.commission]
default_bps = 500
"#;

/// A second agreement, homedecor-live <-> beauty-live, both directions.
const SECOND: &str = r#"
[[agreements]]
id = "homedecor-beauty"
between = ["homedecor-live", "beauty-live"]

[[agreements.flows]]
from = "homedecor-live"
to = "beauty-live"

[[agreements.flows]]
from = "beauty-live"
to = "homedecor-live"
"#;

/// A directory holding the three TLS files that BASE and the example name
/// (their content is not read by settings, only their existence checked).
struct Dir {
    dir: TempDir,
}

impl Dir {
    fn new() -> Dir {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("pki")).unwrap();
        for f in ["ca.crt", "gateway.crt", "gateway.key"] {
            fs::write(
                dir.path().join("pki").join(f),
                "-----BEGIN PLACEHOLDER-----\n",
            )
            .unwrap();
        }
        Dir { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Where the config file is taken to live.
    fn file(&self) -> PathBuf {
        self.path().join("crossflow.toml")
    }

    fn parse(&self, text: &str) -> Result<Settings, ConfigErrors> {
        Settings::from_toml(text, &self.file())
    }
}

/// BASE (or another text) with each `old` replaced once by `new`; panics if
/// `old` is absent so that a test can never silently check the wrong file.
fn edit(text: &str, edits: &[(&str, &str)]) -> String {
    let mut text = text.to_owned();
    for (old, new) in edits {
        assert!(text.contains(old), "test text has no {old:?}");
        text = text.replacen(old, new, 1);
    }
    text
}

fn valid(text: &str) -> Settings {
    match Dir::new().parse(text) {
        Ok(s) => s,
        Err(e) => panic!("expected a valid file, got\n{e}"),
    }
}

/// Every error of an invalid file, each as `key message`.
fn errors(text: &str) -> Vec<String> {
    match Dir::new().parse(text) {
        Ok(_) => panic!("expected errors, the file was accepted:\n{text}"),
        Err(e) => e.errors.iter().map(ToString::to_string).collect(),
    }
}

/// The single error of an invalid file.
fn error(text: &str) -> String {
    let mut all = errors(text);
    assert_eq!(all.len(), 1, "expected exactly one error, got {all:#?}");
    all.remove(0)
}

// === the example federation ===

#[test]
fn example_federation_loads() {
    let dir = Dir::new();
    fs::write(dir.file(), EXAMPLE).unwrap();
    let s = match Settings::load(&dir.file()) {
        Ok(s) => s,
        Err(e) => panic!("config/crossflow.toml does not load:\n{e}"),
    };

    assert_eq!(s.file, dir.file());
    let g = &s.gateway;
    assert_eq!(g.federation, "crossflow.example");
    assert_eq!(g.listen, "127.0.0.1:7443".parse::<SocketAddr>().unwrap());
    assert_eq!(g.timezone, "Asia/Shanghai");
    // Relative paths resolve against the file's directory, not the cwd.
    assert_eq!(g.data_dir, dir.path().join("data"));
    assert_eq!(g.key_dir, dir.path().join("keys"));
    assert_eq!(g.tls.ca, dir.path().join("pki/ca.crt"));
    assert_eq!(g.tls.cert, dir.path().join("pki/gateway.crt"));
    assert_eq!(g.tls.key, dir.path().join("pki/gateway.key"));

    let ids: Vec<&str> = s.partners.keys().map(String::as_str).collect();
    assert_eq!(
        ids,
        [
            "beauty-live",
            "homedecor-live",
            "mombaby-live",
            "petcare-live"
        ]
    );
    assert!(s.active_partner("petcare-live").is_none());
    assert!(s.partner("petcare-live").is_some());

    let mombaby = s.active_partner("mombaby-live").unwrap();
    let classes: Vec<QuotaClass> = mombaby.quotas.keys().copied().collect();
    assert_eq!(
        classes,
        [
            QuotaClass::Referrals,
            QuotaClass::Tags,
            QuotaClass::Conversions,
            QuotaClass::LedgerReads
        ]
    );
    assert_eq!(
        mombaby.quotas[&QuotaClass::Referrals],
        RateQuota {
            rate_per_sec: 500,
            burst: 1000,
            daily_cap: Some(5_000_000),
            shadow: false,
        }
    );
    assert_eq!(
        s.partner("beauty-live").unwrap().attribution_model,
        AttributionModel::TimeDecay
    );

    // Both directions of both agreements exist ...
    for (from, to) in [
        ("mombaby-live", "homedecor-live"),
        ("homedecor-live", "mombaby-live"),
        ("homedecor-live", "beauty-live"),
        ("beauty-live", "homedecor-live"),
    ] {
        assert!(s.flow(from, to).is_some(), "{from} -> {to}");
    }
    // ... and mombaby-live <-> beauty-live is refused both ways.
    assert!(s.flow("mombaby-live", "beauty-live").is_none());
    assert!(s.flow("beauty-live", "mombaby-live").is_none());
    assert!(s.agreement_between("mombaby-live", "beauty-live").is_none());

    let f = s.flow("mombaby-live", "homedecor-live").unwrap();
    assert_eq!(f.agreement.id, "mombaby-homedecor");
    assert_eq!(f.agreement.max_hops, 2);
    assert_eq!(f.agreement.upstream_share_bps, 2000);
    assert_eq!(f.agreement.max_daily_imbalance, Some(50_000));
    assert_eq!(f.flow.tag_scopes, ["iab-audience", "life-stage"]);
    assert_eq!(f.flow.referrals_per_day, Some(200_000));
    assert_eq!(f.flow.commission.categories["home-textiles"], 800);
    let boost = &f.flow.commission.boosts[0];
    assert_eq!(boost.extra_bps, 200);
    assert!(boost.starts_at.starts_with("2026-11-"));
    let back = s.flow("homedecor-live", "mombaby-live").unwrap();
    assert_eq!(back.flow.commission.categories["baby-care"], 600);
}

#[test]
fn example_tls_paths_are_the_dev_pki_layout() {
    // `crossflow pki dev --out config/pki` writes exactly these names.
    for name in ["pki/ca.crt", "pki/gateway.crt", "pki/gateway.key"] {
        assert!(EXAMPLE.contains(&format!("\"{name}\"")), "{name}");
    }
    assert!(EXAMPLE.contains("crossflow pki dev --out config/pki"));
}

#[test]
fn defaults_fill_absent_fields() {
    let dir = Dir::new();
    let s = dir.parse(BASE).unwrap();
    let g = &s.gateway;
    assert_eq!(g.listen, "127.0.0.1:7443".parse::<SocketAddr>().unwrap());
    assert_eq!(g.data_dir, dir.path().join("data"));
    assert_eq!(g.key_dir, dir.path().join("keys"));
    assert_eq!(g.timezone, "Asia/Shanghai");

    let p = s.partner("mombaby-live").unwrap();
    assert_eq!(p.name, "");
    assert!(p.enabled);
    assert_eq!(p.attribution_model, AttributionModel::LastTouch);
    assert_eq!(p.time_decay_half_life_secs, 172_800);
    assert!(p.quotas.is_empty());

    let a = &s.agreements[0];
    assert_eq!(a.max_hops, 2);
    assert_eq!(a.token_ttl_secs, 900);
    assert_eq!(a.attribution_window_secs, 604_800);
    assert_eq!(a.upstream_share_bps, 0);
    assert_eq!(a.lock_period_days, 14);
    assert_eq!(a.max_daily_imbalance, None);
    let f = &a.flows[0];
    assert!(f.tag_scopes.is_empty());
    assert_eq!(f.referrals_per_day, None);
    assert!(!f.quota_shadow);
    assert!(f.commission.categories.is_empty() && f.commission.boosts.is_empty());

    let q = valid(&edit(
        BASE,
        &[(
            "id = \"homedecor-live\"\n",
            "id = \"homedecor-live\"\n[partners.quotas.tags]\nrate_per_sec = 5\n",
        )],
    ));
    assert_eq!(
        q.partner("homedecor-live").unwrap().quotas[&QuotaClass::Tags],
        RateQuota {
            rate_per_sec: 5,
            burst: 1,
            daily_cap: None,
            shadow: false,
        }
    );
}

/// Every field the schema knows, table by table, read from the parser itself
/// (the "expected one of" list of an unknown-field error), so a field added
/// to `raw.rs` cannot be forgotten in the example or the reference.
fn schema_fields() -> Vec<String> {
    let partner = |x: &str| {
        edit(
            BASE,
            &[(
                "id = \"homedecor-live\"\n",
                &format!("id = \"homedecor-live\"\n{x}\n"),
            )],
        )
    };
    let tables = [
        format!("zz = 1\n{BASE}"),
        edit(BASE, &[("[gateway]\n", "[gateway]\nzz = 1\n")]),
        edit(BASE, &[("[gateway.tls]\n", "[gateway.tls]\nzz = 1\n")]),
        partner("zz = 1"),
        partner("[partners.quotas.tags]\nrate_per_sec = 1\nzz = 1"),
        edit(
            BASE,
            &[(
                "id = \"mombaby-homedecor\"\n",
                "id = \"mombaby-homedecor\"\nzz = 1\n",
            )],
        ),
        edit(
            BASE,
            &[(
                "to = \"homedecor-live\"\n",
                "to = \"homedecor-live\"\nzz = 1\n",
            )],
        ),
        edit(
            BASE,
            &[("default_bps = 500\n", "default_bps = 500\nzz = 1\n")],
        ),
        with_boost("baby-care = 1", "extra_bps = 1\nzz = 1"),
        format!("{BASE}\n[fraud]\nzz = 1\n"),
        format!("{BASE}\n[tags]\nzz = 1\n"),
        format!("{BASE}\n[[tags.namespaces]]\nname = \"x\"\nzz = 1\n"),
        format!("{BASE}\n[ledger]\nzz = 1\n"),
        format!("{BASE}\n[telemetry]\nzz = 1\n"),
        edit(
            BASE,
            &[(
                "[gateway.tls]\n",
                "[gateway.store]\nzz = 1\n[gateway.tls]\n",
            )],
        ),
        edit(
            BASE,
            &[(
                "[gateway.tls]\n",
                "[gateway.quotas]\nzz = 1\n[gateway.tls]\n",
            )],
        ),
    ];
    let mut fields = Vec::new();
    for text in tables {
        let e = error(&text);
        assert!(e.contains("unknown field `zz`"), "{e}");
        let expected = e
            .split_once("expected")
            .map(|(_, list)| list)
            .unwrap_or_default();
        let found: Vec<String> = expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect();
        assert!(!found.is_empty(), "{e}");
        fields.extend(found);
    }
    fields
}

#[test]
fn example_and_reference_show_every_field() {
    const REFERENCE: &str = include_str!("../../../docs/CONFIG.md");
    let fields = schema_fields();
    assert!(fields.len() > 30, "{fields:?}");
    for f in &fields {
        // A field the example cannot set with its defaults (a PostgreSQL
        // URL, say) is shown commented out: `# url = ...`.
        let in_example = EXAMPLE.contains(&format!("\n{f} ="))
            || EXAMPLE.contains(&format!("\n# {f} ="))
            || EXAMPLE.contains(&format!("[{f}]"))
            || EXAMPLE.contains(&format!(".{f}]"))
            || EXAMPLE.contains(&format!(".{f}."));
        assert!(in_example, "config/crossflow.toml does not show `{f}`");
        // A field as `name`, a table as `[name]`/`[[name]]`/`[....name]`.
        let in_reference = [format!("`{f}`"), format!("{f}]`"), format!("{f}]]`")]
            .iter()
            .any(|form| REFERENCE.contains(form.as_str()));
        assert!(in_reference, "docs/CONFIG.md does not describe `{f}`");
    }
}

// === lookups ===

#[test]
fn flow_is_directional() {
    let s = valid(BASE);
    let f = s.flow("mombaby-live", "homedecor-live").unwrap();
    assert_eq!(f.agreement.id, "mombaby-homedecor");
    assert_eq!(
        (f.flow.from.as_str(), f.flow.to.as_str()),
        ("mombaby-live", "homedecor-live")
    );
    assert_eq!(f.flow.commission.default_bps, 500);
    // The agreement exists but allows only one direction.
    assert!(s.flow("homedecor-live", "mombaby-live").is_none());
    assert!(s.flow("mombaby-live", "beauty-live").is_none());
    assert!(s.flow("mombaby-live", "mombaby-live").is_none());
    assert!(s.flow("nobody", "homedecor-live").is_none());
}

#[test]
fn flows_of_several_agreements_point_at_their_own_agreement() {
    let s = valid(&format!("{BASE}{SECOND}"));
    assert_eq!(
        s.flow("mombaby-live", "homedecor-live")
            .unwrap()
            .agreement
            .id,
        "mombaby-homedecor"
    );
    let f = s.flow("beauty-live", "homedecor-live").unwrap();
    assert_eq!(f.agreement.id, "homedecor-beauty");
    assert_eq!(f.flow.from, "beauty-live");
    assert_eq!(
        s.flow("homedecor-live", "beauty-live").unwrap().flow.to,
        "beauty-live"
    );
}

#[test]
fn agreement_between_either_order() {
    let s = valid(&format!("{BASE}{SECOND}"));
    for (a, b) in [
        ("mombaby-live", "homedecor-live"),
        ("homedecor-live", "mombaby-live"),
    ] {
        assert_eq!(s.agreement_between(a, b).unwrap().id, "mombaby-homedecor");
    }
    assert_eq!(
        s.agreement_between("beauty-live", "homedecor-live")
            .unwrap()
            .id,
        "homedecor-beauty"
    );
    assert!(s.agreement_between("mombaby-live", "beauty-live").is_none());
    assert!(s.agreement_between("beauty-live", "mombaby-live").is_none());
    // A partner has no agreement with itself, although it is in one.
    assert!(
        s.agreement_between("mombaby-live", "mombaby-live")
            .is_none()
    );
    assert!(s.agreement_between("mombaby-live", "nobody").is_none());
}

#[test]
fn active_partner_skips_disabled_ones() {
    let s = valid(&format!("{BASE}{SECOND}"));
    assert_eq!(s.active_partner("mombaby-live").unwrap().id, "mombaby-live");
    // Disabled: known, still in its agreement, but not active.
    assert!(s.active_partner("beauty-live").is_none());
    assert!(!s.partner("beauty-live").unwrap().enabled);
    assert!(
        s.agreement_between("homedecor-live", "beauty-live")
            .is_some()
    );
    assert!(s.active_partner("nobody").is_none());
    assert!(s.partner("nobody").is_none());
}

// === one test per rule: the exact key and value ===

#[test]
fn unknown_partner_in_agreement() {
    assert_eq!(
        errors(&edit(
            BASE,
            &[(
                "between = [\"mombaby-live\", \"homedecor-live\"]",
                "between = [\"mombaby-live\", \"toys-live\"]"
            )]
        )),
        [
            r#"agreements[0].between[1] names an unknown partner "toys-live""#,
            r#"agreements[0].flows[0].to must be one of the agreement's partners ["mombaby-live", "toys-live"], got "homedecor-live""#,
        ]
    );
}

#[test]
fn duplicate_partner_id() {
    assert_eq!(
        error(&edit(
            BASE,
            &[(
                "enabled = false\n",
                "enabled = false\n\n[[partners]]\nid = \"mombaby-live\"\n"
            )]
        )),
        r#"partners[3].id duplicates an earlier partner id "mombaby-live""#
    );
}

#[test]
fn duplicate_agreement_id() {
    let text = format!(
        "{BASE}{}",
        edit(
            SECOND,
            &[("id = \"homedecor-beauty\"", "id = \"mombaby-homedecor\"")]
        )
    );
    assert_eq!(
        error(&text),
        r#"agreements[1].id duplicates an earlier agreement id "mombaby-homedecor""#
    );
}

#[test]
fn default_bps_over_10000() {
    assert_eq!(
        error(&edit(BASE, &[("default_bps = 500", "default_bps = 12000")])),
        "agreements[0].flows[0].commission.default_bps must be ≤ 10000 bps, got 12000"
    );
}

#[test]
fn category_bps_over_10000() {
    assert_eq!(
        error(&edit(
            BASE,
            &[(
                "default_bps = 500\n",
                "default_bps = 500\n[agreements.flows.commission.categories]\nhome-textiles = 800\nbaby-care = 10001\n"
            )]
        )),
        "agreements[0].flows[0].commission.categories.baby-care must be ≤ 10000 bps, got 10001"
    );
}

#[test]
fn upstream_share_bps_over_10000() {
    assert_eq!(
        error(&edit(
            BASE,
            &[(
                "id = \"mombaby-homedecor\"\n",
                "id = \"mombaby-homedecor\"\nupstream_share_bps = 10500\n"
            )]
        )),
        "agreements[0].upstream_share_bps must be ≤ 10000 bps, got 10500"
    );
}

#[test]
fn exactly_10000_bps_is_allowed() {
    let s = valid(&edit(
        BASE,
        &[
            (
                "id = \"mombaby-homedecor\"\n",
                "id = \"mombaby-homedecor\"\nupstream_share_bps = 10000\n",
            ),
            ("default_bps = 500", "default_bps = 10000"),
        ],
    ));
    assert_eq!(s.agreements[0].upstream_share_bps, 10_000);
}

/// BASE with categories and one boost appended to the first flow.
fn with_boost(categories: &str, boost: &str) -> String {
    edit(
        BASE,
        &[(
            "default_bps = 500\n",
            &format!(
                "default_bps = 500\n[agreements.flows.commission.categories]\n{categories}\n\
                 [[agreements.flows.commission.boosts]]\nname = \"double-eleven-live\"\n\
                 starts_at = \"2026-11-10T20:00:00+08:00\"\nends_at = \"2026-11-12T00:00:00+08:00\"\n{boost}\n"
            ),
        )],
    )
}

#[test]
fn boost_pushing_a_rate_over_10000() {
    assert_eq!(
        error(&with_boost("home-textiles = 9900", "extra_bps = 200")),
        "agreements[0].flows[0].commission.boosts[0].extra_bps would lift a 9900 bps rate above 10000 bps, got 200"
    );
    // Named categories: the one it lifts over the limit is what counts.
    assert_eq!(
        error(&with_boost(
            "home-textiles = 9900",
            "extra_bps = 200\ncategories = [\"home-textiles\"]"
        )),
        "agreements[0].flows[0].commission.boosts[0].extra_bps would lift a 9900 bps rate above 10000 bps, got 200"
    );
    // A category without its own rate is lifted from default_bps.
    assert_eq!(
        error(&with_boost(
            "home-textiles = 800",
            "extra_bps = 9600\ncategories = [\"baby-care\"]"
        )),
        "agreements[0].flows[0].commission.boosts[0].extra_bps would lift a 500 bps rate above 10000 bps, got 9600"
    );
}

#[test]
fn boost_is_checked_only_against_the_categories_it_covers() {
    // +200 on baby-care (600) is fine even though home-textiles is at 9900.
    let s = valid(&with_boost(
        "home-textiles = 9900\nbaby-care = 600",
        "extra_bps = 200\ncategories = [\"baby-care\"]",
    ));
    let c = &s
        .flow("mombaby-live", "homedecor-live")
        .unwrap()
        .flow
        .commission;
    assert_eq!(c.boosts[0].categories, ["baby-care"]);
    // And reaching exactly 10000 is allowed.
    valid(&with_boost("home-textiles = 9800", "extra_bps = 200"));
}

#[test]
fn max_hops_zero() {
    let hops = |n: u32| {
        edit(
            BASE,
            &[(
                "id = \"mombaby-homedecor\"\n",
                &format!("id = \"mombaby-homedecor\"\nmax_hops = {n}\n"),
            )],
        )
    };
    assert_eq!(error(&hops(0)), "agreements[0].max_hops must be 1-8, got 0");
    assert_eq!(error(&hops(9)), "agreements[0].max_hops must be 1-8, got 9");
    assert_eq!(valid(&hops(8)).agreements[0].max_hops, 8);
}

#[test]
fn token_ttl_zero() {
    let ttl = |n: u64| {
        edit(
            BASE,
            &[(
                "id = \"mombaby-homedecor\"\n",
                &format!("id = \"mombaby-homedecor\"\ntoken_ttl_secs = {n}\n"),
            )],
        )
    };
    assert_eq!(
        error(&ttl(0)),
        "agreements[0].token_ttl_secs must be 1-604800 seconds, got 0"
    );
    assert_eq!(
        error(&ttl(604_801)),
        "agreements[0].token_ttl_secs must be 1-604800 seconds, got 604801"
    );
    assert_eq!(valid(&ttl(604_800)).agreements[0].token_ttl_secs, 604_800);
}

#[test]
fn tls_file_missing() {
    let dir = Dir::new();
    let text = edit(BASE, &[("ca = \"pki/ca.crt\"", "ca = \"pki/root-ca.crt\"")]);
    let e = dir.parse(&text).unwrap_err();
    let missing = dir.path().join("pki/root-ca.crt");
    assert_eq!(
        e.errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
        [format!(
            "gateway.tls.ca names a file that does not exist: \"{}\"",
            missing.display()
        )]
    );
}

#[test]
fn tls_paths_resolve_against_the_file_not_the_cwd() {
    let dir = Dir::new();
    // The same file read from another directory does not find pki/.
    let elsewhere = tempfile::tempdir().unwrap();
    let e = Settings::from_toml(BASE, &elsewhere.path().join("crossflow.toml")).unwrap_err();
    assert_eq!(e.errors.len(), 3, "{e}");
    assert!(e.errors.iter().all(|e| e.key.starts_with("gateway.tls.")));
    // Absolute paths are taken as they are.
    let abs = dir.path().join("pki/ca.crt");
    let text = edit(
        BASE,
        &[(
            "ca = \"pki/ca.crt\"",
            &format!("ca = {:?}", abs.display().to_string()),
        )],
    );
    let s = dir.parse(&text).unwrap();
    assert_eq!(s.gateway.tls.ca, abs);
}

#[test]
fn bad_timezone() {
    assert_eq!(
        error(&edit(
            BASE,
            &[(
                "federation = \"crossflow.example\"\n",
                "federation = \"crossflow.example\"\ntimezone = \"Asia/Shanghia\"\n"
            )]
        )),
        r#"gateway.timezone must be an IANA time zone like Asia/Shanghai, got "Asia/Shanghia""#
    );
    valid(&edit(
        BASE,
        &[(
            "federation = \"crossflow.example\"\n",
            "federation = \"crossflow.example\"\ntimezone = \"UTC\"\n",
        )],
    ));
}

#[test]
fn bad_listen_address() {
    let listen = |v: &str| {
        edit(
            BASE,
            &[(
                "federation = \"crossflow.example\"\n",
                &format!("federation = \"crossflow.example\"\nlisten = \"{v}\"\n"),
            )],
        )
    };
    assert_eq!(
        error(&listen("localhost:7443")),
        r#"gateway.listen must be an address like 127.0.0.1:7443, got "localhost:7443""#
    );
    assert_eq!(
        error(&listen("0.0.0.0")),
        r#"gateway.listen must be an address like 127.0.0.1:7443, got "0.0.0.0""#
    );
    assert_eq!(
        valid(&listen("[::]:7443")).gateway.listen,
        "[::]:7443".parse::<SocketAddr>().unwrap()
    );
}

#[test]
fn bad_slugs() {
    let rule = "must be 1-63 lowercase letters, digits or '-', starting with a letter, got";
    assert_eq!(
        error(&edit(
            BASE,
            &[(
                "enabled = false\n",
                "enabled = false\n\n[[partners]]\nid = \"Pet_Care\"\n"
            )]
        )),
        format!(r#"partners[3].id {rule} "Pet_Care""#)
    );
    assert_eq!(
        error(&edit(
            BASE,
            &[("id = \"mombaby-homedecor\"", "id = \"mombaby-homedecor-\"")]
        )),
        format!(r#"agreements[0].id {rule} "mombaby-homedecor-""#)
    );
    for bad in [
        "",
        "1live",
        "-live",
        "live-",
        "live.tv",
        "Live",
        "a".repeat(64).as_str(),
    ] {
        assert!(!is_valid_slug(bad), "{bad:?}");
    }
    for good in ["a", "mombaby-live", "live2", "a".repeat(63).as_str()] {
        assert!(is_valid_slug(good), "{good:?}");
    }
}

#[test]
fn flow_direction_outside_between() {
    assert_eq!(
        error(&edit(
            BASE,
            &[("from = \"mombaby-live\"", "from = \"beauty-live\"")]
        )),
        r#"agreements[0].flows[0].from must be one of the agreement's partners ["mombaby-live", "homedecor-live"], got "beauty-live""#
    );
}

#[test]
fn two_agreements_for_one_pair() {
    // Same pair, written the other way round.
    let text = format!(
        "{BASE}{}",
        edit(
            SECOND,
            &[
                ("id = \"homedecor-beauty\"", "id = \"homedecor-mombaby\""),
                (
                    "between = [\"homedecor-live\", \"beauty-live\"]",
                    "between = [\"homedecor-live\", \"mombaby-live\"]"
                ),
                ("to = \"beauty-live\"", "to = \"mombaby-live\""),
                ("from = \"beauty-live\"", "from = \"mombaby-live\""),
            ]
        )
    );
    assert_eq!(
        error(&text),
        r#"agreements[1].between "homedecor-live" and "mombaby-live" already have agreement "mombaby-homedecor"; one agreement per pair"#
    );
}

#[test]
fn unknown_field_names_field_and_line() {
    // Line 14 of BASE is `id = "homedecor-live"`; `colour` goes on line 15.
    let text = edit(
        BASE,
        &[(
            "id = \"homedecor-live\"\n",
            "id = \"homedecor-live\"\ncolour = \"pink\"\n",
        )],
    );
    let dir = Dir::new();
    let e = dir.parse(&text).unwrap_err();
    assert_eq!(e.errors.len(), 1);
    assert_eq!(e.errors[0].key, "at line 15, column 1");
    assert!(
        e.errors[0]
            .message
            .starts_with("unknown field `colour`, expected one of `id`, `name`, `enabled`"),
        "{}",
        e.errors[0].message
    );
    let shown = e.to_string();
    assert!(
        shown.starts_with(&format!(
            "{}: 1 error\n  {}: at line 15, column 1 unknown field `colour`",
            dir.file().display(),
            dir.file().display()
        )),
        "{shown}"
    );

    // Misspelt keys in nested tables, and enum values, too.
    let nested = error(&edit(
        BASE,
        &[("default_bps = 500", "default_bps = 500\ndefault_rate = 5")],
    ));
    assert!(
        nested.starts_with("at line 30, column 1 unknown field `default_rate`"),
        "{nested}"
    );
    let class = error(&edit(
        BASE,
        &[(
            "id = \"homedecor-live\"\n",
            "id = \"homedecor-live\"\n[partners.quotas.referral]\nrate_per_sec = 1\n",
        )],
    ));
    assert!(
        class.starts_with(
            "at line 15, column 18 unknown variant `referral`, expected one of `referrals`"
        ),
        "{class}"
    );
}

#[test]
fn syntax_and_type_errors_name_the_line() {
    assert_eq!(
        error(&edit(
            BASE,
            &[(
                "id = \"mombaby-homedecor\"\n",
                "id = \"mombaby-homedecor\"\nmax_hops = -1\n"
            )]
        )),
        "at line 22, column 12 invalid value: integer `-1`, expected u32"
    );
    let missing = error(&edit(BASE, &[("federation = \"crossflow.example\"\n", "")]));
    assert!(missing.contains("missing field `federation`"), "{missing}");
}

#[test]
fn unreadable_file_is_one_error() {
    let dir = Dir::new();
    let e = Settings::load(&dir.path().join("absent.toml")).unwrap_err();
    assert_eq!(e.errors.len(), 1);
    assert!(e.errors[0].key.is_empty());
    assert!(e.to_string().starts_with(&format!(
        "{}: 1 error\n  {}: cannot be read: ",
        e.file.display(),
        e.file.display()
    )));
}

/// The remaining rules, each with the one error it must produce.
#[test]
fn every_other_rule_names_key_and_value() {
    let agreement = |extra: &str| {
        edit(
            BASE,
            &[(
                "id = \"mombaby-homedecor\"\n",
                &format!("id = \"mombaby-homedecor\"\n{extra}\n"),
            )],
        )
    };
    let flow = |extra: &str| {
        edit(
            BASE,
            &[(
                "to = \"homedecor-live\"\n",
                &format!("to = \"homedecor-live\"\n{extra}\n"),
            )],
        )
    };
    let partner = |extra: &str| {
        edit(
            BASE,
            &[(
                "id = \"homedecor-live\"\n",
                &format!("id = \"homedecor-live\"\n{extra}\n"),
            )],
        )
    };
    let cases: Vec<(String, &str)> = vec![
        (
            edit(
                BASE,
                &[(
                    "federation = \"crossflow.example\"",
                    "federation = \"Crossflow Example\"",
                )],
            ),
            r#"gateway.federation must be a lowercase DNS-style trust domain like crossflow.example, got "Crossflow Example""#,
        ),
        (
            edit(
                BASE,
                &[(
                    "federation = \"crossflow.example\"",
                    "federation = \"crossflow..example\"",
                )],
            ),
            r#"gateway.federation must be a lowercase DNS-style trust domain like crossflow.example, got "crossflow..example""#,
        ),
        (
            partner("time_decay_half_life_secs = 0"),
            "partners[1].time_decay_half_life_secs must be > 0, got 0",
        ),
        (
            partner("[partners.quotas.referrals]\nrate_per_sec = 0"),
            "partners[1].quotas.referrals.rate_per_sec must be > 0, got 0",
        ),
        (
            partner("[partners.quotas.tags]\nrate_per_sec = 1\nburst = 0"),
            "partners[1].quotas.tags.burst must be > 0, got 0",
        ),
        (
            partner("[partners.quotas.ledger_reads]\nrate_per_sec = 1\ndaily_cap = 0"),
            "partners[1].quotas.ledger_reads.daily_cap must be > 0 when set, got 0",
        ),
        (
            edit(
                BASE,
                &[(
                    "between = [\"mombaby-live\", \"homedecor-live\"]",
                    "between = [\"mombaby-live\", \"homedecor-live\", \"beauty-live\"]",
                )],
            ),
            "agreements[0].between must name exactly two partners, got 3",
        ),
        (
            agreement("attribution_window_secs = 0"),
            "agreements[0].attribution_window_secs must be > 0, got 0",
        ),
        (
            agreement("max_daily_imbalance = 0"),
            "agreements[0].max_daily_imbalance must be > 0 when set, got 0 (remove it for no reciprocity limit)",
        ),
        (
            flow("referrals_per_day = 0"),
            "agreements[0].flows[0].referrals_per_day must be > 0 when set, got 0 (remove the flow to forbid the direction)",
        ),
        (
            flow("tag_scopes = [\"iab-audience\", \"Life Stage\"]"),
            r#"agreements[0].flows[0].tag_scopes[1] must be a namespace of lowercase letters, digits, '-' or '/', got "Life Stage""#,
        ),
        (
            flow("tag_scopes = [\"iab-audience\", \"iab-audience\"]"),
            r#"agreements[0].flows[0].tag_scopes[1] repeats "iab-audience""#,
        ),
        (
            edit(
                BASE,
                &[("to = \"homedecor-live\"", "to = \"mombaby-live\"")],
            ),
            r#"agreements[0].flows[0].to equals from "mombaby-live": self-referral is not a flow"#,
        ),
        (
            edit(
                BASE,
                &[(
                    "default_bps = 500\n",
                    "default_bps = 500\n[[agreements.flows]]\nfrom = \"mombaby-live\"\nto = \"homedecor-live\"\n",
                )],
            ),
            "agreements[0].flows[1] repeats the direction mombaby-live -> homedecor-live",
        ),
        (
            edit(
                BASE,
                &[(
                    "\n[[agreements.flows]]\nfrom = \"mombaby-live\"\nto = \"homedecor-live\"\n\n[agreements.flows.commission]\ndefault_bps = 500\n",
                    "",
                )],
            ),
            "agreements[0].flows is empty: the agreement allows no direction",
        ),
        (
            with_boost("\"Baby Care\" = 100", "extra_bps = 1"),
            r#"agreements[0].flows[0].commission.categories has an invalid category name "Baby Care""#,
        ),
        (
            with_boost(
                "home-textiles = 800",
                "extra_bps = 1\ncategories = [\"home textiles\"]",
            ),
            r#"agreements[0].flows[0].commission.boosts[0].categories[0] is not a valid category name, got "home textiles""#,
        ),
        (
            edit(
                &with_boost("home-textiles = 800", "extra_bps = 1"),
                &[("2026-11-10T20:00:00+08:00", "2026-11-10 20:00")],
            ),
            r#"agreements[0].flows[0].commission.boosts[0].starts_at must be an RFC 3339 time like 2026-11-11T20:00:00+08:00, got "2026-11-10 20:00""#,
        ),
        (
            edit(
                &with_boost("home-textiles = 800", "extra_bps = 1"),
                &[("2026-11-12T00:00:00+08:00", "2026-11-10T20:00:00+08:00")],
            ),
            r#"agreements[0].flows[0].commission.boosts[0].ends_at must be after starts_at "2026-11-10T20:00:00+08:00", got "2026-11-10T20:00:00+08:00""#,
        ),
    ];
    for (text, want) in &cases {
        assert_eq!(error(text), *want, "in\n{text}");
    }
}

#[test]
fn all_errors_are_reported_at_once() {
    let text = edit(
        &format!("{BASE}{SECOND}"),
        &[
            (
                "federation = \"crossflow.example\"\n",
                "federation = \"crossflow.example\"\ntimezone = \"Mars/Olympus\"\n",
            ),
            ("cert = \"pki/gateway.crt\"", "cert = \"pki/server.crt\""),
            (
                "enabled = false\n",
                "enabled = false\ntime_decay_half_life_secs = 0\n",
            ),
            (
                "id = \"mombaby-homedecor\"\n",
                "id = \"mombaby-homedecor\"\nmax_hops = 0\nupstream_share_bps = 20000\n",
            ),
            ("default_bps = 500", "default_bps = 12000"),
            (
                "between = [\"homedecor-live\", \"beauty-live\"]",
                "between = [\"homedecor-live\", \"toys-live\"]",
            ),
        ],
    );
    let dir = Dir::new();
    let e = dir.parse(&text).unwrap_err();
    let partners = r#"must be one of the agreement's partners ["homedecor-live", "toys-live"], got "beauty-live""#;
    let want = [
        r#"gateway.timezone must be an IANA time zone like Asia/Shanghai, got "Mars/Olympus""#
            .to_owned(),
        format!(
            "gateway.tls.cert names a file that does not exist: \"{}\"",
            dir.path().join("pki/server.crt").display()
        ),
        "partners[2].time_decay_half_life_secs must be > 0, got 0".to_owned(),
        "agreements[0].max_hops must be 1-8, got 0".to_owned(),
        "agreements[0].upstream_share_bps must be ≤ 10000 bps, got 20000".to_owned(),
        "agreements[0].flows[0].commission.default_bps must be ≤ 10000 bps, got 12000".to_owned(),
        r#"agreements[1].between[1] names an unknown partner "toys-live""#.to_owned(),
        format!("agreements[1].flows[0].to {partners}"),
        format!("agreements[1].flows[1].from {partners}"),
    ];
    assert_eq!(e.errors.len(), 9, "{e}");
    assert_eq!(
        e.errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
        want
    );

    // The report a person reads: a count, then one line per error, each with
    // the file name so that editors and grep can jump to it.
    let file = dir.file().display().to_string();
    let shown = e.to_string();
    let mut lines = shown.lines();
    assert_eq!(lines.next(), Some(format!("{file}: 9 errors").as_str()));
    for w in &want {
        assert_eq!(lines.next(), Some(format!("  {file}: {w}").as_str()));
    }
    assert_eq!(lines.next(), None);
}

// === [gateway.store] and [gateway.quotas] ===

/// BASE with `table` (e.g. `[gateway.store]\nbackend = ...`) before
/// `[gateway.tls]`.
fn with_gateway_table(table: &str) -> String {
    edit(
        BASE,
        &[("[gateway.tls]\n", &format!("{table}\n[gateway.tls]\n"))],
    )
}

fn parse_with_env(text: &str, var: &str, value: Option<&str>) -> Result<Settings, ConfigErrors> {
    let dir = Dir::new();
    let env = |name: &str| (name == var).then(|| value.map(str::to_owned)).flatten();
    Settings::from_toml_with_env(text, &dir.file(), &env)
}

#[test]
fn the_store_and_quotas_default_to_the_embedded_ones() {
    let s = valid(BASE);
    assert_eq!(s.gateway.store, StoreBackend::Sqlite);
    assert_eq!(s.gateway.quotas, QuotaBackend::Local);
}

#[test]
fn postgres_and_redis_take_a_url_or_an_environment_variable() {
    let s = valid(&with_gateway_table(
        "[gateway.store]\nbackend = \"postgres\"\nurl = \"postgresql://ops@db:5432/fed\"\n\
         [gateway.quotas]\nbackend = \"redis\"\nurl = \"redis://cache:6379/0\"\non_unavailable = \"deny\"",
    ));
    assert_eq!(
        s.gateway.store,
        StoreBackend::Postgres {
            url: "postgresql://ops@db:5432/fed".into()
        }
    );
    assert_eq!(
        s.gateway.quotas,
        QuotaBackend::Redis {
            url: "redis://cache:6379/0".into(),
            on_unavailable: OnUnavailable::Deny
        }
    );
    let text =
        with_gateway_table("[gateway.store]\nbackend = \"postgres\"\nurl_env = \"CROSSFLOW_DB\"");
    let s = parse_with_env(
        &text,
        "CROSSFLOW_DB",
        Some("postgresql://ops:s3cret@db/fed"),
    )
    .unwrap();
    let StoreBackend::Postgres { url } = &s.gateway.store else {
        panic!("{:?}", s.gateway.store)
    };
    assert_eq!(url, "postgresql://ops:s3cret@db/fed");
    // Debug output (logs, panics) never shows the password.
    let shown = format!("{:?}", s.gateway);
    assert!(
        !shown.contains("s3cret") && shown.contains("ops:***@db"),
        "{shown}"
    );
    let unset = parse_with_env(&text, "CROSSFLOW_DB", None).unwrap_err();
    assert_eq!(
        unset.errors[0].to_string(),
        "gateway.store.url_env names the environment variable \"CROSSFLOW_DB\", which is not set"
    );
}

#[test]
fn every_backend_error_names_its_key_and_never_a_password() {
    let all = errors(&with_gateway_table(
        "[gateway.store]\nbackend = \"mysql\"\n[gateway.quotas]\nbackend = \"memcached\"",
    ));
    assert_eq!(
        all,
        [
            "gateway.store.backend must be \"sqlite\" or \"postgres\", got \"mysql\"",
            "gateway.quotas.backend must be \"local\" or \"redis\", got \"memcached\"",
        ]
    );
    assert_eq!(
        error(&with_gateway_table(
            "[gateway.store]\nbackend = \"postgres\""
        )),
        "gateway.store.url must be set (or url_env, naming an environment variable that holds it)"
    );
    assert_eq!(
        error(&with_gateway_table(
            "[gateway.store]\nbackend = \"postgres\"\nurl = \"mysql://ops:s3cret@db/fed\""
        )),
        "gateway.store.url must start with postgresql:// or postgres://, got \"mysql://ops:***@db/fed\""
    );
    assert_eq!(
        error(&with_gateway_table(
            "[gateway.store]\nbackend = \"postgres\"\nurl = \"postgresql://a@b/c\"\nurl_env = \"X\""
        )),
        "gateway.store.url give url or url_env, not both"
    );
    assert_eq!(
        error(&with_gateway_table(
            "[gateway.store]\nurl = \"postgresql://a@b/c\""
        )),
        "gateway.store.url is for backend = \"postgres\"; the sqlite store lives in gateway.data_dir"
    );
    assert_eq!(
        error(&with_gateway_table(
            "[gateway.quotas]\non_unavailable = \"deny\""
        )),
        "gateway.quotas.on_unavailable is for backend = \"redis\""
    );
    assert_eq!(
        error(&with_gateway_table(
            "[gateway.quotas]\nbackend = \"redis\"\nurl = \"redis://:pw@cache:port/0\""
        )),
        "gateway.quotas.url has a bad port \"port\" in \"redis://:***@cache:port/0\""
    );
    assert!(
        error(&with_gateway_table(
            "[gateway.quotas]\nbackend = \"redis\"\nurl = \"redis://c\"\non_unavailable = \"maybe\""
        ))
        .contains("unknown variant `maybe`")
    );
}

/// The errors of `text` with `var` set to `value` in the environment.
fn env_errors(text: &str, var: &str, value: Option<&str>) -> Vec<String> {
    match parse_with_env(text, var, value) {
        Ok(_) => panic!("expected errors, the file was accepted:\n{text}"),
        Err(e) => e.errors.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn redis_takes_its_url_from_the_environment_and_defaults_to_allow() {
    let text = with_gateway_table(
        "[gateway.quotas]\nbackend = \"redis\"\nurl_env = \"CROSSFLOW_TEST_QUOTA_URL_1\"",
    );
    let s = parse_with_env(
        &text,
        "CROSSFLOW_TEST_QUOTA_URL_1",
        Some("rediss://default:hunter2@cache.internal:6380/2"),
    )
    .unwrap();
    assert_eq!(
        s.gateway.quotas,
        QuotaBackend::Redis {
            url: "rediss://default:hunter2@cache.internal:6380/2".into(),
            on_unavailable: OnUnavailable::Allow,
        }
    );
    let shown = format!("{:?}", s.gateway.quotas);
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("default:***@cache.internal:6380"), "{shown}");
    // valkey:// is a Redis-protocol URL too.
    let s = valid(&with_gateway_table(
        "[gateway.quotas]\nbackend = \"redis\"\nurl = \"valkey://cache:6379\"\non_unavailable = \"allow\"",
    ));
    assert!(matches!(s.gateway.quotas, QuotaBackend::Redis { .. }));
}

#[test]
fn an_empty_or_missing_variable_names_the_key_and_the_variable() {
    let text = with_gateway_table(
        "[gateway.store]\nbackend = \"postgres\"\nurl_env = \"CROSSFLOW_TEST_DB_URL_2\"\n\
         [gateway.quotas]\nbackend = \"redis\"\nurl_env = \"CROSSFLOW_TEST_REDIS_URL_2\"",
    );
    // Only the store's variable is known, and it is empty.
    assert_eq!(
        env_errors(&text, "CROSSFLOW_TEST_DB_URL_2", Some("")),
        [
            "gateway.store.url_env names the environment variable \"CROSSFLOW_TEST_DB_URL_2\", which is empty",
            "gateway.quotas.url_env names the environment variable \"CROSSFLOW_TEST_REDIS_URL_2\", which is not set",
        ]
    );
}

#[test]
fn a_bad_url_from_the_environment_is_reported_under_url_env_without_its_password() {
    let text = with_gateway_table(
        "[gateway.store]\nbackend = \"postgres\"\nurl_env = \"CROSSFLOW_TEST_DB_URL_3\"",
    );
    assert_eq!(
        env_errors(
            &text,
            "CROSSFLOW_TEST_DB_URL_3",
            Some("redis://ops:pa55word@db:5432/fed")
        ),
        [
            "gateway.store.url_env must start with postgresql:// or postgres://, got \"redis://ops:***@db:5432/fed\""
        ]
    );
    let text = with_gateway_table(
        "[gateway.quotas]\nbackend = \"redis\"\nurl_env = \"CROSSFLOW_TEST_REDIS_URL_3\"",
    );
    assert_eq!(
        env_errors(
            &text,
            "CROSSFLOW_TEST_REDIS_URL_3",
            Some("postgresql://ops:pa55word@cache/0")
        ),
        [
            "gateway.quotas.url_env must start with redis:// or rediss:// or valkey:// or valkeys://, got \"postgresql://ops:***@cache/0\""
        ]
    );
}

#[test]
fn every_other_backend_rule_names_its_key() {
    let cases: &[(&str, &str)] = &[
        (
            "[gateway.store]\nbackend = \"postgres\"\nurl = \"postgresql://ops:pw@/fed\"",
            "gateway.store.url must name a host, got \"postgresql://ops:***@/fed\"",
        ),
        (
            "[gateway.store]\nbackend = \"postgres\"\nurl = \"db.internal:5432\"",
            "gateway.store.url must be a URL like postgresql://host:port/..., got \"db.internal:5432\"",
        ),
        (
            "[gateway.store]\nurl_env = \"CROSSFLOW_DB\"",
            "gateway.store.url_env is for backend = \"postgres\"; the sqlite store lives in gateway.data_dir",
        ),
        (
            "[gateway.quotas]\nbackend = \"redis\"",
            "gateway.quotas.url must be set (or url_env, naming an environment variable that holds it)",
        ),
        (
            "[gateway.quotas]\nbackend = \"redis\"\nurl = \"redis://c:6379\"\nurl_env = \"X\"",
            "gateway.quotas.url give url or url_env, not both",
        ),
        (
            "[gateway.quotas]\nbackend = \"redis\"\nurl = \"memcache://c:11211\"",
            "gateway.quotas.url must start with redis:// or rediss:// or valkey:// or valkeys://, got \"memcache://c:11211\"",
        ),
        (
            "[gateway.quotas]\nurl = \"redis://c:6379\"",
            "gateway.quotas.url is for backend = \"redis\"",
        ),
        (
            "[gateway.quotas]\nurl_env = \"CROSSFLOW_REDIS\"",
            "gateway.quotas.url_env is for backend = \"redis\"",
        ),
    ];
    for (table, want) in cases {
        assert_eq!(error(&with_gateway_table(table)), *want, "{table}");
    }
    // Unknown keys stop at the parse, with the line.
    assert!(
        error(&with_gateway_table("[gateway.store]\npassword = \"x\""))
            .contains("unknown field `password`")
    );
}

#[test]
fn backend_errors_come_in_file_order_after_the_rest_of_the_gateway() {
    let text = edit(
        &with_gateway_table("[gateway.store]\nbackend = \"mysql\""),
        &[(
            "federation = \"crossflow.example\"",
            "federation = \"Crossflow\"",
        )],
    );
    let all = errors(&text);
    assert_eq!(all.len(), 2, "{all:#?}");
    assert!(all[0].starts_with("gateway.federation "), "{all:#?}");
    assert!(all[1].starts_with("gateway.store.backend "), "{all:#?}");
}
