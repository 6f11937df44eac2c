//! sluice: AWS Lambda's event source mapping semantics for any service.
//!
//! The dispatcher crate holds the config contract, the running daemon (mapping workers that
//! execute policy decisions), targets, on-failure destinations, the admin server and the CLI.
//! Delivery is at-least-once: a record is acknowledged only after its handler succeeded or it was
//! stored in its on-failure destination.

pub mod admin;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod destinations;
pub mod dlq;
pub mod embed;
#[cfg(test)]
mod fuzz;
pub mod health;
pub mod http_server;
pub mod invoke_api;
pub mod runtime;
pub mod targets;
pub mod telemetry;
pub mod traces;
