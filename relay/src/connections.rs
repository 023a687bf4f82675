//! Accepting and serving HTTP connections, with the limits a slow or hostile client meets before
//! any handler runs: a listen backlog for cold bursts ([`bind`]), TCP_NODELAY on every accepted
//! socket (and `server.send_buffer_bytes` as its send buffer, when set), a cap on open connections (over it a connection gets a 503 and is closed at once, never
//! left waiting), a header-read timeout that also closes idle keep-alive connections (hyper
//! starts it whenever a connection waits for the next request's headers: a client that trickles
//! its headers a byte a second, or opens a connection and says nothing, is closed when it runs
//! out), limits on the number and size of headers (431 over them), and a write timeout: a write
//! to the socket that cannot progress for `server.write_timeout_secs` (a client that stopped
//! reading its stream, whose TCP window stays shut) closes the connection, which drops the
//! answer and cancels its upstream call. What a stalled reader holds meanwhile is bounded: the
//! kernel's socket buffer, and hyper's queue of at most 16 body chunks (it stops pulling the
//! stream until they are written). The timeout stays on the socket after a WebSocket upgrade.
//! Each is counted in `/metrics` ([`ConnectionStats`]).
//!
//! The serving itself is hyper's, driven here so these settings can be applied: HTTP/1.1 with
//! upgrades (WebSocket), as `axum::serve` uses, or HTTP/2 for a client that opens with its
//! preface (prior knowledge, `h2c`: a load balancer or a gateway in front of the relay that
//! multiplexes its clients' requests over a few connections). Each connection's first bytes
//! choose, read within the header-read timeout. Over HTTP/2 a connection carries at most
//! `server.http2_max_streams` requests at once and `server.max_header_bytes` of headers per
//! request (refused over them); the write timeout and the connection cap hold alike, and a
//! connection is pinged when idle and closed when its peer stops answering. A stream whose client
//! stopped taking its data (its own flow-control window shut, the connection still moving) holds
//! at most 64 KiB and its paused upstream call until the client reads or the connection closes.
//! Graceful shutdown stops accepting and lets each connection finish its requests (HTTP/2: a
//! GOAWAY).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_io_timeout::TimeoutStream;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::config::ServerConfig;
use crate::error::RelayError;

/// How connections fared, since start-up.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    pub accepted: AtomicU64,
    pub open: AtomicU64,
    /// Refused with a 503 because `server.max_connections` were open.
    pub over_capacity: AtomicU64,
    /// Closed because their headers did not arrive within `server.header_read_timeout_ms`
    /// (slow or silent clients, idle keep-alive connections).
    pub header_timeouts: AtomicU64,
    /// Answered 431: more than `server.max_headers` headers or `server.max_header_bytes` bytes.
    pub headers_too_large: AtomicU64,
    /// Closed because a write made no progress for `server.write_timeout_secs` (HTTP or
    /// WebSocket): a client that stopped reading.
    pub write_timeouts: AtomicU64,
    /// WebSockets closed with 1009: a message or frame over the size limit.
    pub ws_too_big: AtomicU64,
    /// WebSockets closed with 1002: a broken frame.
    pub ws_protocol_errors: AtomicU64,
    /// WebSockets closed with 1008 after `server.ws_idle_timeout_secs` with nothing to do.
    pub ws_idle: AtomicU64,
    /// Connections that spoke HTTP/2 (of those accepted).
    pub http2: AtomicU64,
}

impl ConnectionStats {
    /// Counts `err` as a write timeout if it is one (anywhere in its chain of causes); returns
    /// whether it was.
    pub fn count_write_timeout(&self, err: &(dyn std::error::Error + 'static)) -> bool {
        let timed_out = std::iter::successors(Some(err), |err| err.source()).any(|cause| {
            cause
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        });
        if timed_out {
            self.write_timeouts.fetch_add(1, Ordering::Relaxed);
        }
        timed_out
    }
}

/// Binds `addr` with a listen backlog of `backlog` connections.
pub fn bind(addr: SocketAddr, backlog: u32) -> Result<TcpListener, RelayError> {
    let failed =
        |err: std::io::Error| RelayError::Startup(format!("cannot listen on {addr}: {err}"));
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(failed)?;
    socket.set_reuseaddr(true).map_err(failed)?;
    socket.bind(addr).map_err(failed)?;
    socket.listen(backlog).map_err(failed)
}

/// The answer of a connection over the cap: JSON like every error, then the connection closes.
fn over_capacity_answer(max: usize) -> Vec<u8> {
    let body = serde_json::to_string(&RelayError::TooManyConnections { max }.to_body(None))
        .unwrap_or_default();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Serves `app` on `listener` until `stop` completes, then lets open connections finish their
/// request and returns when all have closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    server: &ServerConfig,
    stats: Arc<ConnectionStats>,
    stop: impl Future<Output = ()>,
) {
    let header_read_timeout = Duration::from_millis(server.header_read_timeout_ms);
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_headers(server.max_headers)
        .max_header_size(server.max_header_bytes);
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_concurrent_streams(server.http2_max_streams)
        .max_header_list_size(u32::try_from(server.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(HTTP2_PING_INTERVAL))
        .keep_alive_timeout(HTTP2_PING_INTERVAL)
        .max_send_buf_size(HTTP2_STREAM_SEND_BUFFER);
    let protocols = Arc::new(Protocols {
        http1,
        http2,
        header_read_timeout,
    });
    let max_connections = server.max_connections;
    let write_timeout = Duration::from_secs(server.write_timeout_secs);
    let connections = TaskTracker::new();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut stop = std::pin::pin!(stop);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: wait a moment instead of spinning.
                    tracing::warn!(%err, "could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        if let Err(err) = stream.set_nodelay(true) {
            tracing::warn!(%err, "could not set TCP_NODELAY on an accepted socket");
        }
        if server.send_buffer_bytes > 0
            && let Err(err) =
                socket2::SockRef::from(&stream).set_send_buffer_size(server.send_buffer_bytes)
        {
            tracing::warn!(%err, "could not set the send buffer size of an accepted socket");
        }
        if stats.open.load(Ordering::Relaxed) >= max_connections as u64 {
            stats.over_capacity.fetch_add(1, Ordering::Relaxed);
            connections.spawn(refuse(stream, max_connections));
            continue;
        }
        stats.open.fetch_add(1, Ordering::Relaxed);
        let connection = serve_one(
            stream,
            write_timeout,
            app.clone(),
            protocols.clone(),
            stats.clone(),
            stop_rx.clone(),
        );
        connections.spawn(connection);
    }
    drop(listener);
    let _ = stop_tx.send(true);
    connections.close();
    connections.wait().await;
}

/// Answers a connection over the cap with a 503 and closes it.
async fn refuse(mut stream: TcpStream, max: usize) {
    let answer = over_capacity_answer(max);
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&answer)).await;
    let _ = stream.shutdown().await;
}

/// How often an HTTP/2 connection is pinged while idle, and how long the answer may take before
/// the connection is closed as dead.
const HTTP2_PING_INTERVAL: Duration = Duration::from_secs(20);

/// What an HTTP/2 stream buffers for a client that does not take its data (its flow-control
/// window shut); hyper's default is 400 KiB. Token streams need far less.
const HTTP2_STREAM_SEND_BUFFER: usize = 64 * 1024;

/// The first bytes of an HTTP/2 connection with prior knowledge (RFC 9113, section 3.4).
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How many of the preface's bytes tell it from an HTTP/1.1 request line (`PRI ` is no method
/// the relay serves); hyper's HTTP/2 server reads and checks the whole preface itself.
const HTTP2_PREFACE_SEEN: usize = 4;

/// The two protocols a connection may speak, set up once and shared.
struct Protocols {
    http1: hyper::server::conn::http1::Builder,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
    header_read_timeout: Duration,
}

/// Which protocol the client opened with, from its first bytes (peeked, so they stay for
/// hyper): `None` when none arrived within the header-read timeout.
async fn opening(stream: &TcpStream, within: Duration) -> Option<Protocol> {
    let mut first = [0u8; HTTP2_PREFACE_SEEN];
    let read = async {
        loop {
            let seen = match stream.peek(&mut first).await {
                Ok(0) | Err(_) => return Protocol::Http1,
                Ok(seen) => seen,
            };
            if !HTTP2_PREFACE.starts_with(&first[..seen]) {
                return Protocol::Http1;
            }
            if seen == HTTP2_PREFACE_SEEN {
                return Protocol::Http2;
            }
            // The first bytes of `PRI ` arrived alone (a peek returns what is there): wait a
            // moment for the rest rather than peek the same bytes again at once.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::time::timeout(within, read).await.ok()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

/// Drives `connection` to its end; when `stopping` comes first, starts its graceful shutdown
/// (`shut_down`: hyper's, the same method on each protocol's connection type) and lets it finish.
async fn until_done<C: Future>(
    mut connection: Pin<Box<C>>,
    stopping: impl Future,
    shut_down: fn(Pin<&mut C>),
) -> C::Output {
    tokio::select! {
        result = connection.as_mut() => result,
        _ = stopping => {
            shut_down(connection.as_mut());
            connection.await
        }
    }
}

async fn serve_one(
    stream: TcpStream,
    write_timeout: Duration,
    app: Router,
    protocols: Arc<Protocols>,
    stats: Arc<ConnectionStats>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let Some(protocol) = opening(&stream, protocols.header_read_timeout).await else {
        // A client that connects and says nothing, as HTTP/1.1's header-read timeout closes it.
        stats.header_timeouts.fetch_add(1, Ordering::Relaxed);
        stats.open.fetch_sub(1, Ordering::Relaxed);
        return;
    };
    let mut stream = TimeoutStream::new(stream);
    stream.set_write_timeout(Some(write_timeout));
    let io = TokioIo::new(Box::pin(stream));
    let service = TowerToHyperService::new(
        app.map_request(|request: hyper::Request<Incoming>| request.map(Body::new)),
    );
    let stopping = async { stop.wait_for(|stop| *stop).await.map(|_| ()) };
    // Each protocol's connection in its own allocation: the task holds either one's state, not
    // room for the larger of the two.
    let result = match protocol {
        Protocol::Http1 => {
            let connection = protocols.http1.serve_connection(io, service);
            until_done(
                Box::pin(connection.with_upgrades()),
                stopping,
                |connection| connection.graceful_shutdown(),
            )
            .await
        }
        Protocol::Http2 => {
            stats.http2.fetch_add(1, Ordering::Relaxed);
            let connection = protocols.http2.serve_connection(io, service);
            until_done(Box::pin(connection), stopping, |connection| {
                connection.graceful_shutdown()
            })
            .await
        }
    };
    if let Err(err) = result {
        if err.is_timeout() {
            stats.header_timeouts.fetch_add(1, Ordering::Relaxed);
        } else if err.is_parse_too_large() {
            stats.headers_too_large.fetch_add(1, Ordering::Relaxed);
        } else {
            stats.count_write_timeout(&err);
        }
    }
    stats.open.fetch_sub(1, Ordering::Relaxed);
}
