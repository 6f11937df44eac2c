//! Records aggregated by the Kinesis Producer Library (KPL), and their user records.
//!
//! The KPL packs many user records into one Kinesis record: the magic bytes `F3 89 9A C2`, an
//! `AggregatedRecord` protocol buffer (a table of partition keys, a table of explicit hash keys,
//! and the records, each with its key indexes and data), then the 16-byte MD5 of that protocol
//! buffer. [`deaggregate`] unpacks it as the Kinesis Client Library does: a record without the
//! magic bytes, with a wrong digest, or whose protocol buffer does not decode (or names a key
//! that is not in its table) is not an aggregate, and is handed on as it is — never dropped.
//!
//! [`aggregate`] is the other direction, written from the same format description; tests use it
//! (and a golden byte string built by hand) to produce aggregated records.

use md5::{Digest, Md5};
use prost::Message;

/// The first four bytes of an aggregated record.
pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];
const DIGEST_LEN: usize = 16;

#[derive(Clone, PartialEq, Message)]
struct AggregatedRecord {
    #[prost(string, repeated, tag = "1")]
    partition_key_table: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    explicit_hash_key_table: Vec<String>,
    #[prost(message, repeated, tag = "3")]
    records: Vec<AggregatedEntry>,
}

#[derive(Clone, PartialEq, Message)]
struct AggregatedEntry {
    #[prost(uint64, required, tag = "1")]
    partition_key_index: u64,
    #[prost(uint64, optional, tag = "2")]
    explicit_hash_key_index: Option<u64>,
    #[prost(bytes = "vec", required, tag = "3")]
    data: Vec<u8>,
    #[prost(message, repeated, tag = "4")]
    tags: Vec<Tag>,
}

#[derive(Clone, PartialEq, Message)]
struct Tag {
    #[prost(string, required, tag = "1")]
    key: String,
    #[prost(string, optional, tag = "2")]
    value: Option<String>,
}

/// One user record of an aggregated Kinesis record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub partition_key: String,
    pub explicit_hash_key: Option<String>,
    pub data: Vec<u8>,
}

/// The user records of `data` in order (their index is the sub-sequence number), or `None` when
/// `data` is not a KPL aggregate (see the module docs).
pub fn deaggregate(data: &[u8]) -> Option<Vec<UserRecord>> {
    let body = data.strip_prefix(&MAGIC)?;
    let split = body.len().checked_sub(DIGEST_LEN)?;
    let (message, digest) = body.split_at(split);
    if Md5::digest(message).as_slice() != digest {
        return None;
    }
    let aggregated = AggregatedRecord::decode(message).ok()?;
    aggregated
        .records
        .into_iter()
        .map(|entry| {
            let key = |table: &[String], index: u64| {
                usize::try_from(index)
                    .ok()
                    .and_then(|index| table.get(index))
                    .cloned()
            };
            Some(UserRecord {
                partition_key: key(&aggregated.partition_key_table, entry.partition_key_index)?,
                explicit_hash_key: match entry.explicit_hash_key_index {
                    Some(index) => Some(key(&aggregated.explicit_hash_key_table, index)?),
                    None => None,
                },
                data: entry.data,
            })
        })
        .collect()
}

/// `records` as one KPL aggregate: each partition key stored once in the table.
pub fn aggregate(records: &[UserRecord]) -> Vec<u8> {
    let mut message = AggregatedRecord::default();
    let index_of = |table: &mut Vec<String>, key: &str| -> u64 {
        let index = table.iter().position(|k| k == key).unwrap_or_else(|| {
            table.push(key.to_owned());
            table.len() - 1
        });
        index as u64
    };
    for record in records {
        let partition_key_index = index_of(&mut message.partition_key_table, &record.partition_key);
        let explicit_hash_key_index = record
            .explicit_hash_key
            .as_deref()
            .map(|key| index_of(&mut message.explicit_hash_key_table, key));
        message.records.push(AggregatedEntry {
            partition_key_index,
            explicit_hash_key_index,
            data: record.data.clone(),
            tags: Vec::new(),
        });
    }
    let encoded = message.encode_to_vec();
    let mut out = Vec::with_capacity(MAGIC.len() + encoded.len() + DIGEST_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&encoded);
    out.extend_from_slice(Md5::digest(&encoded).as_slice());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(key: &str, data: &str) -> UserRecord {
        UserRecord {
            partition_key: key.into(),
            explicit_hash_key: None,
            data: data.as_bytes().to_vec(),
        }
    }

    /// Two user records, keys "a" and "b", data "x" and "yz", written byte by byte from the
    /// format's description (protocol buffer wire format: field number << 3 | wire type).
    fn golden() -> Vec<u8> {
        let message: Vec<u8> = vec![
            0x0A, 0x01, b'a', // partition_key_table: "a"
            0x0A, 0x01, b'b', // partition_key_table: "b"
            0x1A, 0x05, 0x08, 0x00, 0x1A, 0x01, b'x', // records: {key 0, data "x"}
            0x1A, 0x06, 0x08, 0x01, 0x1A, 0x02, b'y', b'z', // records: {key 1, data "yz"}
        ];
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&message);
        bytes.extend_from_slice(Md5::digest(&message).as_slice());
        bytes
    }

    #[test]
    fn a_hand_built_aggregate_gives_its_user_records_in_order() {
        assert_eq!(
            deaggregate(&golden()),
            Some(vec![user("a", "x"), user("b", "yz")])
        );
    }

    #[test]
    fn the_encoder_writes_the_hand_built_bytes() {
        assert_eq!(aggregate(&[user("a", "x"), user("b", "yz")]), golden());
    }

    #[test]
    fn explicit_hash_keys_and_shared_partition_keys_round_trip() {
        let records = vec![
            UserRecord {
                explicit_hash_key: Some("340282366920938463463374607431768211455".into()),
                ..user("k", "1")
            },
            user("k", "2"),
            user("other", ""),
        ];
        assert_eq!(deaggregate(&aggregate(&records)), Some(records));
    }

    #[test]
    fn anything_that_is_not_an_aggregate_is_left_as_it_is() {
        assert_eq!(deaggregate(b"{\"plain\": true}"), None);
        assert_eq!(deaggregate(&MAGIC), None, "too short for a digest");
        let mut wrong_digest = golden();
        *wrong_digest.last_mut().unwrap() ^= 1;
        assert_eq!(deaggregate(&wrong_digest), None);
        // A valid digest over bytes that are not an AggregatedRecord.
        let garbage = [0xFF, 0xFF, 0xFF];
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&garbage);
        bytes.extend_from_slice(Md5::digest(garbage).as_slice());
        assert_eq!(deaggregate(&bytes), None);
        // A record naming a partition key the table does not have.
        let message = [0x0A, 0x01, b'a', 0x1A, 0x05, 0x08, 0x07, 0x1A, 0x01, b'x'];
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&message);
        bytes.extend_from_slice(Md5::digest(message).as_slice());
        assert_eq!(deaggregate(&bytes), None);
    }

    #[test]
    fn an_empty_aggregate_has_no_user_records() {
        assert_eq!(deaggregate(&aggregate(&[])), Some(Vec::new()));
    }
}
