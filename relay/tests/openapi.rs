//! The OpenAPI document against the relay that serves it: Schemathesis (from PyPI, installed into
//! `.venv` by `scripts/setup.sh`) reads `GET /openapi.json` and sends every native operation a
//! bounded number of generated requests — ones the schemas allow and ones that break them — and
//! fails on any 5xx answer and on any answer that does not match the document.
//!
//! The drop-in surfaces (tag `drop-in`) are left out: their bodies are free-form in the document
//! (the vendors' schemas are theirs), and the SDK conformance tests cover them.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use fm_relay::config::{AuthMode, KeyLimits, RouteConfig};
use serde_json::Value;

/// The key Schemathesis sends.
const KEY: &str = "fmr_schemathesis_test_key";

/// Test cases per operation and phase: enough to reach each field's bounds, few enough that the
/// run stays well under two minutes on a 2-core machine.
const MAX_EXAMPLES: &str = "25";

/// The longest the run may take before it is stopped as failed.
const DEADLINE: Duration = Duration::from_secs(150);

/// The workspace's `.venv` (`FM_VENV` overrides it).
fn venv() -> PathBuf {
    std::env::var_os("FM_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv"))
}

/// Runs `program` with `args`, its output (stdout and stderr) to the file `log`, and stops it
/// if it runs past [`DEADLINE`]: its exit status and output.
async fn run_bounded(
    program: &std::path::Path,
    args: &[String],
    log: PathBuf,
) -> (std::process::ExitStatus, String) {
    let out = std::fs::File::create(&log).unwrap();
    // In the log's folder: Schemathesis keeps a cache folder where it runs.
    let mut child = std::process::Command::new(program)
        .args(args)
        .current_dir(log.parent().unwrap())
        .env("NO_COLOR", "1")
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > DEADLINE {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!(
                "{} ran longer than {DEADLINE:?}:\n{}",
                program.display(),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        // The relay under test answers on the runtime meanwhile.
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    (status, std::fs::read_to_string(&log).unwrap())
}

/// The operations of `document` Schemathesis must test, as it labels them (`GET /v1/models`):
/// those not tagged `drop-in`, but for `GET /openapi.json`, which it leaves out as the document
/// it loaded.
fn native_operations(document: &serde_json::Value) -> BTreeSet<String> {
    let mut labels = BTreeSet::new();
    for (path, item) in document["paths"].as_object().into_iter().flatten() {
        for (method, operation) in item.as_object().into_iter().flatten() {
            let tags = operation["tags"].as_array().cloned().unwrap_or_default();
            if !tags.iter().any(|tag| tag == "drop-in") && path != "/openapi.json" {
                labels.insert(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    labels
}

/// The operations of a Schemathesis NDJSON report whose fuzzing scenario passed.
fn fuzzed_operations(report: &str) -> BTreeSet<String> {
    report
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|event| {
            let scenario = &event["ScenarioFinished"];
            (scenario["phase"] == "fuzzing" && scenario["status"] == "success")
                .then(|| scenario["recorder"]["label"].as_str().map(str::to_string))
                .flatten()
        })
        .collect()
}

/// The status codes `document` declares for `method path`.
fn statuses(document: &Value, method: &str, path: &str) -> Vec<String> {
    document["paths"][path][method]["responses"]
        .as_object()
        .unwrap_or_else(|| panic!("no {method} {path} in the document"))
        .keys()
        .cloned()
        .collect()
}

#[tokio::test]
async fn the_document_is_public_and_lists_what_this_relay_serves() {
    let harness = start_with(sim_config(), |config| {
        config.auth.mode = AuthMode::Keys;
        config.auth.keys = vec![api_key("schemathesis", KEY, KeyLimits::default())];
        config.jobs.enabled = false;
        config.routes = vec![RouteConfig {
            path: "/v1/summarize".into(),
            system: "Summarize the text.".into(),
            max_tokens: 300,
            models: vec!["plain".into()],
            max_latency_ms: None,
        }];
    })
    .await;
    // No key: the document is public, where the routes it describes are not.
    let response = harness.get("/openapi.json").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert!(response.headers().contains_key("x-request-id"));
    let document: Value = response.json().await.unwrap();
    assert_eq!(harness.get("/v1/models").await.status(), 401);
    assert_eq!(document["openapi"], "3.1.0");

    // This relay's own routes: its purpose-built one, and no jobs while they are off.
    let summarize = &document["paths"]["/v1/summarize"]["post"];
    assert!(
        summarize["description"].to_string().contains("300"),
        "{summarize}"
    );
    assert_eq!(summarize["parameters"][0]["name"], "stream");
    assert!(document["paths"].get("/v1/jobs").is_none());
    assert!(document["paths"].get("/v1/jobs/{id}").is_none());

    // The edge's answers where the edge gives them.
    let chat = statuses(&document, "post", "/v1/chat");
    for status in [
        "200", "400", "401", "403", "413", "415", "429", "502", "503", "504",
    ] {
        assert!(
            chat.contains(&status.to_string()),
            "POST /v1/chat: {chat:?}"
        );
    }
    let summarize = statuses(&document, "post", "/v1/summarize");
    assert!(summarize.contains(&"502".to_string()), "{summarize:?}");
    let models = statuses(&document, "get", "/v1/models");
    assert!(models.contains(&"401".to_string()) && !models.contains(&"415".to_string()));
    let health = statuses(&document, "get", "/healthz");
    assert!(!health.contains(&"401".to_string()), "{health:?}");
    assert_eq!(
        document["paths"]["/healthz"]["get"]["security"],
        serde_json::json!([{}])
    );
    // The drop-in surfaces keep their vendors' error bodies.
    let completions = statuses(&document, "post", "/v1/chat/completions");
    assert!(!completions.contains(&"401".to_string()), "{completions:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_answer_that_breaks_the_document() {
    let schemathesis = venv().join("bin/schemathesis");
    assert!(
        schemathesis.exists(),
        "{} is missing: run scripts/setup.sh (it makes the tests' Python virtualenv)",
        schemathesis.display()
    );
    let harness = start_with(sim_config(), |config| {
        config.auth.mode = AuthMode::Keys;
        // An admin key, so that the admin operations answer too.
        let mut key = api_key("schemathesis", KEY, KeyLimits::default());
        key.admin = true;
        config.auth.keys = vec![key];
        // The well-behaved model only: a generated model id must never reach a faulty one (its
        // 5xx would be the simulator's doing, not a bug).
        config.models.retain(|model| model.id == "plain");
        // Generated callback URLs must never leave the machine: only a host that cannot
        // resolve is allowed, and no secret signs callbacks (so a job with one is refused).
        config.jobs.callback_allowed_hosts = vec!["callbacks.invalid".into()];
        config.jobs.callback_secret.clear();
    })
    .await;
    let schema_url = harness.url("/openapi.json");
    let document: serde_json::Value = harness.get_json("/openapi.json").await;
    let native = native_operations(&document);
    assert!(
        native.len() >= 16,
        "the document lists only these native operations: {native:?}"
    );
    let report = temp_dir("schemathesis").join("run.ndjson");
    let args: Vec<String> = [
        "run",
        &schema_url,
        "--checks",
        "not_a_server_error,response_schema_conformance",
        "--exclude-tag",
        "drop-in",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-examples",
        MAX_EXAMPLES,
        "--workers",
        "2",
        "--seed",
        "1",
        "--request-timeout",
        "20",
        "--header",
        &format!("Authorization: Bearer {KEY}"),
        "--generation-database",
        "none",
        "--no-color",
        "--report",
        "ndjson",
        "--report-ndjson-path",
        &report.display().to_string(),
    ]
    .iter()
    .map(|arg| arg.to_string())
    .collect();
    let started = Instant::now();
    let (status, stdout) = run_bounded(&schemathesis, &args, report.with_extension("log")).await;
    assert!(
        status.success(),
        "schemathesis found answers that break the document ({status}):\n{stdout}"
    );
    // A run that tested nothing would pass too: every native operation must have been fuzzed.
    let fuzzed = fuzzed_operations(&std::fs::read_to_string(&report).unwrap());
    let missed: Vec<_> = native.difference(&fuzzed).collect();
    assert!(
        missed.is_empty(),
        "schemathesis did not fuzz {missed:?}:\n{stdout}"
    );
    eprintln!(
        "schemathesis: {:.1} s\n{stdout}",
        started.elapsed().as_secs_f64()
    );
}
