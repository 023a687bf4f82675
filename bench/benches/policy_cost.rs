//! What the routing policy, the metrics and sampled tracing cost: two `fm-relay` processes on
//! the same simulator, one with the embedded default's hybrid policy (every request that names
//! no model classified and routed by its rules), its Prometheus histograms, and OTLP traces
//! sampled at 10% to a collector in this process; the other with no rules and no trace export
//! (its metrics cannot be turned off, so they are in both). Both are driven in turns with the
//! same closed-loop load of the evaluation prompts; each process's CPU time (from
//! `/proc/PID/stat`) per answered request is the figure.
//!
//! Run: `cargo build --release -p fm-relay && cargo bench -p fm-bench --bench policy_cost`
//! (env `BENCH_SECS`, default 5 per turn; `BENCH_ROUNDS`, default 3; `BENCH_CONCURRENCY`,
//! default 16; `FM_RELAY_BIN`, default `target/release/fm-relay`).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use fm_relay::RelayConfig;
use fm_relay::config::BedrockMode;
use serde_json::Value;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU seconds a process has used (user + system).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

struct Relay {
    child: Child,
    url: String,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_relay(binary: &PathBuf, config: &RelayConfig, name: &str) -> Relay {
    let dir = std::env::temp_dir().join(format!("fm-policy-cost-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut config = config.clone();
    config.limits.data_dir = dir.join("data");
    config.auth.keys_file = dir.join("keys.toml");
    let file = dir.join("relay.toml");
    std::fs::write(&file, toml::to_string(&config).unwrap()).unwrap();
    let mut child = Command::new(binary)
        .args(["serve", "--port", "0", "--config"])
        .arg(&file)
        .env("RUST_LOG", "warn,fm_relay=info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| {
            panic!(
                "{}: {err} (build it: cargo build --release -p fm-relay)",
                binary.display()
            )
        });
    let mut log = BufReader::new(child.stderr.take().unwrap()).lines();
    let url = loop {
        let line = log
            .next()
            .expect("fm-relay exited before listening")
            .unwrap();
        if let Some(at) = line.find("url=") {
            break line[at + 4..].trim().to_string();
        }
    };
    std::thread::spawn(move || log.map_while(Result::ok).for_each(drop));
    Relay { child, url }
}

/// Sends the prompts round-robin from `concurrency` connections for `secs`; answers received.
async fn drive(url: &str, bodies: Arc<Vec<String>>, concurrency: usize, secs: f64) -> u64 {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    let answered = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = (0..concurrency)
        .map(|worker| {
            let (client, bodies, answered) = (client.clone(), bodies.clone(), answered.clone());
            let url = format!("{url}/v1/chat");
            tokio::spawn(async move {
                let mut next = worker;
                while Instant::now() < until {
                    let body = bodies[next % bodies.len()].clone();
                    next += concurrency;
                    let ok = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success());
                    if ok {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    answered.load(Ordering::Relaxed)
}

fn main() {
    let secs: f64 = env_or("BENCH_SECS", 5.0);
    let rounds: usize = env_or("BENCH_ROUNDS", 3);
    let concurrency: usize = env_or("BENCH_CONCURRENCY", 16);
    let binary = std::env::var_os("FM_RELAY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/fm-relay")
        });
    fm_relay::provider::openai::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut sim_config = fm_sim::SimConfig::instant();
    sim_config.default_model.answer_tokens = Some(64);
    let sim = runtime.block_on(fm_sim::spawn(sim_config)).unwrap();
    // The collector: takes every export and counts its bytes.
    let exported = Arc::new(AtomicU64::new(0));
    let collector = runtime.block_on(async {
        let exported = exported.clone();
        let router = Router::new().route(
            "/v1/traces",
            post(move |body: axum::body::Bytes| {
                let exported = exported.clone();
                async move {
                    exported.fetch_add(body.len() as u64, Ordering::Relaxed);
                    "{}"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        url
    });

    let mut base = RelayConfig::embedded_default();
    base.bedrock.mode = BedrockMode::Endpoint;
    base.bedrock.endpoint = Some(sim.endpoint_url());
    base.cache.enabled = false;
    base.server.web_dir = None;
    let mut on = base.clone();
    on.tracing.otlp_endpoint = collector;
    on.tracing.sample_ratio = 0.1;
    let mut policy_only = on.clone();
    policy_only.tracing.otlp_endpoint.clear();
    let mut off = base;
    off.routing.rules.clear();
    off.routes.clear();
    off.tracing.otlp_endpoint.clear();
    let relays = [
        (
            "policy, metrics and 10% traces on",
            start_relay(&binary, &on, "on"),
        ),
        (
            "policy and metrics, no trace export",
            start_relay(&binary, &policy_only, "policy"),
        ),
        (
            "no rules, no trace export",
            start_relay(&binary, &off, "off"),
        ),
    ];

    let bodies: Arc<Vec<String>> = Arc::new(
        include_str!("../../relay/tests/data/route_classes.jsonl")
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .map(|v| {
                serde_json::json!({
                    "messages": [{"role": "user", "content": v["prompt"]}],
                    "max_tokens": 256
                })
                .to_string()
            })
            .collect(),
    );
    // Warm both up.
    for (_, relay) in &relays {
        runtime.block_on(drive(&relay.url, bodies.clone(), concurrency, 1.0));
    }
    let mut totals = [(0.0f64, 0u64); 3];
    for _ in 0..rounds {
        for (index, (_, relay)) in relays.iter().enumerate() {
            let pid = relay.child.id();
            let before = cpu_seconds(pid);
            let answered = runtime.block_on(drive(&relay.url, bodies.clone(), concurrency, secs));
            totals[index].0 += cpu_seconds(pid) - before;
            totals[index].1 += answered;
        }
    }
    println!(
        "fm-relay CPU per request: {} prompts round-robin, {concurrency} connections, {rounds} × {secs} s per relay, in turns\n",
        bodies.len()
    );
    println!("| relay | requests | requests/s | relay CPU µs / request |\n|---|---|---|---|");
    let per_request = |(cpu, answered): (f64, u64)| cpu * 1e6 / answered.max(1) as f64;
    for (index, (name, _)) in relays.iter().enumerate() {
        println!(
            "| {name} | {} | {:.0} | {:.1} |",
            totals[index].1,
            totals[index].1 as f64 / (rounds as f64 * secs),
            per_request(totals[index])
        );
    }
    let added = |index: usize| (per_request(totals[index]) / per_request(totals[2]) - 1.0) * 100.0;
    println!(
        "\nAdded CPU per request: {:+.1}% by the policy, metrics and traces; {:+.1}% by the policy and metrics alone (OTLP bytes exported: {}).",
        added(0),
        added(1),
        exported.load(Ordering::Relaxed)
    );
}
