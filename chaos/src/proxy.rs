//! A TCP fault proxy on loopback: put between sluice and an endpoint (moto, a handler), it passes
//! bytes through, or breaks the path the ways networks and services break.
//!
//! - `Refuse`: nothing listens (connection refused); open connections are closed.
//! - `Reset`: connections are accepted and reset at once; open ones are reset.
//! - `Stall`: connections are accepted and never answered; the ones stalled stay open (silent)
//!   until the proxy is dropped, as a dead peer behind a NAT would — the client must time out.
//! - `Slow`: bytes pass, each chunk delayed.
//! - `Blackhole`: a listener whose accept queue is full, so new connections time out in SYN.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Pass,
    Refuse,
    Reset,
    Stall,
    Slow(Duration),
    Blackhole,
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::Pass => "pass",
            Fault::Refuse => "refuse",
            Fault::Reset => "reset",
            Fault::Stall => "stall",
            Fault::Slow(_) => "slow",
            Fault::Blackhole => "blackhole",
        }
    }
}

pub struct FaultProxy {
    pub addr: SocketAddr,
    fault: watch::Sender<Fault>,
    /// Stalled connections, kept open and silent.
    stalled: Arc<Mutex<Vec<TcpStream>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0)), 1024)?;
        let addr = listener.local_addr()?;
        let (fault, watch) = watch::channel(Fault::Pass);
        let stalled = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(serve(
            addr,
            upstream,
            Some(listener),
            watch,
            stalled.clone(),
        ));
        Ok(Self {
            addr,
            fault,
            stalled,
            task,
        })
    }

    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stalled_connections(&self) -> usize {
        self.stalled.lock().unwrap().len()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

async fn serve(
    addr: SocketAddr,
    upstream: SocketAddr,
    mut listener: Option<TcpListener>,
    mut fault: watch::Receiver<Fault>,
    stalled: Arc<Mutex<Vec<TcpStream>>>,
) {
    // Each connection's copy task watches the fault too and ends itself when it must.
    let mut blackhole: Vec<TcpStream> = Vec::new();
    loop {
        let current = *fault.borrow_and_update();
        match current {
            Fault::Refuse => {
                listener = None;
                blackhole.clear();
            }
            Fault::Blackhole => {
                if blackhole.is_empty() {
                    listener = None;
                    // A backlog of 1 that nobody accepts: after two queued connections the
                    // kernel drops further SYNs, and clients wait until their connect timeout.
                    if let Ok(full) = bind(addr, 1) {
                        for _ in 0..3 {
                            if let Ok(Ok(stream)) = tokio::time::timeout(
                                Duration::from_millis(300),
                                TcpStream::connect(addr),
                            )
                            .await
                            {
                                blackhole.push(stream);
                            }
                        }
                        listener = Some(full);
                    }
                }
            }
            _ => {
                if !blackhole.is_empty() {
                    blackhole.clear();
                    listener = None;
                }
                if listener.is_none() {
                    // The port is ours; rebinding can race the kernel for a moment.
                    for _ in 0..50 {
                        match bind(addr, 1024) {
                            Ok(l) => {
                                listener = Some(l);
                                break;
                            }
                            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                        }
                    }
                }
            }
        }
        let accepting = !matches!(current, Fault::Refuse | Fault::Blackhole);
        tokio::select! {
            changed = fault.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            accepted = async {
                match (&listener, accepting) {
                    (Some(l), true) => l.accept().await,
                    _ => std::future::pending().await,
                }
            } => {
                let Ok((client, _)) = accepted else { continue };
                match current {
                    Fault::Reset => {
                        // A zero linger sends RST on close and never blocks, unlike the
                        // lingering close the deprecation warns about.
                        #[allow(deprecated)]
                        let _ = client.set_linger(Some(Duration::ZERO));
                        drop(client);
                    }
                    Fault::Stall => stalled.lock().unwrap().push(client),
                    _ => {
                        tokio::spawn(pipe(client, upstream, fault.clone()));
                    }
                }
            }
        }
    }
}

/// Copies both ways until either side closes or the fault says this connection must end.
async fn pipe(client: TcpStream, upstream: SocketAddr, mut fault: watch::Receiver<Fault>) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let up_fault = fault.clone();
    let up = async move { copy(&mut client_read, &mut server_write, up_fault).await };
    let down_fault = fault.clone();
    let down = async move { copy(&mut server_read, &mut client_write, down_fault).await };
    tokio::select! {
        _ = async { tokio::join!(up, down) } => {}
        _ = async {
            loop {
                if fault.changed().await.is_err() {
                    return;
                }
                let current = *fault.borrow();
                match current {
                    // Open connections die with the path; `Stall` keeps them silent instead.
                    Fault::Refuse | Fault::Reset | Fault::Blackhole => return,
                    _ => {}
                }
            }
        } => {}
    }
}

async fn copy(
    from: &mut (impl AsyncReadExt + Unpin),
    to: &mut (impl AsyncWriteExt + Unpin),
    fault: watch::Receiver<Fault>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        let current = *fault.borrow();
        match current {
            Fault::Slow(delay) => tokio::time::sleep(delay).await,
            // Bytes of a connection that was open when the path stalled go nowhere.
            Fault::Stall => std::future::pending::<()>().await,
            _ => {}
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buffer = [0u8; 64];
                    while let Ok(n) = stream.read(&mut buffer).await {
                        if n == 0 || stream.write_all(&buffer[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(addr: SocketAddr) -> std::io::Result<Vec<u8>> {
        let mut stream = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        stream.write_all(b"ping").await?;
        let mut buffer = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(1), stream.read_exact(&mut buffer))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        Ok(buffer.to_vec())
    }

    #[tokio::test]
    async fn each_fault_breaks_the_path_its_own_way_and_pass_restores_it() {
        let proxy = FaultProxy::start(echo_server().await).await.unwrap();
        assert_eq!(round_trip(proxy.addr).await.unwrap(), b"ping");

        proxy.set(Fault::Refuse);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let refused = round_trip(proxy.addr).await.unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);

        proxy.set(Fault::Reset);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(round_trip(proxy.addr).await.is_err());

        proxy.set(Fault::Stall);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let stalled = round_trip(proxy.addr).await.unwrap_err();
        assert_eq!(stalled.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(proxy.stalled_connections(), 1);

        proxy.set(Fault::Blackhole);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let blackholed = round_trip(proxy.addr).await.unwrap_err();
        assert_eq!(blackholed.kind(), std::io::ErrorKind::TimedOut);

        proxy.set(Fault::Slow(Duration::from_millis(200)));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = std::time::Instant::now();
        assert_eq!(round_trip(proxy.addr).await.unwrap(), b"ping");
        assert!(started.elapsed() >= Duration::from_millis(400));

        proxy.set(Fault::Pass);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(round_trip(proxy.addr).await.unwrap(), b"ping");
    }
}
