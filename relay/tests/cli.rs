//! The `fm-relay` binary as a user runs it: the printed default configuration, clear start-up
//! errors, and `serve` on the embedded simulator answering a streaming request, then stopping
//! cleanly on SIGTERM.

use std::process::Command;
use std::time::Duration;

use fm_protocol::StreamEvent;
use fm_relay::RelayConfig;

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_fm-relay");

#[test]
fn print_config_shows_the_documented_default() {
    let output = Command::new(BIN).arg("--print-config").output().unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.starts_with("# FM Relay configuration"), "{text}");
    let parsed = RelayConfig::from_toml(&text, "printed").unwrap();
    assert_eq!(parsed, RelayConfig::embedded_default());
}

#[test]
fn bad_configuration_is_a_clear_error() {
    let output = Command::new(BIN)
        .args(["serve", "--config", "/nonexistent/relay.toml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/relay.toml"), "{stderr}");

    let output = Command::new(BIN)
        .args(["serve"])
        .env("FM_RELAY_IDLE_TIMEOUT_MS", "0")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("idle_ms"), "{stderr}");
}

#[test]
fn keys_add_prints_a_key_once_and_stores_only_its_digest() {
    let file = common::temp_dir("keys").join("keys.toml");
    let add = |name: &str| {
        Command::new(BIN)
            .args(["keys", "add", name, "--file"])
            .arg(&file)
            .args(["--model", "claude-3-5-haiku", "--requests-per-minute", "60"])
            .output()
            .unwrap()
    };
    let output = add("team-a");
    assert!(output.status.success(), "{output:?}");
    let key = String::from_utf8(output.stdout).unwrap().trim().to_string();
    assert!(key.starts_with("fmr_") && key.len() == 68, "{key}");
    let stored = std::fs::read_to_string(&file).unwrap();
    assert!(!stored.contains(&key), "the key itself is never stored");
    let digest = hex::encode(fm_relay::auth::key_digest(&key));
    assert!(stored.contains(&digest), "{stored}");
    assert!(stored.contains("requests_per_minute = 60"), "{stored}");
    // A relay with the file knows the key.
    let mut config = RelayConfig::embedded_default();
    config.auth.keys_file = file.clone();
    let keys = fm_relay::auth::KeyRing::load(&config).unwrap();
    assert_eq!(keys.identify(Some(&key)).unwrap().name(), "team-a");
    // A second key of the same name is refused, and the file keeps one.
    let again = add("team-a");
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), stored);
}

#[tokio::test]
async fn serve_streams_tokens_on_the_embedded_simulator_and_stops_on_sigterm() {
    let common::ServedBinary {
        mut child,
        url,
        start_log: lines,
        rest_of_log: drain,
    } = common::serve_binary(BIN, ["serve", "--port", "0", "--bedrock-mode", "sim"]);
    assert!(
        lines.iter().any(|l| l.contains("embedded simulator")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("auth.mode = \"open\"")),
        "the start-up log says the relay is open: {lines:?}"
    );

    let response = common::http_client()
        .post(format!("{url}/v1/chat/stream"))
        .header("content-type", "application/json")
        .body(r#"{"messages":[{"role":"user","content":"Hello"}],"max_tokens":20}"#)
        .send()
        .await
        .unwrap();
    let events = common::sse_events(response).await;
    let deltas = events
        .iter()
        .filter(|e| matches!(e, StreamEvent::TextDelta { .. }))
        .count();
    assert_eq!(deltas, 20);
    assert!(
        matches!(events.last(), Some(StreamEvent::Done { .. })),
        "{events:?}"
    );

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut exit = None;
    for _ in 0..200 {
        if let Some(code) = child.try_wait().unwrap() {
            exit = Some(code);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let exit = exit.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("fm-relay did not stop after SIGTERM")
    });
    assert!(exit.success(), "{exit:?}");
    let tail = drain.join().unwrap();
    assert!(
        tail.iter().any(|l| l.contains("SIGTERM received")),
        "{tail:?}"
    );
    assert!(
        tail.iter().any(|l| l.contains("fm-relay stopped")),
        "{tail:?}"
    );
}

#[tokio::test]
async fn sighup_reloads_the_routing_rules_of_the_config_file() {
    let dir = common::temp_dir("sighup");
    let file = dir.join("relay.toml");
    let data_dir = dir.join("data");
    let with_hint_to = |model: &str| {
        fm_relay::config::DEFAULT_CONFIG_TOML
            .replace(
                "when = { hints = [\"fast\"] }\nmodels = [\"nova-lite\", \"claude-3-5-haiku\"]",
                &format!("when = {{ hints = [\"fast\"] }}\nmodels = [\"{model}\"]"),
            )
            .replace(
                "data_dir = \"data\"",
                &format!("data_dir = {:?}", data_dir.display().to_string()),
            )
    };
    let first = with_hint_to("nova-lite");
    assert_ne!(first, fm_relay::config::DEFAULT_CONFIG_TOML);
    std::fs::write(&file, &first).unwrap();
    let common::ServedBinary {
        mut child,
        url,
        rest_of_log: drain,
        ..
    } = common::serve_binary(
        BIN,
        [
            "serve".as_ref(),
            "--port".as_ref(),
            "0".as_ref(),
            "--bedrock-mode".as_ref(),
            "sim".as_ref(),
            "--config".as_ref(),
            file.as_os_str(),
        ],
    );
    let explain = || async {
        let response = common::http_client()
            .post(format!("{url}/v1/route/explain"))
            .header("content-type", "application/json")
            .body(r#"{"messages":[{"role":"user","content":"hi"}],"routing_hint":"fast"}"#)
            .send()
            .await
            .unwrap();
        let explained: fm_protocol::RouteExplanation = response.json().await.unwrap();
        explained.model
    };
    assert_eq!(explain().await, "nova-lite");
    std::fs::write(&file, with_hint_to("claude-sonnet-4")).unwrap();
    let hup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let mut model = String::new();
    for _ in 0..100 {
        model = explain().await;
        if model == "claude-sonnet-4" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(model, "claude-sonnet-4", "the rule after SIGHUP");
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let tail = drain.join().unwrap();
    assert!(
        tail.iter().any(|l| l.contains("configuration reloaded")),
        "{tail:?}"
    );
}
