//! Replicas: three relay processes started from `deploy/relay.toml` behind a real haproxy with
//! `deploy/haproxy.cfg` — the topology `deploy/compose.yaml` describes, run as processes — with
//! Redis for limits, quotas and the cache and `moto_server` for the AWS job backend (only the
//! addresses are the test's own). A quota is kept across replicas and an answer cached by one is
//! served by another. Then one replica is killed with `kill -9` under streaming and sync load
//! while it runs two document jobs: its clients get an error (never a hang, never a cut answer
//! passed off as whole), every request sent after the kill is served by the others, and its
//! jobs are taken over and completed — none is lost. `deploy/compose.yaml` is checked to describe
//! this same topology with these same files.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use fm_protocol::{ChatResponse, JobInfo, JobStatus, ResponseSource, SseDecoder, StreamEvent};
use fm_relay::RelayConfig;
use fm_relay::config::{BedrockMode, KeyLimits};
use fm_sim::{FaultRule, ModelProfile};
use futures_util::StreamExt;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_fm-relay");
const LOAD_KEY: &str = "fmr_1111111111111111111111111111111111111111111111111111111111111111";
const METERED_KEY: &str = "fmr_2222222222222222222222222222222222222222222222222222222222222222";
/// The slow model's upstream id in deploy/relay.toml.
const NOVA_LITE: &str = "us.amazon.nova-lite-v1:0";

fn deploy_file(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(name)
}

/// haproxy with deploy/haproxy.cfg in front of `replicas`, stopped when dropped.
struct LoadBalancer {
    _process: StoppedOnDrop,
    url: String,
}

impl LoadBalancer {
    async fn start(replicas: &[&str]) -> LoadBalancer {
        let port = free_port();
        let mut command = Command::new("haproxy");
        command
            .args(["-db", "-f"])
            .arg(deploy_file("haproxy.cfg"))
            .env("FM_LB_BIND", format!("127.0.0.1:{port}"))
            .stdout(Stdio::null());
        for (n, replica) in replicas.iter().enumerate() {
            let address = replica.trim_start_matches("http://");
            command.env(format!("FM_RELAY_{}", n + 1), address);
        }
        let balancer = LoadBalancer {
            _process: StoppedOnDrop(
                command
                    .spawn()
                    .expect("haproxy is not installed: run scripts/setup.sh"),
            ),
            url: format!("http://127.0.0.1:{port}"),
        };
        let http = http_client();
        until_started(&format!("haproxy on port {port}"), async || {
            let health = http.get(format!("{}/healthz", balancer.url)).send().await;
            health.is_ok_and(|response| response.status() == 200)
        })
        .await;
        balancer
    }
}

/// deploy/relay.toml with the test's Redis, moto, simulator and files put in.
fn replica_config(redis: &RedisServer, moto: &Moto, sim: &fm_sim::SimHandle) -> RelayConfig {
    let mut config = RelayConfig::load(Some(&deploy_file("relay.toml"))).unwrap();
    let dir = temp_dir("replicas");
    config.server.host = std::net::Ipv4Addr::LOCALHOST.into();
    config.server.port = 0;
    config.bedrock.mode = BedrockMode::Endpoint;
    config.bedrock.endpoint = Some(sim.endpoint_url());
    config.cache.redis_url = redis.url.clone();
    config.limits.redis_url = redis.url.clone();
    config.limits.data_dir = dir.join("data");
    config.auth.keys_file = dir.join("keys.toml");
    // The slow job's first token comes after 30 s: no target is given up on before the kill.
    config.timeouts.first_token_ms = 60_000;
    let jobs = &mut config.jobs;
    jobs.aws.endpoint_url = moto.url.clone();
    jobs.aws.create_resources = true;
    jobs.aws.wait_secs = 1;
    jobs.workers = 2;
    jobs.visibility_timeout_secs = 4;
    jobs.heartbeat_secs = 1;
    jobs.poll_ms = 100;
    let keys = &config.auth.keys_file;
    fm_relay::auth::keys_file::add(keys, api_key("load", LOAD_KEY, KeyLimits::default())).unwrap();
    let metered = KeyLimits {
        monthly_requests: Some(10),
        ..KeyLimits::default()
    };
    fm_relay::auth::keys_file::add(keys, api_key("metered", METERED_KEY, metered)).unwrap();
    config.validate().unwrap();
    config
}

/// A relay process started from `file`, killed when dropped (a failed test leaves none behind).
struct Replica(ServedBinary);

impl Replica {
    fn start(file: &Path) -> Replica {
        Replica(serve_binary_with_env(
            BIN,
            ["serve".as_ref(), "--config".as_ref(), file.as_os_str()],
            AWS_ENV,
        ))
    }

    fn url(&self) -> &str {
        &self.0.url
    }

    /// `kill -9`.
    fn kill(&mut self) {
        self.0.child.kill().unwrap();
        self.0.child.wait().unwrap();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.0.child.kill();
        let _ = self.0.child.wait();
    }
}

/// `POST url` with a JSON body and `key`.
async fn post_with(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    body: serde_json::Value,
) -> reqwest::Result<reqwest::Response> {
    http.post(url)
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {key}"))
        .body(body.to_string())
        .send()
        .await
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    body: serde_json::Value,
) -> reqwest::Response {
    post_with(http, url, key, body).await.unwrap()
}

/// The answers the relay at `url` has stored in the cache since it started (`GET /v1/stats`).
async fn cache_stored(http: &reqwest::Client, url: &str) -> u64 {
    let stats: serde_json::Value = http
        .get(format!("{url}/v1/stats"))
        .header("authorization", format!("Bearer {LOAD_KEY}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    stats["cache"]["stored"]
        .as_u64()
        .unwrap_or_else(|| panic!("no cache counters: {stats}"))
}

async fn submit_job(http: &reqwest::Client, url: &str, body: serde_json::Value) -> String {
    let response = post(http, &format!("{url}/v1/jobs"), LOAD_KEY, body).await;
    assert_eq!(response.status(), 202, "{:?}", response.text().await);
    response.json::<JobInfo>().await.unwrap().job_id
}

/// How one request of the load ended, from its client's side.
#[derive(Debug)]
enum Outcome {
    /// A whole answer: a JSON answer, or a stream that ended with `done`.
    Whole,
    /// An error the client saw: a status, a broken connection, a stream without `done`.
    Broken(String),
    /// No end within 30 s.
    Hung,
}

#[derive(Debug)]
struct Attempt {
    started: Instant,
    outcome: Outcome,
}

/// Sends a chat request of the load's key to `url`: its answer when the status is 200, how it
/// broke otherwise.
async fn ask(
    http: &reqwest::Client,
    url: &str,
    prompt: &str,
) -> Result<reqwest::Response, Outcome> {
    let body = json!({"messages": [{"role": "user", "content": prompt}], "no_cache": true});
    let response = post_with(http, url, LOAD_KEY, body)
        .await
        .map_err(|error| Outcome::Broken(format!("request: {error}")))?;
    match response.status() {
        reqwest::StatusCode::OK => Ok(response),
        status => Err(Outcome::Broken(format!("status {status}"))),
    }
}

/// One streamed answer through the load balancer, read to its end.
async fn one_stream(http: &reqwest::Client, url: &str, prompt: &str) -> Outcome {
    let response = match ask(http, &format!("{url}/v1/chat/stream"), prompt).await {
        Ok(response) => response,
        Err(outcome) => return outcome,
    };
    let mut body = response.bytes_stream();
    let mut decoder = SseDecoder::new();
    let mut text = String::new();
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(error) => return Outcome::Broken(format!("body: {error}")),
        };
        for frame in decoder.feed(&chunk).unwrap() {
            match frame.stream_event().unwrap() {
                StreamEvent::TextDelta { text: delta } => text.push_str(&delta),
                StreamEvent::Done { degraded, .. } => {
                    assert!(!degraded && !text.is_empty(), "a whole answer: {text:?}");
                    return Outcome::Whole;
                }
                StreamEvent::Error { code, .. } => return Outcome::Broken(format!("{code:?}")),
                _ => {}
            }
        }
    }
    Outcome::Broken("ended without done".into())
}

/// One JSON answer through the load balancer.
async fn one_answer(http: &reqwest::Client, url: &str, prompt: &str) -> Outcome {
    let response = match ask(http, &format!("{url}/v1/chat"), prompt).await {
        Ok(response) => response,
        Err(outcome) => return outcome,
    };
    match response.json::<ChatResponse>().await {
        Ok(answer) if !answer.text.is_empty() => Outcome::Whole,
        Ok(answer) => Outcome::Broken(format!("empty answer: {answer:?}")),
        Err(error) => Outcome::Broken(format!("body: {error}")),
    }
}

/// A client that sends again as soon as answered until `stop`; what each request did.
fn client(
    url: String,
    streaming: bool,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Attempt>> {
    tokio::spawn(async move {
        let http = http_client();
        let mut attempts = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            let prompt = format!("Request {} of a client.", attempts.len());
            let answer = async {
                match streaming {
                    true => one_stream(&http, &url, &prompt).await,
                    false => one_answer(&http, &url, &prompt).await,
                }
            };
            let outcome = tokio::time::timeout(Duration::from_secs(30), answer)
                .await
                .unwrap_or(Outcome::Hung);
            attempts.push(Attempt { started, outcome });
        }
        attempts
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_behind_haproxy_share_state_and_survive_a_kill_9() {
    let redis = RedisServer::start().await;
    let moto = Moto::start().await;
    let mut sim_config = fm_sim::SimConfig::instant();
    // Answers of 40 tokens at 40 a second: a stream is open for about a second.
    sim_config.default_model = ModelProfile {
        first_token_ms: 20,
        tokens_per_second: 40.0,
        answer_tokens: Some(40),
    };
    let sim = fm_sim::spawn(sim_config).await.unwrap();
    let config = replica_config(&redis, &moto, &sim);
    let file = config.limits.data_dir.with_file_name("relay.toml");
    std::fs::write(&file, toml::to_string(&config).unwrap()).unwrap();
    let http = http_client();

    // The replica that will be killed starts first, alone, and takes two slow jobs: its two
    // workers hold them when it dies. Their first calls take 30 s; the ones after the kill are
    // answered at once.
    sim.set_faults(vec![FaultRule {
        limit: Some(2),
        ..FaultRule::always("slow@30000".parse().unwrap()).for_model(NOVA_LITE)
    }])
    .unwrap();
    let mut doomed = Replica::start(&file);
    let mut slow_jobs = Vec::new();
    for n in 0..2 {
        let body = json!({"analysis_type": "summarize", "text": format!("Slow report {n}."),
                          "model": "nova-lite"});
        slow_jobs.push(submit_job(&http, doomed.url(), body).await);
    }
    for id in &slow_jobs {
        until_job(&http, doomed.url(), id, Some(LOAD_KEY), "running", |job| {
            job.status == JobStatus::Running
        })
        .await;
    }

    let first = Replica::start(&file);
    let second = Replica::start(&file);
    let balancer = LoadBalancer::start(&[first.url(), second.url(), doomed.url()]).await;
    let lb = balancer.url.clone();

    // More jobs, through the load balancer: any replica's workers take them.
    let mut quick_jobs = Vec::new();
    for n in 0..6 {
        let body = json!({"analysis_type": "summarize", "text": format!("Report {n}.")});
        quick_jobs.push(submit_job(&http, &lb, body).await);
    }

    // A quota of 10 requests holds across the replicas the balancer spreads them over.
    let chat_url = format!("{lb}/v1/chat");
    let metered = (0..15).map(|n| {
        let body = json!({"messages": [{"role": "user", "content": format!("Metered {n}.")}],
                          "no_cache": true});
        post(&http, &chat_url, METERED_KEY, body)
    });
    let statuses: Vec<u16> = futures_util::future::join_all(metered)
        .await
        .iter()
        .map(|response| response.status().as_u16())
        .collect();
    assert_eq!(
        (
            statuses.iter().filter(|s| **s == 200).count(),
            statuses.iter().filter(|s| **s == 429).count()
        ),
        (10, 5),
        "{statuses:?}"
    );

    // An answer one replica cached is served by the others from Redis.
    let body = json!({"messages": [{"role": "user", "content": "Cached once, for all."}]});
    let stored_before = cache_stored(&http, first.url()).await;
    for (n, replica) in [first.url(), second.url(), doomed.url()]
        .into_iter()
        .enumerate()
    {
        let response = post(&http, &format!("{replica}/v1/chat"), LOAD_KEY, body.clone()).await;
        assert_eq!(response.status(), 200);
        let answer: ChatResponse = response.json().await.unwrap();
        let expected = if n == 0 {
            ResponseSource::Primary
        } else {
            ResponseSource::Cache
        };
        assert_eq!(answer.route.source, expected, "replica {n}");
        if n == 0 {
            // The first replica writes its answer to Redis after it has answered: wait for the
            // write before asking the others.
            let deadline = Instant::now() + Duration::from_secs(10);
            while cache_stored(&http, replica).await == stored_before {
                assert!(Instant::now() < deadline, "the answer was never cached");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    // Streaming and sync load through the balancer; one replica dies in the middle of it.
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..12)
        .map(|n| client(lb.clone(), n % 4 != 0, stop.clone()))
        .collect();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let killed_at = Instant::now();
    doomed.kill();
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    let mut attempts = Vec::new();
    for client in clients {
        attempts.extend(client.await.unwrap());
    }

    let hung: Vec<_> = attempts
        .iter()
        .filter(|a| matches!(a.outcome, Outcome::Hung))
        .collect();
    assert!(hung.is_empty(), "requests that never ended: {hung:?}");
    let broken: Vec<_> = attempts
        .iter()
        .filter(|a| matches!(a.outcome, Outcome::Broken(_)))
        .collect();
    assert!(
        !broken.is_empty(),
        "the kill cut no request short: it hit nothing in flight"
    );
    // Only what the dead replica had in hand: a request sent after the kill reaches a live one
    // (the balancer sends a connection it could not open to another replica).
    let after_kill = |a: &Attempt| a.started > killed_at + Duration::from_millis(200);
    let broken_later: Vec<_> = broken.iter().filter(|a| after_kill(a)).collect();
    assert!(
        broken_later.is_empty(),
        "broken after the kill: {broken_later:?}"
    );
    let served_later = attempts
        .iter()
        .filter(|a| after_kill(a) && matches!(a.outcome, Outcome::Whole))
        .count();
    assert!(
        served_later >= 12,
        "only {served_later} answers after the kill"
    );
    let whole = attempts.len() - broken.len();
    eprintln!(
        "{} requests: {whole} whole, {} broken by the kill ({:?}), {served_later} whole after it",
        attempts.len(),
        broken.len(),
        broken
            .iter()
            .filter_map(|a| match &a.outcome {
                Outcome::Broken(why) => Some(why.as_str()),
                _ => None,
            })
            .collect::<Vec<_>>()
    );
    for replica in [first.url(), second.url()] {
        assert_eq!(
            http.get(format!("{replica}/healthz"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }

    // No job is lost: the dead replica's two are taken over when their hold runs out and run
    // again elsewhere; every job completes, as the balancer shows it.
    for id in slow_jobs.iter().chain(&quick_jobs) {
        let done = until_job(&http, &lb, id, Some(LOAD_KEY), "ended", |job| {
            job.status.is_final()
        })
        .await;
        assert_eq!(done.status, JobStatus::Completed, "{done:?}");
        let expected_attempts = if slow_jobs.contains(id) { 2 } else { 1 };
        assert_eq!(done.attempts, expected_attempts, "{done:?}");
    }
}

/// deploy/compose.yaml, read as JSON (PyYAML from the test virtualenv, which moto brings).
fn compose_file() -> serde_json::Value {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    let output = Command::new(&python)
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(deploy_file("compose.yaml"))
        .output()
        .expect("the test virtualenv is missing: run scripts/setup.sh");
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn the_compose_file_describes_the_topology_the_test_runs() {
    let compose = compose_file();
    let services = compose["services"].as_object().unwrap();
    let config = RelayConfig::load(Some(&deploy_file("relay.toml"))).unwrap();
    let haproxy = std::fs::read_to_string(deploy_file("haproxy.cfg")).unwrap();
    let dockerfile = std::fs::read_to_string(deploy_file("../Dockerfile")).unwrap();

    // The balancer: the same haproxy.cfg, each of its servers a relay service on the port
    // relay.toml listens on.
    let lb = &services["lb"];
    assert!(lb["image"].as_str().unwrap().starts_with("haproxy:"));
    assert!(lb["volumes"].as_array().unwrap().contains(&json!(
        "./haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro"
    )));
    let servers: Vec<&str> = haproxy
        .lines()
        .filter_map(|line| line.trim().strip_prefix("server "))
        .collect();
    assert_eq!(servers.len(), 3, "{servers:?}");
    for n in 1..=servers.len() {
        assert!(servers[n - 1].ends_with(&format!("\"${{FM_RELAY_{n}}}\"")));
        let target = lb["environment"][format!("FM_RELAY_{n}")].as_str().unwrap();
        let (service, port) = target.split_once(':').unwrap();
        assert_eq!(port, config.server.port.to_string(), "{target}");
        let relay = &services[service];
        assert_eq!(relay["build"]["dockerfile"], "Dockerfile", "{service}");
        assert_eq!(relay["build"]["context"], "..", "{service}");
        // Every replica reads the keys where relay.toml looks for them.
        let keys_mount = format!("./keys.toml:{}:ro", config.auth.keys_file.display());
        assert!(
            relay["volumes"]
                .as_array()
                .unwrap()
                .contains(&json!(keys_mount)),
            "{service}: {relay}"
        );
    }
    assert!(
        lb["environment"]["FM_LB_BIND"]
            .as_str()
            .unwrap()
            .starts_with(':')
    );

    // Redis, where relay.toml keeps limits and the cache.
    assert!(
        services["redis"]["image"]
            .as_str()
            .unwrap()
            .starts_with("redis:")
    );
    assert_eq!(config.limits.redis_url, "redis://redis:6379");
    assert_eq!(config.cache.redis_url, "redis://redis:6379");

    // The image starts the relay with this relay.toml.
    assert!(dockerfile.contains("COPY deploy/relay.toml /etc/fm-relay/relay.toml"));
    assert!(dockerfile.contains("FM_RELAY_CONFIG=/etc/fm-relay/relay.toml"));
}
