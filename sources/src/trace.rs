//! W3C trace context carried by records, so an invocation continues the trace of the record that
//! caused it. Sources read it from what producers attach: SQS's `AWSTraceHeader` system attribute
//! (X-Ray format) or a `traceparent` message attribute, a Kafka `traceparent` header.
//!
//! Malformed values are ignored (the invocation then starts a new trace); they never fail a record.

/// A parent trace context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits: the span of the producer.
    pub parent_id: String,
    pub sampled: bool,
}

fn is_hex(text: &str, len: usize) -> bool {
    text.len() == len
        && text.bytes().all(|b| b.is_ascii_hexdigit())
        && text.bytes().any(|b| b != b'0')
}

impl TraceContext {
    /// A W3C `traceparent` header value: `00-<trace id>-<parent id>-<flags>`.
    pub fn parse_traceparent(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let (version, trace_id, parent_id, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2 || version == "ff" || !is_hex(trace_id, 32) || !is_hex(parent_id, 16)
        {
            return None;
        }
        let flags = u8::from_str_radix(flags, 16).ok()?;
        Some(Self {
            trace_id: trace_id.to_ascii_lowercase(),
            parent_id: parent_id.to_ascii_lowercase(),
            sampled: flags & 1 == 1,
        })
    }

    /// An X-Ray trace header: `Root=1-<8 hex time>-<24 hex>;Parent=<16 hex>;Sampled=1`.
    pub fn parse_xray(value: &str) -> Option<Self> {
        let mut root = None;
        let mut parent = None;
        let mut sampled = false;
        for field in value.split(';') {
            let (key, field_value) = field.trim().split_once('=')?;
            match key {
                "Root" => root = Some(field_value),
                "Parent" => parent = Some(field_value),
                "Sampled" => sampled = field_value == "1",
                _ => {}
            }
        }
        let mut root_parts = root?.split('-');
        let (version, time, random) = (root_parts.next()?, root_parts.next()?, root_parts.next()?);
        let trace_id = format!("{time}{random}");
        let parent_id = parent?;
        if version != "1" || !is_hex(&trace_id, 32) || !is_hex(parent_id, 16) {
            return None;
        }
        Some(Self {
            trace_id: trace_id.to_ascii_lowercase(),
            parent_id: parent_id.to_ascii_lowercase(),
            sampled,
        })
    }

    /// The `traceparent` of a child span with `span_id` (16 hex digits).
    pub fn child(&self, span_id: &str) -> String {
        let flags = if self.sampled { "01" } else { "00" };
        format!("00-{}-{span_id}-{flags}", self.trace_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_is_parsed_and_malformed_ones_are_ignored() {
        let parsed = TraceContext::parse_traceparent(
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        )
        .unwrap();
        assert_eq!(parsed.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parsed.parent_id, "00f067aa0ba902b7");
        assert!(parsed.sampled);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-xyz92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse_traceparent(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn an_xray_header_becomes_the_same_trace() {
        let parsed = TraceContext::parse_xray(
            "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1",
        )
        .unwrap();
        assert_eq!(parsed.trace_id, "5759e988bd862e3fe1be46a994272793");
        assert_eq!(parsed.parent_id, "53995c3f42cd8ad8");
        assert!(parsed.sampled);
        assert_eq!(
            parsed.child("1111111111111111"),
            "00-5759e988bd862e3fe1be46a994272793-1111111111111111-01"
        );
        assert_eq!(
            TraceContext::parse_xray("Root=1-5759e988-bd86;Sampled=1"),
            None
        );
        assert_eq!(TraceContext::parse_xray("garbage"), None);
    }
}
