//! What the relay adds on top of its upstream: requests per second, latency percentiles of
//! `POST /v1/chat`, and time to first byte / first token of `POST /v1/chat/stream`, each compared
//! with calling the simulator directly at the same concurrency, and with the relay's own Bedrock
//! provider (the AWS SDK) calling the simulator in-process — the cost the SDK alone imposes. The simulator answers with zero
//! latency, so the difference is the relay's own cost (plus the second loopback hop).
//!
//! Run: `cargo bench -p fm-bench --bench overhead` (env `BENCH_SECS`, default 5 per scenario;
//! `BENCH_CONCURRENCY`, default `1,64`; `BENCH_ROUTES`, default `sync,stream`;
//! `BENCH_SYNC_RATE` / `BENCH_STREAM_RATE`, comma-separated rates in requests per second for the
//! paced scenarios at 64 connections, default `1000,2000,4000` / `500,1000`; `BENCH_ROUNDS`,
//! default 1: measure every scenario that many times and report medians). The simulator, the relay and the load generator each get their
//! own tokio runtime in this one process; all three share the machine's two cores.
//!
//! Two kinds of load: closed loop (every connection sends again the moment it is answered, which
//! saturates the cores, so latency there measures throughput) and paced (64 connections on a fixed
//! schedule below saturation, which measures what a request waits for the relay in normal
//! operation). CPU per request is the process's CPU time during a scenario divided by its
//! requests; the relay's share is its scenario's figure minus the direct one's.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fm_protocol::ChatRequest;
use fm_relay::RelayConfig;
use fm_relay::config::{BedrockMode, ModelConfig, ProviderKind};
use fm_relay::provider::bedrock::{self, BedrockEndpoint};
use fm_relay::provider::{BedrockProvider, ChatProvider};
use fm_sim::{ModelProfile, SimConfig};
use futures_util::StreamExt;

const UPSTREAM_MODEL: &str = "bench-model";
const ANSWER_TOKENS: u32 = 32;
/// Connections of the paced scenarios.
const PACED_CONCURRENCY: usize = 64;
const PROMPT: &str = "Summarise the benefits of a relay in front of model APIs.";

/// The allocator of the `fm-relay` binary (relay/src/main.rs), so that the relay measured here is
/// the one that ships; the simulator and the load generator in this process use it too.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Sync,
    Stream,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Path {
    /// Plain HTTP to the simulator.
    Direct,
    /// The relay's Bedrock provider (the AWS SDK) calling the simulator, in-process: what any
    /// application using the SDK pays, and the floor under the relay.
    Sdk,
    /// HTTP to the relay, which calls the simulator through the SDK.
    Relay,
}

struct Target {
    sim_url: String,
    relay_url: String,
    sdk: BedrockProvider,
    chat: ChatRequest,
}

impl Target {
    fn request(&self, client: &reqwest::Client, path: Path, kind: Kind) -> reqwest::RequestBuilder {
        let (url, body) = match path {
            Path::Direct => {
                let op = if kind == Kind::Sync {
                    "converse"
                } else {
                    "converse-stream"
                };
                (
                    format!("{}/model/{UPSTREAM_MODEL}/{op}", self.sim_url),
                    serde_json::json!({
                        "messages": [{"role": "user", "content": [{"text": PROMPT}]}],
                        "inferenceConfig": {"maxTokens": 256},
                    }),
                )
            }
            Path::Sdk => unreachable!("the SDK path makes no HTTP request of its own"),
            Path::Relay => {
                let route = if kind == Kind::Sync {
                    "/v1/chat"
                } else {
                    "/v1/chat/stream"
                };
                (
                    format!("{}{route}", self.relay_url),
                    serde_json::json!({
                        "messages": [{"role": "user", "content": PROMPT}],
                        "max_tokens": 256,
                    }),
                )
            }
        };
        client
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_string())
    }
}

/// Latencies of one request: to the first body byte and to the end.
#[derive(Debug, Clone, Copy)]
struct Sample {
    first_byte: Duration,
    total: Duration,
}

struct Outcome {
    samples: Vec<Sample>,
    errors: usize,
    elapsed: Duration,
    cpu: Duration,
}

async fn sdk_request(target: &Target, kind: Kind) -> Option<Sample> {
    let start = Instant::now();
    match kind {
        Kind::Sync => {
            let answer = target
                .sdk
                .complete(UPSTREAM_MODEL, &target.chat)
                .await
                .ok()?;
            let total = start.elapsed();
            (!answer.text.is_empty()).then_some(Sample {
                first_byte: total,
                total,
            })
        }
        Kind::Stream => {
            let mut events = target
                .sdk
                .open_stream(UPSTREAM_MODEL, &target.chat)
                .await
                .ok()?;
            let mut first_byte = None;
            while let Some(event) = events.next().await {
                event.ok()?;
                first_byte.get_or_insert_with(|| start.elapsed());
            }
            Some(Sample {
                first_byte: first_byte?,
                total: start.elapsed(),
            })
        }
    }
}

async fn one_request(
    client: &reqwest::Client,
    target: &Target,
    path: Path,
    kind: Kind,
) -> Option<Sample> {
    if path == Path::Sdk {
        return sdk_request(target, kind).await;
    }
    let start = Instant::now();
    let response = target.request(client, path, kind).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    let mut body = response.bytes_stream();
    let mut first_byte = None;
    let mut bytes = 0;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.ok()?;
        if !chunk.is_empty() {
            first_byte.get_or_insert_with(|| start.elapsed());
        }
        bytes += chunk.len();
    }
    (bytes > 0).then(|| Sample {
        first_byte: first_byte.unwrap_or_default(),
        total: start.elapsed(),
    })
}

/// Process CPU time (user + system) from /proc, in clock ticks of 10 ms.
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_name = stat.rsplit_once(") ").map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    Duration::from_millis(ticks * 10)
}

/// How the load generator sends.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Load {
    /// Each connection sends its next request as soon as the last one finished.
    Closed,
    /// The connections together send `rate` requests per second on a fixed schedule. Latency is
    /// measured from the actual send: the schedule's timer has 1 ms granularity, which would
    /// otherwise swamp sub-millisecond figures, and at these rates a connection's interval
    /// (16 ms and more) is far longer than any answer, so no send waits on a slow answer.
    Paced { rate: f64 },
}

async fn run_scenario(
    target: Arc<Target>,
    path: Path,
    kind: Kind,
    concurrency: usize,
    load: Load,
    warmup: Duration,
    measure: Duration,
) -> Outcome {
    fm_relay::provider::openai::install_crypto_provider();
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(concurrency * 2)
        .build()
        .unwrap();
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    let interval = match load {
        Load::Closed => None,
        Load::Paced { rate } => Some(Duration::from_secs_f64(concurrency as f64 / rate)),
    };
    for worker in 0..concurrency {
        let (client, target, measuring, stop) = (
            client.clone(),
            target.clone(),
            measuring.clone(),
            stop.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut errors = 0;
            // Spread the connections' schedules evenly over one interval.
            let mut next = Instant::now()
                + interval.map_or(Duration::ZERO, |i| i * worker as u32 / concurrency as u32);
            while !stop.load(Ordering::Relaxed) {
                if let Some(interval) = interval {
                    tokio::time::sleep_until(next.into()).await;
                    next += interval;
                }
                let sample = one_request(&client, &target, path, kind).await;
                if measuring.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
                    match sample {
                        Some(sample) => samples.push(sample),
                        None => errors += 1,
                    }
                }
            }
            (samples, errors)
        }));
    }
    tokio::time::sleep(warmup).await;
    let cpu_before = process_cpu();
    let started = Instant::now();
    measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(measure).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let cpu = process_cpu().saturating_sub(cpu_before);
    let mut samples = Vec::new();
    let mut errors = 0;
    for worker in workers {
        let (s, e) = worker.await.unwrap();
        samples.extend(s);
        errors += e;
    }
    Outcome {
        samples,
        errors,
        elapsed,
        cpu,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

struct Summary {
    rps: f64,
    p50: Duration,
    p99: Duration,
    ttfb_p50: Duration,
    ttfb_p99: Duration,
    cpu_per_request: Duration,
    count: usize,
    errors: usize,
}

fn summarise(outcome: &Outcome) -> Summary {
    let mut totals: Vec<Duration> = outcome.samples.iter().map(|s| s.total).collect();
    let mut firsts: Vec<Duration> = outcome.samples.iter().map(|s| s.first_byte).collect();
    totals.sort_unstable();
    firsts.sort_unstable();
    let count = outcome.samples.len();
    Summary {
        rps: count as f64 / outcome.elapsed.as_secs_f64(),
        p50: percentile(&totals, 50.0),
        p99: percentile(&totals, 99.0),
        ttfb_p50: percentile(&firsts, 50.0),
        ttfb_p99: percentile(&firsts, 99.0),
        cpu_per_request: outcome.cpu / (count.max(1) as u32),
        count,
        errors: outcome.errors,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

fn route_name(kind: Kind, path: Path) -> &'static str {
    match (kind, path) {
        (Kind::Sync, Path::Direct) => "sim converse",
        (Kind::Sync, Path::Sdk) => "SDK Converse → sim",
        (Kind::Sync, Path::Relay) => "relay /v1/chat",
        (Kind::Stream, Path::Direct) => "sim converse-stream",
        (Kind::Stream, Path::Sdk) => "SDK ConverseStream → sim",
        (Kind::Stream, Path::Relay) => "relay /v1/chat/stream",
    }
}

/// The median of `values` (the lower middle one for an even count).
fn median<T: Copy + PartialOrd>(mut values: Vec<T>) -> T {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    values[(values.len() - 1) / 2]
}

/// One path's figures over the rounds: the median of each, and the totals of the counts.
fn median_summary(rounds: &[&Summary]) -> Summary {
    let pick = |field: fn(&Summary) -> Duration| median(rounds.iter().map(|s| field(s)).collect());
    Summary {
        rps: median(rounds.iter().map(|s| s.rps).collect()),
        p50: pick(|s| s.p50),
        p99: pick(|s| s.p99),
        ttfb_p50: pick(|s| s.ttfb_p50),
        ttfb_p99: pick(|s| s.ttfb_p99),
        cpu_per_request: pick(|s| s.cpu_per_request),
        count: rounds.iter().map(|s| s.count).sum(),
        errors: rounds.iter().map(|s| s.errors).sum(),
    }
}

/// Runs each scenario on the three paths `rounds` times (the paths take turns within a round, so
/// a noisy moment on the shared machine hits one round of all three rather than one path) and
/// prints the median figures, then the median of what the relay added in each round.
fn report(
    scenarios: &[(Kind, usize, Load)],
    rounds: usize,
    run: &dyn Fn(Kind, usize, Load, Path) -> Summary,
) {
    println!(
        "| route | concurrency | load | req/s | p50 ms | p99 ms | first byte p50 ms | first byte p99 ms | CPU/req ms | requests | errors |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut added = Vec::new();
    for &(kind, concurrency, load) in scenarios {
        let load_name = match load {
            Load::Closed => "closed".to_string(),
            Load::Paced { rate } => format!("{rate:.0}/s"),
        };
        let paths = [Path::Direct, Path::Sdk, Path::Relay];
        let results: Vec<[Summary; 3]> = (0..rounds)
            .map(|_| paths.map(|path| run(kind, concurrency, load, path)))
            .collect();
        for (index, path) in paths.into_iter().enumerate() {
            let of_path: Vec<&Summary> = results.iter().map(|round| &round[index]).collect();
            let s = median_summary(&of_path);
            println!(
                "| {} | {concurrency} | {load_name} | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
                route_name(kind, path),
                s.rps,
                ms(s.p50),
                ms(s.p99),
                ms(s.ttfb_p50),
                ms(s.ttfb_p99),
                ms(s.cpu_per_request),
                s.count,
                s.errors
            );
        }
        added.push((kind, concurrency, load_name, results));
    }
    println!("\nAdded by the relay, over plain HTTP to the simulator and over the bare SDK:\n");
    println!(
        "| route | concurrency | load | over | p50 ms | p99 ms | first byte p50 ms | first byte p99 ms | CPU/req ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (kind, concurrency, load_name, results) in &added {
        let route = if *kind == Kind::Sync {
            "/v1/chat"
        } else {
            "/v1/chat/stream"
        };
        for (base, over) in [(0, "direct"), (1, "SDK")] {
            let added = |field: fn(&Summary) -> Duration| {
                let ms = median(
                    results
                        .iter()
                        .map(|round| {
                            field(&round[2]).as_secs_f64() - field(&round[base]).as_secs_f64()
                        })
                        .collect(),
                ) * 1000.0;
                format!("{ms:+.3}")
            };
            println!(
                "| {route} | {concurrency} | {load_name} | {over} | {} | {} | {} | {} | {} |",
                added(|s| s.p50),
                added(|s| s.p99),
                added(|s| s.ttfb_p50),
                added(|s| s.ttfb_p99),
                added(|s| s.cpu_per_request),
            );
        }
    }
}

fn runtime(threads: usize, name: &str) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .enable_all()
        .build()
        .unwrap()
}

fn main() {
    // `cargo bench` passes `--bench`; accept and ignore harness flags.
    let secs: f64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5.0);
    let concurrencies: Vec<usize> = std::env::var("BENCH_CONCURRENCY")
        .unwrap_or_else(|_| "1,64".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let routes = std::env::var("BENCH_ROUTES").unwrap_or_else(|_| "sync,stream".into());
    let kinds: Vec<Kind> = [(Kind::Sync, "sync"), (Kind::Stream, "stream")]
        .into_iter()
        .filter(|(_, name)| routes.split(',').any(|r| r.trim() == *name))
        .map(|(kind, _)| kind)
        .collect();
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&rounds| rounds > 0)
        .unwrap_or(1);
    let measure = Duration::from_secs_f64(secs);
    let warmup = Duration::from_secs(1);

    let sim_runtime = runtime(1, "sim");
    let relay_runtime = runtime(2, "relay");
    let load_runtime = runtime(2, "load");

    let mut sim_config = SimConfig::instant();
    sim_config.default_model = ModelProfile {
        first_token_ms: 0,
        tokens_per_second: 0.0,
        answer_tokens: Some(ANSWER_TOKENS),
    };
    let sim = sim_runtime.block_on(fm_sim::spawn(sim_config)).unwrap();
    let mut config = RelayConfig::embedded_default();
    config.server.port = 0;
    config.bedrock.mode = BedrockMode::Endpoint;
    config.bedrock.endpoint = Some(sim.endpoint_url());
    config.default_model = "bench".into();
    // The same prompt again and again: with the cache on, the relay would not call the upstream.
    config.cache.enabled = false;
    config.models = vec![ModelConfig {
        id: "bench".into(),
        provider: ProviderKind::Bedrock,
        upstream_id: Some(UPSTREAM_MODEL.into()),
        region: "us-east-1".into(),
        endpoint: None,
        api_key_env: None,
        input_price_per_1k: 0.0,
        output_price_per_1k: 0.0,
        context_window: 100_000,
        accepts_prefill: false,
        failover: Vec::new(),
        fallback_models: Vec::new(),
    }];
    let relay = relay_runtime.block_on(fm_relay::start(config)).unwrap();
    let sdk = load_runtime.block_on(BedrockProvider::connect(
        &BedrockEndpoint::Url(sim.endpoint_url()),
        "us-east-1",
        bedrock::http_client(),
        Duration::from_secs(3),
    ));
    let chat = ChatRequest {
        max_tokens: Some(256),
        ..ChatRequest::from_prompt(PROMPT)
    };
    let target = Arc::new(Target {
        sim_url: sim.endpoint_url(),
        relay_url: relay.url(),
        sdk,
        chat,
    });

    println!(
        "fm-relay overhead: {ANSWER_TOKENS}-token answers, zero-latency simulator, {secs} s per scenario"
    );
    let run = |kind: Kind, concurrency: usize, load: Load, path: Path| {
        let outcome = load_runtime.block_on(run_scenario(
            target.clone(),
            path,
            kind,
            concurrency,
            load,
            warmup,
            measure,
        ));
        summarise(&outcome)
    };
    println!("\n### Closed loop (each connection sends again as soon as answered)\n");
    let mut scenarios = Vec::new();
    for &kind in &kinds {
        for &concurrency in &concurrencies {
            scenarios.push((kind, concurrency, Load::Closed));
        }
    }
    report(&scenarios, rounds, &run);
    let paced: Vec<(Kind, usize, Load)> = kinds
        .iter()
        .flat_map(|&kind| {
            let (variable, default) = match kind {
                Kind::Sync => ("BENCH_SYNC_RATE", "1000,2000,4000"),
                Kind::Stream => ("BENCH_STREAM_RATE", "500,1000"),
            };
            let rates: Vec<f64> = std::env::var(variable)
                .unwrap_or_else(|_| default.into())
                .split(',')
                .filter_map(|rate| rate.trim().parse().ok())
                .collect();
            rates
                .into_iter()
                .map(move |rate| (kind, PACED_CONCURRENCY, Load::Paced { rate }))
        })
        .collect();
    println!(
        "\n### Paced (open loop: {PACED_CONCURRENCY} connections sending on a fixed schedule, below saturation)\n"
    );
    report(&paced, rounds, &run);
    if kinds.contains(&Kind::Stream) {
        let metrics = load_runtime.block_on(async {
            reqwest::get(format!("{}/metrics", relay.url()))
                .await?
                .text()
                .await
        });
        let counter = |text: &str, name: &str| -> Option<f64> {
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        };
        if let Ok(text) = metrics
            && let (Some(events), Some(writes)) = (
                counter(&text, "fm_relay_stream_events_total"),
                counter(&text, "fm_relay_stream_writes_total"),
            )
        {
            println!(
                "\nRelay streams: {events} events in {writes} writes ({:.1} events per write).",
                events / writes.max(1.0)
            );
        }
    }
    drop(relay);
    drop(sim);
}
