//! Lambda's tumbling windows for a sharded stream (`tumbling_window` on `kinesis` and
//! `dynamodb_stream`; semantics.md §8): the state one shard's handler builds over a window.
//!
//! Guarantees:
//! - a record belongs to the window `[k·length, (k+1)·length)` (since the Unix epoch) holding its
//!   arrival time; a record that arrives out of order, or late for a window already closed, joins
//!   the window open then (windows never reopen, and never overlap);
//! - no invocation mixes windows; each carries `window`, `state` (the `state` the previous
//!   successful invocation of the window returned, `{}` at its start), `shardId`,
//!   `eventSourceARN`, `isFinalInvokeForWindow` and `isWindowTerminatedEarly`;
//! - a response without a `state` object fails the invocation (`InvalidWindowState`), which the
//!   stream policy retries like any failure; the state is taken only from invocations the policy
//!   counts as (partly) successful;
//! - the state is stored with the checkpoint, in the same write ([`OpenWindow`]): it is always
//!   the state of exactly the records up to the checkpoint, so a restart, or another instance
//!   taking the shard over, resumes the window without counting a record twice;
//! - a window closes when a record of a later window is read, when the shard has been read up
//!   to past the window's end and every record of it was handled, or at the end of the shard.
//!   Its final invocation (no records, `isFinalInvokeForWindow: true`) is retried until it
//!   succeeds, blocking the shard as Lambda does; only then is the state dropped;
//! - a state larger than 1 MiB ends the window early: the final invocation carries it with
//!   `isWindowTerminatedEarly: true` and the same window goes on with a fresh state. Nothing is
//!   stored meanwhile, so a state above the limit is never written to the checkpoint store.

use crate::health::MappingHealthHandle;
use crate::runtime::invoker::Invoker;
use crate::runtime::retry::retry_delay;
use crate::targets::Invocation;
use crate::telemetry::MappingMetrics;
use serde_json::Value;
use sluice_policies::{ErrorInfo, Outcome};
use sluice_sources::checkpoint::OpenWindow;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Lambda's limit on a shard's window state; a larger one ends the window early.
pub const MAX_WINDOW_STATE_BYTES: usize = 1024 * 1024;

/// The error type of a response that carries no `state`.
pub const INVALID_WINDOW_STATE: &str = "InvalidWindowState";

/// A window's bounds, in milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start_ms: u64,
    pub end_ms: u64,
}

impl Span {
    /// The window of `length` holding the instant `at_ms`.
    pub fn holding(at_ms: u64, length: Duration) -> Self {
        let length_ms = (length.as_millis() as u64).max(1);
        let start_ms = at_ms - at_ms % length_ms;
        Span {
            start_ms,
            end_ms: start_ms + length_ms,
        }
    }
}

/// Which window each record of a lane joins, in the lane's order (see the module docs).
#[derive(Debug, Clone)]
pub struct WindowCursor {
    length: Duration,
    /// The window records are being gathered for (restored from the checkpoint, or opened by a
    /// record), until it is closed.
    pub current: Option<Span>,
    /// The end of the last window closed: nothing joins a window before it.
    closed_end_ms: u64,
}

impl WindowCursor {
    pub fn new(length: Duration, restored: Option<Span>) -> Self {
        WindowCursor {
            length,
            current: restored,
            closed_end_ms: 0,
        }
    }

    /// The window a record that arrived at `arrived_ms` joins, and the window it closes first
    /// (when it is the first record of a later window).
    pub fn place(&mut self, arrived_ms: u64) -> (Span, Option<Span>) {
        if let Some(current) = self.current
            && arrived_ms < current.end_ms
        {
            return (current, None);
        }
        let floor = self
            .current
            .map_or(self.closed_end_ms, |current| current.end_ms)
            .max(self.closed_end_ms);
        let mut span = Span::holding(arrived_ms.max(floor), self.length);
        // A window restored under another `tumbling_window` length may end off this one's
        // multiples: the next window starts where it ended, never inside it.
        span.start_ms = span.start_ms.max(floor);
        let closed = self.close();
        self.current = Some(span);
        (span, closed)
    }

    /// Closes the current window, if any.
    pub fn close(&mut self) -> Option<Span> {
        let closed = self.current.take()?;
        self.closed_end_ms = self.closed_end_ms.max(closed.end_ms);
        Some(closed)
    }
}

/// One shard's window state (see the module docs). Owned by the shard's checkpoint, so the state
/// and the checkpoint are snapshotted together.
pub struct Windows {
    pub length: Duration,
    shard_id: String,
    stream_arn: String,
    inner: Mutex<Inner>,
    /// Every record that arrived before this (ms since the epoch) was handed to the lane.
    caught_up_ms: AtomicU64,
}

#[derive(Default)]
struct Inner {
    /// The open window and the state of the records up to the checkpoint.
    open: Option<OpenWindow>,
    /// The state the last successful invocation returned, until its records finish.
    pending: Option<String>,
    /// The state the invocation in flight returned, until the policy judged it.
    candidate: Option<String>,
    /// Raised by every change of the open window; `stored` is the one last written.
    generation: u64,
    stored: u64,
    /// The state is over the limit: the window ends early before anything is stored.
    oversized: bool,
}

impl Windows {
    pub fn new(
        length: Duration,
        shard_id: &str,
        stream_arn: &str,
        restored: Option<OpenWindow>,
    ) -> Self {
        Windows {
            length,
            shard_id: shard_id.to_owned(),
            stream_arn: stream_arn.to_owned(),
            inner: Mutex::new(Inner {
                open: restored,
                ..Inner::default()
            }),
            caught_up_ms: AtomicU64::new(0),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("window lock")
    }

    /// The window restored from the checkpoint store, where the lane's cursor starts.
    pub fn restored(&self) -> Option<Span> {
        self.inner().open.as_ref().map(|open| Span {
            start_ms: open.start_ms,
            end_ms: open.end_ms,
        })
    }

    /// The reader handed every record that arrived before `at` to the lane.
    pub fn caught_up(&self, at: Duration) {
        self.caught_up_ms
            .fetch_max(at.as_millis() as u64, Ordering::Release);
    }

    pub fn caught_up_ms(&self) -> u64 {
        self.caught_up_ms.load(Ordering::Acquire)
    }

    /// A batch of `span` is about to run: opens it with a fresh state unless it is open.
    pub fn begin(&self, span: Span) {
        let mut inner = self.inner();
        if inner
            .open
            .as_ref()
            .is_some_and(|open| open.start_ms == span.start_ms)
        {
            return;
        }
        inner.open = Some(OpenWindow {
            start_ms: span.start_ms,
            end_ms: span.end_ms,
            state: "{}".into(),
        });
        inner.pending = None;
        inner.generation += 1;
    }

    /// The state the next invocation carries.
    fn state(inner: &Inner) -> String {
        inner
            .pending
            .clone()
            .or_else(|| inner.open.as_ref().map(|open| open.state.clone()))
            .unwrap_or_else(|| "{}".into())
    }

    /// The event of an invocation of `records` (each record's JSON) in the open window.
    pub fn event(&self, records: Vec<u8>, final_invoke: bool, terminated_early: bool) -> Vec<u8> {
        let inner = self.inner();
        let (start_ms, end_ms) = inner
            .open
            .as_ref()
            .map_or((0, 0), |open| (open.start_ms, open.end_ms));
        let mut event = records;
        // `records` is `{"Records":[...]}`: the window's keys follow the records.
        debug_assert_eq!(event.last(), Some(&b'}'));
        event.pop();
        let tail = format!(
            r#","window":{{"start":{},"end":{}}},"state":{},"shardId":{},"eventSourceARN":{},"isFinalInvokeForWindow":{final_invoke},"isWindowTerminatedEarly":{terminated_early}}}"#,
            Value::String(iso(start_ms)),
            Value::String(iso(end_ms)),
            Self::state(&inner),
            Value::String(self.shard_id.clone()),
            Value::String(self.stream_arn.clone()),
        );
        event.extend_from_slice(tail.as_bytes());
        event
    }

    /// Keeps the `state` of a response aside until the policy judged the invocation; a response
    /// without one fails the invocation.
    pub fn check(&self, outcome: Outcome) -> Outcome {
        let state = match &outcome {
            Outcome::Returned {
                response: Some(Value::Object(response)),
            } => match response.get("state") {
                Some(state @ Value::Object(_)) => Some(state.to_string()),
                _ => None,
            },
            Outcome::Returned { .. } | Outcome::ReturnedNonJson { .. } => None,
            _ => return outcome,
        };
        let mut inner = self.inner();
        match state {
            Some(state) => {
                inner.candidate = Some(state);
                outcome
            }
            None => {
                inner.candidate = None;
                Outcome::FunctionError(ErrorInfo::new(
                    INVALID_WINDOW_STATE,
                    r#"with tumbling_window the response must hold a state object, as {"state": {...}, "batchItemFailures": []}: it is carried into the window's next invocation"#,
                ))
            }
        }
    }

    /// The policy judged the last invocation: its state is kept when it (partly) succeeded.
    pub fn judged(&self, succeeded: bool) {
        let mut inner = self.inner();
        let candidate = inner.candidate.take();
        if succeeded && let Some(state) = candidate {
            inner.oversized = state.len() > MAX_WINDOW_STATE_BYTES;
            inner.pending = Some(state);
        }
    }

    /// Records finished: the state returned with them goes with the checkpoint that covers them.
    /// Called under the shard's progress lock, so a checkpoint never pairs with a state of
    /// records after it.
    pub fn commit(&self) {
        let mut inner = self.inner();
        if let Some(state) = inner.pending.take() {
            if let Some(open) = inner.open.as_mut() {
                open.state = state;
            }
            inner.generation += 1;
        }
    }

    /// What the next checkpoint write stores beside the sequence number: `None` while the state
    /// is over the limit (nothing is written until the window ended early); otherwise the
    /// window, whether it changed since it was last stored, and its generation (for
    /// [`Windows::stored`]).
    pub fn for_save(&self) -> Option<WindowSnapshot> {
        let inner = self.inner();
        if inner.oversized {
            return None;
        }
        Some(WindowSnapshot {
            open: inner.open.clone(),
            changed: inner.generation != inner.stored,
            generation: inner.generation,
        })
    }

    /// The window of `generation` was written.
    pub fn stored(&self, generation: u64) {
        let mut inner = self.inner();
        inner.stored = inner.stored.max(generation);
    }

    pub fn oversized(&self) -> bool {
        self.inner().oversized
    }

    /// Whether a window is open (its final invocation is still owed).
    pub fn is_open(&self) -> bool {
        self.inner().open.is_some()
    }

    /// The final invocation of the open window succeeded: drop its state, or (ended early)
    /// go on in the same window with a fresh one.
    fn closed(&self, terminated_early: bool) {
        let mut inner = self.inner();
        inner.pending = None;
        inner.oversized = false;
        inner.generation += 1;
        if terminated_early {
            if let Some(open) = inner.open.as_mut() {
                open.state = "{}".into();
            }
        } else {
            inner.open = None;
        }
    }
}

/// The window as a checkpoint write takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowSnapshot {
    pub open: Option<OpenWindow>,
    /// It changed since it was last written.
    pub changed: bool,
    pub generation: u64,
}

/// What the final invocation of a window needs from its lane.
pub struct Closing<'a> {
    pub mapping: &'a str,
    pub lane: &'a str,
    pub invoker: &'a Invoker,
    pub health: &'a MappingHealthHandle,
    pub metrics: &'a MappingMetrics,
}

/// Invokes the open window's final invocation until it succeeds; false when `stop` came first
/// (the window stays open and stored: the next owner of the shard closes it).
pub async fn close(
    windows: &Windows,
    closing: Closing<'_>,
    terminated_early: bool,
    stop: &CancellationToken,
) -> bool {
    if !windows.is_open() {
        return true;
    }
    let event = windows.event(b"{\"Records\":[]}".to_vec(), true, terminated_early);
    let mut failures = 0u32;
    let mut failing_since: Option<Instant> = None;
    loop {
        let invocation = Invocation::for_records(closing.mapping, event.clone(), []);
        let slot = tokio::select! {
            biased;
            _ = stop.cancelled() => return false,
            slot = closing.invoker.target().permit_for(0) => slot,
        };
        let outcome = closing.invoker.invoke_in(slot, invocation.clone()).await;
        let Some(error) = outcome.error() else {
            closing.metrics.invoked("success", 0, 0);
            break;
        };
        closing.metrics.invoked(outcome.kind(), 0, 0);
        failures += 1;
        let since = *failing_since.get_or_insert_with(Instant::now);
        closing.health.stuck(closing.lane, Some(since));
        tracing::warn!(mapping = %closing.mapping, lane = %closing.lane, request_id = %invocation.request_id, failures, error_type = %error.error_type, error = %error.message, "the final invocation of a tumbling window failed; the shard waits for it and retries");
        tokio::select! {
            biased;
            _ = stop.cancelled() => return false,
            _ = tokio::time::sleep(retry_delay(failures)) => {}
        }
    }
    if failing_since.is_some() {
        closing.health.stuck(closing.lane, None);
    }
    windows.closed(terminated_early);
    closing.metrics.stream_event(if terminated_early {
        "window_terminated_early"
    } else {
        "window_closed"
    });
    true
}

/// `2020-12-09T07:04:00Z` (Lambda's window bounds), with milliseconds only when not whole.
fn iso(ms: u64) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    if ms.is_multiple_of(1000) {
        humantime::format_rfc3339_seconds(at).to_string()
    } else {
        humantime::format_rfc3339_millis(at).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn windows_are_aligned_to_multiples_of_their_length() {
        // 2020-12-09T07:04:35Z in a 2-minute window: 07:04:00 to 07:06:00, as Lambda's example.
        let at = 1_607_497_475_000;
        let span = Span::holding(at, 2 * MIN);
        assert_eq!(iso(span.start_ms), "2020-12-09T07:04:00Z");
        assert_eq!(iso(span.end_ms), "2020-12-09T07:06:00Z");
    }

    #[test]
    fn a_record_of_a_later_window_closes_the_current_one_and_late_records_never_reopen_one() {
        let mut cursor = WindowCursor::new(MIN, None);
        let (first, closed) = cursor.place(61_000);
        assert_eq!(
            (first.start_ms, first.end_ms, closed),
            (60_000, 120_000, None)
        );
        assert_eq!(cursor.place(119_999), (first, None));
        let (second, closed) = cursor.place(185_000);
        assert_eq!((second.start_ms, closed), (180_000, Some(first)));
        // Out of order within the stream: it joins the open window.
        assert_eq!(cursor.place(100_000), (second, None));
        assert_eq!(cursor.close(), Some(second));
        // Late for a closed window: the next one after it.
        let (third, closed) = cursor.place(150_000);
        assert_eq!((third.start_ms, closed), (240_000, None));
    }

    #[test]
    fn a_window_restored_under_another_length_is_never_overlapped() {
        // Stored under 60 s windows, read on under 45 s ones.
        let restored = Span {
            start_ms: 60_000,
            end_ms: 120_000,
        };
        let mut cursor = WindowCursor::new(Duration::from_secs(45), Some(restored));
        let (next, closed) = cursor.place(125_000);
        assert_eq!(closed, Some(restored));
        assert_eq!((next.start_ms, next.end_ms), (120_000, 135_000));
        let (after, _) = cursor.place(140_000);
        assert_eq!((after.start_ms, after.end_ms), (135_000, 180_000));
    }

    #[test]
    fn a_restored_window_is_joined_by_the_records_that_arrived_in_it() {
        let restored = Span {
            start_ms: 60_000,
            end_ms: 120_000,
        };
        let mut cursor = WindowCursor::new(MIN, Some(restored));
        assert_eq!(cursor.place(90_000), (restored, None));
        let (next, closed) = cursor.place(130_000);
        assert_eq!((next.start_ms, closed), (120_000, Some(restored)));
    }

    fn windows() -> Windows {
        Windows::new(
            MIN,
            "shardId-000000000000",
            "arn:aws:kinesis:us-east-1:1:stream/s",
            None,
        )
    }

    #[test]
    fn the_event_carries_the_window_the_state_and_the_flags_after_the_records() {
        let windows = windows();
        windows.begin(Span::holding(1_607_497_475_000, 2 * MIN));
        let event: Value = serde_json::from_slice(&windows.event(
            br#"{"Records":[{"a":1}]}"#.to_vec(),
            false,
            false,
        ))
        .unwrap();
        assert_eq!(
            event,
            json!({
                "Records": [{"a": 1}],
                "window": {"start": "2020-12-09T07:04:00Z", "end": "2020-12-09T07:06:00Z"},
                "state": {},
                "shardId": "shardId-000000000000",
                "eventSourceARN": "arn:aws:kinesis:us-east-1:1:stream/s",
                "isFinalInvokeForWindow": false,
                "isWindowTerminatedEarly": false,
            })
        );
    }

    fn returned(response: Value) -> Outcome {
        Outcome::Returned {
            response: Some(response),
        }
    }

    fn state_of(windows: &Windows) -> Value {
        let event: Value =
            serde_json::from_slice(&windows.event(br#"{"Records":[]}"#.to_vec(), false, false))
                .unwrap();
        event["state"].clone()
    }

    #[test]
    fn a_response_without_a_state_object_fails_and_a_failed_invocations_state_is_not_kept() {
        let windows = windows();
        windows.begin(Span::holding(0, MIN));
        for response in [
            json!({}),
            json!({"state": 3}),
            json!({"state": null}),
            json!([]),
        ] {
            let outcome = windows.check(returned(response.clone()));
            assert!(
                matches!(&outcome, Outcome::FunctionError(e) if e.error_type == INVALID_WINDOW_STATE),
                "{response}: {outcome:?}"
            );
        }
        assert!(matches!(
            windows.check(Outcome::ReturnedNonJson {
                body: b"x".to_vec()
            }),
            Outcome::FunctionError(_)
        ));
        // A timeout is left to the policy as it is.
        assert!(matches!(
            windows.check(Outcome::Timeout { after_ms: 1 }),
            Outcome::Timeout { .. }
        ));
        // The state of an invocation the policy failed (say, an invalid batchItemFailures) is
        // not carried on.
        windows.check(returned(json!({"state": {"blue": 1}})));
        windows.judged(false);
        assert_eq!(state_of(&windows), json!({}));
        windows.check(returned(json!({"state": {"blue": 2}})));
        windows.judged(true);
        assert_eq!(state_of(&windows), json!({"blue": 2}));
    }

    #[test]
    fn the_stored_state_changes_only_when_the_records_it_covers_finish() {
        let windows = windows();
        windows.begin(Span::holding(0, MIN));
        let stored = |windows: &Windows| windows.for_save().unwrap().open.unwrap().state;
        assert_eq!(stored(&windows), "{}");
        windows.check(returned(json!({"state": {"blue": 2}})));
        windows.judged(true);
        assert_eq!(stored(&windows), "{}", "its records have not finished yet");
        windows.commit();
        let snapshot = windows.for_save().unwrap();
        assert!(snapshot.changed);
        assert_eq!(snapshot.open.unwrap().state, r#"{"blue":2}"#);
        assert!(windows.for_save().unwrap().changed, "until it was written");
        windows.stored(snapshot.generation);
        assert!(!windows.for_save().unwrap().changed, "written once");
    }

    #[test]
    fn a_state_over_the_limit_is_never_offered_for_storing() {
        let windows = windows();
        windows.begin(Span::holding(0, MIN));
        let big = "x".repeat(MAX_WINDOW_STATE_BYTES);
        windows.check(returned(json!({"state": {"big": big}})));
        windows.judged(true);
        windows.commit();
        assert!(windows.oversized());
        assert!(windows.for_save().is_none());
        windows.closed(true);
        assert!(!windows.oversized());
        let snapshot = windows.for_save().unwrap();
        assert!(snapshot.changed);
        assert_eq!(
            snapshot.open.unwrap().state,
            "{}",
            "the same window goes on, fresh"
        );
        windows.closed(false);
        assert_eq!(windows.for_save().unwrap().open, None);
    }
}
