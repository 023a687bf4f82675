//! Slow and idle clients over raw sockets: a client that trickles its headers, one that says
//! nothing and an idle keep-alive connection are closed after `server.header_read_timeout_ms`;
//! connections over `server.max_connections` get a 503 at once, never a hang; too many headers
//! are a 431; a cold burst of 600 connections is served (the listen backlog). Each is counted in
//! `/metrics`.

mod common;

use std::time::{Duration, Instant};

use common::{Harness, sim_config, start_with};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn relay_with(adjust: impl FnOnce(&mut fm_relay::RelayConfig)) -> Harness {
    start_with(sim_config(), adjust).await
}

/// Reads until the peer closes the connection (or `limit` passes); what it sent.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let read_all = async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    };
    tokio::time::timeout(limit, read_all).await.ok()?;
    Some(received)
}

fn closed_by(metrics: &str, reason: &str) -> f64 {
    let prefix = format!("fm_relay_connections_closed_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in {metrics}"))
}

#[tokio::test]
async fn slow_silent_and_idle_connections_are_closed_after_the_header_timeout() {
    let harness = relay_with(|config| config.server.header_read_timeout_ms = 400).await;
    let addr = harness.relay.addr();
    // Headers a byte every 50 ms: never complete within 400 ms.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    let trickle = async {
        for byte in b"GET /healthz HTTP/1.1\r\nhost: x\r\n".iter() {
            if slow.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let started = Instant::now();
    trickle.await;
    let closed_after = started.elapsed();
    assert!(
        closed_after < Duration::from_secs(2),
        "the trickle went on for {closed_after:?}"
    );
    // Silent from the start.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    assert!(
        read_until_closed(&mut silent, Duration::from_secs(2))
            .await
            .is_some()
    );
    // Idle after one request on a keep-alive connection.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut idle, Duration::from_secs(2))
        .await
        .expect("the idle keep-alive connection was closed");
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    let metrics = harness.metrics().await;
    assert!(closed_by(&metrics, "header_timeout") >= 3.0, "{metrics}");
}

#[tokio::test]
async fn connections_over_the_cap_get_a_503_at_once_and_room_comes_back() {
    let harness = relay_with(|config| config.server.max_connections = 4).await;
    let addr = harness.relay.addr();
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    // Give the relay a moment to count them as open.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut over = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let answer = read_until_closed(&mut over, Duration::from_secs(2))
        .await
        .expect("answered and closed");
    assert!(started.elapsed() < Duration::from_secs(1));
    let answer = String::from_utf8(answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("\"over_capacity\""), "{answer}");
    drop(idle);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Room again: this request gets a connection.
    let metrics = harness.metrics().await;
    assert_eq!(closed_by(&metrics, "over_capacity"), 1.0, "{metrics}");
}

#[tokio::test]
async fn too_many_headers_are_a_431() {
    let harness = relay_with(|config| config.server.max_headers = 20).await;
    let mut stream = TcpStream::connect(harness.relay.addr()).await.unwrap();
    let mut request = String::from("GET /healthz HTTP/1.1\r\nhost: x\r\n");
    for index in 0..40 {
        request.push_str(&format!("x-filler-{index}: {index}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let answer = read_until_closed(&mut stream, Duration::from_secs(2))
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
}

#[tokio::test]
async fn a_cold_burst_of_600_connections_is_served() {
    let harness = common::start().await;
    let addr = harness.relay.addr();
    let tasks: Vec<_> = (0..600)
        .map(|_| {
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(addr).await?;
                stream
                    .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                    .await?;
                let mut answer = Vec::new();
                stream.read_to_end(&mut answer).await?;
                Ok::<_, std::io::Error>(answer.starts_with(b"HTTP/1.1 200"))
            })
        })
        .collect();
    let mut served = 0;
    for task in tasks {
        if task.await.unwrap().unwrap() {
            served += 1;
        }
    }
    assert_eq!(served, 600);
}
