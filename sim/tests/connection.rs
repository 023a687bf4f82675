//! Faults below HTTP, read off the raw socket: `hang-up@MS` closes the connection without a byte
//! of answer, `reset@N` tears it down mid-body (no closing chunk) where `cut@N` ends the body
//! cleanly, and `throttle-wait@MS` says how long to wait in the headers clients read.

use std::time::{Duration, Instant};

use fm_sim::{FAULT_HEADER, SimConfig, SimHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BODY: &str = r#"{"model":"llama-test","messages":[{"role":"user","content":"Explain what a relay does."}],"max_tokens":64,"stream":true}"#;

/// Sends one OpenAI chat request asking for `fault` over a plain socket and reads until the
/// server closes the connection: everything received, and how long it took.
async fn raw_exchange(sim: &SimHandle, fault: &str) -> (String, Duration) {
    let mut socket = TcpStream::connect(sim.addr()).await.unwrap();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: sim\r\ncontent-type: application/json\r\n\
         connection: close\r\n{FAULT_HEADER}: {fault}\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let started = Instant::now();
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut received))
        .await
        .expect("the simulator closes the connection")
        .unwrap();
    (
        String::from_utf8_lossy(&received).into_owned(),
        started.elapsed(),
    )
}

fn client() -> reqwest::Client {
    // rustls needs its crypto provider chosen before a client is built.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// A Converse call to `model_id` (faults in its suffix).
async fn converse(sim: &SimHandle, model_id: &str) -> reqwest::Result<reqwest::Response> {
    client()
        .post(format!("{}/model/{model_id}/converse", sim.endpoint_url()))
        .body(r#"{"messages":[{"role":"user","content":[{"text":"hi"}]}]}"#)
        .send()
        .await
}

#[tokio::test]
async fn a_hang_up_closes_the_connection_without_an_answer() {
    let sim = fm_sim::spawn(SimConfig::instant()).await.unwrap();
    let (received, waited) = raw_exchange(&sim, "hang-up@300").await;
    assert_eq!(received, "", "not a byte of answer");
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    // The Bedrock operations hang up the same way.
    let error = converse(&sim, "m~hang-up@10").await.unwrap_err();
    assert!(!error.is_timeout() && !error.is_status(), "{error:?}");
}

#[tokio::test]
async fn a_reset_tears_the_body_where_a_cut_ends_it_cleanly() {
    let sim = fm_sim::spawn(SimConfig::instant()).await.unwrap();
    let (cut, _) = raw_exchange(&sim, "cut@3").await;
    assert!(cut.starts_with("HTTP/1.1 200"), "{cut}");
    assert!(
        cut.ends_with("\r\n0\r\n\r\n"),
        "a cut ends the chunked body: {cut}"
    );
    assert!(!cut.contains("[DONE]"), "{cut}");

    let (reset, _) = raw_exchange(&sim, "reset@3").await;
    assert!(reset.starts_with("HTTP/1.1 200"), "{reset}");
    assert_eq!(
        reset.matches("\"content\"").count(),
        4,
        "the role chunk and three tokens: {reset}"
    );
    assert!(
        !reset.ends_with("\r\n0\r\n\r\n"),
        "no closing chunk: {reset}"
    );

    // An HTTP client sees the torn body as an error, not as an end.
    let response = client()
        .post(format!("{}/v1/chat/completions", sim.endpoint_url()))
        .header(FAULT_HEADER, "reset@3")
        .body(BODY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.text().await.is_err());
}

#[tokio::test]
async fn a_throttle_can_say_how_long_to_wait() {
    let sim = fm_sim::spawn(SimConfig::instant()).await.unwrap();
    let response = converse(&sim, "m~throttle-wait@1500").await.unwrap();
    assert_eq!(response.status(), 429);
    let headers = response.headers();
    assert_eq!(headers["x-amzn-errortype"], "ThrottlingException");
    assert_eq!(headers["retry-after"], "2");
    assert_eq!(headers["x-amz-retry-after"], "1500");
    assert_eq!(headers["retry-after-ms"], "1500");

    let (openai, _) = raw_exchange(&sim, "throttle-wait@1500").await;
    assert!(openai.starts_with("HTTP/1.1 429"), "{openai}");
    assert!(openai.contains("retry-after-ms: 1500"), "{openai}");
    assert!(openai.contains("rate_limit_exceeded"), "{openai}");
}
