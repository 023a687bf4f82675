//! Graceful shutdown: open streams finish within the grace period while new work is refused, and
//! streams still open when it ends get a `shutting_down` error event instead of a silent cut.

mod common;

use std::time::Duration;

use common::*;
use fm_protocol::{ErrorCode, StreamEvent};
use fm_sim::ModelProfile;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// A guard against a hang, not a timing goal.
const HANG_GUARD: Duration = Duration::from_secs(20);

#[tokio::test]
async fn open_streams_finish_while_new_work_is_refused() {
    let mut sim = sim_config();
    // About half a second per answer.
    sim.models.insert(
        PACED_UPSTREAM.into(),
        ModelProfile {
            first_token_ms: 0,
            tokens_per_second: 100.0,
            answer_tokens: Some(50),
        },
    );
    let harness = start_with(sim, |config| config.server.shutdown_grace_secs = 10).await;
    let mut sse = SseReader::new(
        harness
            .post("/v1/chat/stream", chat_body(Some("paced"), "hello"))
            .await,
    );
    let mut events = Vec::new();
    while !matches!(events.last(), Some(StreamEvent::TextDelta { .. })) {
        events.push(sse.next_event().await.unwrap());
    }

    let url = harness.relay.url();
    harness.relay.begin_shutdown();
    // New work is refused: the listener is closed (or, on a racing connection, a 503).
    let fresh = common::http_client();
    match fresh
        .post(format!("{url}/v1/chat"))
        .body(chat_body(None, "too late"))
        .send()
        .await
    {
        Err(err) => assert!(err.is_connect() || err.is_request(), "{err}"),
        Ok(response) => assert_eq!(response.status(), 503),
    }

    // The open stream runs to its end.
    events.extend(sse.rest().await);
    assert!(
        matches!(events.last(), Some(StreamEvent::Done { .. })),
        "{events:?}"
    );
    assert_eq!(text_of(&events).split_inclusive(' ').count(), 50);
    let Harness { relay, .. } = harness;
    tokio::time::timeout(HANG_GUARD, relay.stopped())
        .await
        .unwrap();
}

#[tokio::test]
async fn streams_open_when_the_grace_period_ends_get_a_shutting_down_event() {
    let harness = start_with(sim_config(), |config| {
        config.server.shutdown_grace_secs = 0;
        config.timeouts.idle_ms = 60_000;
    })
    .await;
    let sse = harness
        .post("/v1/chat/stream", chat_body(Some("stall"), "hello"))
        .await;
    let url = format!("ws://{}/v1/ws", harness.relay.addr());
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    socket
        .send(WsMessage::text(chat_body(Some("stall"), "hello")))
        .await
        .unwrap();
    let mut ws_events = Vec::new();
    while ws_events.len() < 3 {
        let frame = socket.next().await.unwrap().unwrap();
        ws_events.push(serde_json::from_str::<StreamEvent>(frame.to_text().unwrap()).unwrap());
    }

    harness.relay.begin_shutdown();
    let events = tokio::time::timeout(HANG_GUARD, sse_events(sse))
        .await
        .unwrap();
    assert_eq!(text_of(&events).split_inclusive(' ').count(), 2);
    assert!(
        matches!(
            events.last(),
            Some(StreamEvent::Error {
                code: ErrorCode::ShuttingDown,
                retryable: true,
                ..
            })
        ),
        "{events:?}"
    );
    // The WebSocket answer ends the same way, then the socket is closed as "going away".
    loop {
        match tokio::time::timeout(HANG_GUARD, socket.next())
            .await
            .unwrap()
        {
            Some(Ok(WsMessage::Text(text))) => ws_events.push(serde_json::from_str(&text).unwrap()),
            Some(Ok(WsMessage::Close(frame))) => {
                assert_eq!(u16::from(frame.unwrap().code), 1001);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        matches!(
            ws_events.last(),
            Some(StreamEvent::Error {
                code: ErrorCode::ShuttingDown,
                ..
            })
        ),
        "{ws_events:?}"
    );
    harness.wait_for_cancelled_streams(2).await;
    let Harness { relay, .. } = harness;
    tokio::time::timeout(HANG_GUARD, relay.stopped())
        .await
        .unwrap();
}
