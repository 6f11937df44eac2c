//! Every HTTP server sluice runs (admin, Invoke API, each worker's Runtime API) is served here,
//! so each has the same protections against slow or hostile clients:
//!
//! - request headers must arrive within [`HEADER_READ_TIMEOUT`] (10 s), else the connection is
//!   closed: a client trickling headers cannot hold a connection, or the drain, open;
//! - handlers read bodies with [`read_body`], which bounds both the size (the caller's limit) and
//!   the time (at most [`BODY_READ_TIMEOUT`], 30 s, for the whole body);
//! - at `stop` the listener closes at once and idle connections are closed; requests in progress
//!   may finish, but only until the caller's drain deadline, which the caller enforces by not
//!   waiting any longer on the returned handle.

use axum::Router;
use axum::body::Body;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The longest a client may take to send a request's headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a client may take to send a request's body.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A server could not take its address.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on the {what} address {address}")]
pub struct ListenError {
    pub what: &'static str,
    pub address: std::net::SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// Binds `address` for the server `what` (named in the error).
pub async fn bind(
    what: &'static str,
    address: std::net::SocketAddr,
) -> Result<TcpListener, ListenError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| ListenError {
            what,
            address,
            source,
        })
}

/// Serves `app` on `listener` until `stop`; the handle ends once every connection has.
pub fn spawn(
    what: &'static str,
    listener: TcpListener,
    app: Router,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    serve(what, listener, app, stop, None)
}

/// Decides, from the peer's and the server's address, whether a connection may be served; it
/// runs on the blocking pool (it may read `/proc`).
pub type Admit = Arc<dyn Fn(SocketAddr, SocketAddr) -> bool + Send + Sync>;

/// At most this many admission checks of one server run at once (each may scan `/proc`), so
/// a burst of connections cannot fill the blocking pool the state file also uses.
const CONCURRENT_ADMISSION_CHECKS: usize = 4;

/// [`spawn`], closing at once every connection `admit` refuses.
pub fn spawn_admitting(
    what: &'static str,
    listener: TcpListener,
    app: Router,
    stop: CancellationToken,
    admit: Admit,
) -> tokio::task::JoinHandle<()> {
    serve(what, listener, app, stop, Some(admit))
}

fn serve(
    what: &'static str,
    listener: TcpListener,
    app: Router,
    stop: CancellationToken,
    admit: Option<Admit>,
) -> tokio::task::JoinHandle<()> {
    let checks = Arc::new(tokio::sync::Semaphore::new(CONCURRENT_ADMISSION_CHECKS));
    tokio::spawn(async move {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let mut accept_failures = 0u32;
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _)) => {
                    accept_failures = 0;
                    stream
                }
                Err(error) => {
                    // Out of file descriptors, say: wait a little instead of spinning.
                    accept_failures += 1;
                    if accept_failures == 1 || accept_failures.is_power_of_two() {
                        tracing::warn!(server = what, %error, "accepting a connection failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let (watcher, app) = (graceful.watcher(), app.clone());
            let (admit, checks) = (admit.clone(), checks.clone());
            tokio::spawn(async move {
                if let Some(admit) = admit {
                    let (Ok(peer), Ok(local)) = (stream.peer_addr(), stream.local_addr()) else {
                        return;
                    };
                    let Ok(_check) = checks.acquire_owned().await else {
                        return;
                    };
                    let admitted = tokio::task::spawn_blocking(move || admit(peer, local))
                        .await
                        .unwrap_or(false);
                    if !admitted {
                        tracing::warn!(server = what, %peer, "refused a connection from a process that may not use this server");
                        return;
                    }
                }
                let _ = stream.set_nodelay(true);
                // Handlers that decide by the caller's address (the admin server's control
                // endpoints) read it as axum's ConnectInfo.
                let peer = stream.peer_addr().ok();
                let app = tower::ServiceExt::map_request(
                    app,
                    move |mut request: axum::http::Request<hyper::body::Incoming>| {
                        if let Some(peer) = peer {
                            request
                                .extensions_mut()
                                .insert(axum::extract::ConnectInfo(peer));
                        }
                        request
                    },
                );
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
                let _ = watcher.watch(connection).await;
            });
        }
        drop(listener);
        graceful.shutdown().await;
    })
}

/// Whether `a == b`, in time that depends on their lengths only: how servers compare a presented
/// token with theirs, so the answer's timing tells nothing of the token.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

/// Why a body could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    TooLarge,
    TimedOut,
    Broken,
}

/// Reads a whole request body of at most `limit` bytes within [`BODY_READ_TIMEOUT`].
pub async fn read_body(body: Body, limit: usize) -> Result<bytes::Bytes, BodyError> {
    read_body_within(body, limit, BODY_READ_TIMEOUT).await
}

pub(crate) async fn read_body_within(
    body: Body,
    limit: usize,
    timeout: Duration,
) -> Result<bytes::Bytes, BodyError> {
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(BodyError::TimedOut),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(error)) => {
            let too_large = std::error::Error::source(&error)
                .is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
            Err(if too_large {
                BodyError::TooLarge
            } else {
                BodyError::Broken
            })
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn token_comparison_is_exact() {
        assert!(super::constant_time_eq(b"abc", b"abc"));
        assert!(!super::constant_time_eq(b"abc", b"abd"));
        assert!(!super::constant_time_eq(b"abc", b"ab"));
        assert!(!super::constant_time_eq(b"", b"a"));
    }

    use super::*;
    use axum::routing::post;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn server() -> (
        std::net::SocketAddr,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let app = Router::new().route(
            "/",
            post(|body: Body| async move {
                match read_body_within(body, 8, Duration::from_millis(300)).await {
                    Ok(bytes) => format!("ok {}", bytes.len()),
                    Err(error) => format!("{error:?}"),
                }
            }),
        );
        let stop = CancellationToken::new();
        (address, stop.clone(), spawn("test", listener, app, stop))
    }

    // Hardening issue, item 9: no server had a header read timeout, so a client trickling
    // headers held a connection (and the drain) open.
    #[tokio::test]
    async fn a_client_trickling_headers_is_cut_off_at_the_header_read_timeout() {
        let (address, _stop, _handle) = server().await;
        let mut client = tokio::net::TcpStream::connect(address).await.unwrap();
        client
            .write_all(b"POST / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let started = std::time::Instant::now();
        // One header byte a second, never finishing: the server closes the connection.
        let closed = async {
            let mut buffer = [0u8; 256];
            loop {
                if client.write_all(b"X").await.is_err() {
                    return;
                }
                let read = tokio::time::timeout(Duration::from_secs(1), client.read(&mut buffer));
                if let Ok(Ok(0) | Err(_)) = read.await {
                    return;
                }
            }
        };
        tokio::time::timeout(HEADER_READ_TIMEOUT + Duration::from_secs(5), closed)
            .await
            .expect("the server closed the connection within the header read timeout");
        assert!(started.elapsed() >= HEADER_READ_TIMEOUT - Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_refused_peer_is_never_served() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let app = Router::new().route("/", post(|| async { "served" }));
        let _handle = spawn_admitting(
            "test",
            listener,
            app,
            CancellationToken::new(),
            Arc::new(|_, _| false),
        );
        let mut client = tokio::net::TcpStream::connect(address).await.unwrap();
        let _ = client
            .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            .await;
        let mut answer = Vec::new();
        let _ = client.read_to_end(&mut answer).await;
        assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    }

    #[tokio::test]
    async fn bodies_are_bounded_in_size_and_in_time() {
        let (address, _stop, _handle) = server().await;
        let ask = |request: &'static [u8], then: Option<&'static [u8]>| async move {
            let mut client = tokio::net::TcpStream::connect(address).await.unwrap();
            client.write_all(request).await.unwrap();
            if let Some(rest) = then {
                client.write_all(rest).await.unwrap();
            }
            let mut answer = vec![0u8; 1024];
            let read = client.read(&mut answer).await.unwrap();
            String::from_utf8_lossy(&answer[..read]).into_owned()
        };
        let fits = ask(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
            None,
        )
        .await;
        assert!(fits.ends_with("ok 3"), "{fits}");
        let large = ask(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n01234567890123456789",
            None,
        )
        .await;
        assert!(large.ends_with("TooLarge"), "{large}");
        let slow = ask(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nab",
            None,
        )
        .await;
        assert!(slow.ends_with("TimedOut"), "{slow}");
    }
}
