//! What the relay adds on top of its upstream: requests per second, latency percentiles of
//! `POST /v1/chat`, and time to first byte / first token of `POST /v1/chat/stream`, each compared
//! with calling the simulator directly at the same concurrency; with a bare pass-through (axum +
//! reqwest, no policy, no SDK: the floor of any HTTP hop, as in DESIGN.md's table of peers) in
//! front of the simulator; and with the relay's own Bedrock provider (the AWS SDK) calling the
//! simulator in-process — the cost the SDK alone imposes; and with the relay calling the
//! simulator's OpenAI-compatible route instead (every policy, no SDK). The simulator answers with
//! zero latency, so the difference is the relay's own cost (plus the second loopback hop).
//!
//! Run: `cargo bench -p fm-bench --bench overhead` (env `BENCH_SECS`, default 5 per scenario;
//! `BENCH_CONCURRENCY`, default `1,64`; `BENCH_ROUTES`, default `sync,stream`;
//! `BENCH_SYNC_RATE` / `BENCH_STREAM_RATE`, comma-separated rates in requests per second for the
//! paced scenarios at 64 connections, default `1000,2000,4000` / `500,1000`; `BENCH_PATHS`,
//! default `direct,pass-through,sdk,relay,relay-openai,relay-edge,relay-edge-redis`;
//! `BENCH_ROUNDS`, default 1: measure every scenario that many times and report medians;
//! `BENCH_LIMIT_RATES`, default `50,100,200`: the offered rates of the two-replica limit check).
//!
//! The edge's cost: `relay-edge` is the same relay with API keys on and every limit checked on
//! every request (the key's and the global request rate, the key's and the model's tokens per
//! minute, monthly request and token quotas, daily and monthly budgets — none close to refusing),
//! in memory with the SQLite ledger; `relay-edge-redis` keeps them in a `redis-server` the bench
//! starts (skipped when there is none). After the tables: the Redis commands per request, and two
//! relays on one Redis with a global limit of 100 requests/s, driven together at three rates:
//! what they admitted against the limit. The simulator, the pass-through, the relay
//! and the load generator each get their own tokio runtime in this one process; all of them share
//! the machine's two cores.
//!
//! Two kinds of load: closed loop (every connection sends again the moment it is answered, which
//! saturates the cores, so latency there measures throughput) and paced (64 connections on a fixed
//! schedule below saturation, which measures what a request waits for the relay in normal
//! operation). CPU per request is the process's CPU time during a scenario divided by its
//! requests; hop CPU per request counts only the threads of the hop itself (the relay's or the
//! pass-through's runtime), which is what DESIGN.md's table compares.

// The bare pass-through, shared with the relay's memory benches (relay/benches/streams.rs).
// This bench runs the pass-through on a runtime of its own, not as a process of its own.
#[allow(dead_code)]
#[path = "../../relay/benches/common/pass_through.rs"]
mod pass_through;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fm_protocol::ChatRequest;
use fm_relay::RelayConfig;
use fm_relay::config::{
    ApiKeyConfig, AuthMode, BedrockMode, KeyLimits, LimitsBackend, ModelConfig, ProviderKind,
};
use fm_relay::provider::bedrock::{BedrockEndpoint, BedrockHttp};
use fm_relay::provider::{BedrockProvider, ChatProvider};
use fm_sim::{ModelProfile, SimConfig};
use futures_util::StreamExt;

const UPSTREAM_MODEL: &str = "bench-model";
/// The relay's models: the simulator through the AWS SDK, and through its OpenAI-compatible route.
const BEDROCK_MODEL: &str = "bench";
const OPENAI_MODEL: &str = "bench-openai";
const ANSWER_TOKENS: u32 = 32;
/// Connections of the paced scenarios.
const PACED_CONCURRENCY: usize = 64;
const PROMPT: &str = "Summarise the benefits of a relay in front of model APIs.";
/// Thread names of the runtimes whose CPU is a hop's own (Linux keeps 15 bytes of a name).
const RELAY_THREADS: &str = "relay";
const PASS_THROUGH_THREADS: &str = "pass-through";

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
    /// The same HTTP request through a bare pass-through (axum + reqwest, no policy): the floor
    /// of any hop on this machine.
    PassThrough,
    /// The relay's Bedrock provider (the AWS SDK) calling the simulator, in-process: what any
    /// application using the SDK pays, and the floor under the relay.
    Sdk,
    /// HTTP to the relay, which calls the simulator through the SDK.
    Relay,
    /// HTTP to the relay for a model of provider "openai", which it calls on the simulator's
    /// OpenAI-compatible route with reqwest: every policy of the relay, without the AWS SDK.
    RelayOpenAi,
    /// The relay with API keys and every limit on, counted in memory (ledger in SQLite).
    RelayEdge,
    /// The same, counted in Redis.
    RelayEdgeRedis,
}

impl Path {
    /// Every path, in the order they take turns within a round, with its `BENCH_PATHS` name.
    const ALL: [(Path, &'static str); 7] = [
        (Path::Direct, "direct"),
        (Path::PassThrough, "pass-through"),
        (Path::Sdk, "sdk"),
        (Path::Relay, "relay"),
        (Path::RelayOpenAi, "relay-openai"),
        (Path::RelayEdge, "relay-edge"),
        (Path::RelayEdgeRedis, "relay-edge-redis"),
    ];
}

struct Target {
    sim_url: String,
    pass_through_url: String,
    relay_url: String,
    edge_url: String,
    /// The relay on Redis, when a `redis-server` could be started.
    edge_redis_url: Option<String>,
    sdk: BedrockProvider,
    chat: ChatRequest,
}

impl Target {
    fn request(&self, client: &reqwest::Client, path: Path, kind: Kind) -> reqwest::RequestBuilder {
        let (url, body) = match path {
            Path::Direct | Path::PassThrough => {
                let op = if kind == Kind::Sync {
                    "converse"
                } else {
                    "converse-stream"
                };
                let base = if path == Path::Direct {
                    &self.sim_url
                } else {
                    &self.pass_through_url
                };
                (
                    format!("{base}/model/{UPSTREAM_MODEL}/{op}"),
                    serde_json::json!({
                        "messages": [{"role": "user", "content": [{"text": PROMPT}]}],
                        "inferenceConfig": {"maxTokens": 256},
                    }),
                )
            }
            Path::Sdk => unreachable!("the SDK path makes no HTTP request of its own"),
            Path::Relay | Path::RelayOpenAi | Path::RelayEdge | Path::RelayEdgeRedis => {
                let route = if kind == Kind::Sync {
                    "/v1/chat"
                } else {
                    "/v1/chat/stream"
                };
                let model = if path == Path::RelayOpenAi {
                    OPENAI_MODEL
                } else {
                    BEDROCK_MODEL
                };
                let base = match path {
                    Path::RelayEdge => &self.edge_url,
                    Path::RelayEdgeRedis => self.edge_redis_url.as_ref().unwrap_or(&self.edge_url),
                    _ => &self.relay_url,
                };
                (
                    format!("{base}{route}"),
                    serde_json::json!({
                        "model": model,
                        "messages": [{"role": "user", "content": PROMPT}],
                        "max_tokens": 256,
                    }),
                )
            }
        };
        let request = client
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_string());
        match path {
            Path::RelayEdge | Path::RelayEdgeRedis => request.bearer_auth(BENCH_KEY),
            _ => request,
        }
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
    /// CPU time of the hop's own threads (none for the direct and SDK paths).
    hop_cpu: Option<Duration>,
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

/// CPU time (user + system) in a `/proc` stat file, in clock ticks of 10 ms.
fn stat_cpu(stat: &str) -> Duration {
    let after_name = stat.rsplit_once(") ").map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    Duration::from_millis(ticks * 10)
}

/// The whole process's CPU time.
fn process_cpu() -> Duration {
    stat_cpu(&std::fs::read_to_string("/proc/self/stat").unwrap_or_default())
}

/// CPU time of this process's threads named `name` (a runtime's workers and blocking threads).
fn threads_cpu(name: &str) -> Duration {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("stat")).ok())
        .filter(|stat| {
            stat.split_once(" (")
                .and_then(|(_, rest)| rest.rsplit_once(") "))
                .is_some_and(|(comm, _)| comm == name)
        })
        .map(|stat| stat_cpu(&stat))
        .sum()
}

/// The name of the runtime whose threads make up `path`'s hop.
fn hop_threads(path: Path) -> Option<&'static str> {
    match path {
        Path::Direct | Path::Sdk => None,
        Path::PassThrough => Some(PASS_THROUGH_THREADS),
        Path::Relay | Path::RelayOpenAi | Path::RelayEdge | Path::RelayEdgeRedis => {
            Some(RELAY_THREADS)
        }
    }
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
    let hop = hop_threads(path);
    let cpu_before = process_cpu();
    let hop_cpu_before = hop.map(threads_cpu);
    let started = Instant::now();
    measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(measure).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let cpu = process_cpu().saturating_sub(cpu_before);
    let hop_cpu = hop
        .zip(hop_cpu_before)
        .map(|(name, before)| threads_cpu(name).saturating_sub(before));
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
        hop_cpu,
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
    hop_cpu_per_request: Option<Duration>,
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
        hop_cpu_per_request: outcome.hop_cpu.map(|cpu| cpu / (count.max(1) as u32)),
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
        (Kind::Sync, Path::PassThrough) => "pass-through → sim converse",
        (Kind::Sync, Path::Sdk) => "SDK Converse → sim",
        (Kind::Sync, Path::Relay) => "relay /v1/chat",
        (Kind::Sync, Path::RelayOpenAi) => "relay /v1/chat, OpenAI upstream",
        (Kind::Stream, Path::Direct) => "sim converse-stream",
        (Kind::Stream, Path::PassThrough) => "pass-through → sim converse-stream",
        (Kind::Stream, Path::Sdk) => "SDK ConverseStream → sim",
        (Kind::Stream, Path::Relay) => "relay /v1/chat/stream",
        (Kind::Stream, Path::RelayOpenAi) => "relay /v1/chat/stream, OpenAI upstream",
        (Kind::Sync, Path::RelayEdge) => "relay /v1/chat, keys + limits (memory)",
        (Kind::Stream, Path::RelayEdge) => "relay /v1/chat/stream, keys + limits (memory)",
        (Kind::Sync, Path::RelayEdgeRedis) => "relay /v1/chat, keys + limits (Redis)",
        (Kind::Stream, Path::RelayEdgeRedis) => "relay /v1/chat/stream, keys + limits (Redis)",
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
        hop_cpu_per_request: rounds
            .iter()
            .map(|s| s.hop_cpu_per_request)
            .collect::<Option<Vec<_>>>()
            .map(median),
        count: rounds.iter().map(|s| s.count).sum(),
        errors: rounds.iter().map(|s| s.errors).sum(),
    }
}

/// What the "added" table compares, where both paths ran: (path, over path, name of the base).
const COMPARISONS: [(Path, Path, &str); 7] = [
    (Path::PassThrough, Path::Direct, "direct"),
    (Path::Relay, Path::Direct, "direct"),
    (Path::Relay, Path::Sdk, "SDK"),
    (Path::RelayOpenAi, Path::Direct, "direct"),
    (Path::RelayOpenAi, Path::PassThrough, "pass-through"),
    (Path::RelayEdge, Path::Relay, "relay without edge"),
    (Path::RelayEdgeRedis, Path::Relay, "relay without edge"),
];

/// Runs each scenario on every path `rounds` times (the paths take turns within a round, so a
/// noisy moment on the shared machine hits one round of all of them rather than one path) and
/// prints the median figures, then the median of what the pass-through and the relay added in
/// each round.
fn report(
    scenarios: &[(Kind, usize, Load)],
    paths: &[Path],
    rounds: usize,
    run: &dyn Fn(Kind, usize, Load, Path) -> Summary,
) {
    println!(
        "| route | concurrency | load | req/s | p50 ms | p99 ms | first byte p50 ms | first byte p99 ms | CPU/req ms | hop CPU/req ms | requests | errors |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut added = Vec::new();
    for &(kind, concurrency, load) in scenarios {
        let load_name = match load {
            Load::Closed => "closed".to_string(),
            Load::Paced { rate } => format!("{rate:.0}/s"),
        };
        let results: Vec<Vec<Summary>> = (0..rounds)
            .map(|_| {
                paths
                    .iter()
                    .map(|&path| run(kind, concurrency, load, path))
                    .collect()
            })
            .collect();
        for (index, &path) in paths.iter().enumerate() {
            let of_path: Vec<&Summary> = results.iter().map(|round| &round[index]).collect();
            let s = median_summary(&of_path);
            println!(
                "| {} | {concurrency} | {load_name} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} |",
                route_name(kind, path),
                s.rps,
                ms(s.p50),
                ms(s.p99),
                ms(s.ttfb_p50),
                ms(s.ttfb_p99),
                ms(s.cpu_per_request),
                s.hop_cpu_per_request.map_or_else(|| "–".to_string(), ms),
                s.count,
                s.errors
            );
        }
        added.push((kind, concurrency, load_name, results));
    }
    let comparisons: Vec<(usize, usize, &str, Path)> = COMPARISONS
        .iter()
        .filter_map(|&(path, base, over)| {
            let index_of = |wanted: Path| paths.iter().position(|&p| p == wanted);
            Some((index_of(path)?, index_of(base)?, over, path))
        })
        .collect();
    if comparisons.is_empty() {
        return;
    }
    println!(
        "\nAdded by each hop over plain HTTP to the simulator, and over the SDK or the pass-through:\n"
    );
    println!(
        "| path | concurrency | load | over | p50 ms | p99 ms | first byte p50 ms | first byte p99 ms | CPU/req ms | hop CPU/req |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (kind, concurrency, load_name, results) in &added {
        for &(of, base, over, path) in &comparisons {
            let added = |field: fn(&Summary) -> Duration| {
                let ms = median(
                    results
                        .iter()
                        .map(|round| {
                            field(&round[of]).as_secs_f64() - field(&round[base]).as_secs_f64()
                        })
                        .collect(),
                ) * 1000.0;
                format!("{ms:+.3}")
            };
            let name = match path {
                Path::PassThrough => "pass-through",
                _ => route_name(*kind, path),
            };
            // The hop's own CPU per request against the base hop's, as a share (where both
            // paths have a hop of their own).
            let hop_share = results
                .iter()
                .map(|round| {
                    let (of, base) = (
                        round[of].hop_cpu_per_request?,
                        round[base].hop_cpu_per_request?,
                    );
                    Some(of.as_secs_f64() / base.as_secs_f64().max(1e-9) - 1.0)
                })
                .collect::<Option<Vec<f64>>>()
                .map_or_else(
                    || "–".to_string(),
                    |shares| format!("{:+.1}%", median(shares) * 100.0),
                );
            println!(
                "| {name} | {concurrency} | {load_name} | {over} | {} | {} | {} | {} | {} | {hop_share} |",
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

/// The options named in the comma-separated environment variable `variable` (or `default`), in
/// the order of `known`; an unknown name ends the run with a message that lists the known ones.
fn chosen<T: Copy>(variable: &str, default: &str, known: &[(T, &str)]) -> Vec<T> {
    let value = std::env::var(variable).unwrap_or_else(|_| default.into());
    let names: Vec<&str> = value.split(',').map(str::trim).collect();
    if let Some(unknown) = names
        .iter()
        .find(|name| !known.iter().any(|(_, known)| known == *name))
    {
        let known: Vec<&str> = known.iter().map(|(_, name)| *name).collect();
        eprintln!(
            "{variable}: unknown name {unknown:?}; known: {}",
            known.join(",")
        );
        std::process::exit(2);
    }
    known
        .iter()
        .filter(|(_, name)| names.contains(name))
        .map(|(option, _)| *option)
        .collect()
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
    let kinds = chosen(
        "BENCH_ROUTES",
        "sync,stream",
        &[(Kind::Sync, "sync"), (Kind::Stream, "stream")],
    );
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&rounds| rounds > 0)
        .unwrap_or(1);
    let mut paths = chosen(
        "BENCH_PATHS",
        "direct,pass-through,sdk,relay,relay-openai,relay-edge,relay-edge-redis",
        &Path::ALL,
    );
    let measure = Duration::from_secs_f64(secs);
    let warmup = Duration::from_secs(1);

    let sim_runtime = runtime(1, "sim");
    let relay_runtime = runtime(2, RELAY_THREADS);
    let pass_through_runtime = runtime(2, PASS_THROUGH_THREADS);
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
    config.default_model = BEDROCK_MODEL.into();
    // The same prompt again and again: with the cache on, the relay would not call the upstream.
    config.cache.enabled = false;
    let bedrock_model = ModelConfig {
        id: BEDROCK_MODEL.into(),
        provider: ProviderKind::Bedrock,
        upstream_id: Some(UPSTREAM_MODEL.into()),
        region: "us-east-1".into(),
        endpoint: None,
        api_key_env: None,
        input_price_per_1k: 0.0,
        output_price_per_1k: 0.0,
        context_window: 100_000,
        tier: Default::default(),
        capabilities: Vec::new(),
        accepts_prefill: false,
        failover: Vec::new(),
        fallback_models: Vec::new(),
        tokens_per_minute: None,
    };
    let openai_model = ModelConfig {
        id: OPENAI_MODEL.into(),
        provider: ProviderKind::OpenAi,
        region: "sim".into(),
        endpoint: Some(format!("{}/v1", sim.endpoint_url())),
        ..bedrock_model.clone()
    };
    config.models = vec![bedrock_model, openai_model];
    // The default policy names the default config's models.
    config.routing.rules.clear();
    config.routes.clear();
    let relay = relay_runtime
        .block_on(fm_relay::start(config.clone()))
        .unwrap();
    let edge = relay_runtime
        .block_on(fm_relay::start(edge_config(
            &config,
            LimitsBackend::Memory,
            None,
        )))
        .unwrap();
    let redis = RedisServer::start();
    let edge_redis = redis.as_ref().map(|redis| {
        let config = edge_config(&config, LimitsBackend::Redis, Some(&redis.url));
        relay_runtime.block_on(fm_relay::start(config)).unwrap()
    });
    if edge_redis.is_none() {
        println!(
            "(no redis-server: the relay-edge-redis path and the two-replica check are skipped)"
        );
        paths.retain(|&path| path != Path::RelayEdgeRedis);
    }
    let pass_through_url = pass_through_runtime
        .block_on(pass_through::spawn(sim.endpoint_url()))
        .unwrap();
    let sdk = load_runtime.block_on(BedrockProvider::connect(
        &BedrockEndpoint::Url(sim.endpoint_url()),
        "us-east-1",
        &BedrockHttp::new(1, None).unwrap(),
        Duration::from_secs(3),
    ));
    let chat = ChatRequest {
        max_tokens: Some(256),
        ..ChatRequest::from_prompt(PROMPT)
    };
    let target = Arc::new(Target {
        sim_url: sim.endpoint_url(),
        pass_through_url,
        relay_url: relay.url(),
        edge_url: edge.url(),
        edge_redis_url: edge_redis.as_ref().map(|relay| relay.url()),
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
    report(&scenarios, &paths, rounds, &run);
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
    report(&paced, &paths, rounds, &run);
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
    let edge_alone = load_runtime.block_on(limits_cost(&edge_config(
        &config,
        LimitsBackend::Memory,
        None,
    )));
    println!(
        "\nThe limits alone, in memory, on one thread: {:.2} µs per request to identify the key, admit it against its eight limits, meter one call and settle (200 000 requests).",
        edge_alone.as_secs_f64() * 1e6
    );
    if let (Some(redis), Some(edge_redis)) = (&redis, &edge_redis) {
        let (admissions, writes) =
            load_runtime.block_on(redis_calls_per_request(&edge_redis.url()));
        println!(
            "\nRound trips to Redis per request of relay-edge-redis (1 000 sequential /v1/chat): {admissions:.3} admissions (one script each), {writes:.3} write-outs of settled corrections and ledger rows (every 250 ms, whatever the rate)."
        );
        let rates: Vec<f64> = std::env::var("BENCH_LIMIT_RATES")
            .unwrap_or_else(|_| "50,100,200".into())
            .split(',')
            .filter_map(|rate| rate.trim().parse().ok())
            .collect();
        let replicas: Vec<_> = (0..2)
            .map(|_| {
                let mut replica = edge_config(&config, LimitsBackend::Redis, Some(&redis.url));
                replica.limits.global_requests_per_minute = Some(REPLICA_LIMIT_PER_SEC * 60);
                replica.limits.global_burst = Some(20);
                // Its own counter: not the one the bench's other Redis relay filled.
                replica.auth.keys[0].name = "replicas".into();
                relay_runtime.block_on(fm_relay::start(replica)).unwrap()
            })
            .collect();
        let urls: Vec<String> = replicas.iter().map(|relay| relay.url()).collect();
        println!(
            "\n### Two relays on one Redis, a global limit of {REPLICA_LIMIT_PER_SEC} requests/s (burst 20), driven together for {secs} s per rate (after 1 s of warm-up)\n"
        );
        println!("| offered /s | admitted /s | expected /s | admitted / expected | refused /s |");
        println!("|---|---|---|---|---|");
        for rate in rates {
            let (admitted, refused) =
                load_runtime.block_on(drive_replicas(&urls, rate, warmup, measure));
            let expected = rate.min(f64::from(REPLICA_LIMIT_PER_SEC));
            let per_sec = |count: usize| count as f64 / measure.as_secs_f64();
            println!(
                "| {rate:.0} | {:.1} | {expected:.0} | {:.3} | {:.1} |",
                per_sec(admitted),
                per_sec(admitted) / expected,
                per_sec(refused)
            );
        }
    }
    drop(relay);
    drop(edge);
    drop(edge_redis);
    drop(sim);
}

/// CPU time per request of the limits' own work, without HTTP: identify the key, admit a chat
/// request against every limit of `config`, report one call's usage and settle.
async fn limits_cost(config: &RelayConfig) -> Duration {
    use fm_relay::telemetry::{AttemptSpend, SpendMeter};
    const REQUESTS: u32 = 200_000;
    let keys = fm_relay::auth::KeyRing::load(config).unwrap();
    let limits = fm_relay::limits::Limits::open(config).await.unwrap();
    let usage = fm_protocol::Usage::new(12, 32);
    let started = Instant::now();
    for _ in 0..REQUESTS {
        let caller = keys.identify(Some(BENCH_KEY)).unwrap();
        let (reservation, _headers) = limits
            .admit_chat(&caller, BEDROCK_MODEL, 15, 256, false)
            .await;
        let reservation = reservation.unwrap();
        reservation.record(AttemptSpend {
            model: BEDROCK_MODEL,
            region: "us-east-1",
            usage,
        });
        reservation.answered_by(BEDROCK_MODEL, "us-east-1");
    }
    started.elapsed() / REQUESTS
}

/// The key the edge paths send.
const BENCH_KEY: &str = "fmr_bench_key_0000000000000000";

/// The global limit of the two-replica check.
const REPLICA_LIMIT_PER_SEC: u32 = 100;

/// `config` with API keys on and every limit applied (far from refusing), counted in `backend`.
fn edge_config(
    config: &RelayConfig,
    backend: LimitsBackend,
    redis_url: Option<&str>,
) -> RelayConfig {
    let mut config = config.clone();
    config.auth.mode = AuthMode::Keys;
    config.auth.keys_file = "/nonexistent/keys.toml".into();
    config.auth.keys = vec![ApiKeyConfig {
        name: "bench".into(),
        key_sha256: hex_digest(BENCH_KEY),
        admin: false,
        revoked: false,
        models: Vec::new(),
        routes: Vec::new(),
        limits: KeyLimits {
            requests_per_minute: Some(100_000_000),
            burst: Some(1_000_000),
            tokens_per_minute: Some(1_000_000_000_000),
            monthly_requests: Some(1_000_000_000_000),
            monthly_tokens: Some(1_000_000_000_000_000),
            daily_usd: Some(1e9),
            monthly_usd: Some(1e9),
            max_concurrent_streams: Some(1_000_000),
            max_unfinished_jobs: None,
        },
    }];
    config.limits.backend = backend;
    config.limits.global_requests_per_minute = Some(100_000_000);
    config.limits.global_burst = Some(1_000_000);
    config.limits.data_dir =
        std::env::temp_dir().join(format!("fm-bench-ledger-{}", std::process::id()));
    if let Some(url) = redis_url {
        config.limits.redis_url = url.to_string();
    }
    for model in &mut config.models {
        model.tokens_per_minute = Some(1_000_000_000_000);
    }
    config
}

fn hex_digest(key: &str) -> String {
    fm_relay::auth::key_digest(key)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// A `redis-server` on a free port, stopped when dropped; `None` when it cannot be started.
struct RedisServer {
    child: std::process::Child,
    url: String,
}

impl RedisServer {
    fn start() -> Option<RedisServer> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let server = RedisServer {
            child,
            url: format!("redis://127.0.0.1:{port}"),
        };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(server);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        None
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Round trips to Redis per request of 1 000 sequential sync requests (the relay's own
/// `fm_relay_limits_redis_calls_total`): admissions, and write-outs of what settled.
async fn redis_calls_per_request(relay_url: &str) -> (f64, f64) {
    const REQUESTS: usize = 1000;
    let client = reqwest::Client::new();
    let body =
        serde_json::json!({"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 64})
            .to_string();
    let calls = || async {
        let text = client
            .get(format!("{relay_url}/metrics"))
            .bearer_auth(BENCH_KEY)
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let count = |call: &str| -> Option<f64> {
            let prefix = format!("fm_relay_limits_redis_calls_total{{call=\"{call}\"}} ");
            text.lines()
                .find_map(|line| line.strip_prefix(&prefix)?.parse().ok())
        };
        Some((count("admit")?, count("write")?))
    };
    // Let what earlier scenarios left be written out first.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let before = calls().await.unwrap_or_default();
    for _ in 0..REQUESTS {
        let _ = client
            .post(format!("{relay_url}/v1/chat"))
            .bearer_auth(BENCH_KEY)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let after = calls().await.unwrap_or_default();
    // The two /metrics reads are admitted too: one admission each.
    let admissions = after.0 - before.0 - 1.0;
    (
        admissions / REQUESTS as f64,
        (after.1 - before.1) / REQUESTS as f64,
    )
}

/// Sends `rate` requests a second in all, alternating between `urls`, for `warmup + measure`;
/// how many were admitted and refused during `measure`.
async fn drive_replicas(
    urls: &[String],
    rate: f64,
    warmup: Duration,
    measure: Duration,
) -> (usize, usize) {
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .unwrap();
    let body =
        serde_json::json!({"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 16})
            .to_string();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let started = Instant::now();
    let mut next = started;
    let mut sent = Vec::new();
    let mut index = 0usize;
    while started.elapsed() < warmup + measure {
        tokio::time::sleep_until(next.into()).await;
        next += interval;
        let measured = started.elapsed() >= warmup;
        let request = client
            .post(format!("{}/v1/chat", urls[index % urls.len()]))
            .bearer_auth(BENCH_KEY)
            .header("content-type", "application/json")
            .body(body.clone())
            .send();
        index += 1;
        sent.push(tokio::spawn(async move {
            (
                measured,
                request
                    .await
                    .map(|response| response.status().as_u16())
                    .unwrap_or(0),
            )
        }));
    }
    let (mut admitted, mut refused) = (0, 0);
    for task in sent {
        match task.await.unwrap() {
            (true, 200) => admitted += 1,
            (true, 429) => refused += 1,
            _ => {}
        }
    }
    (admitted, refused)
}
