//! Where each key of a YAML document is: key path (`mappings[0].source.sqs.batch_size`) to line
//! and column, and back. Validation errors use it to point at the offending value; parse errors
//! use it to name the key path of a position.

use serde_saphyr::granit_parser::{Event, Parser};
use std::collections::HashMap;

/// 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub line: u64,
    pub column: u64,
}

#[derive(Debug, Default)]
pub struct KeyIndex {
    keys: HashMap<String, Position>,
    values: HashMap<String, Position>,
    /// Every key and value position with its path, in document order.
    ordered: Vec<(Position, String)>,
}

enum Frame {
    Map {
        path: String,
        expecting_key: bool,
        current_key: Option<String>,
    },
    Seq {
        path: String,
        next_index: usize,
    },
    /// A complex key (a mapping used as a key): its contents have no path.
    Ignored,
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

impl KeyIndex {
    /// Indexes `text`; a document that does not parse yields what was read before the error.
    pub fn build(text: &str) -> Self {
        let mut index = KeyIndex::default();
        let mut stack: Vec<Frame> = Vec::new();
        let parser = Parser::new_from_str(text);
        for item in parser {
            let Ok((event, span)) = item else { break };
            let position = Position {
                line: span.start.line() as u64,
                column: span.start.col() as u64 + 1,
            };
            match event {
                Event::Scalar(..)
                | Event::MappingStart(..)
                | Event::SequenceStart(..)
                | Event::Alias(..) => {
                    let starts_map = matches!(event, Event::MappingStart(..));
                    let starts_seq = matches!(event, Event::SequenceStart(..));
                    let value_path = match stack.last_mut() {
                        None => Some(String::new()),
                        Some(Frame::Ignored) => None,
                        Some(Frame::Map {
                            path,
                            expecting_key,
                            current_key,
                        }) => {
                            if *expecting_key {
                                *expecting_key = false;
                                if let Event::Scalar(key, ..) = &event {
                                    let key_path = join(path, key);
                                    index.keys.insert(key_path.clone(), position);
                                    index.ordered.push((position, key_path));
                                    *current_key = Some(key.to_string());
                                } else {
                                    *current_key = None;
                                }
                                if starts_map || starts_seq {
                                    stack.push(Frame::Ignored);
                                }
                                continue;
                            }
                            *expecting_key = true;
                            current_key.as_ref().map(|key| join(path, key))
                        }
                        Some(Frame::Seq { path, next_index }) => {
                            let item_path = format!("{path}[{next_index}]");
                            *next_index += 1;
                            Some(item_path)
                        }
                    };
                    if let Some(value_path) = &value_path {
                        index.values.insert(value_path.clone(), position);
                        index.ordered.push((position, value_path.clone()));
                    }
                    match (value_path, starts_map, starts_seq) {
                        (Some(path), true, _) => stack.push(Frame::Map {
                            path,
                            expecting_key: true,
                            current_key: None,
                        }),
                        (Some(path), _, true) => stack.push(Frame::Seq {
                            path,
                            next_index: 0,
                        }),
                        (None, true, _) | (None, _, true) => stack.push(Frame::Ignored),
                        _ => {}
                    }
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                }
                _ => {}
            }
        }
        index.ordered.sort();
        index
    }

    /// Where the value at `path` is (or its key, or its nearest ancestor's).
    pub fn position_of(&self, path: &str) -> Option<Position> {
        let mut current = path.to_owned();
        loop {
            if let Some(position) = self
                .values
                .get(&current)
                .or_else(|| self.keys.get(&current))
            {
                return Some(*position);
            }
            let cut = current.rfind(['.', '['])?;
            current.truncate(cut);
        }
    }

    /// Where the key at `path` is, falling back to its value.
    pub fn key_position_of(&self, path: &str) -> Option<Position> {
        self.keys
            .get(path)
            .copied()
            .or_else(|| self.position_of(path))
    }

    /// The key path at or just before `position`.
    pub fn path_at(&self, position: Position) -> Option<&str> {
        let after = self.ordered.partition_point(|(p, _)| *p <= position);
        after
            .checked_sub(1)
            .map(|index| self.ordered[index].1.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "version: 1\nmappings:\n  - name: a\n    source:\n      sqs:\n        batch_size: 20\n  - name: b\n    source: { sqs: { queue_url: x } }\n";

    #[test]
    fn paths_map_to_lines_and_columns() {
        let index = KeyIndex::build(DOC);
        assert_eq!(
            index.position_of("mappings[0].source.sqs.batch_size"),
            Some(Position {
                line: 6,
                column: 21
            })
        );
        assert_eq!(
            index.key_position_of("mappings[0].source.sqs.batch_size"),
            Some(Position { line: 6, column: 9 })
        );
        assert_eq!(
            index.position_of("mappings[1].source.sqs.queue_url"),
            Some(Position {
                line: 8,
                column: 33
            })
        );
        assert_eq!(
            index.position_of("mappings[1].name"),
            Some(Position {
                line: 7,
                column: 11
            })
        );
    }

    #[test]
    fn missing_paths_fall_back_to_the_nearest_ancestor() {
        let index = KeyIndex::build(DOC);
        assert_eq!(
            index.position_of("mappings[0].source.sqs.max_concurrency"),
            index.position_of("mappings[0].source.sqs")
        );
    }

    #[test]
    fn positions_map_back_to_paths() {
        let index = KeyIndex::build(DOC);
        assert_eq!(
            index.path_at(Position { line: 6, column: 9 }),
            Some("mappings[0].source.sqs.batch_size")
        );
        assert_eq!(
            index.path_at(Position {
                line: 6,
                column: 25
            }),
            Some("mappings[0].source.sqs.batch_size")
        );
    }
}
