//! A rule's `schedule`: cron (5, 6 or 7 fields), `@hourly`-style shorthand, or
//! `@every <duration>`.

use std::str::FromStr;
use std::time::Duration;

use super::Schedule;

/// The shorthands accepted, and what the `cron` crate calls them (it knows
/// neither `@annually` nor `@midnight`).
const SHORTHANDS: &[(&str, &str)] = &[
    ("@yearly", "@yearly"),
    ("@annually", "@yearly"),
    ("@monthly", "@monthly"),
    ("@weekly", "@weekly"),
    ("@daily", "@daily"),
    ("@midnight", "@daily"),
    ("@hourly", "@hourly"),
];

/// Parses a schedule; the error is a complete sentence for a diagnostic.
pub(crate) fn parse_schedule(text: &str) -> Result<Schedule, String> {
    let trimmed = text.trim();
    if let Some(rest) = trimmed.strip_prefix("@every") {
        let rest = rest.trim();
        if rest.is_empty() {
            return Err(
                "`@every` needs a duration, e.g. \"@every 10m\" or \"@every 1h30m\"".into(),
            );
        }
        let d = humantime::parse_duration(rest).map_err(|e| {
            format!("invalid duration {rest:?} in {trimmed:?}: {e}; write e.g. \"@every 10m\" or \"@every 1h30m\"")
        })?;
        if d < Duration::from_secs(1) {
            return Err(format!(
                "{trimmed:?} is shorter than one second; use at least \"@every 1s\""
            ));
        }
        return Ok(Schedule::Every(d));
    }
    if trimmed.starts_with('@') {
        let Some((_, canonical)) = SHORTHANDS.iter().find(|(name, _)| *name == trimmed) else {
            let names: Vec<&str> = SHORTHANDS.iter().map(|(n, _)| *n).collect();
            return Err(format!(
                "unknown schedule shorthand {trimmed:?}; use one of {}, or \"@every <duration>\"",
                names.join(", ")
            ));
        };
        let schedule = cron::Schedule::from_str(canonical)
            .map_err(|e| format!("internal error parsing {canonical:?}: {e}"))?;
        return Ok(Schedule::Cron {
            schedule: Box::new(schedule),
            text: text.to_string(),
        });
    }

    let fields: Vec<&str> = trimmed.split_whitespace().collect();
    let expr = match fields.len() {
        5 => {
            // Crontab style: add a seconds field, and translate the weekday
            // field, which counts Sunday as 0 (or 7) in crontab but as 1 in
            // the `cron` crate; without this, "1-5" would mean Sunday to Thursday.
            let dow = crontab_weekdays(fields[4])?;
            format!(
                "0 {} {} {} {} {dow}",
                fields[0], fields[1], fields[2], fields[3]
            )
        }
        6 | 7 => fields.join(" "),
        n => {
            return Err(format!(
                "{trimmed:?} has {n} fields; a cron expression has 5 (minute hour day-of-month month day-of-week), \
                 6 (seconds first) or 7 (seconds first, year last); or use @hourly, @daily or \"@every 15m\""
            ));
        }
    };
    let schedule = cron::Schedule::from_str(&expr).map_err(|_| cron_error(trimmed, &expr))?;
    Ok(Schedule::Cron {
        schedule: Box::new(schedule),
        text: text.to_string(),
    })
}

/// Names the field of a cron expression that is wrong: the `cron` crate's
/// own error only repeats the expression. Each field is tried alone, with
/// `*` in every other field.
fn cron_error(written: &str, expr: &str) -> String {
    const FIELDS: [(&str, &str); 7] = [
        ("second", "0-59"),
        ("minute", "0-59"),
        ("hour", "0-23"),
        ("day-of-month", "1-31"),
        ("month", "1-12 or JAN-DEC"),
        (
            "day-of-week",
            "SUN-SAT; 0-7 in 5-field form, 1-7 from Sunday with seconds",
        ),
        ("year", "e.g. 2030 or 2030-2035"),
    ];
    let user: Vec<&str> = written.split_whitespace().collect();
    let norm: Vec<&str> = expr.split_whitespace().collect();
    // A 5-field expression was given a seconds field in front.
    let offset = norm.len() - user.len();
    for (i, field) in norm.iter().enumerate() {
        let mut probe = vec!["*"; norm.len()];
        probe[i] = field;
        if cron::Schedule::from_str(&probe.join(" ")).is_err() {
            let (name, range) = FIELDS[i];
            let shown = i.checked_sub(offset).map_or(*field, |j| user[j]);
            return format!(
                "invalid cron expression {written:?}: the {name} field {shown:?} is not valid ({range})"
            );
        }
    }
    format!("invalid cron expression {written:?}")
}

const DAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// Rewrites a crontab day-of-week field (0-7, Sunday = 0 or 7) into day names,
/// which the `cron` crate reads the same way crontab does. Items already
/// written with names, `*` and `?` are left alone.
fn crontab_weekdays(field: &str) -> Result<String, String> {
    if field == "*" || field == "?" {
        return Ok(field.to_string());
    }
    let mut named = Vec::new();
    let mut days = std::collections::BTreeSet::new();
    for item in field.split(',') {
        if item.chars().any(|c| c.is_ascii_alphabetic()) {
            named.push(item.to_string());
            continue;
        }
        let (base, step) = match item.split_once('/') {
            Some((b, s)) => {
                let step: u32 =
                    s.parse().ok().filter(|&s| s >= 1).ok_or_else(|| {
                        format!("invalid step {s:?} in day-of-week field {field:?}")
                    })?;
                (b, Some(step))
            }
            None => (item, None),
        };
        let day = |s: &str| -> Result<u32, String> {
            s.parse::<u32>().ok().filter(|&d| d <= 7).ok_or_else(|| {
                format!("invalid day of week {s:?} in {field:?}; use 0-7 (0 and 7 are Sunday) or SUN-SAT")
            })
        };
        let (from, to) = match base {
            "*" => (0, 6),
            _ => match base.split_once('-') {
                Some((a, b)) => (day(a)?, day(b)?),
                // "2/3" means from Tuesday to the end of the week, every third day.
                None if step.is_some() => (day(base)?, 6),
                None => (day(base)?, day(base)?),
            },
        };
        if from > to {
            return Err(format!(
                "day-of-week range {base:?} in {field:?} runs backwards; write it as two items, e.g. \"5-6,0\""
            ));
        }
        let mut d = from;
        while d <= to {
            days.insert(d % 7);
            d += step.unwrap_or(1);
        }
    }
    let mut out: Vec<String> = days
        .into_iter()
        .map(|d| DAY_NAMES[d as usize].to_string())
        .collect();
    out.extend(named);
    Ok(out.join(","))
}
