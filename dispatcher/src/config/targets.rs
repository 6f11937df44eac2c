//! Targets as written and as built: what each kind needs, with its timeouts and concurrency
//! checked. A target is shared by every mapping and function that names it.

use super::raw::{
    RawAdaptiveConcurrency, RawCircuitBreaker, RawInProcessTarget, RawLambdaRuntimeTarget,
    RawRateLimit, RawTarget,
};
use super::validate::Validator;
use sluice_policies::{AdaptiveSettings, BreakerSettings, FailureRatio};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub enum TargetConfig {
    Http(HttpTargetConfig),
    Command(CommandTargetConfig),
    InProcess(InProcessTargetConfig),
    LambdaRuntime(LambdaRuntimeTargetConfig),
}

#[derive(Debug, Clone, PartialEq)]
pub struct LambdaRuntimeTargetConfig {
    pub command: Vec<String>,
    pub concurrency: usize,
    pub timeout: Duration,
    pub init_timeout: Duration,
    pub handler: Option<String>,
    pub function_name: Option<String>,
    pub memory_size: u32,
    pub env: Vec<(String, String)>,
    /// Whether the processes get sluice's environment besides `env`.
    pub inherit_env: bool,
    pub working_dir: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct InProcessTargetConfig {
    pub timeout: Duration,
    pub max_concurrency: usize,
}

impl TargetConfig {
    /// Invocations in flight at once, shared by every mapping using the target.
    pub fn max_concurrency(&self) -> usize {
        match self {
            TargetConfig::Http(http) => http.max_concurrency,
            TargetConfig::Command(command) => command.max_concurrency,
            TargetConfig::InProcess(in_process) => in_process.max_concurrency,
            TargetConfig::LambdaRuntime(pool) => pool.concurrency,
        }
    }

    /// The longest one call may take by the target's own timeouts (a `lambda_runtime` call may
    /// first wait `init_timeout + timeout` for a worker, then run for `timeout`).
    pub fn longest_call(&self) -> Duration {
        match self {
            TargetConfig::Http(http) => http.timeout,
            TargetConfig::Command(command) => command.timeout,
            TargetConfig::InProcess(in_process) => in_process.timeout,
            TargetConfig::LambdaRuntime(pool) => pool
                .init_timeout
                .saturating_add(pool.timeout)
                .saturating_add(pool.timeout),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CommandTargetConfig {
    pub program: Vec<String>,
    pub timeout: Duration,
    pub env: Vec<(String, String)>,
    /// Whether the processes get sluice's environment besides `env`.
    pub inherit_env: bool,
    pub working_dir: Option<String>,
    pub max_concurrency: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpTargetConfig {
    pub url: reqwest::Url,
    pub timeout: Duration,
    pub headers: Vec<(String, String)>,
    pub non_retryable_statuses: Vec<u16>,
    pub max_concurrency: usize,
}

pub fn build(v: &mut Validator, path: &str, target: RawTarget) -> Option<TargetConfig> {
    match target {
        RawTarget::Http(http) => {
            let url = match reqwest::Url::parse(&http.url) {
                Ok(url) if matches!(url.scheme(), "http" | "https") => url,
                Ok(url) => {
                    v.error(
                        format!("{path}.http.url"),
                        format!(
                            "scheme {:?} is not supported; use http or https",
                            url.scheme()
                        ),
                    );
                    return None;
                }
                Err(error) => {
                    v.error(
                        format!("{path}.http.url"),
                        format!("{:?} is not a URL: {error}", http.url),
                    );
                    return None;
                }
            };
            let timeout = http.timeout.map_or(Duration::from_secs(30), |d| d.0);
            if timeout.is_zero() || timeout > Duration::from_secs(43_200) {
                v.error(
                    format!("{path}.http.timeout"),
                    "must be between 1ms and 12h",
                );
            }
            let mut headers = Vec::new();
            for (name, value) in http.headers {
                if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err()
                    || reqwest::header::HeaderValue::from_str(&value).is_err()
                {
                    v.error(
                        format!("{path}.http.headers.{name}"),
                        "is not a valid HTTP header name and value",
                    );
                }
                headers.push((name, value));
            }
            let max_concurrency = v.concurrency(
                &format!("{path}.http.max_concurrency"),
                http.max_concurrency,
                100,
                10_000,
            );
            let non_retryable_statuses = http.non_retryable_statuses.unwrap_or_default();
            for status in &non_retryable_statuses {
                if !(400..=499).contains(status) || *status == 429 {
                    v.error(
                        format!("{path}.http.non_retryable_statuses"),
                        format!("{status} is not a 4xx status other than 429 (a throttle, always retried)"),
                    );
                }
            }
            Some(TargetConfig::Http(HttpTargetConfig {
                url,
                timeout,
                headers,
                non_retryable_statuses,
                max_concurrency,
            }))
        }
        RawTarget::Command(command) => {
            if command.program.first().is_none_or(|p| p.trim().is_empty()) {
                v.error(
                    format!("{path}.command.program"),
                    "give the program and its arguments, such as [python3, handler.py]",
                );
            }
            let timeout = command.timeout.map_or(Duration::from_secs(30), |d| d.0);
            if timeout.is_zero() || timeout > Duration::from_secs(43_200) {
                v.error(
                    format!("{path}.command.timeout"),
                    "must be between 1ms and 12h",
                );
            }
            let max_concurrency = v.concurrency(
                &format!("{path}.command.max_concurrency"),
                command.max_concurrency,
                10,
                1_000,
            );
            Some(TargetConfig::Command(CommandTargetConfig {
                program: command.program,
                timeout,
                env: command.env.into_iter().collect(),
                inherit_env: command.inherit_env.unwrap_or(true),
                working_dir: command.working_dir,
                max_concurrency,
            }))
        }
        RawTarget::InProcess(raw) => Some(build_in_process(v, path, raw)),
        RawTarget::LambdaRuntime(raw) => Some(build_lambda_runtime(v, path, raw)),
    }
}

fn build_lambda_runtime(
    v: &mut Validator,
    path: &str,
    raw: RawLambdaRuntimeTarget,
) -> TargetConfig {
    let at = format!("{path}.lambda_runtime");
    if raw.command.first().is_none_or(|p| p.trim().is_empty()) {
        v.error(
            format!("{at}.command"),
            "give the worker program and its arguments, such as [./bootstrap] or [python3, -m, awslambdaric, app.handler]",
        );
    }
    let concurrency = v.concurrency(&format!("{at}.concurrency"), raw.concurrency, 1, 1_000);
    let timeout = raw.timeout.map_or(Duration::from_secs(30), |d| d.0);
    if timeout.is_zero() || timeout > Duration::from_secs(43_200) {
        v.error(format!("{at}.timeout"), "must be between 1ms and 12h");
    }
    let init_timeout = raw.init_timeout.map_or(Duration::from_secs(10), |d| d.0);
    if init_timeout.is_zero() || init_timeout > Duration::from_secs(3_600) {
        v.error(format!("{at}.init_timeout"), "must be between 1ms and 1h");
    }
    let memory_size = raw.memory_size.unwrap_or(128);
    if !(128..=10_240).contains(&memory_size) {
        v.error(
            format!("{at}.memory_size"),
            format!("must be 128..=10240 MB, as in Lambda (got {memory_size})"),
        );
    }
    TargetConfig::LambdaRuntime(LambdaRuntimeTargetConfig {
        command: raw.command,
        concurrency,
        timeout,
        init_timeout,
        handler: raw.handler,
        function_name: raw.function_name,
        memory_size,
        env: raw.env.into_iter().collect(),
        inherit_env: raw.inherit_env.unwrap_or(true),
        working_dir: raw.working_dir,
    })
}

fn build_in_process(v: &mut Validator, path: &str, raw: RawInProcessTarget) -> TargetConfig {
    let timeout = raw.timeout.map_or(Duration::from_secs(30), |d| d.0);
    if timeout.is_zero() || timeout > Duration::from_secs(43_200) {
        v.error(
            format!("{path}.in_process.timeout"),
            "must be between 1ms and 12h",
        );
    }
    let max_concurrency = v.concurrency(
        &format!("{path}.in_process.max_concurrency"),
        raw.max_concurrency,
        100,
        10_000,
    );
    TargetConfig::InProcess(InProcessTargetConfig {
        timeout,
        max_concurrency,
    })
}

/// A target's circuit breaker settings, checked; `path` is the `circuit_breaker` key's.
pub fn circuit_breaker(v: &mut Validator, path: &str, raw: RawCircuitBreaker) -> BreakerSettings {
    let defaults = BreakerSettings::default();
    let consecutive_failures = raw
        .consecutive_failures
        .unwrap_or(defaults.consecutive_failures);
    if !(1..=1000).contains(&consecutive_failures) {
        v.error(
            format!("{path}.consecutive_failures"),
            format!("must be 1..=1000 (got {consecutive_failures})"),
        );
    }
    let open_for = raw.open_for.map_or(defaults.open_for, |d| d.0);
    if open_for < Duration::from_millis(100) || open_for > Duration::from_secs(3_600) {
        v.error(format!("{path}.open_for"), "must be between 100ms and 1h");
    }
    let max_open_for = raw
        .max_open_for
        .map_or(defaults.max_open_for.max(open_for), |d| d.0);
    if max_open_for < open_for || max_open_for > Duration::from_secs(3_600) {
        v.error(
            format!("{path}.max_open_for"),
            format!("must be between open_for ({open_for:?}) and 1h"),
        );
    }
    let failure_ratio = raw.failure_ratio.map(|ratio| {
        if !(ratio.ratio > 0.0 && ratio.ratio <= 1.0) {
            v.error(
                format!("{path}.failure_ratio.ratio"),
                format!("must be above 0 and at most 1 (got {})", ratio.ratio),
            );
        }
        let window = ratio.window.0;
        if window < Duration::from_secs(1) || window > Duration::from_secs(3_600) {
            v.error(
                format!("{path}.failure_ratio.window"),
                "must be between 1s and 1h",
            );
        }
        let min_calls = ratio.min_calls.unwrap_or(20);
        if !(1..=100_000).contains(&min_calls) {
            v.error(
                format!("{path}.failure_ratio.min_calls"),
                format!("must be 1..=100000 (got {min_calls})"),
            );
        }
        FailureRatio {
            ratio: ratio.ratio,
            window,
            min_calls,
        }
    });
    BreakerSettings {
        consecutive_failures,
        failure_ratio,
        open_for,
        max_open_for,
    }
}

/// A target's adaptive concurrency bounds, checked; `fixed` is the target's own limit, the default
/// `max`, and with `fixed_is_the_most` also its highest (a lambda_runtime pool's workers).
pub fn adaptive_concurrency(
    v: &mut Validator,
    path: &str,
    raw: RawAdaptiveConcurrency,
    fixed: usize,
    fixed_is_the_most: bool,
) -> AdaptiveSettings {
    let max = raw.max.map_or(fixed, |max| max as usize);
    let most = if fixed_is_the_most { fixed } else { 10_000 };
    if !(1..=most).contains(&max) {
        v.error(
            format!("{path}.max"),
            format!("must be 1..={most} (got {max})"),
        );
    }
    let min = raw.min.map_or(1, |min| min as usize);
    if min == 0 || min > max {
        v.error(
            format!("{path}.min"),
            format!("must be 1..=max ({max}) (got {min})"),
        );
    }
    AdaptiveSettings::new(min, max)
}

/// A target's rate limit for this instance, checked: `(records per second, burst)`, each the
/// configured one divided by `instances`.
pub fn rate_limit(v: &mut Validator, path: &str, raw: RawRateLimit) -> (f64, u32) {
    let rate = raw.records_per_second;
    if !(rate.is_finite() && (0.001..=1_000_000.0).contains(&rate)) {
        v.error(
            format!("{path}.records_per_second"),
            format!("must be 0.001..=1000000 (got {rate})"),
        );
    }
    let default_burst = if rate.is_finite() {
        rate.ceil().clamp(1.0, 1_000_000.0) as u32
    } else {
        1
    };
    let burst = raw.burst.unwrap_or(default_burst);
    if !(1..=1_000_000).contains(&burst) {
        v.error(
            format!("{path}.burst"),
            format!("must be 1..=1000000 (got {burst})"),
        );
    }
    let instances = raw.instances.unwrap_or(1);
    if !(1..=1000).contains(&instances) {
        v.error(
            format!("{path}.instances"),
            format!("must be 1..=1000 (got {instances})"),
        );
    }
    let instances = instances.max(1);
    if rate.is_finite() && rate / f64::from(instances) < 0.001 {
        v.error(
            format!("{path}.instances"),
            format!("leaves each instance under 0.001 records per second ({rate} / {instances})"),
        );
    }
    // Each instance's burst is rounded up, so together they never allow less than `burst`.
    (
        rate / f64::from(instances),
        burst.div_ceil(instances).max(1),
    )
}
