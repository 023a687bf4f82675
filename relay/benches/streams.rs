//! Many concurrent streams through one relay process: `STREAMS` SSE clients (default 10 000) open
//! at once through the relay binary to a simulator that answers slowly, over an HTTP/1.1 upstream
//! (plain, one connection per call) and an HTTP/2 one (TLS with ALPN, as Bedrock serves it: many
//! calls per connection), and — the floor, in the same run — the same number of ConverseStream
//! calls through a bare pass-through (axum + reqwest, `common/pass_through.rs`, started as its own
//! process); and the relay with HTTP/2 on both sides, its clients' streams sharing a few HTTP/2
//! connections with prior knowledge (h2c), as behind a load balancer that multiplexes. For each:
//! the time to open them all, the process's resident memory before, with every stream open and
//! waiting for its first token, and at its peak while tokens flow, per stream; the relay's
//! sockets; and whether every stream ended intact — its `done` event, the answer's every token, no
//! error, none lost.
//!
//! Run: `scripts/bench-streams.sh` (it raises the file-descriptor limit: 10 000 streams take
//! about 40 000 descriptors across the relay and this process) or `cargo bench -p fm-relay --bench
//! streams` with the limit raised. Env: `STREAMS` (default 10000), `STREAM_TOKENS` (10),
//! `STREAM_TOKENS_PER_SEC` (1), `STREAM_FIRST_TOKEN_MS` (time for every stream to open before the
//! first token comes; default 3 ms per stream, at least 3 s), `STREAM_UPSTREAMS`
//! (`pass-through,http1,http2,http2-both`), `STREAM_HTTP2_CONNECTIONS` (the relay's
//! `bedrock.http2_connections`; default one per 150 streams, at least 8: fm-sim lets a connection
//! carry 200), `STREAM_BUDGET_KIB` (default 45: the run fails, exit code 1, when the relay's
//! memory per open stream over its leaner upstream is above it, or when any stream did not end
//! intact). Where the open-files limit cannot hold `STREAMS` (a hard limit the process may not
//! raise), a row runs as many as fit and says so. The test command runs 200 streams of a debug
//! build (`STREAMS=200 cargo test -p fm-relay --bench streams`), so it cannot rot.

mod common;
#[path = "../tests/common/http2.rs"]
mod http2;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::pass_through::PassThroughProcess;
use common::{RelayProcess, env_or};
use fm_protocol::{SseDecoder, StreamEvent};
use fm_relay::RelayConfig;
use fm_relay::config::BedrockMode;
use fm_sim::{LocalTls, ModelProfile, SimConfig};
use futures_util::StreamExt;

/// What the streams go through.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Upstream {
    /// The floor: a bare pass-through (axum + reqwest, its own process) forwarding Bedrock's
    /// ConverseStream over HTTP/1.1, as DESIGN.md measures it.
    PassThrough,
    /// The relay, its Bedrock calls over plain HTTP/1.1: a connection per call.
    Http1,
    /// The relay, its Bedrock calls over TLS with HTTP/2 by ALPN: many calls per connection.
    Http2,
    /// The relay, HTTP/2 on both sides: its clients' streams over a few HTTP/2 connections with
    /// prior knowledge (h2c, as a load balancer in front of it multiplexes), its Bedrock calls as
    /// in `Http2`.
    Http2Both,
}

impl Upstream {
    fn name(self) -> &'static str {
        match self {
            Upstream::PassThrough => "bare pass-through, HTTP/1.1 (the floor)",
            Upstream::Http1 => "fm-relay, HTTP/1.1 upstream (plain)",
            Upstream::Http2 => "fm-relay, HTTP/2 upstream (TLS, ALPN)",
            Upstream::Http2Both => {
                "fm-relay, HTTP/2 from clients (h2c, 200 streams a connection) and upstream"
            }
        }
    }
}

/// One ConverseStream call through the pass-through, read to its end: `Ok` when the body ended
/// cleanly after Bedrock's `messageStop` event. Counted in `opened` when its headers arrive.
async fn one_bedrock_stream(
    http: reqwest::Client,
    url: String,
    n: usize,
    opened: Arc<AtomicUsize>,
    opening: Arc<tokio::sync::Semaphore>,
) -> Result<(), String> {
    let permit = opening.acquire_owned().await.expect("never closed");
    let body = serde_json::json!({
        "messages": [{"role": "user", "content": [{"text": format!("Stream number {n}, slowly.")}]}],
    });
    let url = format!("{url}/model/{BEDROCK_MODEL}/converse-stream");
    let response = post_json(&http, &url, n, body).await?;
    opened.fetch_add(1, Ordering::Relaxed);
    drop(permit);
    let mut body = response.bytes_stream();
    // The last bytes seen, so a `messageStop` split across chunks is still found.
    let mut tail: Vec<u8> = Vec::new();
    let mut stopped = false;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|err| format!("stream {n}: cut: {err}"))?;
        tail.extend_from_slice(&chunk);
        stopped |= tail.windows(11).any(|window| window == b"messageStop");
        let keep = tail.len().saturating_sub(16);
        tail.drain(..keep);
    }
    match stopped {
        true => Ok(()),
        false => Err(format!("stream {n}: ended without messageStop")),
    }
}

/// One quick answer from a model the simulator answers at once: through the relay (`url` is its
/// stream URL) or the pass-through.
async fn warm_up(http: &reqwest::Client, url: &str, upstream: Upstream, turn: usize) {
    let (url, body) = match upstream {
        Upstream::PassThrough => (
            format!("{url}/model/{QUICK_MODEL}/converse"),
            serde_json::json!({"messages": [{"role": "user", "content": [{"text": format!("Warm-up {turn}.")}]}]}),
        ),
        Upstream::Http1 | Upstream::Http2 | Upstream::Http2Both => (
            url.replace("/v1/chat/stream", "/v1/chat"),
            serde_json::json!({"model": "nova-lite", "no_cache": true,
                               "messages": [{"role": "user", "content": format!("Warm-up {turn}.")}]}),
        ),
    };
    if let Err(failure) = post_json(http, &url, turn, body).await {
        panic!("warm-up: {failure}");
    }
}

/// `POST url` with a JSON body, for stream `n`: the answer when its status is 200.
async fn post_json(
    http: &reqwest::Client,
    url: &str,
    n: usize,
    body: serde_json::Value,
) -> Result<reqwest::Response, String> {
    let response = http
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(|err| format!("stream {n}: {err}"))?;
    match response.status() {
        reqwest::StatusCode::OK => Ok(response),
        status => Err(format!("stream {n}: status {status}")),
    }
}

/// The upstream id of the relay's `nova-lite`, which the simulator answers at once.
const QUICK_MODEL: &str = "us.amazon.nova-lite-v1:0";

/// The Bedrock model the pass-through's streams call.
const BEDROCK_MODEL: &str = "us.anthropic.claude-3-5-haiku-20241022-v1:0";

struct Shape {
    /// The relay's `bedrock.http2_connections`.
    http2_connections: usize,
    tokens: u32,
    tokens_per_second: f64,
    first_token_ms: u64,
}

/// One scenario's figures.
struct Figures {
    upstream: Upstream,
    streams: usize,
    intact: usize,
    failures: Vec<String>,
    open_secs: f64,
    opened_before_first_token: bool,
    before_kib: u64,
    open_kib: u64,
    peak_kib: u64,
    relay_sockets: usize,
    upstream_connections: Option<u64>,
}

/// The soft limit on open files of this process (`/proc/self/limits`).
fn open_files_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .unwrap_or_default()
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(3))
        .and_then(|soft| soft.parse().ok())
        .unwrap_or(0)
}

/// The sockets the process `pid` holds open.
fn sockets_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| {
            entries
                .flatten()
                .filter(|entry| {
                    std::fs::read_link(entry.path())
                        .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// Streams a client connection to the relay carries over HTTP/2 (the relay's
/// `server.http2_max_streams` is 256).
const STREAMS_PER_CLIENT_CONNECTION: usize = 200;

/// How the streams reach the relay.
#[derive(Clone)]
enum Clients {
    /// HTTP/1.1: a connection per stream.
    Http1(reqwest::Client),
    /// HTTP/2 with prior knowledge: the streams share a few connections, taken in turn.
    Http2(Arc<Vec<http2::Http2Sender>>),
}

type AnswerBody =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<bytes::Bytes, String>> + Send>>;

impl Clients {
    /// `connections` HTTP/2 connections with prior knowledge to `addr`.
    async fn http2(addr: &str, connections: usize) -> Clients {
        let mut senders = Vec::with_capacity(connections);
        for _ in 0..connections {
            senders.push(http2::connect(addr).await);
        }
        Clients::Http2(Arc::new(senders))
    }

    /// `POST url` with a JSON body, for stream `n`: the answer's body when its status is 200.
    async fn post(
        &self,
        url: &str,
        n: usize,
        body: serde_json::Value,
    ) -> Result<AnswerBody, String> {
        match self {
            Clients::Http1(http) => {
                let response = post_json(http, url, n, body).await?;
                Ok(Box::pin(response.bytes_stream().map(move |chunk| {
                    chunk.map_err(|err| format!("stream {n}: cut: {err}"))
                })))
            }
            Clients::Http2(senders) => {
                let mut sender = senders[n % senders.len()].clone();
                let response = http2::send(&mut sender, http2::post(url, body.to_string()))
                    .await
                    .map_err(|err| format!("stream {n}: {err}"))?;
                if response.status() != hyper::StatusCode::OK {
                    return Err(format!("stream {n}: status {}", response.status()));
                }
                let body = axum::body::Body::new(response.into_body()).into_data_stream();
                Ok(Box::pin(body.map(move |chunk| {
                    chunk.map_err(|err| format!("stream {n}: cut: {err}"))
                })))
            }
        }
    }
}

/// One stream read to its end: `Ok` when it ended with `done` after `tokens` tokens and nothing
/// went wrong on the way. Counts it in `opened` at its `start` event.
async fn one_stream(
    clients: Clients,
    url: String,
    n: usize,
    tokens: u32,
    opened: Arc<AtomicUsize>,
    opening: Arc<tokio::sync::Semaphore>,
) -> Result<(), String> {
    let permit = opening.acquire_owned().await.expect("never closed");
    let body = serde_json::json!({
        "messages": [{"role": "user", "content": format!("Stream number {n}, slowly.")}],
        "no_cache": true,
    });
    let mut body = clients.post(&url, n, body).await?;
    let mut decoder = SseDecoder::new();
    let mut permit = Some(permit);
    let mut deltas = 0u32;
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        let frames = decoder
            .feed(&chunk)
            .map_err(|err| format!("stream {n}: {err}"))?;
        for frame in frames {
            let event = frame
                .stream_event()
                .map_err(|err| format!("stream {n}: unreadable event: {err}"))?;
            match event {
                StreamEvent::Start { .. } => {
                    opened.fetch_add(1, Ordering::Relaxed);
                    // The next stream may open while this one waits for its tokens.
                    permit.take();
                }
                StreamEvent::TextDelta { .. } => deltas += 1,
                StreamEvent::Done { usage, .. } => {
                    let output = usage.map(|usage| usage.output_tokens);
                    return match output == Some(tokens) && deltas > 0 {
                        true => Ok(()),
                        false => Err(format!(
                            "stream {n}: done after {deltas} deltas, {output:?} output tokens of {tokens}"
                        )),
                    };
                }
                StreamEvent::Error { code, message, .. } => {
                    return Err(format!("stream {n}: error {code:?}: {message}"));
                }
                StreamEvent::Failover { reason, .. } => {
                    return Err(format!("stream {n}: failover: {reason}"));
                }
                _ => {}
            }
        }
    }
    Err(format!(
        "stream {n}: ended without done after {deltas} deltas"
    ))
}

async fn run(upstream: Upstream, streams: usize, shape: &Shape) -> Figures {
    let mut sim_config = SimConfig::instant();
    sim_config.default_model = ModelProfile {
        first_token_ms: shape.first_token_ms,
        tokens_per_second: shape.tokens_per_second,
        answer_tokens: Some(shape.tokens),
    };
    sim_config.models.insert(
        QUICK_MODEL.into(),
        ModelProfile {
            first_token_ms: 0,
            tokens_per_second: 0.0,
            answer_tokens: Some(3),
        },
    );
    let wait_ms = shape.first_token_ms * 4 + 60_000;
    let folder = std::env::temp_dir().join(format!("fm-relay-streams-{}", std::process::id()));
    std::fs::create_dir_all(&folder).unwrap();
    let (sim, ca_file) = match upstream {
        Upstream::Http1 | Upstream::PassThrough => (fm_sim::spawn(sim_config).await.unwrap(), None),
        Upstream::Http2 | Upstream::Http2Both => {
            let tls = LocalTls::generate().unwrap();
            let ca_file = folder.join("sim-ca.pem");
            std::fs::write(&ca_file, tls.ca_pem()).unwrap();
            let sim = fm_sim::spawn_https(sim_config, Arc::new(tls))
                .await
                .unwrap();
            (sim, Some(ca_file))
        }
    };

    // The process measured: the relay, or the pass-through; its pid and the URL streams go to.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let (target, pid, url, clients): (Box<dyn std::any::Any>, u32, String, Clients) = match upstream
    {
        Upstream::PassThrough => {
            let pass_through = PassThroughProcess::start(&sim.endpoint_url());
            let (pid, url) = (pass_through.child.id(), pass_through.url.clone());
            (
                Box::new(pass_through),
                pid,
                url,
                Clients::Http1(http.clone()),
            )
        }
        Upstream::Http1 | Upstream::Http2 | Upstream::Http2Both => {
            let mut config = RelayConfig::embedded_default();
            config.bedrock.mode = BedrockMode::Endpoint;
            config.bedrock.endpoint = Some(sim.endpoint_url());
            config.bedrock.ca_file = ca_file;
            config.bedrock.http2_connections = shape.http2_connections;
            config.server.max_connections = streams + 64;
            config.server.listen_backlog = 4096;
            config.server.watch_config_ms = 0;
            config.cache.enabled = false;
            config.timeouts.first_token_ms = wait_ms;
            config.timeouts.idle_ms = wait_ms;
            config.timeouts.total_ms = wait_ms * 2;
            let relay = RelayProcess::start_configured(&config);
            let (pid, url) = (relay.pid(), format!("http://{}/v1/chat/stream", relay.addr));
            let clients = match upstream {
                Upstream::Http2Both => {
                    let connections = streams.div_ceil(STREAMS_PER_CLIENT_CONNECTION);
                    Clients::http2(&relay.addr, connections).await
                }
                _ => Clients::Http1(http.clone()),
            };
            (Box::new(relay), pid, url, clients)
        }
    };
    // Warm up: the first stream sets up pools and lazy state that every later one shares.
    let stream = |n: usize, opened: Arc<AtomicUsize>, opening: Arc<tokio::sync::Semaphore>| {
        let (http, clients, url, tokens) =
            (http.clone(), clients.clone(), url.clone(), shape.tokens);
        async move {
            match upstream {
                Upstream::PassThrough => one_bedrock_stream(http, url, n, opened, opening).await,
                Upstream::Http1 | Upstream::Http2 | Upstream::Http2Both => {
                    one_stream(clients, url, n, tokens, opened, opening).await
                }
            }
        }
    };
    // Warm up, on a model that answers at once: every lazy state the streams share, and a
    // connection on each of the relay's HTTP clients (a cold client meeting a burst opens a
    // connection per call before ALPN tells it HTTP/2 would do; see BENCHMARKS.md).
    for turn in 0..shape.http2_connections {
        warm_up(&http, &url, upstream, turn).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before_kib = common::resident_kib(pid);

    let opened = Arc::new(AtomicUsize::new(0));
    let opening = Arc::new(tokio::sync::Semaphore::new(256));
    let started = Instant::now();
    let tasks: Vec<_> = (1..=streams)
        .map(|n| tokio::spawn(stream(n, opened.clone(), opening.clone())))
        .collect();
    while opened.load(Ordering::Relaxed) < streams
        && started.elapsed() < Duration::from_millis(wait_ms)
        && !tasks.iter().any(|stream| stream.is_finished())
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let open_secs = started.elapsed().as_secs_f64();
    let opened_before_first_token = open_secs * 1000.0 < shape.first_token_ms as f64;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let open_kib = common::resident_kib(pid);
    let relay_sockets = sockets_of(pid);
    let upstream_connections = match upstream {
        Upstream::Http1 | Upstream::PassThrough => None,
        Upstream::Http2 | Upstream::Http2Both => sim.stats().tls_connections.get("h2").copied(),
    };

    let mut peak_kib = open_kib;
    let mut intact = 0;
    let mut failures = Vec::new();
    for stream in tasks {
        while !stream.is_finished() {
            peak_kib = peak_kib.max(common::resident_kib(pid));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        match stream.await.expect("the stream's task") {
            Ok(()) => intact += 1,
            Err(failure) => failures.push(failure),
        }
    }
    drop(target);
    let _ = std::fs::remove_dir_all(&folder);
    Figures {
        upstream,
        streams,
        intact,
        failures,
        open_secs,
        opened_before_first_token,
        before_kib,
        open_kib,
        peak_kib,
        relay_sockets,
        upstream_connections,
    }
}

#[tokio::main]
async fn main() {
    common::pass_through::serve_if_asked().await;
    let streams: usize = env_or("STREAMS", 10_000);
    let shape = Shape {
        // fm-sim lets one HTTP/2 connection carry 200 streams: room for all, with a margin for
        // the turns not falling evenly.
        http2_connections: env_or(
            "STREAM_HTTP2_CONNECTIONS",
            streams.div_ceil(150).clamp(8, 1024),
        ),
        tokens: env_or("STREAM_TOKENS", 10),
        tokens_per_second: env_or("STREAM_TOKENS_PER_SEC", 1.0),
        first_token_ms: env_or("STREAM_FIRST_TOKEN_MS", (streams as u64 * 3).max(3000)),
    };
    let budget_kib: f64 = env_or("STREAM_BUDGET_KIB", 45.0);
    let upstreams: Vec<Upstream> = env_or(
        "STREAM_UPSTREAMS",
        "pass-through,http1,http2,http2-both".to_string(),
    )
    .split(',')
    .map(|name| match name.trim() {
        "pass-through" => Upstream::PassThrough,
        "http1" => Upstream::Http1,
        "http2" => Upstream::Http2,
        "http2-both" => Upstream::Http2Both,
        other => panic!(
            "STREAM_UPSTREAMS: unknown upstream `{other}` (pass-through, http1, http2, http2-both)"
        ),
    })
    .collect();
    let limit = open_files_limit();
    fm_relay::provider::openai::install_crypto_provider();

    println!(
        "fm-relay with {streams} concurrent SSE streams: first token after {} ms, then {} tokens at {}/s\n",
        shape.first_token_ms, shape.tokens, shape.tokens_per_second
    );
    println!(
        "| through | streams | intact | time to open all (s) | RSS before (MiB) | all open (MiB) | per open stream (KiB) | peak while tokens flow (MiB) | per stream at peak (KiB) | sockets | upstream connections |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut all = Vec::new();
    for upstream in upstreams {
        // The descriptors a stream takes in the busier of the two processes: over HTTP/1.1 the
        // relay holds a client and an upstream socket, and this process a client socket and the
        // simulator's; over HTTP/2 the upstream side is a connection per 200 streams.
        let per_stream = match upstream {
            Upstream::Http1 | Upstream::PassThrough => 2,
            Upstream::Http2 | Upstream::Http2Both => 1,
        };
        let fits = (limit.saturating_sub(600) / per_stream) as usize;
        if fits < 10 {
            eprintln!(
                "the open-files limit is {limit}: raise it (`ulimit -n`; scripts/bench-streams.sh does)"
            );
            std::process::exit(1);
        }
        let streams = streams.min(fits);
        let figures = run(upstream, streams, &shape).await;
        let per_stream = |kib: u64| kib.saturating_sub(figures.before_kib) as f64 / streams as f64;
        println!(
            "| {} | {streams} | {} | {:.1}{} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} |",
            figures.upstream.name(),
            figures.intact,
            figures.open_secs,
            if figures.opened_before_first_token {
                ""
            } else {
                " (first tokens came first)"
            },
            figures.before_kib as f64 / 1024.0,
            figures.open_kib as f64 / 1024.0,
            per_stream(figures.open_kib),
            figures.peak_kib as f64 / 1024.0,
            per_stream(figures.peak_kib),
            figures.relay_sockets,
            figures
                .upstream_connections
                .map_or("one per stream".to_string(), |count| count.to_string()),
        );
        all.push(figures);
    }
    if all.iter().any(|figures| figures.streams < streams) {
        println!(
            "\nRows with fewer than {streams} streams were capped by the open-files limit ({limit}; \
             the hard limit binds unless the process may raise it)."
        );
    }

    let mut failed = false;
    for figures in &all {
        if figures.intact < figures.streams {
            failed = true;
            eprintln!(
                "{}: {} of {} streams did not end intact; the first: {:?}",
                figures.upstream.name(),
                figures.streams - figures.intact,
                figures.streams,
                &figures.failures[..figures.failures.len().min(5)]
            );
        }
    }
    let leanest = all
        .iter()
        .filter(|figures| figures.upstream != Upstream::PassThrough)
        .map(|figures| {
            let per_stream =
                figures.open_kib.saturating_sub(figures.before_kib) as f64 / figures.streams as f64;
            (per_stream, figures.upstream.name())
        })
        .min_by(|a, b| a.0.total_cmp(&b.0));
    if let Some((per_stream, name)) = leanest {
        println!(
            "\nThe relay's leaner upstream: {name}, {per_stream:.1} KiB per open stream (budget {budget_kib} KiB)."
        );
        if per_stream > budget_kib {
            eprintln!(
                "over budget: {per_stream:.1} KiB per open stream (STREAM_BUDGET_KIB={budget_kib})"
            );
            failed = true;
        }
    }
    if failed {
        std::process::exit(1);
    }
}
