//! EventBridge Scheduler's schedule expressions — `rate(5 minutes)`, `cron(0 12 * * ? *)`,
//! `at(2026-12-24T18:00:00)` — in a time zone, and the ticks they make.
//!
//! Guarantees:
//! - the syntax is EventBridge's: a rate is a positive whole number of `minute(s)`, `hour(s)` or
//!   `day(s)` (singular only for 1); a cron has six fields (minutes, hours, day of month, month,
//!   day of week with 1 = Sunday, year), `?` in exactly one of the two day fields, and
//!   `L`, `W`, `#` where EventBridge allows them; `at` is a local date and time;
//! - rate ticks fall on whole multiples of the rate since 1970-01-01T00:00Z, so every instance
//!   and every restart agree on them (a day is 24 hours, as in EventBridge Scheduler);
//! - cron and `at` are evaluated in the schedule's time zone (IANA, default UTC; the time zone
//!   database is built in). Across daylight saving changes they behave as EventBridge Scheduler
//!   documents: a local time that does not exist (spring forward) is skipped, and a local time
//!   that occurs twice (fall back) fires once, the first time;
//! - [`Schedule::next_after`] is the first tick strictly after an instant, `None` when there is
//!   none (an `at` in the past, a cron whose years have ended).

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};
use std::time::Duration;

/// A parsed expression in its time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    expression: Expression,
    zone: TimeZone,
}

#[derive(Debug, Clone)]
enum Expression {
    Rate(Duration),
    Cron(Box<Cron>),
    At(jiff::civil::DateTime),
}

/// How many candidate times one [`Schedule::next_after`] looks at before it gives up: daylight
/// saving skips cost one each, and a minutely cron passes 60 in a repeated hour.
const MAX_CANDIDATES: usize = 2_000;

impl Schedule {
    /// Parses `expression` for `timezone` (an IANA name; `None` is UTC). The error says what is
    /// wrong, for the config key.
    pub fn parse(expression: &str, timezone: Option<&str>) -> Result<Self, String> {
        let zone = match timezone {
            None => TimeZone::UTC,
            Some(name) => jiff::tz::db().get(name).map_err(|_| {
                format!(
                    "{name:?} is not an IANA time zone (such as Europe/Paris or America/New_York)"
                )
            })?,
        };
        let text = expression.trim();
        let inner = |prefix: &str| {
            text.strip_prefix(prefix)
                .and_then(|rest| rest.strip_suffix(')'))
                .map(str::trim)
        };
        let expression = if let Some(rate) = inner("rate(") {
            Expression::Rate(parse_rate(rate)?)
        } else if let Some(cron) = inner("cron(") {
            Expression::Cron(Box::new(parse_cron(cron)?))
        } else if let Some(at) = inner("at(") {
            Expression::At(at.parse().map_err(|_| {
                format!("at({at}) is not a local date and time; write at(2026-12-24T18:00:00)")
            })?)
        } else {
            return Err(format!(
                "{text:?} is not a schedule expression; write rate(5 minutes), cron(0 12 * * ? *) or at(2026-12-24T18:00:00)"
            ));
        };
        Ok(Self { expression, zone })
    }

    /// The period of a rate expression.
    pub fn rate(&self) -> Option<Duration> {
        match self.expression {
            Expression::Rate(every) => Some(every),
            _ => None,
        }
    }

    /// A cron that no date matches after `now` (its years are over, a day that does not exist).
    /// A one-time `at()` in the past is not: it is the tick a late start or `catch_up` fires.
    pub fn cron_is_over(&self, now: Timestamp) -> bool {
        matches!(self.expression, Expression::Cron(_)) && self.next_after(now).is_none()
    }

    /// The first tick strictly after `after`.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        match &self.expression {
            Expression::Rate(every) => {
                let every = every.as_secs() as i64;
                let seconds = after.as_second().div_euclid(every) * every + every;
                Timestamp::from_second(seconds).ok()
            }
            Expression::At(local) => {
                let at = self.zone.to_ambiguous_zoned(*local).compatible().ok()?;
                (at.timestamp() > after).then(|| at.timestamp())
            }
            Expression::Cron(cron) => {
                let mut from = after.to_zoned(self.zone.clone());
                for _ in 0..MAX_CANDIDATES {
                    let next: Zoned = cron.find_next_occurrence(&from, false).ok()?;
                    if self.fires(cron, &next) {
                        return Some(next.timestamp());
                    }
                    from = next;
                }
                None
            }
        }
    }

    /// Whether a time croner found is a tick as EventBridge Scheduler has them: croner carries a
    /// local time that does not exist past the gap, and fires twice in a repeated hour.
    fn fires(&self, cron: &Cron, at: &Zoned) -> bool {
        if !cron.is_time_matching(at).unwrap_or(false) {
            // Carried past a gap: the local time it stood for does not exist that day.
            return false;
        }
        let ambiguous = self.zone.to_ambiguous_zoned(at.datetime());
        if !ambiguous.is_ambiguous() {
            return true;
        }
        // In a repeated hour, only the first of the two instants fires.
        ambiguous
            .earlier()
            .is_ok_and(|first| first.timestamp() == at.timestamp())
    }
}

fn parse_rate(text: &str) -> Result<Duration, String> {
    let usage = || {
        format!(
            "rate({text}) is not a rate; write rate(1 minute), rate(5 minutes), rate(2 hours) or rate(1 day)"
        )
    };
    let mut parts = text.split_whitespace();
    let (Some(value), Some(unit), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(usage());
    };
    let value: u64 = value.parse().map_err(|_| usage())?;
    if value == 0 {
        return Err(format!(
            "rate({text}): the value must be a positive whole number"
        ));
    }
    let seconds = match (unit, value) {
        ("minute", 1) | ("minutes", 2..) => 60,
        ("hour", 1) | ("hours", 2..) => 3_600,
        ("day", 1) | ("days", 2..) => 86_400,
        ("minutes" | "hours" | "days", 1) | ("minute" | "hour" | "day", _) => {
            return Err(format!(
                "rate({text}): the unit is singular for 1 and plural otherwise, as EventBridge has it (rate(1 minute), rate(5 minutes))"
            ));
        }
        _ => return Err(usage()),
    };
    value
        .checked_mul(seconds)
        .map(Duration::from_secs)
        .ok_or_else(usage)
}

fn parse_cron(text: &str) -> Result<Cron, String> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    let [minutes, hours, day_of_month, month, day_of_week, year] = fields[..] else {
        return Err(format!(
            "cron({text}) has {} fields; EventBridge's cron has 6: minutes hours day-of-month month day-of-week year, as cron(0 12 * * ? *)",
            fields.len()
        ));
    };
    match (day_of_month == "?", day_of_week == "?") {
        (true, false) | (false, true) => {}
        _ => {
            return Err(format!(
                "cron({text}): one of day-of-month ({day_of_month}) and day-of-week ({day_of_week}) must be ?, the other a value or *"
            ));
        }
    }
    for part in year.split(',') {
        let range = part.split('/').next().unwrap_or_default();
        for bound in range.split('-').filter(|b| *b != "*") {
            match bound.parse::<u32>() {
                Ok(y) if (1970..=2199).contains(&y) => {}
                _ => {
                    return Err(format!(
                        "cron({text}): the year field ({year}) takes years 1970-2199, *, ranges and lists"
                    ));
                }
            }
        }
    }
    // EventBridge's bare L in day-of-week is the last day of the week, Saturday.
    let day_of_week = if day_of_week == "L" { "7" } else { day_of_week };
    // Seconds at 0; Quartz weekdays (1 = Sunday), as EventBridge numbers them.
    let pattern = format!("0 {minutes} {hours} {day_of_month} {month} {day_of_week} {year}");
    CronParser::builder()
        .seconds(Seconds::Required)
        .year(Year::Required)
        .alternative_weekdays(true)
        // EventBridge writes a start and a step as 0/15.
        .sloppy_ranges(true)
        .build()
        .parse(&pattern)
        .map_err(|e| format!("cron({text}) is not a valid cron expression: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    /// The next `n` ticks after `from`, in UTC (RFC 3339).
    fn ticks(schedule: &Schedule, from: &str, n: usize) -> Vec<String> {
        let mut at = at(from);
        let mut out = Vec::new();
        for _ in 0..n {
            match schedule.next_after(at) {
                Some(next) => {
                    out.push(next.to_string());
                    at = next;
                }
                None => break,
            }
        }
        out
    }

    fn cron(expression: &str, zone: Option<&str>) -> Schedule {
        Schedule::parse(&format!("cron({expression})"), zone).unwrap()
    }

    #[test]
    fn rates_tick_on_multiples_of_the_rate_since_the_epoch() {
        let five = Schedule::parse("rate(5 minutes)", None).unwrap();
        assert_eq!(
            ticks(&five, "2026-12-07T18:03:10Z", 3),
            [
                "2026-12-07T18:05:00Z",
                "2026-12-07T18:10:00Z",
                "2026-12-07T18:15:00Z"
            ]
        );
        // Strictly after: a tick time itself is not its own next tick.
        assert_eq!(
            ticks(&five, "2026-12-07T18:05:00Z", 1),
            ["2026-12-07T18:10:00Z"]
        );
        // A day is 24 hours, whatever the time zone does.
        let day = Schedule::parse("rate(1 day)", Some("Europe/Paris")).unwrap();
        assert_eq!(
            ticks(&day, "2026-03-28T12:00:00Z", 2),
            ["2026-03-29T00:00:00Z", "2026-03-30T00:00:00Z"]
        );
        for bad in [
            "rate(0 minutes)",
            "rate(1 minutes)",
            "rate(5 minute)",
            "rate(5 weeks)",
            "rate(five minutes)",
            "rate(5)",
        ] {
            assert!(Schedule::parse(bad, None).is_err(), "{bad}");
        }
    }

    #[test]
    fn cron_fields_are_eventbridges_with_sunday_as_one() {
        // Every Monday (2) at 09:30 UTC.
        let monday = cron("30 9 ? * 2 *", None);
        assert_eq!(
            ticks(&monday, "2026-12-07T10:00:00Z", 2),
            ["2026-12-14T09:30:00Z", "2026-12-21T09:30:00Z"]
        );
        let named = cron("30 9 ? * MON *", None);
        assert_eq!(
            ticks(&named, "2026-12-07T10:00:00Z", 1),
            ["2026-12-14T09:30:00Z"]
        );
        // Weekdays at 08:00, every 15 minutes in an hour, and a year bound.
        assert_eq!(
            ticks(&cron("0 8 ? * MON-FRI *", None), "2026-12-11T09:00:00Z", 2),
            ["2026-12-14T08:00:00Z", "2026-12-15T08:00:00Z"]
        );
        assert_eq!(
            ticks(&cron("0/15 10 * * ? *", None), "2026-12-07T10:20:00Z", 3),
            [
                "2026-12-07T10:30:00Z",
                "2026-12-07T10:45:00Z",
                "2026-12-08T10:00:00Z"
            ]
        );
        assert_eq!(
            ticks(&cron("0 0 1 1 ? 2027", None), "2026-12-07T00:00:00Z", 3),
            ["2027-01-01T00:00:00Z"]
        );
        for bad in [
            "cron(0 12 * * * *)",
            "cron(0 12 ? * ? *)",
            "cron(0 12 * *)",
            "cron(0 0 12 * * ? *)",
            "cron(61 12 * * ? *)",
            "cron(0 12 ? * 8 *)",
        ] {
            let error = Schedule::parse(bad, None).unwrap_err();
            assert!(error.contains("cron("), "{bad}: {error}");
        }
    }

    #[test]
    fn last_weekday_and_nth_day_of_week() {
        // The last day of each month.
        assert_eq!(
            ticks(&cron("0 12 L * ? *", None), "2027-01-15T00:00:00Z", 3),
            [
                "2027-01-31T12:00:00Z",
                "2027-02-28T12:00:00Z",
                "2027-03-31T12:00:00Z"
            ]
        );
        // The weekday nearest the 15th: 2027-05-15 is a Saturday, so Friday the 14th.
        assert_eq!(
            ticks(&cron("0 12 15W * ? *", None), "2027-05-01T00:00:00Z", 1),
            ["2027-05-14T12:00:00Z"]
        );
        // The second Tuesday (3#2) of each month.
        assert_eq!(
            ticks(&cron("0 12 ? * 3#2 *", None), "2027-01-01T00:00:00Z", 2),
            ["2027-01-12T12:00:00Z", "2027-02-09T12:00:00Z"]
        );
        // The last Friday (6L); a bare L is Saturday, the week's last day.
        assert_eq!(
            ticks(&cron("0 12 ? * 6L *", None), "2027-01-01T00:00:00Z", 1),
            ["2027-01-29T12:00:00Z"]
        );
        assert_eq!(
            ticks(&cron("0 12 ? * L *", None), "2027-01-01T00:00:00Z", 1),
            ["2027-01-02T12:00:00Z"]
        );
        for years in ["1969", "2200", "2020-2300"] {
            let expression = format!("cron(0 12 * * ? {years})");
            assert!(Schedule::parse(&expression, None).is_err(), "{years}");
        }
    }

    #[test]
    fn daylight_saving_skips_a_missing_local_time_and_fires_a_repeated_one_once() {
        // New York springs forward on 2027-03-14: 02:30 does not exist that day.
        let half_past_two = cron("30 2 * * ? *", Some("America/New_York"));
        assert_eq!(
            ticks(&half_past_two, "2027-03-13T12:00:00Z", 3),
            [
                "2027-03-15T06:30:00Z",
                "2027-03-16T06:30:00Z",
                "2027-03-17T06:30:00Z"
            ]
        );
        // It falls back on 2027-11-07: 01:30 happens twice (EDT, then EST); it fires once.
        let half_past_one = cron("30 1 * * ? *", Some("America/New_York"));
        assert_eq!(
            ticks(&half_past_one, "2027-11-06T12:00:00Z", 2),
            ["2027-11-07T05:30:00Z", "2027-11-08T06:30:00Z"]
        );
        // Every 30 minutes through the repeated hour: each local time once.
        let every_half_hour = cron("0/30 * * * ? *", Some("America/New_York"));
        assert_eq!(
            ticks(&every_half_hour, "2027-11-07T05:00:00Z", 4),
            [
                "2027-11-07T05:30:00Z",
                "2027-11-07T07:00:00Z",
                "2027-11-07T07:30:00Z",
                "2027-11-07T08:00:00Z"
            ]
        );
        // A minutely cron passes a whole repeated hour (60 instants it skips) and goes on.
        let minutely = cron("* * * * ? *", Some("America/New_York"));
        assert_eq!(
            ticks(&minutely, "2027-11-07T05:58:30Z", 3),
            [
                "2027-11-07T05:59:00Z",
                "2027-11-07T07:00:00Z",
                "2027-11-07T07:01:00Z"
            ]
        );
        // An hour on the UTC clock is a tick in UTC, whatever the zones do.
        assert_eq!(
            ticks(&cron("30 2 * * ? *", None), "2027-03-13T12:00:00Z", 2),
            ["2027-03-14T02:30:00Z", "2027-03-15T02:30:00Z"]
        );
    }

    #[test]
    fn at_fires_once_in_its_time_zone() {
        let christmas = Schedule::parse("at(2026-12-24T18:00:00)", Some("Europe/Paris")).unwrap();
        assert_eq!(
            ticks(&christmas, "2026-12-01T00:00:00Z", 3),
            ["2026-12-24T17:00:00Z"]
        );
        assert_eq!(
            ticks(&christmas, "2026-12-24T17:00:00Z", 1),
            Vec::<String>::new()
        );
        assert!(Schedule::parse("at(tomorrow)", None).is_err());
        assert!(Schedule::parse("every(5 minutes)", None).is_err());
        let error = Schedule::parse("rate(5 minutes)", Some("Mars/Olympus")).unwrap_err();
        assert!(error.contains("IANA"), "{error}");
    }
}
