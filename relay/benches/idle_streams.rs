//! Memory per open idle stream: the relay binary's resident memory grows by how much for each SSE
//! stream held open while the upstream has not sent its first token yet?
//!
//! Run: `cargo bench -p fm-relay --bench idle_streams` (env `IDLE_STREAMS`, default 1000;
//! `IDLE_STREAM_BUDGET_KIB`, default 45: the run fails, exit code 1, when an open stream costs
//! more, so a change that makes every stream heavier shows up as a failed benchmark).
//! The simulator runs in this process with a first token that never comes in time; the relay runs
//! as its own process (`fm-relay serve --bedrock-endpoint ...`) so `/proc/<pid>/status` shows its
//! memory alone. Each stream is a raw TCP connection that sent its request and read the `start`
//! event, which the relay sends only once the upstream accepted the call: every stream counted
//! holds an upstream call open. (This bench stays in `fm-relay` for the binary's path; the
//! tokio `test-util` feature that the relay's tests switch on changes timing, not memory.)

mod common;

use std::time::Duration;

use common::RelayProcess;
use fm_sim::{ModelProfile, SimConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Opens one stream and returns once the `start` event arrived.
async fn open_stream(addr: &str) -> TcpStream {
    let body = r#"{"messages":[{"role":"user","content":"Hello, are you there?"}]}"#;
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket.set_nodelay(true).unwrap();
    let request = format!(
        "POST /v1/chat/stream HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("event: start") {
        let read = socket.read(&mut buffer).await.unwrap();
        assert!(
            read > 0,
            "the relay closed the stream: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buffer[..read]);
    }
    assert!(
        seen.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&seen)
    );
    socket
}

#[tokio::main]
async fn main() {
    let streams: usize = std::env::var("IDLE_STREAMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let budget_kib: f64 = std::env::var("IDLE_STREAM_BUDGET_KIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(45.0);
    let mut config = SimConfig::instant();
    config.default_model = ModelProfile {
        first_token_ms: 3_600_000,
        tokens_per_second: 0.0,
        answer_tokens: None,
    };
    let sim = fm_sim::spawn(config).await.unwrap();

    let relay = RelayProcess::start(
        &sim.endpoint_url(),
        &[
            "--first-token-timeout-ms",
            "3600000",
            "--total-timeout-ms",
            "3600000",
        ],
    );
    let addr = relay.addr.clone();
    // Warm up: the first stream sets up pools and lazy state that every later one shares.
    let warm = open_stream(&addr).await;
    drop(warm);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = relay.resident_kib();
    let mut open = Vec::with_capacity(streams);
    for _ in 0..streams {
        open.push(open_stream(&addr).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = relay.resident_kib();
    let per_stream = (after.saturating_sub(before)) as f64 * 1024.0 / streams as f64;
    let sim_streams = sim.stats().streams_started;

    println!("fm-relay idle streams: {streams} SSE streams open, each holding an upstream call\n");
    println!(
        "| streams | relay RSS before (KiB) | after (KiB) | per open stream (KiB) | upstream streams open |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| {streams} | {before} | {after} | {:.1} | {} |",
        per_stream / 1024.0,
        sim_streams - 1
    );
    drop(open);
    drop(relay);
    let per_stream_kib = per_stream / 1024.0;
    if per_stream_kib > budget_kib {
        eprintln!(
            "over budget: {per_stream_kib:.1} KiB per open idle stream, budget {budget_kib} KiB (IDLE_STREAM_BUDGET_KIB)"
        );
        std::process::exit(1);
    }
    println!("\nWithin the budget of {budget_kib} KiB per open idle stream.");
}
