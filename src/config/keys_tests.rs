//! The config keys three ways: the serde structs (`raw.rs`), the list kept
//! next to them (`raw::DOCUMENTED_KEYS`) and docs/configuration.md's tables.
//! A key in one and not another fails here, naming it.

use std::collections::BTreeSet;

use serde::de::DeserializeOwned;

use super::raw::{
    DOCUMENTED_KEYS, RULE_ONLY_KEYS, RawDaemon, RawDefaults, RawKeyless, RawRegistry, RawRetention,
    RawRule, RawTags, RawVerify,
};

type Keys = BTreeSet<String>;

/// The fields serde accepts in `T`, from its own error for an unknown key
/// (``unknown field `x`, expected one of `a`, `b` ``): what
/// `deny_unknown_fields` lets through, exactly.
fn fields<T: DeserializeOwned>() -> Keys {
    let err = toml::from_str::<T>("zz_not_a_key = 1")
        .err()
        .expect("an unknown key is refused")
        .to_string();
    let expected = err.split_once("expected").expect(&err).1;
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(String::from)
        .collect()
}

/// `prefix.` before each key (nested tables as the doc writes them).
fn dotted(prefix: &str, keys: Keys) -> Keys {
    keys.into_iter().map(|k| format!("{prefix}.{k}")).collect()
}

/// Per documented section, the keys the schema takes. A new section: one
/// line here (its struct's `fields`).
fn schema() -> Vec<(&'static str, Keys)> {
    let mut rule = fields::<RawRule>();
    rule.remove("retention"); // its own section
    rule.remove("verify"); // its own section
    assert!(rule.remove("tags"), "rule.tags is a table");
    rule.extend(dotted("tags", fields::<RawTags>()));
    let mut verify = fields::<RawVerify>();
    assert!(verify.remove("keyless"), "rule.verify.keyless is a table");
    verify.extend(dotted("keyless", fields::<RawKeyless>()));
    vec![
        ("", ["version".to_string()].into()),
        ("daemon", fields::<RawDaemon>()),
        ("registries", fields::<RawRegistry>()),
        ("rule", rule),
        ("rule.retention", fields::<RawRetention>()),
        ("rule.verify", verify),
    ]
}

fn listed(section: &str) -> Keys {
    DOCUMENTED_KEYS
        .iter()
        .filter(|(s, _)| *s == section)
        .map(|(_, k)| k.to_string())
        .collect()
}

/// The section a doc heading names: "## `[daemon]`" -> `daemon`,
/// `[registries."HOST"]` -> `registries`, "## Top level" -> "".
fn heading_section(line: &str) -> Option<String> {
    let title = line.trim_start_matches('#').trim();
    if title == "Top level" {
        return Some(String::new());
    }
    let inner = title.strip_prefix('`')?.strip_suffix('`')?;
    let inner = inner.trim_start_matches('[').trim_end_matches(']');
    Some(
        inner
            .split('.')
            .take_while(|p| !p.starts_with('"'))
            .collect::<Vec<_>>()
            .join("."),
    )
}

/// (section, key) of every row of the doc's key tables.
fn documented() -> BTreeSet<(String, String)> {
    let doc = include_str!("../../docs/configuration.md");
    let mut section = None;
    let mut out = BTreeSet::new();
    for line in doc.lines() {
        if line.starts_with('#') {
            section = heading_section(line);
        } else if let (Some(s), Some(row)) = (&section, line.strip_prefix("| `")) {
            let key = row.split('`').next().unwrap_or_default();
            out.insert((s.clone(), key.to_string()));
        }
    }
    out
}

#[test]
fn the_key_list_is_what_serde_accepts() {
    for (section, keys) in schema() {
        assert_eq!(
            listed(section),
            keys,
            "[{section}]: raw::DOCUMENTED_KEYS vs the serde struct"
        );
    }
    let sections: BTreeSet<&str> = schema().iter().map(|(s, _)| *s).collect();
    for (s, k) in DOCUMENTED_KEYS {
        assert!(
            sections.contains(s),
            "{s}.{k}: a section keys_tests::schema does not know"
        );
    }
    // [defaults] takes every rule key but the rule's own.
    let mut common: Keys = fields::<RawRule>();
    common.retain(|k| !RULE_ONLY_KEYS.contains(&k.as_str()));
    assert_eq!(fields::<RawDefaults>(), common);
}

#[test]
fn every_key_is_documented_and_every_documented_key_exists() {
    let listed: BTreeSet<(String, String)> = DOCUMENTED_KEYS
        .iter()
        .map(|(s, k)| (s.to_string(), k.to_string()))
        .collect();
    let doc = documented();
    let missing: Vec<_> = listed.difference(&doc).collect();
    let unknown: Vec<_> = doc.difference(&listed).collect();
    assert!(
        missing.is_empty(),
        "not in docs/configuration.md: {missing:?}"
    );
    assert!(
        unknown.is_empty(),
        "documented but not in the schema: {unknown:?}"
    );
}
