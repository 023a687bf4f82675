//! Bedrock over HTTPS, as AWS serves it: fm-sim with TLS from its own certificate authority and
//! ALPN offering HTTP/2. The relay trusts that authority through `bedrock.ca_file`, negotiates
//! HTTP/2 and carries concurrent streams over few connections (`bedrock.http2_connections`); without the file the endpoint's
//! certificate is refused, and a file that is not a usable certificate stops the start.

mod common;

use std::sync::Arc;

use common::*;
use fm_protocol::StreamEvent;
use fm_relay::error::RelayError;
use fm_sim::{LocalTls, ModelProfile};

/// A simulator over HTTPS whose answers take about half a second, and the path of its
/// authority's certificate.
async fn https_sim() -> (fm_sim::SimHandle, std::path::PathBuf) {
    let tls = LocalTls::generate().unwrap();
    let ca_file = temp_dir("https-upstream").join("ca.pem");
    std::fs::write(&ca_file, tls.ca_pem()).unwrap();
    let mut config = sim_config();
    config.default_model = ModelProfile {
        first_token_ms: 200,
        tokens_per_second: 100.0,
        answer_tokens: Some(30),
    };
    let sim = fm_sim::spawn_https(config, Arc::new(tls)).await.unwrap();
    assert!(sim.endpoint_url().starts_with("https://127.0.0.1:"));
    (sim, ca_file)
}

#[tokio::test]
async fn concurrent_streams_share_http2_connections_to_a_tls_endpoint() {
    let (sim, ca_file) = https_sim().await;
    let mut config = relay_config(&sim);
    config.bedrock.ca_file = Some(ca_file);
    // The calls are spread over two HTTP clients: two connections, each carrying half.
    config.bedrock.http2_connections = 2;
    let relay = fm_relay::start(config).await.unwrap();
    let http = http_client();
    let url = format!("http://{}", relay.addr());

    // One call on each client first: a client that has no connection yet and meets a burst
    // opens one per call, before ALPN tells it HTTP/2 would carry them all (hyper's pool).
    for turn in 0..2 {
        let answer = http
            .post(format!("{url}/v1/chat"))
            .header("content-type", "application/json")
            .body(chat_body(None, &format!("Hello over TLS, {turn}.")))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "{:?}", answer.text().await);
    }

    let streams = (0..40).map(|n| {
        let request = http
            .post(format!("{url}/v1/chat/stream"))
            .header("content-type", "application/json")
            .body(chat_body(None, &format!("Stream {n} over TLS.")));
        async move { sse_events(request.send().await.unwrap()).await }
    });
    for events in futures_util::future::join_all(streams).await {
        assert!(
            matches!(events.last(), Some(StreamEvent::Done { .. })),
            "{events:?}"
        );
        assert!(!text_of(&events).is_empty());
    }

    let connections = sim.stats().tls_connections;
    let h2 = connections.get("h2").copied().unwrap_or(0);
    assert_eq!(connections.get("http/1.1"), None, "{connections:?}");
    assert_eq!(
        h2, 2,
        "42 calls, 40 of them at once, spread over two clients: {connections:?}"
    );
}

#[tokio::test]
async fn an_endpoint_whose_authority_is_not_trusted_is_refused() {
    let (sim, _ca_file) = https_sim().await;
    let relay = fm_relay::start(relay_config(&sim)).await.unwrap();
    let response = http_client()
        .post(format!("http://{}/v1/chat", relay.addr()))
        .header("content-type", "application/json")
        .body(chat_body(None, "Hello?"))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_server_error(), "{response:?}");
    assert_eq!(
        sim.stats().requests,
        0,
        "no request got through the handshake"
    );
}

#[tokio::test]
async fn a_ca_file_that_is_missing_or_not_a_certificate_stops_the_start() {
    let (sim, ca_file) = https_sim().await;
    let mut config = relay_config(&sim);
    config.bedrock.ca_file = Some(ca_file.with_file_name("missing.pem"));
    match fm_relay::start(config).await {
        Err(RelayError::CaFileUnreadable { path, .. }) => assert!(path.ends_with("missing.pem")),
        other => panic!("{:?}", other.map(|_| ())),
    }

    let not_pem = ca_file.with_file_name("not.pem");
    std::fs::write(&not_pem, "just some text\n").unwrap();
    let broken = ca_file.with_file_name("broken.pem");
    std::fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    for file in [not_pem, broken] {
        let mut config = relay_config(&sim);
        config.bedrock.ca_file = Some(file.clone());
        match fm_relay::start(config).await {
            Err(RelayError::CaFileInvalid { path, .. }) => assert_eq!(path, file),
            other => panic!("{}: {:?}", file.display(), other.map(|_| ())),
        }
    }
}
