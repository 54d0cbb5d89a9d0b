//! Numbers as people read them in text output: sizes (`1.2 MiB`), ages
//! (`3 minutes ago`) and counts with their noun (`1 repository`). JSON
//! keeps the raw numbers.

/// Bytes in IEC units: `512 B`, `1.2 MiB`.
pub fn size(bytes: u64) -> String {
    bytesize::ByteSize(bytes).display().iec().to_string()
}

/// `n` and the noun, singular for exactly 1: `1 tag`, `2 tags`.
pub fn count(n: impl Into<u64>, one: &str, many: &str) -> String {
    let n = n.into();
    format!("{n} {}", if n == 1 { one } else { many })
}

/// A duration in its largest whole unit: `45 seconds`, `3 minutes`,
/// `2 hours`, `1 day` (rounded down: an age is never overstated).
pub fn duration(seconds: u64) -> String {
    const UNITS: [(u64, &str, &str); 4] = [
        (86_400, "day", "days"),
        (3_600, "hour", "hours"),
        (60, "minute", "minutes"),
        (1, "second", "seconds"),
    ];
    for (unit, one, many) in UNITS {
        if seconds >= unit || unit == 1 {
            return count(seconds / unit, one, many);
        }
    }
    unreachable!("the last unit takes any value")
}

/// How long ago `t` was at `now` (Unix seconds): `3 minutes ago`; a time
/// in the future (clock skew) is `just now`.
pub fn ago(t: i64, now: i64) -> String {
    match now - t {
        d if d <= 0 => "just now".to_string(),
        d => format!("{} ago", duration(d as u64)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_ages_and_counts_read_as_words() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1_258_291), "1.2 MiB");
        assert_eq!(count(1u64, "repository", "repositories"), "1 repository");
        assert_eq!(count(0u64, "repository", "repositories"), "0 repositories");
        assert_eq!(duration(0), "0 seconds");
        assert_eq!(duration(1), "1 second");
        assert_eq!(duration(59), "59 seconds");
        assert_eq!(duration(3 * 60 + 12), "3 minutes");
        assert_eq!(duration(7_200), "2 hours");
        assert_eq!(duration(86_400 + 5), "1 day");
        assert_eq!(ago(100, 280), "3 minutes ago");
        assert_eq!(ago(300, 280), "just now");
    }
}
