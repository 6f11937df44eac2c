//! One sluice instance under test: a config file and a state directory that outlive its
//! processes, so it can be killed and started again as a supervisor (ECS) would.

use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Daemon {
    pub name: String,
    binary: PathBuf,
    config: PathBuf,
    log: PathBuf,
    env: Vec<(String, String)>,
    pub admin: SocketAddr,
    child: Option<Child>,
    pub starts: u32,
}

/// A port that is free and stays free. The end-to-end tests let sluice pick its port (port 0
/// and the address file); a chaos daemon cannot, since it is killed and started again and its
/// producers and health probes must find it at the same address each time. The port is taken
/// below the kernel's ephemeral range: a port from that range (what binding port 0 gives) can
/// become the local end of any outgoing connection meanwhile (a Kafka client's, the SDK's), and
/// the restarted daemon then fails with "address already in use" (it broke a CI run that way).
pub fn free_port() -> std::io::Result<u16> {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    const LOWEST: u16 = 10_000;
    if ephemeral_low > LOWEST + 100 {
        for _ in 0..200 {
            let port = rand::random_range(LOWEST..ephemeral_low);
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
}

impl Daemon {
    /// Writes `config` (with `{admin}` and `{state}` replaced) under `dir/name`.
    pub fn new(
        binary: &Path,
        dir: &Path,
        name: &str,
        config: &str,
        env: Vec<(String, String)>,
    ) -> anyhow::Result<Self> {
        let home = dir.join(name);
        std::fs::create_dir_all(&home)?;
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let config_path = home.join("sluice.yaml");
        let text = config
            .replace("{admin}", &admin.to_string())
            .replace("{state}", &home.join("state").display().to_string());
        std::fs::write(&config_path, text)?;
        Ok(Self {
            name: name.to_owned(),
            binary: binary.to_owned(),
            config: config_path,
            log: home.join("sluice.log"),
            env,
            admin,
            child: None,
            starts: 0,
        })
    }

    pub fn start(&mut self) -> anyhow::Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.binary)
            .args(["run", "-c"])
            .arg(&self.config)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        self.starts += 1;
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is running (not exited, not killed).
    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits up to `timeout` for the exit; true if it exited cleanly.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// The `/readyz` status, 0 when nothing answers.
    pub async fn readyz(&self) -> u16 {
        let url = format!("http://{}/readyz", self.admin);
        match reqwest::Client::new()
            .get(&url)
            .timeout(Duration::from_secs(2))
            .send()
            .await
        {
            Ok(response) => response.status().as_u16(),
            Err(_) => 0,
        }
    }

    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if self.readyz().await == 200 {
                return Ok(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!(
            "{} was not ready within {timeout:?}; log tail:\n{}",
            self.name,
            self.log_tail(30)
        )
    }

    pub async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.admin);
        match reqwest::get(&url).await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// The panics and runtime aborts in the log, over every start (the standard library writes
    /// them to stderr as text, between the JSON lines): a panic is a bug even when the daemon
    /// recovered from it and the records came out right.
    pub fn panics(&self) -> Vec<String> {
        const SIGNS: [&str; 5] = [
            "' panicked at ",
            ") panicked at ",
            "has overflowed its stack",
            "fatal runtime error",
            "memory allocation of ",
        ];
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines
            .iter()
            .enumerate()
            .filter(|(_, line)| !line.starts_with('{') && SIGNS.iter().any(|s| line.contains(s)))
            .map(|(i, line)| {
                // A panic's message is on the next line since Rust 1.73, unless it is JSON.
                let next = lines
                    .get(i + 1)
                    .copied()
                    .filter(|next| !next.starts_with('{') && !next.starts_with("note: "))
                    .unwrap_or_default();
                format!("{} {}", line.trim(), next.trim())
            })
            .collect()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Resident memory (KiB), open descriptors and threads of the running process.
    pub fn footprint(&self) -> Option<Footprint> {
        let pid = self.pid()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        };
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
        Some(Footprint {
            rss_kib: field("VmRSS:")?,
            fds,
            threads: field("Threads:")?,
        })
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Footprint {
    pub rss_kib: u64,
    pub fds: u64,
    pub threads: u64,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}
