//! Local days in the configured time zone: which day an instant falls in
//! and when the next one starts (daily caps reset at local midnight, DST
//! included).

use std::time::Duration;

use jiff::{Timestamp, tz::TimeZone};

/// The current local day, recomputed only when an instant passes its end or
/// the zone changes.
#[derive(Debug, Clone)]
pub struct DayClock {
    tz_name: String,
    tz: TimeZone,
    day: String,
    start_ms: i64,
    end_ms: i64,
}

// === impl DayClock ===

impl DayClock {
    /// A clock for `tz_name` (UTC if the name is unknown; settings have
    /// validated it already). No day until the first [`DayClock::advance`].
    pub fn new(tz_name: &str) -> DayClock {
        DayClock {
            tz_name: tz_name.to_owned(),
            tz: TimeZone::get(tz_name).unwrap_or(TimeZone::UTC),
            day: String::new(),
            start_ms: i64::MAX,
            end_ms: i64::MIN,
        }
    }

    /// Moves to the day of `now_ms` in `tz_name`; true when the day is not
    /// the one it was on (counters of the old day no longer apply).
    pub fn advance(&mut self, tz_name: &str, now_ms: i64) -> bool {
        if tz_name != self.tz_name {
            self.tz_name = tz_name.to_owned();
            self.tz = TimeZone::get(tz_name).unwrap_or(TimeZone::UTC);
            self.end_ms = i64::MIN;
        }
        if now_ms >= self.start_ms && now_ms < self.end_ms {
            return false;
        }
        let ts = Timestamp::from_millisecond(now_ms).unwrap_or(Timestamp::UNIX_EPOCH);
        let zoned = ts.to_zoned(self.tz.clone());
        let date = zoned.date();
        let start = zoned
            .start_of_day()
            .map_or(now_ms, |z| z.timestamp().as_millisecond());
        let end = date
            .tomorrow()
            .and_then(|d| d.to_zoned(self.tz.clone()))
            .map_or(start + 86_400_000, |z| z.timestamp().as_millisecond());
        let day = date.to_string();
        let changed = day != self.day;
        self.day = day;
        self.start_ms = start;
        self.end_ms = end;
        changed
    }

    /// `YYYY-MM-DD` of the current day ("" before the first advance).
    pub fn day(&self) -> &str {
        &self.day
    }

    /// Time from `now_ms` to the next local midnight.
    pub fn until_next_day(&self, now_ms: i64) -> Duration {
        Duration::from_millis(u64::try_from(self.end_ms.saturating_sub(now_ms)).unwrap_or(0))
    }

    /// The date `days` before the current day, same format (for pruning).
    pub fn day_minus(&self, days: i64) -> String {
        self.day
            .parse::<jiff::civil::Date>()
            .ok()
            .and_then(|d| d.checked_sub(jiff::Span::new().days(days)).ok())
            .map_or_else(String::new, |d| d.to_string())
    }
}
