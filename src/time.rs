//! Time as the agent handles it: i64 nanoseconds since the Unix epoch (what Docker's
//! `timeNano` carries), plus the parsing and formatting users see.

use chrono::{DateTime, SecondsFormat, Utc};

pub const NANOS_PER_SEC: i64 = 1_000_000_000;

/// The wall clock in Unix nanoseconds. Event times come from the runtime on the same host, so
/// uptime is measured against this clock.
pub fn now_nanos() -> i64 {
    Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX)
}

/// RFC 3339 with nanoseconds, UTC (`2026-11-26T04:12:41.363715159Z`).
pub fn format_rfc3339(nanos: i64) -> String {
    DateTime::<Utc>::from_timestamp_nanos(nanos).to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// Parses RFC 3339; the runtimes' zero time (`0001-01-01T00:00:00Z`) means "never" and is `None`.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let t = DateTime::parse_from_rfc3339(s.trim()).ok()?;
    if t.timestamp() <= 0 {
        return None;
    }
    t.timestamp_nanos_opt()
}

/// Docker's `since`/`until` format: `SECONDS.NANOS` with 9 digits, which the daemon reads exactly.
pub fn format_docker_since(nanos: i64) -> String {
    format!(
        "{}.{:09}",
        nanos.div_euclid(NANOS_PER_SEC),
        nanos.rem_euclid(NANOS_PER_SEC)
    )
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error("empty duration")]
    Empty,
    #[error("{0:?} is not a duration like 90s, 15m, 1h30m or 7d")]
    BadDuration(String),
    #[error("{0:?} is neither an RFC 3339 time nor a duration like 15m, 1h30m or 7d")]
    BadTime(String),
    #[error("duration {0:?} is too long")]
    Overflow(String),
    #[error("{0:?} is out of range (times from 1677-09-21 to 2262-04-11 can be given)")]
    OutOfRange(String),
}

/// Parses durations such as `90s`, `15m`, `1h30m`, `7d`, `500ms` into nanoseconds.
pub fn parse_duration(s: &str) -> Result<i64, TimeError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(TimeError::Empty);
    }
    let bad = || TimeError::BadDuration(s.to_string());
    let mut total: i64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad());
        }
        let value: i64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => 1_000_000,
            "s" => NANOS_PER_SEC,
            "m" => 60 * NANOS_PER_SEC,
            "h" => 3600 * NANOS_PER_SEC,
            "d" => 86_400 * NANOS_PER_SEC,
            "w" => 7 * 86_400 * NANOS_PER_SEC,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        let part = value
            .checked_mul(unit)
            .ok_or_else(|| TimeError::Overflow(s.to_string()))?;
        total = total
            .checked_add(part)
            .ok_or_else(|| TimeError::Overflow(s.to_string()))?;
    }
    Ok(total)
}

/// A point in time given as RFC 3339 or as a duration meaning "that long ago".
pub fn parse_time_or_ago(s: &str, now: i64) -> Result<i64, TimeError> {
    if let Ok(ago) = parse_duration(s) {
        return Ok(now.saturating_sub(ago));
    }
    let t =
        DateTime::parse_from_rfc3339(s.trim()).map_err(|_| TimeError::BadTime(s.to_string()))?;
    // Nanoseconds since 1970 in an i64 reach from 1677 to 2262.
    t.timestamp_nanos_opt()
        .ok_or_else(|| TimeError::OutOfRange(s.to_string()))
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90s"), Ok(90 * NANOS_PER_SEC));
        assert_eq!(parse_duration("1h30m"), Ok(5400 * NANOS_PER_SEC));
        assert_eq!(parse_duration("7d"), Ok(7 * 86_400 * NANOS_PER_SEC));
        assert_eq!(parse_duration("250ms"), Ok(250_000_000));
        for bad in ["", "h", "10", "1x", "-5m", "1.5h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should not parse");
        }
        assert!(matches!(
            parse_duration("9999999999d"),
            Err(TimeError::Overflow(_))
        ));
    }

    #[test]
    fn times_parse_as_rfc3339_or_ago() {
        let now = 1_000 * NANOS_PER_SEC;
        assert_eq!(parse_time_or_ago("15m", now), Ok(100 * NANOS_PER_SEC));
        assert_eq!(
            parse_time_or_ago("1970-01-01T00:00:01.5Z", now),
            Ok(1_500_000_000)
        );
        assert!(parse_time_or_ago("yesterday", now).is_err());
        assert!(matches!(
            parse_time_or_ago("9999-12-31T23:59:59Z", now),
            Err(TimeError::OutOfRange(_))
        ));
        assert!(matches!(
            parse_time_or_ago("1000-01-01T00:00:00Z", now),
            Err(TimeError::OutOfRange(_))
        ));
    }

    #[test]
    fn formats_round_trip() {
        let t = 1_795_666_363_543_000_325;
        assert_eq!(parse_rfc3339(&format_rfc3339(t)), Some(t));
        assert_eq!(format_docker_since(t), "1795666363.543000325");
        assert_eq!(parse_rfc3339("0001-01-01T00:00:00Z"), None);
    }
}
