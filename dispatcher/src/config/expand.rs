//! `${VAR}` and `${VAR:-default}` expansion in the config's scalar values.
//!
//! The document is parsed first; then each scalar that holds a reference is expanded as a value
//! and written back as one scalar: plain when the value reads back as the same plain scalar, else
//! as a double-quoted string. So a value can never change the document's structure (a ` #` does
//! not start a comment, `: ` and `,` add no keys or list items), comments are never expanded, and
//! `$${` writes a literal `${`. Line numbers are unchanged (a value's line breaks are escaped),
//! and [`Expanded::original_position`] maps a column of the expanded text back to the file as
//! written, so every error points into the file the user wrote.

use super::locate::Position;
use serde_saphyr::granit_parser::{Event, Parser, ScalarStyle};
use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpandError {
    pub position: Position,
    pub message: String,
}

/// The expanded text and where its rewritten scalars were.
#[derive(Debug, Clone, Default)]
pub struct Expanded {
    pub text: String,
    /// Rewritten scalars that start and end on one line: (line, new start column, new end
    /// column, original start column, original end column), 1-based, in document order.
    edits: Vec<(u64, u64, u64, u64, u64)>,
}

impl Expanded {
    /// The position in the file as written of `position` in the expanded text.
    pub fn original_position(&self, position: Position) -> Position {
        let mut shift: i64 = 0;
        for &(line, new_start, new_end, original_start, original_end) in &self.edits {
            if line != position.line || new_start > position.column {
                continue;
            }
            if position.column < new_end {
                // Inside a rewritten value: its start in the file.
                return Position {
                    line,
                    column: original_start,
                };
            }
            shift += (new_end - new_start) as i64 - (original_end - original_start) as i64;
        }
        Position {
            line: position.line,
            column: (position.column as i64 - shift).max(1) as u64,
        }
    }
}

/// Placeholder characters (Unicode private use, printable in YAML) that stand in for unquoted
/// references while the document is parsed: `{` and `,` in `${A:-x, y}` would otherwise be flow
/// indicators. Neighbouring references alternate between the two, so each run is one reference.
const PLACEHOLDERS: [char; 2] = ['\u{e000}', '\u{e001}'];

/// `text` with every unquoted `${...}` outside comments replaced by a run of one placeholder
/// character of the same length (so lines and columns are unchanged), and the references replaced,
/// in document order.
fn mask_references(text: &str) -> (String, Vec<String>) {
    let mut masked = String::with_capacity(text.len());
    let mut references = Vec::new();
    for line in text.split_inclusive('\n') {
        let (mut in_single, mut in_double, mut escaped) = (false, false, false);
        let mut previous: Option<char> = None;
        // A quote starts a quoted scalar only where a scalar can start (an apostrophe inside
        // `it's` does not).
        let at_scalar_start = |previous: Option<char>| {
            previous.is_none_or(|p| p.is_whitespace() || "[{,:-?".contains(p))
        };
        let mut chars = line.char_indices().peekable();
        while let Some((offset, c)) = chars.next() {
            if in_double {
                match c {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    '"' => in_double = false,
                    _ => {}
                }
            } else if in_single {
                if c == '\'' {
                    in_single = false;
                }
            } else {
                match c {
                    '\'' if at_scalar_start(previous) => in_single = true,
                    '"' if at_scalar_start(previous) => in_double = true,
                    '#' if previous.is_none_or(char::is_whitespace) => {
                        masked.push_str(&line[offset..]);
                        break;
                    }
                    '$' if previous != Some('$') && line[offset..].starts_with("${") => {
                        if let Some(end) = line[offset..].find('}') {
                            let reference = &line[offset..=offset + end];
                            let mark = PLACEHOLDERS[references.len() % 2];
                            masked.extend(std::iter::repeat_n(mark, reference.chars().count()));
                            references.push(reference.to_owned());
                            while chars.peek().is_some_and(|(at, _)| *at <= offset + end) {
                                chars.next();
                            }
                            previous = Some('}');
                            continue;
                        }
                    }
                    _ => {}
                }
            }
            masked.push(c);
            previous = Some(c);
        }
    }
    (masked, references)
}

/// `text` with each run of a placeholder character replaced by the next of `references`.
fn unmask(text: &str, references: &mut std::collections::VecDeque<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if PLACEHOLDERS.contains(&c) {
            while chars.peek() == Some(&c) {
                chars.next();
            }
            out.push_str(&references.pop_front().unwrap_or_default());
        } else {
            out.push(c);
        }
    }
    out
}

pub fn expand(text: &str, environment: &HashMap<String, String>) -> Result<Expanded, ExpandError> {
    let (masked, references) = mask_references(text);
    let mut references: std::collections::VecDeque<String> = references.into();
    let text = masked.as_str();
    // Character index → byte offset (the parser's markers count characters).
    let offsets: Vec<usize> = text
        .char_indices()
        .map(|(offset, _)| offset)
        .chain(std::iter::once(text.len()))
        .collect();
    let mut expanded = Expanded::default();
    let mut copied = 0usize;
    // Column shift so far on the current line, to place later edits of the same line.
    let mut line_shift: (u64, i64) = (0, 0);
    for item in Parser::new_from_str(text) {
        // A syntax error is reported as such, before any type error the deserializer would
        // report first (`batch_size: [10` is an unclosed list, not "expected string scalar").
        let (event, span) = item.map_err(|error| ExpandError {
            position: Position {
                line: error.marker().line() as u64,
                column: error.marker().col() as u64 + 1,
            },
            message: format!("this is not valid YAML: {}", error.info()),
        })?;
        let Event::Scalar(value, style, ..) = event else {
            continue;
        };
        let (Some(&start), Some(&end)) = (
            offsets.get(span.start.index()),
            offsets.get(span.end.index()),
        ) else {
            continue;
        };
        let source = &text[start..end];
        if start < copied || !(source.contains("${") || source.contains(PLACEHOLDERS)) {
            continue;
        }
        let position = Position {
            line: span.start.line() as u64,
            column: span.start.col() as u64 + 1,
        };
        // The text in front first: references are taken in document order.
        expanded
            .text
            .push_str(&unmask(&text[copied..start], &mut references));
        copied = end;
        if matches!(style, ScalarStyle::Literal | ScalarStyle::Folded) {
            let source = unmask(source, &mut references);
            expanded
                .text
                .push_str(&expand_block(&source, position, environment)?);
            continue;
        }
        let value = unmask(&value, &mut references);
        let value = expand_text(&value, position, environment, style == ScalarStyle::Plain)?;
        let mut replacement = if style == ScalarStyle::Plain && value.is_empty() {
            // An empty plain value is null, as `key:` with nothing after it was; `~` keeps a
            // flow collection's item (`[${E:-}]` is `[null]`, not `[]`).
            "~".to_owned()
        } else if style == ScalarStyle::Plain && plain_safe(&value) {
            value
        } else {
            serde_json::to_string(&value).expect("a string serializes")
        };
        let line_breaks = source.matches('\n').count();
        if line_breaks == 0 {
            if line_shift.0 != position.line {
                line_shift = (position.line, 0);
            }
            let new_start = (position.column as i64 + line_shift.1) as u64;
            let new_end = new_start + replacement.chars().count() as u64;
            let original_end = position.column + source.chars().count() as u64;
            expanded.edits.push((
                position.line,
                new_start,
                new_end,
                position.column,
                original_end,
            ));
            line_shift.1 += (new_end - new_start) as i64 - (original_end - position.column) as i64;
        }
        replacement.push_str(&"\n".repeat(line_breaks));
        expanded.text.push_str(&replacement);
    }
    expanded
        .text
        .push_str(&unmask(&text[copied..], &mut references));
    Ok(expanded)
}

/// A block scalar (`|`, `>`) with its references expanded in place: everything in it is
/// content, so only what could end the block or move its indentation is refused. A header line
/// (`| # comment`) is left as written.
fn expand_block(
    source: &str,
    position: Position,
    environment: &HashMap<String, String>,
) -> Result<String, ExpandError> {
    let (header, body) = match source.find('\n') {
        Some(end) if source.starts_with(['|', '>']) => source.split_at(end),
        _ => ("", source),
    };
    let expanded = expand_text(body, position, environment, false)?;
    // YAML takes a block's indentation from its first non-blank line: a value that changes it
    // there would end the block early or swallow what follows.
    let indentation = |text: &str| {
        text.lines()
            .find(|line| !line.trim().is_empty())
            .map(|line| line.len() - line.trim_start().len())
    };
    if indentation(body) != indentation(&expanded) {
        return Err(ExpandError {
            position,
            message: "a value at the start of a block scalar's first line must not be empty or start with white space: it would change the block's indentation; quote the value instead".into(),
        });
    }
    Ok(format!("{header}{expanded}"))
}

/// Whether `value` written as a plain scalar reads back as exactly this one scalar.
fn plain_safe(value: &str) -> bool {
    let Some(first) = value.chars().next() else {
        return false;
    };
    value.trim() == value
        && !"-?:,[]{}#&*!|>'\"%@`".contains(first)
        && !value.ends_with(':')
        && !value.contains(": ")
        && !value.contains(" #")
        && !value.chars().any(|c| c.is_control() || ",[]{}".contains(c))
}

/// Expands the references in one scalar's value (or a block scalar's text); `plain` scalars
/// report a reference at its own column (their value is their text), others at the scalar's
/// start. A value with a line break is refused (it would end a block scalar, and a line break in
/// a config value is a mistake).
fn expand_text(
    value: &str,
    scalar: Position,
    environment: &HashMap<String, String>,
    plain: bool,
) -> Result<String, ExpandError> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
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
        let position = if plain && !value[..value.len() - rest.len()].contains('\n') {
            Position {
                line: scalar.line,
                column: scalar.column + consumed_chars,
            }
        } else {
            scalar
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
                message: format!("the value of {name} contains a line break"),
            });
        }
        out.push_str(value);
        consumed_chars += after[..=end].chars().count() as u64;
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> HashMap<String, String> {
        HashMap::from([
            ("A".to_owned(), "alpha".to_owned()),
            ("EMPTY".to_owned(), String::new()),
            ("HASH".to_owned(), "s3cret #x".to_owned()),
            ("INJECT".to_owned(), "a, b: c".to_owned()),
            ("LIST".to_owned(), "x\", \"--evil".to_owned()),
        ])
    }

    fn text(input: &str) -> String {
        expand(input, &env()).unwrap().text
    }

    #[test]
    fn variables_and_defaults_expand() {
        assert_eq!(
            text("x: ${A}\ny: ${B:-beta}\nz: ${EMPTY:-e}\n"),
            "x: alpha\ny: beta\nz: e\n"
        );
    }

    #[test]
    fn comments_and_escapes_are_left_alone() {
        assert_eq!(
            text("x: 1 # uses ${UNSET}\n# ${UNSET}\ny: \"a # ${A}\"\nz: $${A} $5\n"),
            "x: 1 # uses ${UNSET}\n# ${UNSET}\ny: \"a # alpha\"\nz: \"${A} $5\"\n"
        );
    }

    #[test]
    fn an_unset_variable_names_its_line_and_column() {
        let error = expand("a: 1\nqueue: ${NOPE}\n", &env()).unwrap_err();
        assert_eq!(error.position, Position { line: 2, column: 8 });
        assert!(error.message.contains("NOPE is not set"));
    }

    // Hardening issue, item 12: values were pasted into the text, so ` #` cut a token and `,`
    // or `: ` injected keys and list items.
    #[test]
    fn a_value_cannot_change_the_documents_structure() {
        let parsed =
            |input: &str| -> serde_json::Value { serde_saphyr::from_str(&text(input)).unwrap() };
        assert_eq!(
            parsed("token: ${HASH}\n"),
            serde_json::json!({"token": "s3cret #x"})
        );
        assert_eq!(
            parsed("program: [run, ${INJECT}]\n"),
            serde_json::json!({"program": ["run", "a, b: c"]})
        );
        assert_eq!(
            parsed("program: [\"run\", \"${LIST}\"]\n"),
            serde_json::json!({"program": ["run", "x\", \"--evil"]})
        );
        assert_eq!(
            parsed("a: ${INJECT}\nb: 1\n"),
            serde_json::json!({"a": "a, b: c", "b": 1})
        );
        assert_eq!(
            parsed("f: {a: ${A}, b: [${A}${A}, ${NOPE:-x, y}]} # ${UNSET}\n"),
            serde_json::json!({"f": {"a": "alpha", "b": ["alphaalpha", "x, y"]}})
        );
    }

    #[test]
    fn block_scalars_are_expanded_in_place_and_keep_the_structure() {
        let parsed: serde_json::Value = serde_saphyr::from_str(&text(
            "a:\n  script: |\n    echo ${A} ${INJECT}\n    done\n  next: 1\n",
        ))
        .unwrap();
        assert_eq!(
            parsed,
            serde_json::json!({"a": {"script": "echo alpha a, b: c\ndone\n", "next": 1}})
        );
    }

    #[test]
    fn a_reference_in_a_comment_after_an_apostrophe_does_not_shift_later_values() {
        let parsed: serde_json::Value = serde_saphyr::from_str(&text(
            "greeting: it's fine # don't use ${HASH}\ntoken: ${A}\nq: [\"C:\\\\\", ${A}]\n",
        ))
        .unwrap();
        assert_eq!(
            parsed,
            serde_json::json!({"greeting": "it's fine", "token": "alpha", "q": ["C:\\", "alpha"]})
        );
    }

    // Hardening issue, item 20.
    #[test]
    fn a_syntax_error_is_reported_as_one() {
        let error = expand("a:\n  b: [10\n", &env()).unwrap_err();
        assert_eq!(
            error.message,
            "this is not valid YAML: unclosed bracket '['"
        );
        assert_eq!(error.position, Position { line: 2, column: 6 });
    }

    #[test]
    fn an_empty_plain_value_is_null_as_before() {
        let parsed: serde_json::Value =
            serde_saphyr::from_str(&text("token: ${EMPTY:-}\nother: 1\n")).unwrap();
        assert_eq!(parsed, serde_json::json!({"token": null, "other": 1}));
        let parsed: serde_json::Value =
            serde_saphyr::from_str(&text("list: [${EMPTY:-}, x]\none: [${EMPTY:-}]\n")).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!({"list": [null, "x"], "one": [null]})
        );
    }

    #[test]
    fn a_block_scalars_header_comment_is_not_expanded() {
        let parsed: serde_json::Value =
            serde_saphyr::from_str(&text("script: | # see ${UNSET}\n  echo ${A}\n")).unwrap();
        assert_eq!(parsed, serde_json::json!({"script": "echo alpha\n"}));
    }

    #[test]
    fn a_value_that_would_move_a_blocks_indentation_is_refused() {
        let mut environment = env();
        environment.insert("SPACED".into(), "  x".into());
        let error = expand("a:\n  s: |\n    ${SPACED}\n    y\n  b: 1\n", &environment).unwrap_err();
        assert!(
            error.message.contains("block scalar's first line"),
            "{error:?}"
        );
        // Later lines may start with anything: they are content.
        let ok = expand("a:\n  s: |\n    x\n    ${SPACED}\n  b: 1\n", &environment).unwrap();
        let parsed: serde_json::Value = serde_saphyr::from_str(&ok.text).unwrap();
        assert_eq!(parsed, serde_json::json!({"a": {"s": "x\n  x\n", "b": 1}}));
    }

    #[test]
    fn columns_after_a_rewritten_value_map_back_to_the_file() {
        let expanded = expand("x: {a: ${HASH}, b: oops}\n", &env()).unwrap();
        let oops = expanded.text.find("oops").unwrap() as u64 + 1;
        assert_eq!(
            expanded.original_position(Position {
                line: 1,
                column: oops
            }),
            Position {
                line: 1,
                column: 20
            }
        );
    }
}
