//! Slow and idle clients over raw sockets: a client that trickles its headers, one that says
//! nothing and an idle keep-alive connection are closed after `server.header_read_timeout_ms`;
//! connections over `server.max_connections` get a 503 at once, never a hang; too many headers
//! are a 431; a client that stops reading its stream is closed after `server.write_timeout_secs`
//! and its upstream call cancelled; a cold burst of 600 connections is served (the listen
//! backlog); an HTTP/2 client (prior knowledge) is served many requests at once over one
//! connection, within the header limit. Each is counted in `/metrics`.

mod common;

use std::time::{Duration, Instant};

use common::http2::Http2Sender;
use common::{Harness, sim_config, start_with};

const LONG_UPSTREAM: &str = "anthropic.long-v1:0";
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
    assert!(harness.connections_closed("header_timeout").await >= 3.0);
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
    assert_eq!(harness.connections_closed("over_capacity").await, 1.0);
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
    assert_eq!(harness.connections_closed("header_too_large").await, 1.0);
}

/// A relay whose model `long` answers 4096 tokens at 1000 a second (about 200 KB of events in
/// 4 s: still streaming when the write timeout strikes), whose write
/// timeout is 1 s and whose sockets send from a small buffer (on loopback the kernel would
/// otherwise let a socket buffer about a megabyte: ten 64 KB segments, twice over).
async fn long_answer_relay() -> Harness {
    let mut sim = sim_config();
    sim.models.insert(
        LONG_UPSTREAM.into(),
        fm_sim::ModelProfile {
            first_token_ms: 0,
            tokens_per_second: 1000.0,
            answer_tokens: Some(4096),
        },
    );
    start_with(sim, |config| {
        config.server.write_timeout_secs = 1;
        config.server.send_buffer_bytes = 8192;
        config
            .models
            .push(common::model("long", LONG_UPSTREAM.into()));
    })
    .await
}

const LONG_REQUEST: &str =
    r#"{"model":"long","max_tokens":4096,"messages":[{"role":"user","content":"go on"}]}"#;

/// A connection to the relay whose receive window is a few KB: with the relay's send buffer
/// small too, its writes stall once the socket buffers are full, if the client does not read.
async fn connect_with_small_window(harness: &Harness) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(harness.relay.addr()).await.unwrap()
}

/// Waits (bounded) until the relay has closed a connection for its write timeout.
async fn wait_for_write_timeout(harness: &Harness) {
    let started = Instant::now();
    while harness.connections_closed("write_timeout").await < 1.0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no write timeout after {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_client_that_stops_reading_its_stream_is_closed_after_the_write_timeout() {
    let harness = long_answer_relay().await;
    let mut stream = connect_with_small_window(&harness).await;
    let request = format!(
        "POST /v1/chat/stream HTTP/1.1\r\nhost: relay\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{LONG_REQUEST}",
        LONG_REQUEST.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    // Never read: the relay gives up on the stalled write and cancels the upstream call.
    wait_for_write_timeout(&harness).await;
    harness.wait_for_cancelled_streams(1).await;
    // What arrived is a prefix of the stream, never its end.
    let received = read_until_closed(&mut stream, Duration::from_secs(5))
        .await
        .expect("the connection was closed");
    let received = String::from_utf8_lossy(&received);
    assert!(received.starts_with("HTTP/1.1 200"), "{received}");
    assert!(!received.contains("event: done"));
}

#[tokio::test]
async fn a_websocket_client_that_stops_reading_is_closed_after_the_write_timeout() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let harness = long_answer_relay().await;
    let stream = connect_with_small_window(&harness).await;
    let url = format!("ws://{}/v1/ws", harness.relay.addr());
    let (mut socket, _) = tokio_tungstenite::client_async(url.as_str(), stream)
        .await
        .unwrap();
    socket.send(Message::text(LONG_REQUEST)).await.unwrap();
    // Never read.
    wait_for_write_timeout(&harness).await;
    harness.wait_for_cancelled_streams(1).await;
    // The events that had reached the socket's buffer, then the end, never a `done`.
    let mut events = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), socket.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                assert!(!text.contains(r#""type":"done""#));
                events += 1;
            }
            Ok(Some(Ok(_))) => {}
            Ok(None | Some(Err(_))) => break,
            Err(_) => panic!("the socket stayed open"),
        }
    }
    assert!(events > 0);
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

/// Sends one request on `sender`'s connection: its status and whole body, or the stream's error.
async fn http2_request(
    sender: &mut Http2Sender,
    request: hyper::Request<axum::body::Body>,
) -> Result<(u16, Vec<u8>), hyper::Error> {
    use futures_util::StreamExt;
    let response = common::http2::send(sender, request).await?;
    let status = response.status().as_u16();
    let mut body = axum::body::Body::new(response.into_body()).into_data_stream();
    let mut received = Vec::new();
    while let Some(chunk) = body.next().await {
        received.extend_from_slice(&chunk.expect("the body arrives whole"));
    }
    Ok((status, received))
}

fn http2_post(path: &str, body: String) -> hyper::Request<axum::body::Body> {
    common::http2::post(&format!("http://relay{path}"), body)
}

#[tokio::test]
async fn an_http2_client_is_served_many_requests_at_once_over_one_connection() {
    let harness = relay_with(|config| config.server.max_header_bytes = 4096).await;
    let sender = common::http2::connect(harness.relay.addr()).await;

    // 24 streams and 8 JSON answers at once, all on the one connection; the paced model takes
    // half a second to say its 10 tokens, so the streams are open together.
    let started = Instant::now();
    let requests = (0..32).map(|index| {
        let mut sender = sender.clone();
        async move {
            let streamed = index % 4 != 0;
            let path = if streamed { "/v1/chat/stream" } else { "/v1/chat" };
            let body = format!(
                r#"{{"model":"paced","max_tokens":10,"messages":[{{"role":"user","content":"request {index}"}}]}}"#
            );
            let (status, body) = http2_request(&mut sender, http2_post(path, body))
                .await
                .unwrap();
            (streamed, status, body)
        }
    });
    for (streamed, status, body) in futures_util::future::join_all(requests).await {
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        if streamed {
            let mut decoder = fm_protocol::SseDecoder::new();
            let events: Vec<_> = decoder
                .feed(&body)
                .unwrap()
                .iter()
                .map(|frame| frame.stream_event().unwrap())
                .collect();
            assert!(
                matches!(events.last(), Some(fm_protocol::StreamEvent::Done { .. })),
                "{events:?}"
            );
            assert!(!common::text_of(&events).is_empty());
        } else {
            let answer: fm_protocol::ChatResponse = serde_json::from_slice(&body).unwrap();
            assert!(!answer.text.is_empty());
        }
    }
    // One after the other they would take 16 s.
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the requests did not run at once: {:?}",
        started.elapsed()
    );

    // Headers over `server.max_header_bytes` are refused, and the connection serves on.
    let mut oversized = http2_post("/v1/chat", common::chat_body(None, "too big"));
    oversized
        .headers_mut()
        .insert("x-filler", "x".repeat(8192).parse().unwrap());
    let mut sender_for_oversized = sender.clone();
    // (Refused with a 431, or with a stream reset.)
    if let Ok((status, _)) = http2_request(&mut sender_for_oversized, oversized).await {
        assert_eq!(status, 431);
    }
    let mut sender = sender;
    let (status, _) = http2_request(
        &mut sender,
        http2_post("/v1/chat", common::chat_body(None, "after")),
    )
    .await
    .unwrap();
    assert_eq!(status, 200);

    let metrics = harness.metrics().await;
    assert!(
        metrics.contains("fm_relay_connections_http2_total 1\n"),
        "{metrics}"
    );
}
