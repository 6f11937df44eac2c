//! The `command` target: one process per invocation.
//!
//! The event is written to the program's stdin (then stdin is closed); its stdout is the response,
//! read as a Lambda response (empty, JSON, or not JSON); a non-zero exit is a function error whose
//! type comes from a Lambda-style error document on stdout when there is one (`Runtime.ExitError`
//! otherwise) and whose message is the tail of stderr. Each stderr line is logged with the request
//! id as it arrives (decoded lossily, each line cut at 8 KiB, and read until the program closes it).
//! The program runs in its own process group, and at `timeout` the whole group
//! is killed (children included), which is a timeout outcome. A program that cannot be started is
//! an unavailable target: the handler did not run. Output beyond Lambda's 6 MB response limit is a
//! function error (`Function.ResponseSizeTooLarge`).

use super::output::{MAX_LOGGED_LINE_BYTES, for_each_line};
use super::{Invocation, Target, body_prefix, error_from_body, returned};
use crate::config::CommandTargetConfig;
use async_trait::async_trait;
use sluice_policies::{ErrorInfo, Outcome};
use std::collections::VecDeque;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

/// Lambda's synchronous response limit.
const MAX_RESPONSE_BYTES: usize = 6 * 1024 * 1024;
/// How much of stderr a failure keeps for its message.
const STDERR_TAIL_BYTES: usize = 2048;

pub struct CommandTarget {
    name: String,
    program: Vec<String>,
    timeout: Duration,
    env: Vec<(String, String)>,
    inherit_env: bool,
    working_dir: Option<String>,
}

impl CommandTarget {
    pub fn new(name: &str, config: &CommandTargetConfig) -> Self {
        Self {
            name: name.to_owned(),
            program: config.program.clone(),
            timeout: config.timeout,
            env: config.env.clone(),
            inherit_env: config.inherit_env,
            working_dir: config.working_dir.clone(),
        }
    }
}

/// Without `inherit`, a handler process starts from an empty environment but PATH (to find its
/// programs); the caller adds the target's `env` and sluice's own variables.
pub(crate) fn scope_environment(command: &mut Command, inherit: bool) {
    if !inherit {
        command.env_clear();
        if let Some(path) = std::env::var_os("PATH") {
            command.env("PATH", path);
        }
    }
}

/// Kills a process group: the program and everything it started.
pub(crate) fn kill_group(pid: u32) {
    // SAFETY: kill(2) with a negative pid signals the group; it touches no memory of ours.
    unsafe {
        libc::kill(-(pid as i32), libc::SIGKILL);
    }
}

#[async_trait]
impl Target for CommandTarget {
    async fn invoke(&self, invocation: &Invocation) -> Outcome {
        let started = Instant::now();
        let mut command = Command::new(&self.program[0]);
        scope_environment(&mut command, self.inherit_env);
        command
            .args(&self.program[1..])
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("SLUICE_REQUEST_ID", &invocation.request_id)
            .env("SLUICE_MAPPING", &invocation.mapping)
            .env("TRACEPARENT", &invocation.traceparent)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if let Some(dir) = &self.working_dir {
            command.current_dir(dir);
        }
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(error) => {
                return Outcome::Unavailable {
                    message: format!("cannot start {:?}: {error}", self.program[0]),
                };
            }
        };
        let pid = child.id();
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let payload = invocation.payload.clone();
        let feed = async move {
            // A program that exits without reading its input is not an error by itself.
            let _ = stdin.write_all(&payload).await;
            drop(stdin);
        };
        let read_stdout = async move {
            let mut output = Vec::new();
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                match stdout.read(&mut chunk).await {
                    Ok(0) | Err(_) => return Ok(output),
                    Ok(n) => {
                        if output.len() + n > MAX_RESPONSE_BYTES {
                            return Err(());
                        }
                        output.extend_from_slice(&chunk[..n]);
                    }
                }
            }
        };
        let target = self.name.as_str();
        let request_id = invocation.request_id.as_str();
        let read_stderr = async move {
            let mut tail: VecDeque<String> = VecDeque::new();
            let mut size = 0usize;
            for_each_line(stderr, MAX_LOGGED_LINE_BYTES, |line| {
                tracing::info!(target: "sluice::handler", %target, %request_id, line = %line, "handler stderr");
                size += line.len() + 1;
                tail.push_back(line);
                while size > STDERR_TAIL_BYTES && tail.len() > 1 {
                    size -= tail.pop_front().map_or(0, |l| l.len() + 1);
                }
            })
            .await;
            tail.into_iter().collect::<Vec<_>>().join("\n")
        };
        let run = async {
            let ((), output, stderr_tail, status) =
                tokio::join!(feed, read_stdout, read_stderr, child.wait());
            (output, stderr_tail, status)
        };
        let (output, stderr_tail, status) = match tokio::time::timeout(self.timeout, run).await {
            Ok(finished) => finished,
            Err(_) => {
                if let Some(pid) = pid {
                    kill_group(pid);
                }
                return Outcome::Timeout {
                    after_ms: started.elapsed().as_millis() as u64,
                };
            }
        };
        // The program is done; make sure nothing it started lingers.
        if let Some(pid) = pid {
            kill_group(pid);
        }
        let Ok(output) = output else {
            return Outcome::FunctionError(ErrorInfo::new(
                "Function.ResponseSizeTooLarge",
                format!("stdout is larger than {MAX_RESPONSE_BYTES} bytes"),
            ));
        };
        let status = match status {
            Ok(status) => status,
            Err(error) => {
                return Outcome::FunctionError(ErrorInfo::new(
                    "Runtime.ExitError",
                    format!("waiting for the program failed: {error}"),
                ));
            }
        };
        if status.success() {
            return returned(&output);
        }
        let exit = match status.code() {
            Some(code) => format!("exit status {code}"),
            None => "killed by a signal".to_owned(),
        };
        let mut error = error_from_body(&output, "Runtime.ExitError");
        if error.error_type == "Runtime.ExitError" || error.message.is_empty() {
            let detail = if stderr_tail.is_empty() {
                body_prefix(&output)
            } else {
                stderr_tail
            };
            error.message = if detail.is_empty() {
                exit
            } else {
                format!("{exit}: {detail}")
            };
        }
        Outcome::FunctionError(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(script: &str, timeout: Duration) -> CommandTarget {
        target_inheriting(script, timeout, true)
    }

    fn target_inheriting(script: &str, timeout: Duration, inherit_env: bool) -> CommandTarget {
        CommandTarget::new(
            "t",
            &CommandTargetConfig {
                program: vec!["sh".into(), "-c".into(), script.into()],
                timeout,
                env: vec![("GREETING".into(), "hi".into())],
                inherit_env,
                working_dir: None,
                max_concurrency: 1,
            },
        )
    }

    // Hardening issue, item 14: with inherit_env: false a handler sees only its own env (and
    // PATH, SLUICE_*), not sluice's AWS credentials.
    #[tokio::test]
    async fn without_inherit_env_the_program_sees_only_its_own_environment() {
        // SAFETY: set before any thread of this test reads the environment; no other test in
        // this binary reads this variable.
        unsafe { std::env::set_var("SLUICE_TEST_SECRET_CREDENTIAL", "leak") };
        let script = r#"echo "{\"secret\": \"${SLUICE_TEST_SECRET_CREDENTIAL:-none}\", \"greeting\": \"$GREETING\", \"id\": \"${SLUICE_REQUEST_ID:+set}\"}""#;
        let seen = |inherit| async move {
            match target_inheriting(script, Duration::from_secs(5), inherit)
                .invoke(&invocation())
                .await
            {
                Outcome::Returned {
                    response: Some(response),
                } => response,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(seen(true).await["secret"], "leak");
        let scoped = seen(false).await;
        assert_eq!(scoped["secret"], "none");
        assert_eq!(scoped["greeting"], "hi");
        assert_eq!(scoped["id"], "set");
    }

    fn invocation() -> Invocation {
        Invocation::new("m", br#"{"Records":[{"n":1}]}"#.to_vec())
    }

    #[tokio::test]
    async fn stdin_is_the_event_and_stdout_the_response() {
        let outcome = target(
            r#"read event; echo "{\"seen\": $event, \"greeting\": \"$GREETING\"}""#,
            Duration::from_secs(5),
        )
        .invoke(&invocation())
        .await;
        assert_eq!(
            outcome,
            Outcome::Returned {
                response: Some(
                    serde_json::json!({"seen": {"Records": [{"n": 1}]}, "greeting": "hi"})
                )
            }
        );
    }

    #[tokio::test]
    async fn a_non_zero_exit_is_a_function_error_with_the_stderr_tail() {
        let outcome = target(
            "echo starting >&2; echo 'bad order' >&2; exit 3",
            Duration::from_secs(5),
        )
        .invoke(&invocation())
        .await;
        let Outcome::FunctionError(error) = outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(error.error_type, "Runtime.ExitError");
        assert_eq!(error.message, "exit status 3: starting\nbad order");
        let typed = target(
            r#"echo '{"errorType":"ValueError","errorMessage":"nope"}'; exit 1"#,
            Duration::from_secs(5),
        )
        .invoke(&invocation())
        .await;
        assert_eq!(
            typed,
            Outcome::FunctionError(ErrorInfo::new("ValueError", "nope"))
        );
    }

    // Hardening issue, item 7: a stderr line that is not UTF-8 used to end the reader, and the
    // program then died of EPIPE on its next write: a good result became Runtime.ExitError. And
    // one huge line was held (and logged) whole.
    #[tokio::test]
    async fn stderr_that_is_not_utf8_or_huge_does_not_break_the_invocation() {
        let script = r#"printf 'bad \377\376 bytes\n' >&2
head -c 3000000 /dev/zero | tr '\0' x >&2; echo >&2
i=0; while [ $i -lt 2000 ]; do echo "line $i" >&2; i=$((i+1)); done
echo '{"ok": true}'"#;
        let outcome = target(script, Duration::from_secs(20))
            .invoke(&invocation())
            .await;
        assert_eq!(
            outcome,
            Outcome::Returned {
                response: Some(serde_json::json!({"ok": true}))
            }
        );
    }

    #[tokio::test]
    async fn at_the_timeout_the_whole_process_group_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("child-survived");
        let script = format!("(sleep 1; touch {}) & sleep 30", marker.display());
        let started = Instant::now();
        let outcome = target(&script, Duration::from_millis(300))
            .invoke(&invocation())
            .await;
        assert!(matches!(outcome, Outcome::Timeout { .. }), "{outcome:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(
            !marker.exists(),
            "the background child was killed with the group"
        );
    }

    #[tokio::test]
    async fn a_program_that_cannot_start_is_an_unavailable_target() {
        let outcome = CommandTarget::new(
            "t",
            &CommandTargetConfig {
                program: vec!["/nonexistent/handler".into()],
                timeout: Duration::from_secs(1),
                env: Vec::new(),
                inherit_env: true,
                working_dir: None,
                max_concurrency: 1,
            },
        )
        .invoke(&invocation())
        .await;
        assert!(
            matches!(outcome, Outcome::Unavailable { .. }),
            "{outcome:?}"
        );
    }
}
