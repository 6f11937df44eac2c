//! `${VAR}` and `${VAR:-default}` expansion over the config text, before YAML parsing.
//!
//! Expansion happens line by line and never inside a comment, so an example in a comment cannot
//! fail a load. `$${` writes a literal `${`. Line numbers are unchanged by expansion (a value with
//! a line break is refused), so positions in later errors still point into the file as written.

use super::locate::Position;
use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpandError {
    pub position: Position,
    pub message: String,
}

pub fn expand(text: &str, environment: &HashMap<String, String>) -> Result<String, ExpandError> {
    let mut out = String::with_capacity(text.len());
    for (line_index, line) in text.split_inclusive('\n').enumerate() {
        let comment_start = comment_start(line).unwrap_or(line.len());
        let (content, comment) = line.split_at(comment_start);
        expand_line(content, line_index as u64 + 1, environment, &mut out)?;
        out.push_str(comment);
    }
    Ok(out)
}

/// The byte offset of a `#` that starts a comment: at the line start or after white space,
/// outside single and double quotes.
fn comment_start(line: &str) -> Option<usize> {
    let mut in_single = false;
    let mut in_double = false;
    let mut previous: Option<char> = None;
    for (offset, c) in line.char_indices() {
        match c {
            '\'' if !in_double => in_single = !in_single,
            '"' if !in_single && previous != Some('\\') => in_double = !in_double,
            '#' if !in_single && !in_double && previous.is_none_or(char::is_whitespace) => {
                return Some(offset);
            }
            _ => {}
        }
        previous = Some(c);
    }
    None
}

fn expand_line(
    line: &str,
    line_number: u64,
    environment: &HashMap<String, String>,
    out: &mut String,
) -> Result<(), ExpandError> {
    let mut rest = line;
    let mut consumed_chars = 0u64;
    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        consumed_chars += rest[..start].chars().count() as u64;
        let after = &rest[start..];
        if let Some(escaped) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = escaped;
            consumed_chars += 3;
            continue;
        }
        if !after.starts_with("${") {
            out.push('$');
            rest = &after[1..];
            consumed_chars += 1;
            continue;
        }
        let position = Position {
            line: line_number,
            column: consumed_chars + 1,
        };
        let Some(end) = after.find('}') else {
            return Err(ExpandError {
                position,
                message: "unterminated ${...}; close it with }".into(),
            });
        };
        let inner = &after[2..end];
        let (name, default) = match inner.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (inner, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(ExpandError {
                position,
                message: format!(
                    "${{{inner}}} is not a variable reference; write ${{NAME}} or ${{NAME:-default}}"
                ),
            });
        }
        let value = match (environment.get(name).filter(|v| !v.is_empty()), default) {
            (Some(value), _) => value.as_str(),
            (None, Some(default)) => default,
            (None, None) => {
                return Err(ExpandError {
                    position,
                    message: format!(
                        "environment variable {name} is not set; set it, or give a default with ${{{name}:-default}}"
                    ),
                });
            }
        };
        if value.contains('\n') {
            return Err(ExpandError {
                position,
                message: format!("environment variable {name} contains a line break"),
            });
        }
        out.push_str(value);
        consumed_chars += after[..=end].chars().count() as u64;
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> HashMap<String, String> {
        HashMap::from([
            ("A".to_owned(), "alpha".to_owned()),
            ("EMPTY".to_owned(), String::new()),
        ])
    }

    #[test]
    fn variables_and_defaults_expand() {
        assert_eq!(
            expand("x: ${A}\ny: ${B:-beta}\nz: ${EMPTY:-e}\n", &env()).unwrap(),
            "x: alpha\ny: beta\nz: e\n"
        );
    }

    #[test]
    fn comments_and_escapes_are_left_alone() {
        assert_eq!(
            expand(
                "x: 1 # uses ${UNSET}\n# ${UNSET}\ny: \"a # ${A}\"\nz: $${A} $5\n",
                &env()
            )
            .unwrap(),
            "x: 1 # uses ${UNSET}\n# ${UNSET}\ny: \"a # alpha\"\nz: ${A} $5\n"
        );
    }

    #[test]
    fn an_unset_variable_names_its_line_and_column() {
        let error = expand("a: 1\nqueue: ${NOPE}\n", &env()).unwrap_err();
        assert_eq!(error.position, Position { line: 2, column: 8 });
        assert!(error.message.contains("NOPE is not set"));
    }
}
