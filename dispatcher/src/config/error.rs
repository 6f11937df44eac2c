//! What a config file did wrong: each problem with its file, line, column and key path, all
//! reported together; deserializer jargon rewritten into what the value should be.

use super::expand;
use super::locate::{KeyIndex, Position};
use std::fmt;

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub position: Option<Position>,
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some(Position { line, column }) => write!(f, "{}:{line}:{column}: ", self.file)?,
            None => write!(f, "{}: ", self.file)?,
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in a config file, in document order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, error) in self.0.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

pub(crate) fn parse_error(
    file: &str,
    index: &KeyIndex,
    expanded: &expand::Expanded,
    error: &serde_saphyr::Error,
) -> ConfigError {
    let error = error.without_snippet();
    let position = error.location().map(|location| {
        expanded.original_position(Position {
            line: location.line(),
            column: location.column(),
        })
    });
    let mut path = position
        .and_then(|p| index.path_at(p))
        .unwrap_or_default()
        .to_owned();
    let mut position = position;
    let mut message = error.to_string();
    // The location is shown in front already; drop serde-saphyr's own suffix.
    if let Some(cut) = message.rfind(" at line ") {
        message.truncate(cut);
    }
    // A missing field is reported at some key of the mapping that lacks it; name the mapping.
    if message.starts_with("missing field") {
        path.truncate(path.rfind(['.', '[']).unwrap_or(0));
        if !path.is_empty() {
            position = index.key_position_of(&path).or(position);
        }
    }
    ConfigError {
        file: file.to_owned(),
        position,
        path,
        message: plain_type_message(message),
    }
}

/// Rewrites deserializer jargon ("invalid u32") into what the value should be.
pub(crate) fn plain_type_message(message: String) -> String {
    let expectations = [
        ("invalid u32", "expected a whole number, 0 or more"),
        ("invalid u64", "expected a whole number, 0 or more"),
        ("invalid u16", "expected a whole number, 0 or more"),
        ("invalid usize", "expected a whole number, 0 or more"),
        ("invalid i64", "expected a whole number"),
        ("invalid i32", "expected a whole number"),
        ("invalid f64", "expected a number"),
        ("invalid bool", "expected true or false"),
    ];
    for (jargon, plain) in expectations {
        if message.starts_with(jargon) {
            return plain.to_owned();
        }
    }
    message
}
