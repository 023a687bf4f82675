//! Conformance with the official SDKs (from PyPI, installed into `.venv` by `scripts/setup.sh`):
//! each script in `relay/tests/conformance/` drives the relay through its SDK as an existing
//! application would — only the base URL changed — and exits non-zero, with the reason, on the
//! first difference.

mod common;

use std::path::PathBuf;

use common::*;
use fm_relay::config::{AuthMode, KeyLimits};

/// The workspace's `.venv` Python (`FM_PYTHON` overrides it).
fn python() -> PathBuf {
    std::env::var_os("FM_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"))
}

/// Runs `relay/tests/conformance/<script>` with `args`; panics with its output when it fails.
async fn run_script(script: &str, args: &[&str]) -> String {
    let python = python();
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup.sh (it makes the tests' Python virtualenv)",
        python.display()
    );
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/conformance")
        .join(script);
    let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
    // Off the runtime's thread: the relay under test answers on it meanwhile.
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&python)
            .arg(&path)
            .args(&args)
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{script} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The key the SDKs send.
const KEY: &str = "fmr_conformance_test_key";

/// A key allowed one request a minute.
const LIMITED_KEY: &str = "fmr_conformance_limited_key";

/// A relay that requires keys, with [`KEY`] and [`LIMITED_KEY`].
async fn keyed() -> Harness {
    start_with(sim_config(), |config| {
        config.auth.mode = AuthMode::Keys;
        let limited = KeyLimits {
            requests_per_minute: Some(1),
            burst: Some(1),
            ..KeyLimits::default()
        };
        config.auth.keys = vec![
            api_key("sdk", KEY, KeyLimits::default()),
            api_key("limited", LIMITED_KEY, limited),
        ];
    })
    .await
}

#[tokio::test]
async fn the_openai_sdk_works_with_only_the_base_url_changed() {
    let harness = keyed().await;
    let base_url = harness.url("");
    let said = run_script(
        "openai_sdk.py",
        &[base_url.trim_end_matches('/'), KEY, "plain"],
    )
    .await;
    assert!(said.contains("openai SDK"), "{said}");
}

#[tokio::test]
async fn the_anthropic_sdk_works_with_only_the_base_url_changed() {
    let harness = keyed().await;
    let base_url = harness.url("");
    let said = run_script(
        "anthropic_sdk.py",
        &[base_url.trim_end_matches('/'), KEY, "plain"],
    )
    .await;
    assert!(said.contains("anthropic SDK"), "{said}");
}

#[tokio::test]
async fn boto3_s_bedrock_runtime_client_works_with_only_the_endpoint_changed() {
    let harness = keyed().await;
    let base_url = harness.url("");
    let said = run_script(
        "boto3_sdk.py",
        &[
            base_url.trim_end_matches('/'),
            KEY,
            "plain",
            UPSTREAM,
            LIMITED_KEY,
        ],
    )
    .await;
    assert!(said.contains("boto3"), "{said}");
}
