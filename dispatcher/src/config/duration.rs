//! Human durations in config: `500ms`, `30s`, `5m`, `6h`, `1d`, and sums such as `1h30m`.

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};
use std::borrow::Cow;
use std::time::Duration;

/// A duration written with a unit. Bare numbers are refused: `30` could mean seconds or
/// milliseconds, and a wrong guess is a silent misconfiguration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

/// The longest duration the parser accepts (each key then has its own, usually much shorter,
/// range): anything longer is a typo, and could overflow the clocks it is added to.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration; write it with a unit, such as 500ms, 30s, 5m or 6h".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after_number) = rest.split_at(digits_end);
        let unit_end = after_number
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after_number.len());
        let (unit, after_unit) = after_number.split_at(unit_end);
        let value: f64 = number.parse().map_err(|_| {
            format!("{text:?} is not a duration; write it like 500ms, 30s, 5m or 6h")
        })?;
        let unit_secs = match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3_600.0,
            "d" => 86_400.0,
            "" => {
                return Err(format!(
                    "{text:?} has no unit; write it like {number}s or {number}ms"
                ));
            }
            other => {
                return Err(format!(
                    "{text:?} has an unknown unit {other:?}; use ms, s, m, h or d"
                ));
            }
        };
        let too_long =
            || format!("{text:?} is longer than 365d, the longest duration sluice accepts");
        let part = Duration::try_from_secs_f64(value * unit_secs).map_err(|_| too_long())?;
        total = total
            .checked_add(part)
            .filter(|total| *total <= MAX_DURATION)
            .ok_or_else(too_long)?;
        rest = after_unit;
    }
    Ok(total)
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a duration with a unit, such as 500ms, 30s, 5m or 6h")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<HumanDuration, E> {
                parse_duration(value).map(HumanDuration).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<HumanDuration, E> {
                if value == 0 {
                    return Ok(HumanDuration(Duration::ZERO));
                }
                Err(E::custom(format!(
                    "{value} has no unit; write it like {value}s or {value}ms"
                )))
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<HumanDuration, E> {
                if value == 0 {
                    return Ok(HumanDuration(Duration::ZERO));
                }
                Err(E::custom(format!(
                    "{value} has no unit; write it like {value}s or {value}ms"
                )))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Writes a duration in the largest unit that keeps it whole (`20s`, `500ms`, `6h`), as the
/// config file would.
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    let units = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1_000, "s"),
    ];
    for (size, unit) in units {
        if millis > 0 && millis.is_multiple_of(size) {
            return format!("{}{unit}", millis / size);
        }
    }
    if millis == 0 {
        "0s".to_owned()
    } else {
        format!("{millis}ms")
    }
}

/// Written as the file would write it, so that the schema shows defaults as durations.
impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format_duration(self.0))
    }
}

/// A limit that AWS writes as -1 for "none": `-1`, or a duration with a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationLimit(pub Option<Duration>);

impl<'de> Deserialize<'de> for DurationLimit {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = DurationLimit;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("-1 (no limit) or a duration with a unit, such as 1h")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<DurationLimit, E> {
                if value.trim() == "-1" {
                    return Ok(DurationLimit(None));
                }
                parse_duration(value)
                    .map(|d| DurationLimit(Some(d)))
                    .map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<DurationLimit, E> {
                if value == -1 {
                    return Ok(DurationLimit(None));
                }
                Err(E::custom(format!(
                    "{value} has no unit; write -1 for no limit, or a duration like {value}s"
                )))
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<DurationLimit, E> {
                Err(E::custom(format!(
                    "{value} has no unit; write -1 for no limit, or a duration like {value}s"
                )))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl JsonSchema for DurationLimit {
    fn schema_name() -> Cow<'static, str> {
        "DurationLimit".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "oneOf": [
                { "const": -1 },
                { "type": "string", "pattern": "^(-1|([0-9]+(\\.[0-9]+)?(ms|s|m|h|d))+)$" }
            ],
            "description": "-1 for no limit, or a duration with a unit such as 1h (at most 365d; each key has its own range)"
        })
    }
}

impl JsonSchema for HumanDuration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^([0-9]+(\\.[0-9]+)?(ms|s|m|h|d))+$",
            "description": "a duration with a unit: 500ms, 30s, 5m, 6h, 1d, or a sum such as 1h30m; at most 365d, and each key has its own range"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_sums_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("6h"), Ok(Duration::from_secs(21_600)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1_500)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn missing_or_unknown_units_are_refused_with_a_hint() {
        assert!(parse_duration("30").unwrap_err().contains("30s"));
        assert!(parse_duration("3 weeks").is_err());
        assert!(parse_duration("5x").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn a_written_duration_reads_back_as_itself() {
        for millis in [
            0, 1, 500, 1_000, 20_000, 90_000, 300_000, 21_600_000, 86_400_000, 86_401_000,
        ] {
            let duration = Duration::from_millis(millis);
            assert_eq!(
                parse_duration(&format_duration(duration)),
                Ok(duration),
                "{millis}"
            );
        }
        assert_eq!(format_duration(Duration::from_secs(20)), "20s");
        assert_eq!(format_duration(Duration::from_secs(6 * 3600)), "6h");
    }

    #[test]
    fn huge_durations_are_refused_instead_of_overflowing() {
        let infinite = format!("1{}s", "0".repeat(400));
        for huge in [
            "99999999999999999999999s",
            "366d",
            "365d1s",
            infinite.as_str(),
            "9300000000000000000s",
        ] {
            assert!(
                parse_duration(huge)
                    .unwrap_err()
                    .contains("longer than 365d"),
                "{huge}: {:?}",
                parse_duration(huge)
            );
        }
        assert_eq!(parse_duration("365d"), Ok(MAX_DURATION));
    }
}
