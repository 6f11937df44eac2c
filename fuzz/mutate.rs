//! Seed inputs and their mutations for sluice's fuzz tests: property tests (proptest, on the
//! stable toolchain) that feed every parser of outside input with damaged copies of real inputs.
//!
//! Each crate's `fuzz` test module includes this file with `#[path]`, so the corpus and the
//! mutations are one. Seeds live in `fuzz/corpus/<target>/`; an input proptest finds failing is
//! kept in the crate's `proptest-regressions/` and replayed first on every run. The number of
//! cases per property is `SLUICE_FUZZ_CASES` (default 256, `scripts/fuzz` runs long).

#![allow(dead_code)]

use proptest::prelude::*;
use std::path::PathBuf;

/// Cases per property: `SLUICE_FUZZ_CASES`, else 256.
pub fn cases() -> u32 {
    std::env::var("SLUICE_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(256)
}

pub fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        // Shrinking a damaged config can take long; the failing input is what matters.
        max_shrink_iters: 2_000,
        ..ProptestConfig::default()
    }
}

fn corpus_dir(target: &str) -> PathBuf {
    // A member crate's manifest sits one level below the workspace root; the root package's
    // (the end-to-end tests) at it.
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = if manifest.join("fuzz/corpus").is_dir() {
        manifest
    } else {
        manifest.join("..")
    };
    root.join("fuzz/corpus").join(target)
}

/// The seeds of `target`, in name order.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = corpus_dir(target);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading the fuzz corpus {}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no seeds in {}", dir.display());
    paths
        .iter()
        .map(|p| std::fs::read(p).expect("a seed"))
        .collect()
}

/// One change to an input. Positions wrap around the input's length.
#[derive(Debug, Clone)]
pub enum Edit {
    Flip { at: usize, byte: u8 },
    Delete { at: usize, len: usize },
    Insert { at: usize, bytes: Vec<u8> },
    Duplicate { at: usize, len: usize },
    Truncate { at: usize },
}

/// Bytes that change how a parser reads what follows.
const TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b":",
    b",",
    b"${",
    b"${A:-",
    b"$${",
    b"\n",
    b"  ",
    b"- ",
    b"#",
    b"\\u0000",
    b"\\ud800",
    b"0",
    b"-1",
    b"1e999",
    b"99999999999999999999",
    b"null",
    b"true",
    b"\xc3\xa9",
    b"\xf0\x9f\x98\x80",
    b"\xff",
    b"&a",
    b"*a",
    b"!!binary",
    b"|",
    b">",
    b"%",
    b"'",
    b"\t",
    b"\r\n",
    b"~",
    b"<<:",
    b"---",
    b"...",
];

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Edit::Flip { at, byte }),
        (any::<usize>(), 1usize..64).prop_map(|(at, len)| Edit::Delete { at, len }),
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(at, t)| Edit::Insert {
            at,
            bytes: TOKENS[t].to_vec()
        }),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(at, bytes)| Edit::Insert { at, bytes }),
        (any::<usize>(), 1usize..256).prop_map(|(at, len)| Edit::Duplicate { at, len }),
        any::<usize>().prop_map(|at| Edit::Truncate { at }),
    ]
}

pub fn apply(seed: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut data = seed.to_vec();
    for edit in edits {
        let len = data.len().max(1);
        match edit {
            Edit::Flip { at, byte } => {
                if !data.is_empty() {
                    data[at % len] = *byte;
                }
            }
            Edit::Delete { at, len: n } => {
                let start = at % len;
                let end = (start + n).min(data.len());
                if start < end {
                    data.drain(start..end);
                }
            }
            Edit::Insert { at, bytes } => {
                let at = (at % (data.len() + 1)).min(data.len());
                data.splice(at..at, bytes.iter().copied());
            }
            Edit::Duplicate { at, len: n } => {
                let start = (at % len).min(data.len());
                let end = (start + n).min(data.len());
                let copy = data[start..end].to_vec();
                data.splice(end..end, copy);
            }
            Edit::Truncate { at } => data.truncate(at % len),
        }
    }
    data
}

/// A seed of `target` with up to eight edits (sometimes none: the seed itself must parse).
pub fn mutated(target: &str) -> impl Strategy<Value = Vec<u8>> {
    let seeds = seeds(target);
    (0..seeds.len(), proptest::collection::vec(edit(), 0..8))
        .prop_map(move |(index, edits)| apply(&seeds[index], &edits))
}

/// Arbitrary JSON, nested a few levels, with the keys parsers look for among the random ones.
pub fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let key = prop_oneof![
        Just("batchItemFailures".to_owned()),
        Just("itemIdentifier".to_owned()),
        Just("partition".to_owned()),
        Just("offset".to_owned()),
        Just("Records".to_owned()),
        Just("s3".to_owned()),
        Just("object".to_owned()),
        Just("key".to_owned()),
        Just("body".to_owned()),
        Just("numeric".to_owned()),
        Just("anything-but".to_owned()),
        Just("prefix".to_owned()),
        Just("exists".to_owned()),
        Just("$or".to_owned()),
        ".{0,8}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_wrap_around_and_never_panic_on_empty_input() {
        let edits = vec![
            Edit::Flip { at: 99, byte: b'x' },
            Edit::Delete { at: 5, len: 3 },
            Edit::Duplicate { at: 7, len: 100 },
            Edit::Insert {
                at: 1000,
                bytes: b"${".to_vec(),
            },
            Edit::Truncate { at: 3 },
        ];
        // Empty input: only the insertion takes, then the truncation wraps to 1 of 2 bytes.
        assert_eq!(apply(b"", &edits), b"$");
        let out = apply(b"abcdef", &[Edit::Delete { at: 1, len: 2 }]);
        assert_eq!(out, b"adef");
        let out = apply(b"abc", &[Edit::Duplicate { at: 0, len: 2 }]);
        assert_eq!(out, b"ababc");
    }
}
