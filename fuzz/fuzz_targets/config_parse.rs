//! Config parsing: arbitrary text through `Settings::from_toml` (TOML
//! syntax, typed fields, then every validation rule), and, for a config
//! that is accepted, the tag-policy check `crossflow serve` runs next.
#![no_main]

use crossflow_fuzz::fixture;
use crossflow_settings::Settings;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Relative paths resolve against the fixture, where pki/ exists.
    let path = fixture().dir.join("fuzz.toml");
    match Settings::from_toml(text, &path) {
        Ok(s) => {
            let _ = crossflow_tags::check_settings(&s);
            for id in s.partners.keys() {
                let _ = s.active_partner(id);
            }
        }
        Err(errors) => {
            // Every refusal names at least one problem.
            assert!(!errors.to_string().is_empty());
        }
    }
});
