//! A scripted target for unit tests of the runtime: each call takes the next step of its script
//! (answer now, answer after a while, panic, or never answer), and the target records what it
//! was called with and how many calls ran at once. Once the script is used up, calls are answered
//! by the target's responder (a function of the event), or with a normal return.

use super::{Invocation, Target};
use async_trait::async_trait;
use sluice_policies::Outcome;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

enum Step {
    Answer(Outcome),
    After(Duration, Outcome),
    Panic(String),
    Hang,
}

#[derive(Default)]
struct State {
    script: VecDeque<Step>,
    payloads: Vec<serde_json::Value>,
    in_flight: usize,
    most_at_once: usize,
}

type Responder = Box<dyn Fn(&serde_json::Value) -> Outcome + Send + Sync>;

/// See the module docs.
#[derive(Default)]
pub struct ScriptedTarget {
    state: Mutex<State>,
    responder: Option<Responder>,
}

impl ScriptedTarget {
    /// A target that answers every unscripted call with `responder(event)`.
    pub fn answering(
        responder: impl Fn(&serde_json::Value) -> Outcome + Send + Sync + 'static,
    ) -> Self {
        Self {
            state: Mutex::default(),
            responder: Some(Box::new(responder)),
        }
    }

    fn step(&self, step: Step) {
        self.state.lock().unwrap().script.push_back(step);
    }

    /// The next call answers `outcome` at once.
    pub fn push(&self, outcome: Outcome) {
        self.step(Step::Answer(outcome));
    }

    /// The next call answers `outcome` after `delay`.
    pub fn push_after(&self, delay: Duration, outcome: Outcome) {
        self.step(Step::After(delay, outcome));
    }

    /// The next call panics with `message`.
    pub fn push_panic(&self, message: &str) {
        self.step(Step::Panic(message.to_owned()));
    }

    /// The next call never answers.
    pub fn push_hang(&self) {
        self.step(Step::Hang);
    }

    /// How many calls started.
    pub fn calls(&self) -> usize {
        self.state.lock().unwrap().payloads.len()
    }

    /// The events of every call so far, in order.
    pub fn payloads(&self) -> Vec<serde_json::Value> {
        self.state.lock().unwrap().payloads.clone()
    }

    /// The most calls that were running at the same time.
    pub fn most_at_once(&self) -> usize {
        self.state.lock().unwrap().most_at_once
    }
}

/// Counts a call as running until dropped, even when the call is abandoned.
struct Running<'a>(&'a ScriptedTarget);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.state.lock().unwrap().in_flight -= 1;
    }
}

#[async_trait]
impl Target for ScriptedTarget {
    async fn invoke(&self, invocation: &Invocation) -> Outcome {
        let event: serde_json::Value =
            serde_json::from_slice(&invocation.payload).unwrap_or(serde_json::Value::Null);
        let step = {
            let mut state = self.state.lock().unwrap();
            state.payloads.push(event.clone());
            state.in_flight += 1;
            state.most_at_once = state.most_at_once.max(state.in_flight);
            state.script.pop_front()
        };
        let _running = Running(self);
        match step {
            None => match &self.responder {
                Some(responder) => responder(&event),
                None => Outcome::Returned { response: None },
            },
            Some(Step::Answer(outcome)) => outcome,
            Some(Step::After(delay, outcome)) => {
                tokio::time::sleep(delay).await;
                outcome
            }
            Some(Step::Panic(message)) => panic!("{message}"),
            Some(Step::Hang) => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_policies::ErrorInfo;
    use std::sync::Arc;

    fn call() -> Invocation {
        Invocation::new("m", br#"{"n":1}"#.to_vec())
    }

    #[tokio::test(start_paused = true)]
    async fn follows_its_script_in_order_then_returns_normally() {
        let target = ScriptedTarget::default();
        target.push(Outcome::FunctionError(ErrorInfo::new("E", "m")));
        target.push_after(
            Duration::from_secs(2),
            Outcome::Unavailable {
                message: "m".into(),
            },
        );
        assert_eq!(
            target.invoke(&call()).await,
            Outcome::FunctionError(ErrorInfo::new("E", "m"))
        );
        let started = tokio::time::Instant::now();
        assert_eq!(
            target.invoke(&call()).await,
            Outcome::Unavailable {
                message: "m".into()
            }
        );
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert_eq!(
            target.invoke(&call()).await,
            Outcome::Returned { response: None }
        );
        assert_eq!(target.calls(), 3);
        assert_eq!(target.payloads()[0], serde_json::json!({"n": 1}));
    }

    #[tokio::test(start_paused = true)]
    async fn counts_concurrent_calls_including_abandoned_ones() {
        let target = Arc::new(ScriptedTarget::default());
        target.push_hang();
        target.push_after(Duration::from_secs(1), Outcome::Returned { response: None });
        let hung = tokio::spawn({
            let target = target.clone();
            async move { target.invoke(&call()).await }
        });
        tokio::task::yield_now().await;
        target.invoke(&call()).await;
        assert_eq!(target.most_at_once(), 2);
        hung.abort();
        let _ = hung.await;
        assert_eq!(target.state.lock().unwrap().in_flight, 0);
    }

    #[tokio::test]
    async fn the_responder_answers_once_the_script_is_used_up() {
        let target = ScriptedTarget::answering(|event| match event["n"].as_u64() {
            Some(1) => Outcome::Throttled {
                message: "one".into(),
            },
            _ => Outcome::Returned { response: None },
        });
        target.push(Outcome::Returned { response: None });
        assert_eq!(
            target.invoke(&call()).await,
            Outcome::Returned { response: None }
        );
        assert_eq!(
            target.invoke(&call()).await,
            Outcome::Throttled {
                message: "one".into()
            }
        );
        let other = Invocation::new("m", br#"{"n":2}"#.to_vec());
        assert_eq!(
            target.invoke(&other).await,
            Outcome::Returned { response: None }
        );
    }

    #[tokio::test]
    async fn a_scripted_panic_panics() {
        let target = Arc::new(ScriptedTarget::default());
        target.push_panic("scripted");
        let result = tokio::spawn({
            let target = target.clone();
            async move { target.invoke(&call()).await }
        })
        .await;
        assert!(result.unwrap_err().is_panic());
    }
}
