//! Time as the agent handles it: [`UnixNanos`], a point in time as i64 nanoseconds since the
//! Unix epoch (what Docker's `timeNano` carries), and [`Nanos`], a signed span of
//! nanoseconds; plus the parsing and formatting users see (`docs/design.md`, "Time").
//!
//! Both are `#[serde(transparent)]` newtypes over `i64`: the store (postcard) and the JSON
//! API write exactly the integer they wrote before the types existed. The span is our own
//! `i64` rather than `std::time::Duration` because the rules subtract runtime times that can
//! be out of order (a session "ending" before it started, a zero or far-future time), and a
//! signed integer keeps those cases and the hot paths' arithmetic what they were: one
//! machine instruction, no conversion, no panic on a negative result.

use std::ops::{Add, AddAssign, Sub};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

pub const NANOS_PER_SEC: i64 = 1_000_000_000;

/// A point in time: nanoseconds since the Unix epoch (1677-09-21 to 2262-04-11). Arithmetic
/// on it behaves as it did on the bare `i64`: `-` and `+` as the integer's, `saturating_*`
/// where a value comes from outside.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct UnixNanos(i64);

/// A signed span of nanoseconds: an uptime, a window, a retention, an overlap.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Nanos(i64);

impl UnixNanos {
    pub const MIN: UnixNanos = UnixNanos(i64::MIN);
    pub const MAX: UnixNanos = UnixNanos(i64::MAX);

    pub const fn from_nanos(nanos: i64) -> UnixNanos {
        UnixNanos(nanos)
    }

    /// Whole seconds since the epoch; saturates outside the representable range.
    pub const fn from_secs(secs: i64) -> UnixNanos {
        UnixNanos(secs.saturating_mul(NANOS_PER_SEC))
    }

    pub const fn as_nanos(self) -> i64 {
        self.0
    }

    /// Seconds since the epoch, as Prometheus wants a timestamp.
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / NANOS_PER_SEC as f64
    }

    /// The wall clock. Event times come from the runtime on the same host, so uptime is
    /// measured against this clock.
    pub fn now() -> UnixNanos {
        UnixNanos(Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX))
    }

    /// RFC 3339 with nanoseconds, UTC (`2026-11-26T04:12:41.363715159Z`).
    pub fn to_rfc3339(self) -> String {
        DateTime::<Utc>::from_timestamp_nanos(self.0).to_rfc3339_opts(SecondsFormat::Nanos, true)
    }

    /// Parses RFC 3339; the runtimes' zero time (`0001-01-01T00:00:00Z`), and any time not
    /// after the epoch, means "never" and is `None`.
    pub fn parse_rfc3339(s: &str) -> Option<UnixNanos> {
        let t = DateTime::parse_from_rfc3339(s.trim()).ok()?;
        if t.timestamp() <= 0 {
            return None;
        }
        t.timestamp_nanos_opt().map(UnixNanos)
    }

    /// Docker's `since`/`until` format: `SECONDS.NANOS` with 9 digits, which the daemon reads
    /// exactly.
    pub fn to_docker_since(self) -> String {
        format!(
            "{}.{:09}",
            self.0.div_euclid(NANOS_PER_SEC),
            self.0.rem_euclid(NANOS_PER_SEC)
        )
    }

    pub const fn saturating_add(self, span: Nanos) -> UnixNanos {
        UnixNanos(self.0.saturating_add(span.0))
    }

    pub const fn saturating_sub(self, span: Nanos) -> UnixNanos {
        UnixNanos(self.0.saturating_sub(span.0))
    }
}

/// The span from `rhs` to `self`, with the integer's `-` (negative when `rhs` is later).
impl Sub for UnixNanos {
    type Output = Nanos;
    fn sub(self, rhs: UnixNanos) -> Nanos {
        Nanos(self.0 - rhs.0)
    }
}

impl Sub<Nanos> for UnixNanos {
    type Output = UnixNanos;
    fn sub(self, rhs: Nanos) -> UnixNanos {
        UnixNanos(self.0 - rhs.0)
    }
}

impl Add<Nanos> for UnixNanos {
    type Output = UnixNanos;
    fn add(self, rhs: Nanos) -> UnixNanos {
        UnixNanos(self.0 + rhs.0)
    }
}

impl AddAssign<Nanos> for UnixNanos {
    fn add_assign(&mut self, rhs: Nanos) {
        self.0 += rhs.0;
    }
}

impl Nanos {
    pub const ZERO: Nanos = Nanos(0);

    pub const fn from_nanos(nanos: i64) -> Nanos {
        Nanos(nanos)
    }

    pub const fn from_millis(millis: i64) -> Nanos {
        Nanos(millis * 1_000_000)
    }

    pub const fn from_secs(secs: i64) -> Nanos {
        Nanos(secs * NANOS_PER_SEC)
    }

    pub const fn as_nanos(self) -> i64 {
        self.0
    }

    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / NANOS_PER_SEC as f64
    }

    pub const fn checked_mul(self, n: i64) -> Option<Nanos> {
        match self.0.checked_mul(n) {
            Some(v) => Some(Nanos(v)),
            None => None,
        }
    }

    pub const fn checked_add(self, rhs: Nanos) -> Option<Nanos> {
        match self.0.checked_add(rhs.0) {
            Some(v) => Some(Nanos(v)),
            None => None,
        }
    }
}

impl Add for Nanos {
    type Output = Nanos;
    fn add(self, rhs: Nanos) -> Nanos {
        Nanos(self.0 + rhs.0)
    }
}

impl AddAssign for Nanos {
    fn add_assign(&mut self, rhs: Nanos) {
        self.0 += rhs.0;
    }
}

impl Sub for Nanos {
    type Output = Nanos;
    fn sub(self, rhs: Nanos) -> Nanos {
        Nanos(self.0 - rhs.0)
    }
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

/// Parses durations such as `90s`, `15m`, `1h30m`, `7d`, `500ms`.
pub fn parse_duration(s: &str) -> Result<Nanos, TimeError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(TimeError::Empty);
    }
    let bad = || TimeError::BadDuration(s.to_string());
    let mut total = Nanos::ZERO;
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
            "ms" => Nanos::from_millis(1),
            "s" => Nanos::from_secs(1),
            "m" => Nanos::from_secs(60),
            "h" => Nanos::from_secs(3600),
            "d" => Nanos::from_secs(86_400),
            "w" => Nanos::from_secs(7 * 86_400),
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        let part = unit
            .checked_mul(value)
            .ok_or_else(|| TimeError::Overflow(s.to_string()))?;
        total = total
            .checked_add(part)
            .ok_or_else(|| TimeError::Overflow(s.to_string()))?;
    }
    Ok(total)
}

/// A point in time given as RFC 3339 or as a duration meaning "that long ago".
pub fn parse_time_or_ago(s: &str, now: UnixNanos) -> Result<UnixNanos, TimeError> {
    if let Ok(ago) = parse_duration(s) {
        return Ok(now.saturating_sub(ago));
    }
    let t =
        DateTime::parse_from_rfc3339(s.trim()).map_err(|_| TimeError::BadTime(s.to_string()))?;
    // Nanoseconds since 1970 in an i64 reach from 1677 to 2262.
    t.timestamp_nanos_opt()
        .map(UnixNanos)
        .ok_or_else(|| TimeError::OutOfRange(s.to_string()))
}

#[cfg(test)]
mod test {
    use super::*;

    const S: Nanos = Nanos::from_secs(1);

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90s"), Ok(Nanos::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Ok(Nanos::from_secs(5400)));
        assert_eq!(parse_duration("7d"), Ok(Nanos::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("250ms"), Ok(Nanos::from_nanos(250_000_000)));
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
        let now = UnixNanos::from_secs(1_000);
        assert_eq!(parse_time_or_ago("15m", now), Ok(UnixNanos::from_secs(100)));
        assert_eq!(
            parse_time_or_ago("1970-01-01T00:00:01.5Z", now),
            Ok(UnixNanos::from_nanos(1_500_000_000))
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
        assert_eq!(
            parse_time_or_ago("1s", UnixNanos::MIN),
            Ok(UnixNanos::MIN),
            "saturates"
        );
    }

    #[test]
    fn formats_round_trip() {
        let t = UnixNanos::from_nanos(1_795_666_363_543_000_325);
        assert_eq!(UnixNanos::parse_rfc3339(&t.to_rfc3339()), Some(t));
        assert_eq!(t.to_docker_since(), "1795666363.543000325");
        assert_eq!(UnixNanos::parse_rfc3339("0001-01-01T00:00:00Z"), None);
        assert_eq!(
            UnixNanos::from_nanos(-1).to_docker_since(),
            "-1.999999999",
            "before the epoch, as the integer formula gave"
        );
    }

    #[test]
    fn arithmetic_is_the_integers() {
        let a = UnixNanos::from_secs(10);
        let b = UnixNanos::from_secs(4);
        assert_eq!(a - b, Nanos::from_secs(6));
        assert_eq!(b - a, Nanos::from_secs(-6), "out of order stays negative");
        assert_eq!(b + S, UnixNanos::from_secs(5));
        assert_eq!(a - S, UnixNanos::from_secs(9));
        let mut c = b;
        c += S;
        assert_eq!(c, UnixNanos::from_secs(5));
        assert_eq!(UnixNanos::MAX.saturating_add(S), UnixNanos::MAX);
        assert_eq!(UnixNanos::MIN.saturating_sub(S), UnixNanos::MIN);
        assert_eq!(UnixNanos::from_secs(i64::MAX), UnixNanos::MAX);
        assert_eq!(a.as_secs_f64(), 10.0);
        assert_eq!(Nanos::from_millis(1500).as_secs_f64(), 1.5);
        let mut up = Nanos::ZERO;
        up += S;
        assert_eq!(up + S - S, S);
    }

    /// The store (postcard) and the JSON API write exactly what they wrote for the bare i64,
    /// so state files of earlier versions stay readable and the API unchanged.
    #[test]
    fn encodings_are_the_bare_integers() {
        for v in [0, 1, -1, 1_795_666_363_543_000_325, i64::MIN, i64::MAX] {
            let bare = postcard::to_stdvec(&v).expect("encodes");
            let t = UnixNanos::from_nanos(v);
            assert_eq!(postcard::to_stdvec(&t).expect("encodes"), bare);
            assert_eq!(
                postcard::to_stdvec(&Nanos::from_nanos(v)).expect("encodes"),
                bare
            );
            assert_eq!(postcard::from_bytes::<UnixNanos>(&bare), Ok(t));
            assert_eq!(
                postcard::to_stdvec(&Some(t)).expect("encodes"),
                postcard::to_stdvec(&Some(v)).expect("encodes")
            );
            assert_eq!(
                serde_json::to_string(&t).ok(),
                serde_json::to_string(&v).ok()
            );
        }
    }

    /// The tracker's duplicate keys hash an event's time, and the keys at the cursor are
    /// saved: the typed time must hash as the integer did.
    #[test]
    fn hashes_are_the_bare_integers() {
        use std::collections::hash_map::DefaultHasher;
        use std::hash::{Hash, Hasher};
        let hash = |v: &dyn Fn(&mut DefaultHasher)| {
            let mut h = DefaultHasher::new();
            v(&mut h);
            h.finish()
        };
        let v = 1_795_666_363_543_000_325_i64;
        assert_eq!(
            hash(&|h| (UnixNanos::from_nanos(v), "c1").hash(h)),
            hash(&|h| (v, "c1").hash(h))
        );
    }
}
