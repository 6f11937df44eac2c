//! The validator every part of the config is checked with: it collects every problem (with the
//! key path, which it turns into a line and column) instead of stopping at the first, so a user
//! fixes a file in one pass. Each check returns a usable value even when it fails, so the checks
//! after it still run.

use super::error::{ConfigError, plain_type_message};
use super::locate::KeyIndex;
use serde::de::DeserializeOwned;

pub struct Validator<'a> {
    file: &'a str,
    index: &'a KeyIndex,
    errors: Vec<ConfigError>,
    /// Most filter patterns per mapping (`max_filters_per_mapping`).
    pub max_filters: usize,
}

impl<'a> Validator<'a> {
    pub fn new(file: &'a str, index: &'a KeyIndex) -> Self {
        Self {
            file,
            index,
            errors: Vec::new(),
            max_filters: 5,
        }
    }

    /// The problems found, in document order.
    pub fn into_errors(mut self) -> Vec<ConfigError> {
        self.errors.sort_by_key(|e| e.position);
        self.errors
    }

    /// Records a problem at `path`.
    pub fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let path = path.into();
        // A path inside a value (a filter pattern's list entry) may have no key of its own:
        // point at the nearest enclosing key.
        let mut lookup = path.as_str();
        let position = loop {
            if let Some(position) = self.index.position_of(lookup) {
                break Some(position);
            }
            match lookup.rfind(['.', '[']) {
                Some(cut) if cut > 0 => lookup = &lookup[..cut],
                _ => break None,
            }
        };
        self.errors.push(ConfigError {
            file: self.file.to_owned(),
            position,
            path,
            message: message.into(),
        });
    }

    /// A concurrency setting: `default` when absent, else 1..=`max`.
    pub fn concurrency(&mut self, path: &str, value: Option<u32>, default: u32, max: u32) -> usize {
        let value = value.unwrap_or(default);
        if !(1..=max).contains(&value) {
            self.error(path, format!("must be 1..={max} (got {value})"));
        }
        value.clamp(1, max) as usize
    }

    /// Reads a block whose keys depend on something read before it (a mapping's `retry`, whose
    /// keys are the source kind's): `T` refuses keys it does not have, and values are read as
    /// everywhere else in the file (serde-saphyr's rules). A top-level key of another kind is
    /// reported as "not a setting of `kind` sources" followed by `advice`. A key that cannot be
    /// read is reported and left out, and the rest read again, so that every problem is found at
    /// once; if nothing can be read the block is `T::default()`.
    pub fn block<T: DeserializeOwned + Default>(
        &mut self,
        path: &str,
        raw: Option<serde_json::Value>,
        kind: &str,
        advice: &str,
    ) -> T {
        let Some(mut value) = raw.filter(|v| !v.is_null()) else {
            return T::default();
        };
        if !value.is_object() {
            // serde would read a list as the fields in order; a block is keys and values.
            self.error(path, "expected keys and values, not a list or a value");
            return T::default();
        }
        loop {
            let (at, message) = match read_as_yaml::<T>(&value) {
                Ok(block) => return block,
                Err(problem) => problem,
            };
            let message = match unknown_field(&message) {
                // A key of another kind; a typo deeper down keeps serde's list of known keys.
                Some(name) if at == name || at.is_empty() => {
                    format!("is not a setting of {kind} sources; {advice}")
                }
                _ => message,
            };
            match at.chars().next() {
                None => self.error(path, message),
                Some('[') => self.error(format!("{path}{at}"), message),
                Some(_) => self.error(format!("{path}.{at}"), message),
            }
            // Leave out the top-level key the problem is under, and read the rest again.
            let object = value.as_object_mut().expect("checked to be an object");
            let top = object
                .keys()
                .filter(|key| {
                    at.strip_prefix(key.as_str())
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
                })
                .max_by_key(|key| key.len())
                .cloned();
            match top.and_then(|key| object.remove(&key)) {
                Some(_) => {}
                None => return T::default(),
            }
        }
    }
}

/// Reads `value` into `T` as the config file's own values are read (serde-saphyr: a quoted
/// number where a number is asked for is a number), by writing it out as YAML again. A problem
/// comes back as the key path under `value` (`backoff.initial`, empty for the block itself)
/// and what is wrong.
fn read_as_yaml<T: DeserializeOwned>(value: &serde_json::Value) -> Result<T, (String, String)> {
    let text = serde_saphyr::to_string(value).map_err(|e| (String::new(), e.to_string()))?;
    let mut failed_at = None;
    let read = serde_saphyr::with_deserializer_from_str(&text, |deserializer| {
        serde_path_to_error::deserialize(deserializer).map_err(|error| {
            failed_at = Some(error.path().to_string());
            error.into_inner()
        })
    });
    read.map_err(|error| {
        let mut message = error.without_snippet().to_string();
        // The location is in the text written here, not the user's file; the caller places it.
        if let Some(cut) = message.rfind(" at line ") {
            message.truncate(cut);
        }
        let at = failed_at.filter(|at| at != ".").unwrap_or_default();
        let at = match unknown_field(&message) {
            // The path may or may not already end at the unknown key.
            Some(name) if !at.ends_with(name) => {
                if at.is_empty() {
                    name.to_owned()
                } else {
                    format!("{at}.{name}")
                }
            }
            _ => at,
        };
        (at, plain_type_message(message))
    })
}

/// The field named by serde's "unknown field `name`, expected ..." message.
fn unknown_field(message: &str) -> Option<&str> {
    message.strip_prefix("unknown field `")?.split('`').next()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Block {
        count: Option<u32>,
        nested: Option<Nested>,
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Nested {
        on: Option<bool>,
    }

    fn read(text: &str) -> (Block, Vec<ConfigError>) {
        let document = format!("block: {text}\n");
        let index = KeyIndex::build(&document);
        let mut validator = Validator::new("f.yaml", &index);
        let value: serde_json::Value =
            serde_saphyr::from_str::<serde_json::Value>(&document).unwrap()["block"].clone();
        let block = validator.block::<Block>("block", Some(value), "test", "use count");
        (block, validator.into_errors())
    }

    #[test]
    fn a_block_reads_its_own_keys() {
        let (block, errors) = read("{ count: 3, nested: { on: true } }");
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(block.count, Some(3));
        assert_eq!(block.nested, Some(Nested { on: Some(true) }));
    }

    #[test]
    fn a_key_of_another_kind_is_refused_at_its_position_with_the_advice() {
        let (block, errors) = read("{ count: 3, other: 1 }");
        assert_eq!(block.count, Some(3), "the other keys are still read");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].path, "block.other");
        assert_eq!(
            errors[0].message,
            "is not a setting of test sources; use count"
        );
        assert_eq!(errors[0].position.map(|p| p.line), Some(1));
    }

    #[test]
    fn a_nested_type_error_names_its_path_and_the_expected_value() {
        let (_, errors) = read("{ nested: { on: maybe } }");
        assert_eq!(errors[0].path, "block.nested.on");
        assert_eq!(errors[0].message, "expected true or false");
        let (_, errors) = read("{ count: -3 }");
        assert_eq!(errors[0].path, "block.count");
        assert_eq!(errors[0].message, "expected a whole number, 0 or more");
    }

    #[test]
    fn every_bad_key_is_reported_and_the_good_ones_read() {
        let (block, errors) = read("{ one: 1, count: 3, nested: { on: maybe }, two: 2 }");
        assert_eq!(block.count, Some(3));
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["block.one", "block.nested.on", "block.two"]);
        let (block, errors) = read("[1, 2]");
        assert_eq!(block, Block::default());
        assert_eq!(errors[0].path, "block");
        assert_eq!(
            errors[0].message,
            "expected keys and values, not a list or a value"
        );
    }

    // As everywhere else in the file: `"3"` (such as a quoted `${VAR}`) reads as a number.
    #[test]
    fn values_are_read_as_the_rest_of_the_file_reads_them() {
        let (block, errors) = read("{ count: \"3\", nested: { on: \"true\" } }");
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(block.count, Some(3));
        assert_eq!(block.nested, Some(Nested { on: Some(true) }));
    }

    #[test]
    fn a_typo_below_the_top_keeps_the_list_of_known_keys() {
        let (_, errors) = read("{ nested: { of: true } }");
        assert_eq!(errors[0].path, "block.nested.of");
        assert!(
            errors[0]
                .message
                .starts_with("unknown field `of`, expected"),
            "{}",
            errors[0].message
        );
    }

    #[test]
    fn a_key_with_a_dot_is_left_out_and_the_rest_still_checked() {
        let (_, errors) = read("{ \"a.b\": 1, count: x }");
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["block.a.b", "block.count"]);
    }

    #[test]
    fn an_absent_or_null_block_is_the_default() {
        let (block, errors) = read("null");
        assert!(errors.is_empty());
        assert_eq!(block, Block::default());
    }
}
