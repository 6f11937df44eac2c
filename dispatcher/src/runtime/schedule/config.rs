//! A `schedule` source as written in the config file: an EventBridge Scheduler expression in a
//! time zone, the event each tick sends (EventBridge's Scheduled Event, or a constant `input`),
//! whether missed ticks are caught up, and the asynchronous policy each tick runs under.

use super::expression::Schedule;
use crate::config::async_policy::{self, RawAsyncPolicy};
use crate::config::kind::{BuildSource, MappingParts, SourceRules};
use crate::config::validate::Validator;
use schemars::JsonSchema;
use serde::Deserialize;
use sluice_policies::{AsyncPolicy, StreamPolicy};

/// What a schedule's `retry` block takes, for a key of another kind.
const RETRY_ADVICE: &str = "a schedule's ticks are retried asynchronously: use max_retry_attempts (0..=2), delays, max_event_age and backoff";

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawScheduleSource {
    /// EventBridge Scheduler's syntax: rate(5 minutes), cron(0 12 * * ? *) (minutes hours
    /// day-of-month month day-of-week year; 1 = Sunday) or at(2026-12-24T18:00:00).
    pub expression: String,
    /// The IANA time zone cron and at are read in, such as Europe/Paris; default UTC.
    #[serde(default)]
    pub timezone: Option<String>,
    /// The event each tick sends instead of EventBridge's Scheduled Event (any value).
    #[serde(default)]
    #[schemars(with = "Option<serde_json::Value>")]
    pub input: Option<serde_json::Value>,
    /// Send the ticks missed while no instance ran (oldest first, at most 100) when the schedule
    /// starts again; default false: they are skipped, as EventBridge does.
    #[serde(default)]
    pub catch_up: Option<bool>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleSourceConfig {
    pub expression: String,
    pub timezone: Option<String>,
    pub input: Option<serde_json::Value>,
    pub catch_up: bool,
    pub policy: AsyncPolicy,
}

impl ScheduleSourceConfig {
    /// The parsed schedule (the expression was checked when the config was read).
    pub fn schedule(&self) -> Schedule {
        Schedule::parse(&self.expression, self.timezone.as_deref())
            .expect("the expression was validated with the config")
    }
}

impl BuildSource for RawScheduleSource {
    type Config = ScheduleSourceConfig;
    type Retry = RawAsyncPolicy;

    fn build(self, v: &mut Validator, path: &str, mapping: MappingParts) -> ScheduleSourceConfig {
        match Schedule::parse(&self.expression, self.timezone.as_deref()) {
            Err(problem) => {
                let key = if problem.contains("IANA") {
                    "timezone"
                } else {
                    "expression"
                };
                v.error(format!("{path}.{key}"), problem);
            }
            // A cron that can never fire again (its years are over, a day that does not exist)
            // would be a mapping that silently does nothing. Disabled, it does nothing by
            // design: EventBridge keeps such rules, and `sluice import` writes them so.
            Ok(schedule) if mapping.enabled && schedule.cron_is_over(jiff::Timestamp::now()) => {
                v.error(
                    format!("{path}.expression"),
                    format!(
                        "{} never fires from now on; correct it, or set enabled: false to keep it",
                        self.expression.trim()
                    ),
                );
            }
            Ok(_) => {}
        }
        let retry_path = format!("{}.retry", mapping.path);
        let raw: RawAsyncPolicy = v.block(&retry_path, mapping.retry, "schedule", RETRY_ADVICE);
        let policy = async_policy::policy(v, &retry_path, raw);
        ScheduleSourceConfig {
            expression: self.expression.trim().to_owned(),
            timezone: self.timezone,
            input: self.input,
            catch_up: self.catch_up.unwrap_or(false),
            policy,
        }
    }
}

impl SourceRules for ScheduleSourceConfig {
    fn largest_record(&self) -> &'static str {
        "256 KB"
    }

    fn calls_aws(&self) -> bool {
        false
    }

    fn is_asynchronous(&self) -> bool {
        true
    }

    /// The last tick fired and the ticks still running are kept with the checkpoints (the state
    /// file, or the lease table, whose lease also makes one instance the firer).
    fn keeps_checkpoints(&self) -> bool {
        true
    }

    fn no_backlog(&self) -> Option<&'static str> {
        Some("a schedule has no backlog: it fires on time")
    }

    // Each tick is one asynchronous invocation.
    fn replay_policy(&self, has_on_failure: bool) -> StreamPolicy {
        async_policy::replay_policy(&self.policy, has_on_failure)
    }

    fn replay_batch_size(&self) -> usize {
        1
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::*;

    #[test]
    fn a_schedule_mapping_takes_lambdas_async_defaults_and_keeps_checkpoints() {
        let config = parse_text(SCHEDULE).unwrap();
        let schedule = source_of!(config, Schedule);
        assert_eq!(schedule.expression, "cron(0 2 * * ? *)");
        assert_eq!(schedule.timezone.as_deref(), Some("Europe/Paris"));
        assert!(!schedule.catch_up);
        assert_eq!(schedule.policy.max_retry_attempts, 2);
        assert!(config.mappings[0].source.rules().keeps_checkpoints());
        assert!(!config.needs_aws());
        let with_success = format!(
            "{SCHEDULE}    on_success: {{ sqs: {{ queue_url: \"http://127.0.0.1:1/1/ok\" }} }}\n"
        );
        assert!(
            parse_text(&with_success).is_ok(),
            "a schedule is asynchronous"
        );
    }

    /// EventBridge keeps a rule whose years are over; disabled, sluice keeps it too (what
    /// `sluice import` writes for one), while an enabled one is refused above.
    #[test]
    fn a_disabled_schedule_may_never_fire() {
        let past = SCHEDULE
            .replace("cron(0 2 * * ? *)", "cron(0 2 * * ? 2001-2003)")
            .replace("    target: api\n", "    target: api\n    enabled: false\n");
        let config = parse_text(&past).unwrap();
        assert!(!config.mappings[0].enabled);
        let bad = past.replace("2001-2003", "2003-2001-x");
        assert!(
            parse_text(&bad).is_err(),
            "an expression that cannot be read is refused even disabled"
        );
    }

    #[test]
    fn a_bad_expression_or_time_zone_is_reported_at_its_key() {
        let bad = SCHEDULE.replace("cron(0 2 * * ? *)", "cron(0 2 * * * *)");
        let error = parse_text(&bad).unwrap_err().0.remove(0);
        assert_eq!(error.path, "mappings[0].source.schedule.expression");
        assert!(error.message.contains("must be ?"), "{}", error.message);
        assert!(error.position.is_some());
        let zone = SCHEDULE.replace("Europe/Paris", "Europe/Atlantis");
        let error = parse_text(&zone).unwrap_err().0.remove(0);
        assert_eq!(error.path, "mappings[0].source.schedule.timezone");
        let never = SCHEDULE.replace("cron(0 2 * * ? *)", "cron(0 2 30 2 ? *)");
        let error = parse_text(&never).unwrap_err().0.remove(0);
        assert!(error.message.contains("never fires"), "{}", error.message);
        let past = SCHEDULE.replace("cron(0 2 * * ? *)", "cron(0 2 * * ? 2001-2003)");
        let error = parse_text(&past).unwrap_err().0.remove(0);
        assert!(
            error.message.contains("enabled: false"),
            "{}",
            error.message
        );
        let retry = format!("{SCHEDULE}    retry: {{ max_record_age: 1h }}\n");
        let rendered = parse_text(&retry).unwrap_err().to_string();
        assert!(rendered.contains("retried asynchronously"), "{rendered}");
    }
}
