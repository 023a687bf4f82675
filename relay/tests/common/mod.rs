//! Shared test harness: a real fm-sim and a real relay on loopback ports, the relay's Bedrock
//! client pointed at the sim, and helpers to read SSE answers with the shared decoder.

#![allow(dead_code)]

pub mod http2;

use std::time::Duration;

use fm_protocol::{SseDecoder, StreamEvent};
use fm_relay::config::{BedrockMode, ModelConfig, ProviderKind};
use fm_relay::{RelayConfig, RunningRelay};
use fm_sim::{ModelProfile, SimConfig, SimHandle};
use futures_util::StreamExt;

/// The upstream id of a well-behaved model; `~fault` suffixes make faulty ones.
pub const UPSTREAM: &str = "anthropic.test-v1:0";
/// A model whose first token takes ten seconds.
pub const SLOW_UPSTREAM: &str = "anthropic.slow-v1:0";
/// A model that sends 20 tokens per second, so its answers take seconds.
pub const PACED_UPSTREAM: &str = "anthropic.paced-v1:0";

pub struct Harness {
    pub relay: RunningRelay,
    pub sim: SimHandle,
    pub http: reqwest::Client,
}

/// Models of the test configuration besides `plain` (default), `slow` and `paced`: one per fault.
pub const FAULT_MODELS: &[(&str, &str)] = &[
    ("throttle", "throttle"),
    ("unavailable", "unavailable"),
    ("not-found", "not-found"),
    ("validation", "validation"),
    ("stream-throttle", "stream-throttle@2"),
    ("cut", "cut@3"),
    ("stall", "stall@2"),
    ("garbage", "garbage@2"),
    ("flaky", "throttle*2"),
    ("flaky-stream", "unavailable*1"),
    ("recovering", "unavailable*3"),
];

/// A model in us-east-1 with no failover, fallback or prefill.
pub fn model(id: &str, upstream_id: String) -> ModelConfig {
    ModelConfig {
        id: id.into(),
        provider: ProviderKind::Bedrock,
        upstream_id: Some(upstream_id),
        region: "us-east-1".into(),
        endpoint: None,
        api_key_env: None,
        input_price_per_1k: 0.001,
        output_price_per_1k: 0.002,
        context_window: 100_000,
        tier: Default::default(),
        capabilities: Vec::new(),
        accepts_prefill: false,
        failover: Vec::new(),
        fallback_models: Vec::new(),
        tokens_per_minute: None,
    }
}

/// The simulator settings the tests use: instant, except the slow model.
pub fn sim_config() -> SimConfig {
    let mut config = SimConfig::instant();
    config.models.insert(
        SLOW_UPSTREAM.into(),
        ModelProfile {
            first_token_ms: 10_000,
            tokens_per_second: 0.0,
            answer_tokens: None,
        },
    );
    config.models.insert(
        PACED_UPSTREAM.into(),
        ModelProfile {
            first_token_ms: 0,
            tokens_per_second: 20.0,
            answer_tokens: Some(100),
        },
    );
    config
}

pub fn relay_config(sim: &SimHandle) -> RelayConfig {
    let mut config = RelayConfig::embedded_default();
    config.server.port = 0;
    config.server.shutdown_grace_secs = 5;
    // Retries as configured by default, with short waits so tests stay fast.
    config.retry.base_delay_ms = 1;
    config.retry.max_delay_ms = 5;
    // Breakers and adaptive rate limiting out of the way unless a test is about them.
    config.rate_limit.adaptive = false;
    config.breaker.consecutive_failures = 1000;
    config.breaker.min_requests = 1000;
    // Errors as errors, unless a test is about the degraded answer.
    config.degradation.enabled = false;
    // Every request reaches the upstream, unless a test is about the cache.
    config.cache.enabled = false;
    // Each relay its own ledger, and no keys file but the test's own.
    config.limits.data_dir = temp_dir("data");
    config.auth.keys_file = config.limits.data_dir.join("keys.toml");
    config.bedrock.mode = BedrockMode::Endpoint;
    config.bedrock.endpoint = Some(sim.endpoint_url());
    config.default_model = "plain".into();
    config.models = vec![
        model("plain", UPSTREAM.into()),
        model("slow", SLOW_UPSTREAM.into()),
        model("paced", PACED_UPSTREAM.into()),
    ];
    for (id, fault) in FAULT_MODELS {
        config.models.push(model(id, format!("{UPSTREAM}~{fault}")));
    }
    // The default policy names the default config's models: each routing test sets its own.
    config.routing.rules.clear();
    config.routes.clear();
    config.validate().unwrap();
    config
}

/// Starts a sim with `sim_config` and a relay on it, after `adjust` changed the relay config.
pub async fn start_with(sim_config: SimConfig, adjust: impl FnOnce(&mut RelayConfig)) -> Harness {
    if std::env::var_os("RUST_LOG").is_some() {
        fm_relay::telemetry::init_logging();
    }
    let sim = fm_sim::spawn(sim_config).await.unwrap();
    let mut config = relay_config(&sim);
    adjust(&mut config);
    let relay = fm_relay::start(config).await.unwrap();
    Harness {
        relay,
        sim,
        http: http_client(),
    }
}

pub async fn start() -> Harness {
    start_with(sim_config(), |_| {}).await
}

impl Harness {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.relay.url())
    }

    pub async fn post(&self, path: &str, body: impl Into<String>) -> reqwest::Response {
        post_json(&self.http, self.url(path), body).await
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).send().await.unwrap()
    }

    /// A successful `/v1/chat` answer from `model` (or the default) to `prompt`.
    pub async fn chat(&self, model: Option<&str>, prompt: &str) -> fm_protocol::ChatResponse {
        let response = self.post("/v1/chat", chat_body(model, prompt)).await;
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        self.get(path).await.json().await.unwrap()
    }

    /// The relay's `GET /metrics` text.
    pub async fn metrics(&self) -> String {
        let response = self.get("/metrics").await;
        assert_eq!(response.status(), 200);
        response.text().await.unwrap()
    }

    /// `fm_relay_connections_closed_total{reason}` in `/metrics`.
    pub async fn connections_closed(&self, reason: &str) -> f64 {
        let metrics = self.metrics().await;
        let prefix = format!("fm_relay_connections_closed_total{{reason=\"{reason}\"}} ");
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in {metrics}"))
    }

    /// Waits (bounded) until the simulator has seen `count` cancelled streams.
    pub async fn wait_for_cancelled_streams(&self, count: u64) {
        for _ in 0..400 {
            if self.sim.stats().streams_cancelled >= count {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "the simulator saw {} cancelled streams, expected {count}",
            self.sim.stats().streams_cancelled
        );
    }
}

/// A new, empty folder under the system's temporary folder.
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "fm-relay-test-{}-{name}-{:x}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An HTTP client for the tests (rustls needs its crypto provider chosen first).
pub fn http_client() -> reqwest::Client {
    fm_relay::provider::openai::install_crypto_provider();
    reqwest::Client::new()
}

/// Writes `config` as `relay.toml` into a new temporary folder (see [`temp_dir`]); its path.
pub fn config_file(name: &str, config: &RelayConfig) -> std::path::PathBuf {
    let file = temp_dir(name).join("relay.toml");
    std::fs::write(&file, toml::to_string(config).unwrap()).unwrap();
    file
}

/// `POST url` with a JSON `body`; the answer, whatever its status.
pub async fn post_json(
    http: &reqwest::Client,
    url: impl reqwest::IntoUrl,
    body: impl Into<String>,
) -> reqwest::Response {
    http.post(url)
        .header("content-type", "application/json")
        .body(body.into())
        .send()
        .await
        .unwrap()
}

/// A request body asking `model` (or the default) to answer `prompt`.
pub fn chat_body(model: Option<&str>, prompt: &str) -> String {
    let mut body = serde_json::json!({"messages": [{"role": "user", "content": prompt}]});
    if let Some(model) = model {
        body["model"] = model.into();
    }
    body.to_string()
}

/// Reads an SSE answer event by event, with the shared decoder, checking each SSE event name.
pub struct SseReader {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    decoder: SseDecoder,
    ready: std::collections::VecDeque<StreamEvent>,
}

impl SseReader {
    pub fn new(response: reqwest::Response) -> Self {
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        SseReader {
            body: Box::pin(response.bytes_stream()),
            decoder: SseDecoder::new(),
            ready: Default::default(),
        }
    }

    /// The next event, or `None` at the end of the body.
    pub async fn next_event(&mut self) -> Option<StreamEvent> {
        while self.ready.is_empty() {
            let chunk = self.body.next().await?.unwrap();
            for frame in self.decoder.feed(&chunk).unwrap() {
                let event = frame.stream_event().unwrap();
                assert_eq!(frame.event, event.name());
                self.ready.push_back(event);
            }
        }
        self.ready.pop_front()
    }

    /// Every event up to the end of the body.
    pub async fn rest(&mut self) -> Vec<StreamEvent> {
        let mut events = Vec::new();
        while let Some(event) = self.next_event().await {
            events.push(event);
        }
        events
    }
}

/// Reads a whole SSE answer.
pub async fn sse_events(response: reqwest::Response) -> Vec<StreamEvent> {
    SseReader::new(response).rest().await
}

/// The text of the deltas in `events`.
pub fn text_of(events: &[StreamEvent]) -> String {
    events
        .iter()
        .filter_map(|event| match event {
            StreamEvent::TextDelta { text } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

/// The JSON error body of a failed answer: (status, code, field).
pub async fn error_of(response: reqwest::Response) -> (u16, String, Option<String>) {
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap();
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(error["request_id"].as_str().is_some(), "{body}");
    (
        status,
        error["code"].as_str().unwrap().to_string(),
        error["field"].as_str().map(str::to_string),
    )
}

/// A `redis-server` on a loopback port, stopped when dropped.
pub struct RedisServer {
    _process: StoppedOnDrop,
    pub port: u16,
    pub url: String,
}

impl RedisServer {
    /// A server on a free port.
    pub async fn start() -> RedisServer {
        RedisServer::start_on(free_port()).await
    }

    /// A server on `port` (again, after one there was killed).
    pub async fn start_on(port: u16) -> RedisServer {
        use std::process::{Command, Stdio};
        let server = RedisServer {
            _process: StoppedOnDrop(
                Command::new("redis-server")
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                    .args(["--save", "", "--appendonly", "no"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("redis-server is not installed: run scripts/setup.sh"),
            ),
            port,
            url: format!("redis://127.0.0.1:{port}"),
        };
        until_started(&format!("redis-server on port {port}"), async || {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        server
    }
}

/// An `fm-relay` process a test started.
pub struct ServedBinary {
    pub child: std::process::Child,
    /// The base URL it listens on, from its `url=` log line.
    pub url: String,
    /// Its log lines up to that one.
    pub start_log: Vec<String>,
    /// Reads the rest of its log (so it never blocks on a full pipe) and hands it over when the
    /// process has ended.
    pub rest_of_log: std::thread::JoinHandle<Vec<String>>,
}

/// Starts the binary `bin` with `args`, logging at `info`, and waits until it listens.
pub fn serve_binary<I, S>(bin: &str, args: I) -> ServedBinary
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    serve_binary_with_env(bin, args, [])
}

/// [`serve_binary`] with these environment variables set too.
pub fn serve_binary_with_env<I, S, const N: usize>(
    bin: &str,
    args: I,
    env: [(&str, &str); N],
) -> ServedBinary
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(bin)
        .args(args)
        .envs(env)
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut start_log = Vec::new();
    let url = loop {
        let line = log
            .next()
            .unwrap_or_else(|| panic!("{bin} exited before listening: {start_log:?}"))
            .unwrap();
        start_log.push(line.clone());
        if let Some(at) = line.find("url=") {
            break line[at + 4..].trim().to_string();
        }
    };
    let rest_of_log = std::thread::spawn(move || log.map_while(Result::ok).collect());
    ServedBinary {
        child,
        url,
        start_log,
        rest_of_log,
    }
}

/// A configured API key: `name`, the digest of `secret`, `limits`.
pub fn api_key(
    name: &str,
    secret: &str,
    limits: fm_relay::config::KeyLimits,
) -> fm_relay::config::ApiKeyConfig {
    fm_relay::config::ApiKeyConfig {
        name: name.into(),
        key_sha256: hex::encode(fm_relay::auth::key_digest(secret)),
        admin: false,
        revoked: false,
        models: Vec::new(),
        routes: Vec::new(),
        limits,
    }
}

/// A loopback port nothing listens on now, for a server a test starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The credentials moto takes (any), for the relays and this test's own clients.
pub const AWS_ENV: [(&str, &str); 4] = [
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_REGION", "us-east-1"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
];

/// A `moto_server` on a loopback port, stopped when dropped.
pub struct Moto {
    _process: StoppedOnDrop,
    pub url: String,
}

impl Moto {
    pub async fn start() -> Moto {
        let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/moto_server");
        assert!(
            bin.exists(),
            "{} is missing: run scripts/setup.sh (it installs moto[server] into .venv)",
            bin.display()
        );
        let port = free_port();
        let child = std::process::Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let moto = Moto {
            _process: StoppedOnDrop(child),
            url: format!("http://127.0.0.1:{port}"),
        };
        let http = http_client();
        until_started(&format!("moto_server on port {port}"), async || {
            http.get(format!("{}/moto-api/", moto.url))
                .send()
                .await
                .is_ok()
        })
        .await;
        moto
    }

    /// A test's own AWS clients' configuration, on this moto.
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(&self.url)
            .credentials_provider(aws_credential_types::Credentials::new(
                "testing", "testing", None, None, "test",
            ))
            .http_client(aws_smithy_http_client::Builder::new().build_http())
            .load()
            .await
    }
}

/// The ARN of the queue at `queue_url`.
pub async fn queue_arn(sqs: &aws_sdk_sqs::Client, queue_url: &str) -> String {
    let name = aws_sdk_sqs::types::QueueAttributeName::QueueArn;
    sqs.get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(name.clone())
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()[&name]
        .clone()
}

/// Waits until `started` says a server a test started is ready: asks every 25 ms, for up to
/// 30 s (moto_server takes seconds on a busy machine), then fails the test naming `what`.
pub async fn until_started(what: &str, mut started: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if started().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{what} did not start within 30 s");
}

/// A process a test started (a server it needs), killed and reaped when dropped — also when the
/// test fails, so none is left behind.
pub struct StoppedOnDrop(pub std::process::Child);

impl Drop for StoppedOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `GET url/v1/jobs/{id}` (with `key` as a bearer token when given): the job as that relay
/// shows it.
pub async fn job_at(
    http: &reqwest::Client,
    url: &str,
    id: &str,
    key: Option<&str>,
) -> fm_protocol::JobInfo {
    let mut request = http.get(format!("{url}/v1/jobs/{id}"));
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    let response = request.send().await.unwrap();
    assert_eq!(
        response.status(),
        200,
        "job {id}: {:?}",
        response.text().await
    );
    response.json().await.unwrap()
}

/// Waits (up to 60 s) until `check` holds for job `id` as `url` shows it; fails the test saying
/// the job never reached `what`.
pub async fn until_job(
    http: &reqwest::Client,
    url: &str,
    id: &str,
    key: Option<&str>,
    what: &str,
    check: impl Fn(&fm_protocol::JobInfo) -> bool,
) -> fm_protocol::JobInfo {
    let start = std::time::Instant::now();
    loop {
        let job = job_at(http, url, id, key).await;
        if check(&job) {
            return job;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "job {id} never {what}: {job:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
