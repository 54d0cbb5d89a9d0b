use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use cron::TimeUnitSpec as _;

use super::*;
use crate::reference::Location;

const FILE: &str = "test.toml";

/// `text` with `version = 1` in front when it has none (a file needs it;
/// most cases here are about something else).
fn versioned(text: &str) -> String {
    if text.trim_start().starts_with("version") || text.contains("\nversion") {
        text.to_string()
    } else {
        format!("version = 1\n{text}")
    }
}

fn ok(text: &str) -> Config {
    match parse(&versioned(text), Path::new(FILE)) {
        Ok(c) => c,
        Err(e) => panic!("expected a valid config, got:\n{e}"),
    }
}

fn err(text: &str) -> ConfigError {
    match parse(&versioned(text), Path::new(FILE)) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(e) => e,
    }
}

fn password_file(content: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().expect("temp file");
    f.write_all(content.as_bytes()).expect("write temp file");
    f
}

fn reg(host: &str, repo: &str) -> Location {
    Location::Registry {
        host: host.into(),
        repo: repo.into(),
    }
}

#[test]
fn full_example_from_spec() {
    let token = password_file("s3cr3t-token\n");
    let text = format!(
        r#"
version = 1

[daemon]
state_dir = "/var/lib/regkeeper"
listen = "127.0.0.1:9469"
max_concurrent_transfers = 8
log_format = "json"

[defaults]
schedule = "@every 15m"
referrers = true

[registries."ghcr.io"]
username = "mirror-bot"
password_file = "{}"
max_concurrent = 4
requests_per_second = 20
chunk_size = "16MiB"

[registries."127.0.0.1:5000"]
plain_http = true
chunk_size = "0"

[[rule]]
name = "alpine"
source = "docker.io/library/alpine"
targets = ["registry.example.com/mirror/alpine", "oci:/srv/dr/alpine"]
schedule = "*/10 * * * *"
tags.include = ['^3\.\d+(\.\d+)?$', '^latest$']
tags.exclude = ['-rc']
tags.semver = ">=3.18"
tags.latest = 5
platforms = ["linux/amd64", "linux/arm/v7"]
referrers = false
immutable = true

[rule.retention]
match = ['^v?\d+\.\d+\.\d+$']
keep_last = 10
order_by = "created"
older_than = "90d"
protect = ['^latest$', '^stable$']
untagged_older_than = "7d"
delete_removed_at_source = true
max_deletions_per_run = 20
"#,
        token.path().display()
    );
    let c = ok(&text);
    assert_eq!(c.path, Path::new(FILE));
    assert_eq!(c.daemon.state_dir, Path::new("/var/lib/regkeeper"));
    assert_eq!(c.daemon.listen, Some("127.0.0.1:9469".parse().unwrap()));
    assert_eq!(c.daemon.max_concurrent_transfers, 8);
    assert_eq!(c.daemon.log_format, LogFormat::Json);

    let ghcr = &c.registries["ghcr.io"];
    assert_eq!(ghcr.username.as_deref(), Some("mirror-bot"));
    assert_eq!(
        ghcr.password.as_ref().map(|s| s.expose()),
        Some("s3cr3t-token"),
        "the trailing newline is not part of the password"
    );
    assert_eq!(ghcr.max_concurrent, 4);
    assert_eq!(ghcr.requests_per_second, Some(20.0));
    assert_eq!(ghcr.chunk_size, 16 * 1024 * 1024);
    assert!(!ghcr.plain_http);
    let local = &c.registries["127.0.0.1:5000"];
    assert!(local.plain_http);
    assert_eq!(local.chunk_size, 0);
    assert_eq!(local.max_concurrent, 8);
    assert!(local.password.is_none());
    assert!(!format!("{c:?}").contains("s3cr3t"));

    assert_eq!(c.rules.len(), 1);
    let r = c.rule("alpine").expect("rule alpine");
    assert!(c.rule("nope").is_none());
    let src = r.source.as_ref().unwrap();
    assert_eq!(src.location, reg("docker.io", "library/alpine"));
    assert!(!src.wildcard);
    assert_eq!(r.targets.len(), 2);
    assert_eq!(
        r.targets[0].location,
        reg("registry.example.com", "mirror/alpine")
    );
    assert_eq!(
        r.targets[1].location,
        Location::Layout {
            path: "/srv/dr/alpine".into()
        }
    );
    match &r.schedule {
        Schedule::Cron { schedule, text } => {
            assert_eq!(text, "*/10 * * * *");
            assert!(schedule.minutes().includes(20));
            assert!(!schedule.minutes().includes(5));
            assert_eq!(schedule.seconds().count(), 1);
        }
        other => panic!("unexpected schedule {other:?}"),
    }
    let inc: Vec<&str> = r.tags.include.iter().map(|r| r.as_str()).collect();
    assert_eq!(inc, [r"^3\.\d+(\.\d+)?$", "^latest$"]);
    assert_eq!(r.tags.exclude[0].as_str(), "-rc");
    assert!(
        r.tags
            .semver
            .as_ref()
            .unwrap()
            .matches(&"3.19.1".parse().unwrap())
    );
    assert_eq!(r.tags.latest, Some(5));
    assert_eq!(
        r.platforms,
        [
            crate::oci::Platform::parse("linux/amd64").unwrap(),
            crate::oci::Platform::parse("linux/arm/v7").unwrap()
        ]
    );
    assert!(!r.referrers);
    assert!(r.immutable);

    let ret = r.retention.as_ref().expect("retention");
    assert_eq!(ret.match_tags[0].as_str(), r"^v?\d+\.\d+\.\d+$");
    assert_eq!(ret.keep_last, Some(10));
    assert_eq!(ret.order_by, OrderBy::Created);
    assert_eq!(ret.older_than, Some(Duration::from_secs(90 * 86400)));
    assert_eq!(
        ret.untagged_older_than,
        Some(Duration::from_secs(7 * 86400))
    );
    assert_eq!(ret.protect.len(), 2);
    assert!(ret.delete_removed_at_source);
    assert_eq!(ret.max_deletions_per_run, 20);
}

#[test]
fn built_in_defaults() {
    let c = ok(r#"
[[rule]]
name = "a"
source = "ghcr.io/org/a"
targets = ["registry.example.com/a"]
"#);
    assert_eq!(c.daemon.state_dir, Path::new("/var/lib/regkeeper"));
    assert_eq!(c.daemon.listen, Some("127.0.0.1:9469".parse().unwrap()));
    assert_eq!(c.daemon.max_concurrent_transfers, 8);
    assert_eq!(c.daemon.log_format, LogFormat::Text);
    assert!(c.registries.is_empty());
    let r = &c.rules[0];
    assert!(matches!(r.schedule, Schedule::Every(d) if d == Duration::from_secs(900)));
    assert!(r.referrers);
    assert!(!r.immutable);
    assert!(r.platforms.is_empty());
    assert!(r.tags.include.is_empty() && r.tags.exclude.is_empty());
    assert!(r.tags.semver.is_none() && r.tags.latest.is_none());
    assert!(r.retention.is_none());
}

#[test]
fn defaults_are_merged_key_by_key() {
    let c = ok(r#"
[daemon]
listen = ""

[defaults]
schedule = "@hourly"
referrers = false
referrers_artifact_types = ["application/spdx+json"]
immutable = true
platforms = ["linux/amd64"]
tags.exclude = ['-rc']
tags.latest = 3

[[rule]]
name = "inherits"
source = "ghcr.io/org/a"
targets = ["registry.example.com/a"]

[[rule]]
name = "overrides"
source = "ghcr.io/org/b"
targets = ["registry.example.com/b"]
schedule = "@every 1h30m"
referrers = true
platforms = []
tags.exclude = ['-beta']
tags.include = ['^v']

[[rule]]
name = "cleanup_only"
targets = ["registry.example.com/c"]
[rule.retention]
match = ['.*']
keep_last = 0
delete_all_matched = true
"#);
    assert_eq!(c.daemon.listen, None);
    let a = c.rule("inherits").unwrap();
    assert!(matches!(&a.schedule, Schedule::Cron { text, .. } if text == "@hourly"));
    assert!(!a.referrers);
    assert_eq!(a.referrers_artifact_types, ["application/spdx+json"]);
    assert!(a.immutable);
    assert_eq!(a.platforms.len(), 1);
    assert_eq!(a.tags.exclude[0].as_str(), "-rc");
    assert_eq!(a.tags.latest, Some(3));
    assert!(a.tags.include.is_empty());

    let b = c.rule("overrides").unwrap();
    assert!(
        matches!(b.schedule, Schedule::Every(d) if d == Duration::from_secs(5400)),
        "{:?}",
        b.schedule
    );
    assert!(b.referrers);
    assert!(b.immutable, "not set in the rule: from [defaults]");
    assert!(b.platforms.is_empty(), "an explicit empty list overrides");
    assert_eq!(b.tags.exclude[0].as_str(), "-beta");
    assert_eq!(b.tags.include[0].as_str(), "^v");
    assert_eq!(b.tags.latest, Some(3));

    let cl = c.rule("cleanup_only").unwrap();
    assert!(cl.source.is_none());
    let ret = cl.retention.as_ref().unwrap();
    assert_eq!(ret.keep_last, Some(0));
    assert_eq!(ret.order_by, OrderBy::Semver);
    assert_eq!(ret.max_deletions_per_run, 50);
    assert!(!ret.delete_removed_at_source);
    assert_eq!(
        c.rules.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["inherits", "overrides", "cleanup_only"]
    );
}

fn schedule_of(s: &str) -> Schedule {
    let c = ok(&format!(
        "[[rule]]\nname = \"a\"\nsource = \"ghcr.io/o/a\"\ntargets = [\"ghcr.io/o/b\"]\nschedule = \"{s}\"\n"
    ));
    c.rules[0].schedule.clone()
}

fn cron_of(s: &str) -> cron::Schedule {
    match schedule_of(s) {
        Schedule::Cron { schedule, .. } => *schedule,
        other => panic!("{s}: {other:?}"),
    }
}

#[test]
fn schedules() {
    // Six and seven fields are passed through (seconds first).
    let six = cron_of("30 0 3 * * *");
    assert!(six.seconds().includes(30));
    let seven = cron_of("0 0 3 * * * 2030");
    assert!(seven.years().includes(2030) && !seven.years().includes(2029));
    for s in [
        "@hourly",
        "@daily",
        "@weekly",
        "@monthly",
        "@yearly",
        "@annually",
        "@midnight",
    ] {
        cron_of(s);
    }
    assert!(cron_of("@midnight").hours().includes(0));
    assert!(
        matches!(schedule_of("@every 10m"), Schedule::Every(d) if d == Duration::from_secs(600))
    );
    assert!(matches!(schedule_of("@every 1s"), Schedule::Every(d) if d == Duration::from_secs(1)));
}

#[test]
fn crontab_weekdays_count_sunday_as_zero() {
    // The cron crate numbers days 1 (Sunday) to 7; crontab 0 (or 7) to 6.
    let weekdays = cron_of("0 3 * * 1-5");
    let dow = weekdays.days_of_week();
    assert!(!dow.includes(1), "not Sunday");
    assert!((2..=6).all(|d| dow.includes(d)), "Monday to Friday");
    assert!(!dow.includes(7), "not Saturday");

    let sunday = cron_of("0 3 * * 0");
    assert_eq!(sunday.days_of_week().iter().collect::<Vec<_>>(), [1]);
    let sunday7 = cron_of("0 3 * * 7");
    assert_eq!(sunday7.days_of_week().iter().collect::<Vec<_>>(), [1]);
    let weekend = cron_of("0 3 * * 5-7");
    assert_eq!(weekend.days_of_week().iter().collect::<Vec<_>>(), [1, 6, 7]);
    let every_other = cron_of("0 3 * * */2");
    assert_eq!(
        every_other.days_of_week().iter().collect::<Vec<_>>(),
        [1, 3, 5, 7]
    );
    let named = cron_of("0 3 * * MON,1");
    assert_eq!(named.days_of_week().iter().collect::<Vec<_>>(), [2]);
}

#[test]
fn password_from_env_and_home_expansion() {
    // Tests may not set environment variables (unsafe in edition 2024, and
    // this crate forbids unsafe); PATH is always set.
    let c = ok(r#"
[registries."ghcr.io"]
username = "u"
password_env = "PATH"
"#);
    let path = std::env::var("PATH").unwrap();
    assert_eq!(
        c.registries["ghcr.io"].password.as_ref().unwrap().expose(),
        path
    );

    let e = err(r#"
[registries."ghcr.io"]
username = "u"
password_file = "~/regkeeper-test-no-such-file"
"#);
    let home = std::env::var("HOME").unwrap();
    let msg = &e.diagnostics[0].message;
    assert!(
        msg.contains(&format!("{home}/regkeeper-test-no-such-file")),
        "{msg}"
    );
}

#[test]
fn chunk_sizes() {
    for (written, bytes) in [
        ("\"16MiB\"", 16u64 << 20),
        ("\"512KiB\"", 512 << 10),
        ("\"1GB\"", 1_000_000_000),
        ("\"0\"", 0),
        ("\"2 MiB\"", 2 << 20),
        ("1048576", 1 << 20),
    ] {
        let c = ok(&format!("[registries.\"r.io\"]\nchunk_size = {written}\n"));
        assert_eq!(c.registries["r.io"].chunk_size, bytes, "{written}");
    }
}

/// Each case: a file with one mistake, where it must be reported, and part
/// of the message.
#[test]
fn each_mistake_is_located() {
    let rule = "[[rule]]\nname = \"r\"\nsource = \"ghcr.io/o/a\"\ntargets = [\"ghcr.io/o/b\"]\n";
    let cases: Vec<(&str, String, usize, usize, &str)> = vec![
        (
            "unknown top-level key",
            "version = 1\nrules = 3\n".into(),
            2,
            1,
            "unknown key `rules` at the top level; did you mean `rule`?",
        ),
        (
            "unknown key in a rule",
            format!("{rule}shedule = \"@hourly\"\n"),
            5,
            1,
            "unknown key `shedule` in [[rule]]; did you mean `schedule`?",
        ),
        (
            "unknown key in tags",
            format!("{rule}tags.exlude = ['x']\n"),
            5,
            6,
            "did you mean `tags.exclude`?",
        ),
        (
            "unknown key in retention",
            format!("{rule}[rule.retention]\nmatch = ['.*']\nkeep_last = 3\nkeep_first = 1\n"),
            8,
            1,
            "unknown key `retention.keep_first`",
        ),
        (
            "rule-only key in defaults",
            "[defaults]\nsource = \"ghcr.io/x/y\"\n".into(),
            2,
            1,
            "`source` belongs to each [[rule]]",
        ),
        (
            "wrong type",
            format!("{rule}referrers = \"yes\"\n"),
            5,
            13,
            "`referrers` in [[rule]]: invalid type: string \"yes\", expected a boolean",
        ),
        (
            "bad regex",
            format!("{rule}tags.include = ['^ok$', '^(v\\d+']\n"),
            5,
            25,
            "tags.include: invalid regular expression \"^(v\\\\d+\": unclosed group",
        ),
        (
            "bad retention regex",
            format!("{rule}[rule.retention]\nmatch = ['[z-a]']\nkeep_last = 1\n"),
            6,
            10,
            "retention.match: invalid regular expression",
        ),
        (
            "bad cron",
            format!("{rule}schedule = \"61 * * * *\"\n"),
            5,
            12,
            "invalid cron expression \"61 * * * *\": the minute field \"61\" is not valid (0-59)",
        ),
        (
            "bad six-field cron",
            format!("{rule}schedule = \"0 0 25 * * *\"\n"),
            5,
            12,
            "the hour field \"25\" is not valid (0-23)",
        ),
        (
            "cron with a wrong field count",
            format!("{rule}schedule = \"* * * *\"\n"),
            5,
            12,
            "has 4 fields",
        ),
        (
            "bad weekday",
            format!("{rule}schedule = \"0 0 * * 8\"\n"),
            5,
            12,
            "invalid day of week \"8\"",
        ),
        (
            "bad shorthand",
            format!("{rule}schedule = \"@fortnightly\"\n"),
            5,
            12,
            "unknown schedule shorthand \"@fortnightly\"",
        ),
        (
            "bad @every",
            format!("{rule}schedule = \"@every 10 minuts\"\n"),
            5,
            12,
            "invalid duration \"10 minuts\"",
        ),
        (
            "@every below a second",
            "[defaults]\nschedule = \"@every 500ms\"\n".into(),
            2,
            12,
            "shorter than one second",
        ),
        (
            "duplicate rule name",
            format!("{rule}\n{rule}"),
            7,
            8,
            "duplicate rule name \"r\": line 3 already uses it",
        ),
        (
            "bad rule name",
            "[[rule]]\nname = \"Alpine\"\nsource = \"ghcr.io/o/a\"\ntargets = [\"ghcr.io/o/b\"]\n".into(),
            2,
            8,
            "rule name \"Alpine\" is not valid",
        ),
        (
            "rule without a name",
            "version = 1\n[[rule]]\nsource = \"ghcr.io/o/a\"\ntargets = [\"ghcr.io/o/b\"]\n".into(),
            2,
            1,
            "this [[rule]] has no name",
        ),
        (
            "missing password file",
            "[registries.\"ghcr.io\"]\nusername = \"u\"\npassword_file = \"/nonexistent/regkeeper/token\"\n".into(),
            3,
            17,
            "cannot read password_file /nonexistent/regkeeper/token: No such file",
        ),
        (
            "password_env unset",
            "[registries.\"ghcr.io\"]\nusername = \"u\"\npassword_env = \"REGKEEPER_TEST_SURELY_UNSET_VARIABLE\"\n".into(),
            3,
            16,
            "environment variable REGKEEPER_TEST_SURELY_UNSET_VARIABLE is not set",
        ),
        (
            "password without username",
            "[registries.\"ghcr.io\"]\npassword_env = \"PATH\"\n".into(),
            2,
            16,
            "has a password but no username",
        ),
        (
            "missing ca_file",
            "[registries.\"ghcr.io\"]\nca_file = \"/nonexistent/ca.pem\"\n".into(),
            2,
            11,
            "cannot read ca_file /nonexistent/ca.pem",
        ),
        (
            "registry key is a URL",
            "[registries.\"https://ghcr.io\"]\n".into(),
            1,
            13,
            "is a URL, not a host",
        ),
        (
            "bad chunk_size",
            "[registries.\"ghcr.io\"]\nchunk_size = \"16 megs\"\n".into(),
            2,
            14,
            "chunk_size = \"16 megs\" is not a size",
        ),
        (
            "negative chunk_size",
            "[registries.\"ghcr.io\"]\nchunk_size = -1\n".into(),
            2,
            14,
            "is negative",
        ),
        (
            "max_concurrent below 1",
            "[registries.\"ghcr.io\"]\nmax_concurrent = 0\n".into(),
            2,
            18,
            "max_concurrent = 0 is too small; it must be at least 1",
        ),
        (
            "requests_per_second not positive",
            "[registries.\"ghcr.io\"]\nrequests_per_second = -2.5\n".into(),
            2,
            23,
            "must be a number above 0",
        ),
        (
            "bad listen address",
            "[daemon]\nlisten = \"localhost:9469\"\n".into(),
            2,
            10,
            "listen = \"localhost:9469\" is not an IP address and port",
        ),
        (
            "bad log format",
            "[daemon]\nlog_format = \"yaml\"\n".into(),
            2,
            14,
            "use \"text\" or \"json\"",
        ),
        (
            "unsupported version",
            "version = 2\n".into(),
            1,
            11,
            "unsupported configuration version 2",
        ),
        (
            "bad source reference",
            "[[rule]]\nname = \"r\"\nsource = \"ghcr.io/Org/A\"\ntargets = [\"ghcr.io/o/b\"]\n".into(),
            3,
            10,
            "source: invalid reference \"ghcr.io/Org/A\"",
        ),
        (
            "source with a tag",
            "[[rule]]\nname = \"r\"\nsource = \"ghcr.io/o/a:1.0\"\ntargets = [\"ghcr.io/o/b\"]\n".into(),
            3,
            10,
            "not tags or digests",
        ),
        (
            "wildcard source, plain target",
            "[[rule]]\nname = \"r\"\nsource = \"ghcr.io/o/*\"\ntargets = [\"ghcr.io/p/*\", \"ghcr.io/p/q\"]\n".into(),
            4,
            27,
            "must end in /* because the source ghcr.io/o/* does",
        ),
        (
            "plain source, wildcard target",
            "[[rule]]\nname = \"r\"\nsource = \"ghcr.io/o/a\"\ntargets = [\"ghcr.io/p/*\"]\n".into(),
            4,
            12,
            "ends in /* but the source ghcr.io/o/a is one repository",
        ),
        (
            "rule with no targets",
            "[[rule]]\nname = \"r\"\nsource = \"ghcr.io/o/a\"\n".into(),
            1,
            1,
            "rule \"r\" has no targets",
        ),
        (
            "rule with an empty target list",
            "[[rule]]\nname = \"r\"\nsource = \"ghcr.io/o/a\"\ntargets = []\n".into(),
            4,
            11,
            "empty targets list",
        ),
        (
            "bad semver requirement",
            format!("{rule}tags.semver = \"> = banana\"\n"),
            5,
            15,
            "tags.semver = \"> = banana\" is not a version requirement",
        ),
        (
            "tags.latest zero",
            format!("{rule}tags.latest = 0\n"),
            5,
            15,
            "tags.latest = 0 is too small",
        ),
        (
            "bad platform",
            format!("{rule}platforms = [\"linux/amd64\", \"amd64\"]\n"),
            5,
            29,
            "platform \"amd64\" is not os/arch[/variant]",
        ),
        (
            "neither source nor retention",
            "[[rule]]\nname = \"r\"\ntargets = [\"ghcr.io/o/b\"]\n".into(),
            1,
            1,
            "rule \"r\" has neither source nor retention: nothing to do",
        ),
        (
            "retention that deletes nothing",
            format!("{rule}[rule.retention]\nmatch = ['.*']\nprotect = ['^latest$']\n"),
            5,
            1,
            "deletes nothing",
        ),
        (
            "retention without match",
            format!("{rule}[rule.retention]\nkeep_last = 3\n"),
            5,
            1,
            "has no `match`",
        ),
        (
            "bad retention duration",
            format!("{rule}[rule.retention]\nmatch = ['.*']\nolder_than = \"3 fortnights\"\n"),
            7,
            14,
            "older_than = \"3 fortnights\" is not a duration",
        ),
        (
            "bad order_by",
            format!("{rule}[rule.retention]\nmatch = ['.*']\nkeep_last = 3\norder_by = \"date\"\n"),
            8,
            12,
            "use \"semver\", \"created\" or \"first_seen\"",
        ),
        (
            "delete_removed_at_source on a cleanup-only rule",
            "[[rule]]\nname = \"r\"\ntargets = [\"ghcr.io/o/b\"]\n[rule.retention]\nmatch = ['.*']\ndelete_removed_at_source = true\n".into(),
            6,
            28,
            "delete_removed_at_source needs a source",
        ),
        (
            "single brackets for a rule",
            "[rule]\nname = \"r\"\n".into(),
            1,
            1,
            "write each rule under [[rule]]",
        ),
        (
            "TOML syntax error",
            "[daemon]\nlog_format = json\n".into(),
            2,
            14,
            "TOML syntax error: string values must be quoted",
        ),
    ];
    let mut failures = Vec::new();
    for (what, text, line, column, needle) in &cases {
        let full = versioned(text);
        let line = &(line + usize::from(full.len() != text.len()));
        let e = match parse(&full, Path::new(FILE)) {
            Ok(_) => {
                failures.push(format!("{what}: accepted"));
                continue;
            }
            Err(e) => e,
        };
        let d = &e.diagnostics;
        let good = d.len() == 1
            && d[0].line == *line
            && d[0].column == *column
            && d[0].message.contains(needle)
            && !d[0].message.contains('\n')
            && d[0].file == Path::new(FILE);
        if !good {
            failures.push(format!(
                "{what}: want one error at {line}:{column} containing {needle:?}, got:\n{e}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn every_error_is_reported() {
    let text = r#"
version = 1
colour = "blue"

[daemon]
listen = "nowhere"
max_concurrent_transfers = 0
log_fromat = "json"
log_format = "xml"

[registries."ghcr.io"]
password_file = "/nonexistent/token"
chunk_size = "lots"

[[rule]]
name = "a"
source = "ghcr.io/o/a"
targets = ["ghcr.io/o/b"]
schedule = "not a schedule"
tags.include = ['(']
colour = 1
tags.exlude = ['x']

[[rule]]
name = "a"
source = "ghcr.io/o/*"
targets = ["ghcr.io/p/q"]
"#;
    let e = err(text);
    let got: Vec<(usize, usize)> = e.diagnostics.iter().map(|d| (d.line, d.column)).collect();
    assert_eq!(
        got,
        [
            (3, 1),   // colour
            (6, 10),  // listen
            (7, 28),  // max_concurrent_transfers
            (8, 1),   // log_fromat
            (9, 14),  // log_format value
            (12, 17), // password_file unreadable
            (12, 17), // ... and no username
            (13, 14), // chunk_size
            (19, 12), // schedule
            (20, 17), // regex
            (21, 1),  // colour in the rule
            (22, 6),  // tags.exlude
            (25, 8),  // duplicate name
            (27, 12), // wildcard mismatch
        ],
        "{e}"
    );
    // Display: one line per diagnostic, FILE:LINE:COLUMN: message.
    let shown = e.to_string();
    assert_eq!(shown.lines().count(), got.len());
    assert!(
        shown.starts_with("test.toml:3:1: unknown key `colour`"),
        "{shown}"
    );
}

#[test]
fn secrets_stay_out_of_errors() {
    let token = password_file("hunter2\n");
    let text = format!(
        "[registries.\"ghcr.io\"]\npassword_file = \"{}\"\n[registries.\"quay.io\"]\nusername = \"u\"\npassword_file = \"{}\"\npassword_env = \"PATH\"\n",
        token.path().display(),
        token.path().display()
    );
    let e = err(&text);
    assert_eq!(e.diagnostics.len(), 2, "{e}");
    let shown = format!("{e} {e:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    let path = std::env::var("PATH").unwrap();
    assert!(!shown.contains(&path), "{shown}");
}

#[test]
fn empty_password_file_is_an_error() {
    let token = password_file("\n");
    let e = err(&format!(
        "[registries.\"ghcr.io\"]\nusername = \"u\"\npassword_file = \"{}\"\n",
        token.path().display()
    ));
    assert!(e.diagnostics[0].message.contains("is empty"), "{e}");
}

#[test]
fn unreadable_config_file() {
    let e = load(Path::new("/nonexistent/regkeeper.toml")).unwrap_err();
    let shown = e.to_string();
    assert!(
        shown.starts_with("/nonexistent/regkeeper.toml: cannot read the configuration file:"),
        "{shown}"
    );
    assert_eq!(e.diagnostics[0].line, 0);
}

#[test]
fn load_reads_the_file() {
    let f = password_file(
        "version = 1\n[[rule]]\nname = \"a\"\nsource = \"ghcr.io/o/a\"\ntargets = [\"ghcr.io/o/b\"]\n",
    );
    let c = load(f.path()).unwrap();
    assert_eq!(c.path, f.path());
    assert_eq!(c.rules[0].name, "a");
}

#[test]
fn default_path_without_override() {
    let want = match std::env::var_os("REGKEEPER_CONFIG") {
        Some(p) if !p.is_empty() => std::path::PathBuf::from(p),
        _ => "/etc/regkeeper/config.toml".into(),
    };
    assert_eq!(default_path(), want);
}

#[test]
fn columns_count_characters() {
    assert_eq!(super::error::line_column("ab\ncd", 4), (2, 2));
    assert_eq!(super::error::line_column("é = 1", 3), (1, 3));
    assert_eq!(super::error::line_column("", 0), (1, 1));
}

#[test]
fn misspelt_keys_are_not_also_reported_missing() {
    // `nme` and `keep_lats` are reported once, as misspelt; the rule is not
    // also said to have no name, or a retention that deletes nothing.
    let e = err(r#"
[[rule]]
nme = "a"
source = "ghcr.io/o/a"
targets = ["ghcr.io/o/b"]
[rule.retention]
match = ['.*']
keep_lats = 3
"#);
    let got: Vec<(usize, usize)> = e.diagnostics.iter().map(|d| (d.line, d.column)).collect();
    assert_eq!(got, [(4, 1), (9, 1)], "{e}");
    assert!(
        e.diagnostics[1]
            .message
            .contains("did you mean `retention.keep_last`?"),
        "{e}"
    );

    // An unrelated unknown key does not hide a missing one.
    let e = err("[[rule]]\nname = \"a\"\nsource = \"ghcr.io/o/a\"\ncolour = 1\n");
    let got: Vec<(usize, usize)> = e.diagnostics.iter().map(|d| (d.line, d.column)).collect();
    assert_eq!(got, [(2, 1), (5, 1)], "{e}");
    assert!(e.diagnostics[0].message.contains("has no targets"), "{e}");

    // A key of the wrong type is reported as such, not as missing.
    let e = err("[[rule]]\nname = \"a\"\nsource = \"ghcr.io/o/a\"\ntargets = \"ghcr.io/o/b\"\n");
    assert_eq!(e.diagnostics.len(), 1, "{e}");
    assert!(
        e.diagnostics[0]
            .message
            .contains("`targets` in [[rule]]: invalid type"),
        "{e}"
    );
}
