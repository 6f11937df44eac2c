//! sluice: AWS Lambda's event source mapping semantics for any service.
//!
//! The dispatcher crate holds the config contract, the running daemon (mapping workers that
//! execute policy decisions), targets, on-failure destinations, the admin server and the CLI.
//! Delivery is at-least-once: a record is acknowledged only after its handler succeeded or it was
//! stored in its on-failure destination.

pub mod admin;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod destinations;
pub mod dlq;
pub mod embed;
#[cfg(test)]
mod fuzz;
pub mod health;
pub mod http_server;
pub mod import;
pub mod invoke_api;
pub mod runtime;
pub mod targets;
pub mod telemetry;
pub mod traces;

/// An error and its causes on one line, `what failed: why: why`, for log fields and dead-letter
/// reasons, where a multi-line report does not fit. (`sluice`'s own messages print a cause per
/// line instead.)
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        text.push_str(": ");
        text.push_str(&error.to_string());
        cause = error.source();
    }
    text
}
