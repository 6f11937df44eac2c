//! What one invocation of a target produced, as the policies see it.
//!
//! Targets (in the dispatcher) classify transport-level results into an [`Outcome`]; the
//! policies never look at HTTP statuses or processes. `Throttled` and `Unavailable` mean the
//! handler did not run (or refused to), which AWS never counts against retry attempts.

use serde_json::Value;

/// An error as the handler (or sluice on its behalf) described it: Lambda's `errorType` and
/// `errorMessage`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorInfo {
    pub error_type: String,
    pub message: String,
    /// The target marked the error as one retrying cannot fix (an HTTP status the target lists
    /// as non-retryable), whatever its type.
    pub non_retryable: bool,
}

/// The longest `errorMessage` sluice keeps; longer messages are cut where they enter (Lambda
/// cuts what it reports too). Without a cap, a handler's 300 KB message made a dead-letter
/// envelope too large for its queue, and the record could never leave.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 8 * 1024;
/// The longest `errorType` kept.
pub const MAX_ERROR_TYPE_BYTES: usize = 256;

/// `text` cut to at most `max` bytes on a character boundary, with a note of how much was cut.
pub fn capped(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let original = text.len();
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(&format!("… [cut by sluice: {original} bytes in all]"));
    text
}

/// At most the first kilobyte of a body, as text, for messages.
pub fn text_prefix(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(1024)]);
    text.trim().to_owned()
}

impl ErrorInfo {
    /// An error; the type and message are capped ([`MAX_ERROR_TYPE_BYTES`],
    /// [`MAX_ERROR_MESSAGE_BYTES`]).
    pub fn new(error_type: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error_type: capped(error_type.into(), MAX_ERROR_TYPE_BYTES),
            message: capped(message.into(), MAX_ERROR_MESSAGE_BYTES),
            non_retryable: false,
        }
    }

    /// The same error, marked as not worth retrying.
    pub fn marked_non_retryable(mut self) -> Self {
        self.non_retryable = true;
        self
    }
}

/// Which errors a mapping sends straight to its on-failure destination (`NonRetryableError`):
/// those whose `errorType` is listed, and those a target marked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorClasses {
    pub non_retryable_types: std::collections::BTreeSet<String>,
}

impl ErrorClasses {
    pub fn new(types: impl IntoIterator<Item = String>) -> Self {
        Self {
            non_retryable_types: types.into_iter().collect(),
        }
    }

    pub fn is_non_retryable(&self, error: &ErrorInfo) -> bool {
        error.non_retryable || self.non_retryable_types.contains(&error.error_type)
    }
}

/// The result of invoking a target with one batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The function returned normally; `response` is its body, `None` when it was empty.
    /// Whether that body reports partial failures is decided by the policy (only when the
    /// mapping enables `report_batch_item_failures`).
    Returned { response: Option<Value> },
    /// The function returned a body that is not JSON (all of it: a synchronous caller gets it
    /// back whole). Success unless the mapping reports batch item failures, in which case AWS
    /// fails the whole batch.
    ReturnedNonJson { body: Vec<u8> },
    /// The function ran and failed (`X-Amz-Function-Error`, a 5xx, a non-zero exit).
    FunctionError(ErrorInfo),
    /// The function did not answer within the target's timeout.
    Timeout { after_ms: u64 },
    /// The target refused the invocation for now (HTTP 429): the function did not run.
    Throttled { message: String },
    /// The target could not be reached (connection refused, DNS failure): the function did not run.
    Unavailable { message: String },
}

impl Outcome {
    /// A short, stable name for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Returned { .. } | Outcome::ReturnedNonJson { .. } => "returned",
            Outcome::FunctionError(_) => "function_error",
            Outcome::Timeout { .. } => "timeout",
            Outcome::Throttled { .. } => "throttled",
            Outcome::Unavailable { .. } => "unavailable",
        }
    }

    /// Whether the handler did not get to run, so the attempt must not count (semantics.md §2, §3).
    pub fn handler_did_not_run(&self) -> bool {
        matches!(
            self,
            Outcome::Throttled { .. } | Outcome::Unavailable { .. }
        )
    }

    /// The error a whole-batch failure of this outcome carries, if it is a failure at all.
    pub fn error(&self) -> Option<ErrorInfo> {
        match self {
            Outcome::Returned { .. } | Outcome::ReturnedNonJson { .. } => None,
            Outcome::FunctionError(error) => Some(error.clone()),
            Outcome::Timeout { after_ms } => Some(ErrorInfo::new(
                "Sandbox.Timedout",
                format!(
                    "task timed out after {:.2} seconds",
                    *after_ms as f64 / 1000.0
                ),
            )),
            Outcome::Throttled { message } => Some(ErrorInfo::new("TooManyRequests", message)),
            Outcome::Unavailable { message } => Some(ErrorInfo::new("TargetUnavailable", message)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Hardening issue, item 11: a handler's 300 KB errorMessage made an envelope too large for
    // its dead-letter queue, so the record could never leave. Messages are capped where they
    // enter.
    #[test]
    fn long_error_messages_and_types_are_capped_on_a_character_boundary() {
        let error = ErrorInfo::new("T".repeat(1_000), "é".repeat(300_000));
        assert!(error.message.len() < MAX_ERROR_MESSAGE_BYTES + 64);
        assert!(
            error
                .message
                .ends_with("… [cut by sluice: 600000 bytes in all]")
        );
        assert!(error.error_type.len() < MAX_ERROR_TYPE_BYTES + 64);
        let short = ErrorInfo::new("ValueError", "bad order");
        assert_eq!(short.message, "bad order");
    }
}
