//! The relay beside a peer gateway (LiteLLM's proxy), both in front of the same simulator and
//! driven with the same load: OpenAI chat completions, sync and streaming, at several
//! concurrencies, each connection sending again as soon as it is answered. `bench/peer/run.sh`
//! starts the processes and runs this driver; it reports for each target throughput, latency
//! percentiles and what the hop adds to calling the simulator directly, time to first token, the
//! CPU time per request and the resident memory of the target's processes (its workers
//! included), and the relay's figures as ratios of the peer's.
//!
//! Env (set by the script): `PEER_TARGETS`, `name=base-url` pairs, comma-separated, the first the
//! simulator itself (the floor); `PEER_PIDS`, `name=pid` pairs of the processes to measure;
//! `PEER_VERSIONS`, `name=version` pairs for the report; `PEER_MODEL`, the model name every
//! target serves; `PEER_CONCURRENCY`, default `1,16,64`; `PEER_MODES`, default `sync,stream`;
//! `PEER_SECS`, seconds per scenario, default 10. The run fails (exit code 1) when a target
//! served nothing or more than 1% of its requests failed.
//!
//! Beside the targets the driver runs the bench's bare pass-through (axum + reqwest, no parsing,
//! no policy: `relay/benches/common/pass_through.rs`) in front of the same simulator, as a
//! process of its own (this binary run again): the floor of any HTTP hop on this machine and
//! load, so that each ratio can be read against what a hop that does nothing reaches.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fm_protocol::SseDecoder;
use futures_util::StreamExt;

#[path = "../../relay/benches/common/pass_through.rs"]
mod pass_through;

use pass_through::PassThroughProcess;
/// The pass-through's name in the tables.
const PASS_THROUGH: &str = "pass-through";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Sync,
    Stream,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Sync => "sync",
            Mode::Stream => "stream",
        }
    }
}

/// One scenario's figures.
#[derive(Debug, Clone, Default)]
struct Figures {
    requests: usize,
    failed: usize,
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    ttft_p50_ms: Option<f64>,
    cpu_ms_per_request: Option<f64>,
    rss_mib: Option<f64>,
}

fn pairs(name: &str) -> Vec<(String, String)> {
    std::env::var(name)
        .unwrap_or_default()
        .split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| {
            let (key, value) = pair
                .split_once('=')
                .unwrap_or_else(|| panic!("{name}: `{pair}` is not name=value"));
            (key.trim().to_string(), value.trim().to_string())
        })
        .collect()
}

fn list<T: std::str::FromStr>(name: &str, default: &str) -> Vec<T> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|value| {
            value
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("{name}: cannot read `{value}`"))
        })
        .collect()
}

/// The process `pid` and every process under it (a peer's worker processes).
fn process_tree(pid: u32) -> Vec<u32> {
    let mut parents: HashMap<u32, Vec<u32>> = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // The fields after the command's closing parenthesis: state, ppid, ...
        if let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|ppid| ppid.parse::<u32>().ok())
        {
            parents.entry(ppid).or_default().push(child);
        }
    }
    let mut tree = vec![pid];
    let mut next = 0;
    while next < tree.len() {
        tree.extend(parents.get(&tree[next]).cloned().unwrap_or_default());
        next += 1;
    }
    tree
}

/// CPU time (user + system) of `pid`'s process tree, in milliseconds.
fn cpu_ms(pid: u32) -> f64 {
    let ticks_per_second = 100.0; // USER_HZ on Linux
    process_tree(pid)
        .iter()
        .map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map(|(_, rest)| rest.split_whitespace().collect())
                .unwrap_or_default();
            // utime and stime: the 14th and 15th fields, the 12th and 13th after the command.
            let ticks = |index: usize| fields.get(index).and_then(|v| v.parse::<f64>().ok());
            ticks(11).unwrap_or(0.0) + ticks(12).unwrap_or(0.0)
        })
        .sum::<f64>()
        * 1000.0
        / ticks_per_second
}

/// Resident memory of `pid`'s process tree, in MiB.
fn rss_mib(pid: u32) -> f64 {
    process_tree(pid)
        .iter()
        .map(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .unwrap_or_default()
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<f64>()
                        .ok()
                })
                .unwrap_or(0.0)
        })
        .sum::<f64>()
        / 1024.0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// One request; its latency and (streaming) time to first token, or what went wrong.
async fn one_request(
    http: &reqwest::Client,
    url: &str,
    body: &str,
    mode: Mode,
) -> Result<(Duration, Option<Duration>), String> {
    let started = Instant::now();
    let response = http
        .post(url)
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-bench")
        .body(body.to_string())
        .send()
        .await
        .map_err(|err| err.to_string())?;
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        return Err(format!(
            "{status}: {}",
            text.chars().take(200).collect::<String>()
        ));
    }
    if mode == Mode::Sync {
        let answer: serde_json::Value = response.json().await.map_err(|err| err.to_string())?;
        if answer["choices"][0]["message"]["content"]
            .as_str()
            .is_none_or(str::is_empty)
        {
            return Err(format!("no answer text: {answer}"));
        }
        return Ok((started.elapsed(), None));
    }
    let mut chunks = response.bytes_stream();
    let mut decoder = SseDecoder::new();
    let mut first_token = None;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|err| err.to_string())?;
        for frame in decoder.feed(&chunk).map_err(|err| err.to_string())? {
            if frame.data.trim() == "[DONE]" {
                return match first_token {
                    Some(ttft) => Ok((started.elapsed(), Some(ttft))),
                    None => Err("a stream without text".into()),
                };
            }
            let event: serde_json::Value =
                serde_json::from_str(&frame.data).map_err(|err| err.to_string())?;
            let text = event["choices"][0]["delta"]["content"].as_str();
            if first_token.is_none() && text.is_some_and(|text| !text.is_empty()) {
                first_token = Some(started.elapsed());
            }
        }
    }
    Err("the stream ended without [DONE]".into())
}

async fn scenario(
    url: &str,
    model: &str,
    mode: Mode,
    concurrency: usize,
    secs: u64,
    pid: Option<u32>,
) -> (Figures, Vec<String>) {
    let body = serde_json::json!({
        "model": model,
        "max_tokens": 32,
        "stream": mode == Mode::Stream,
        "messages": [{"role": "user", "content": "Summarise the benefits of a relay in front of model APIs."}],
    })
    .to_string();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .tcp_nodelay(true)
        .build()
        .unwrap();
    // Warm the connections and the target.
    for _ in 0..concurrency.min(8) {
        let _ = one_request(&http, url, &body, mode).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let cpu_before = pid.map(cpu_ms);
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (http, url, body, stop) =
                (http.clone(), url.to_string(), body.clone(), stop.clone());
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let outcome = tokio::time::timeout(
                        Duration::from_secs(30),
                        one_request(&http, &url, &body, mode),
                    )
                    .await
                    .unwrap_or_else(|_| Err("no answer within 30 s".into()));
                    outcomes.push(outcome);
                }
                outcomes
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    let mut ttfts = Vec::new();
    let mut failures = Vec::new();
    let mut failed = 0;
    for worker in workers {
        for outcome in worker.await.unwrap() {
            match outcome {
                Ok((latency, ttft)) => {
                    latencies.push(latency.as_secs_f64() * 1000.0);
                    ttfts.extend(ttft.map(|ttft| ttft.as_secs_f64() * 1000.0));
                }
                Err(what) => {
                    failed += 1;
                    if failures.len() < 3 {
                        failures.push(what);
                    }
                }
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = pid
        .zip(cpu_before)
        .map(|(pid, before)| cpu_ms(pid) - before);
    latencies.sort_by(f64::total_cmp);
    ttfts.sort_by(f64::total_cmp);
    let requests = latencies.len() + failed;
    let figures = Figures {
        requests,
        failed,
        per_second: latencies.len() as f64 / elapsed,
        p50_ms: percentile(&latencies, 50.0),
        p99_ms: percentile(&latencies, 99.0),
        ttft_p50_ms: (!ttfts.is_empty()).then(|| percentile(&ttfts, 50.0)),
        cpu_ms_per_request: cpu.map(|cpu| cpu / requests.max(1) as f64),
        rss_mib: pid.map(rss_mib),
    };
    (figures, failures)
}

fn shown(value: Option<f64>, digits: usize) -> String {
    value.map_or("–".into(), |value| format!("{value:.digits$}"))
}

#[tokio::main]
async fn main() {
    fm_relay::provider::openai::install_crypto_provider();
    pass_through::serve_if_asked().await;
    let mut targets = pairs("PEER_TARGETS");
    assert!(
        targets.len() >= 2,
        "PEER_TARGETS: the simulator first, then the targets (bench/peer/run.sh sets it)"
    );
    let mut pids: HashMap<String, u32> = pairs("PEER_PIDS")
        .into_iter()
        .map(|(name, pid)| (name, pid.parse().expect("PEER_PIDS: name=pid")))
        .collect();
    // The floor of a hop, measured right after the simulator itself.
    let sim = reqwest::Url::parse(&targets[0].1).expect("PEER_TARGETS: the simulator's URL");
    let pass_through = PassThroughProcess::start(&sim.origin().ascii_serialization());
    pids.insert(PASS_THROUGH.into(), pass_through.child.id());
    // The same API path under the pass-through as under the simulator (`/v1`).
    let base_url = format!("{}{}", pass_through.url, sim.path().trim_end_matches('/'));
    targets.insert(1, (PASS_THROUGH.into(), base_url));
    let versions = pairs("PEER_VERSIONS");
    let model = std::env::var("PEER_MODEL").unwrap_or_else(|_| "bench".into());
    let concurrencies: Vec<usize> = list("PEER_CONCURRENCY", "1,16,64");
    let modes: Vec<Mode> = list::<String>("PEER_MODES", "sync,stream")
        .iter()
        .map(|mode| match mode.as_str() {
            "sync" => Mode::Sync,
            "stream" => Mode::Stream,
            other => panic!("PEER_MODES: `{other}` is not sync or stream"),
        })
        .collect();
    let secs: u64 = list("PEER_SECS", "10")[0];

    println!(
        "Side by side, each in front of the same fm-sim, OpenAI chat completions, {secs} s per scenario, closed loop"
    );
    for (name, version) in &versions {
        println!("- {name}: {version}");
    }
    println!(
        "\n| target | mode | connections | requests/s | p50 ms | p99 ms | added p50 ms | added p99 ms | TTFT p50 ms | CPU ms/request | RSS MiB | failed |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut results: HashMap<(String, &'static str, usize), Figures> = HashMap::new();
    let mut broken = Vec::new();
    for &mode in &modes {
        for &concurrency in &concurrencies {
            let mut floor: Option<Figures> = None;
            for (name, base) in &targets {
                let url = format!("{}/chat/completions", base.trim_end_matches('/'));
                let pid = pids.get(name).copied();
                let (figures, failures) =
                    scenario(&url, &model, mode, concurrency, secs, pid).await;
                let floor_figures = floor.get_or_insert_with(|| figures.clone());
                println!(
                    "| {name} | {} | {concurrency} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} |",
                    mode.name(),
                    figures.per_second,
                    figures.p50_ms,
                    figures.p99_ms,
                    figures.p50_ms - floor_figures.p50_ms,
                    figures.p99_ms - floor_figures.p99_ms,
                    shown(figures.ttft_p50_ms, 1),
                    shown(figures.cpu_ms_per_request, 2),
                    shown(figures.rss_mib, 0),
                    figures.failed,
                );
                for failure in failures {
                    eprintln!("{name} {} ×{concurrency}: {failure}", mode.name());
                }
                if figures.requests == 0 || figures.failed * 100 > figures.requests {
                    broken.push(format!(
                        "{name} {} ×{concurrency}: {} of {} requests failed",
                        mode.name(),
                        figures.failed,
                        figures.requests
                    ));
                }
                results.insert((name.clone(), mode.name(), concurrency), figures);
            }
        }
    }
    // The relay as ratios of each other target (the simulator and the pass-through aside), with
    // the pass-through's throughput ratio beside it: what a hop that does nothing reaches.
    if let [(floor, _), _, (relay, _), peers @ ..] = &targets[..] {
        for (peer, _) in peers {
            println!("\n{relay} against {peer} (floor: {floor}), same scenarios:\n");
            println!(
                "| mode | connections | throughput × | {PASS_THROUGH} throughput × | {relay} added p99 ms | {peer} added p50 ms | CPU per request ÷ |"
            );
            println!("|---|---|---|---|---|---|---|");
            for &mode in &modes {
                for &concurrency in &concurrencies {
                    let key = |name: &String| (name.clone(), mode.name(), concurrency);
                    let (Some(ours), Some(theirs), Some(base)) = (
                        results.get(&key(relay)),
                        results.get(&key(peer)),
                        results.get(&key(floor)),
                    ) else {
                        continue;
                    };
                    let cpu_ratio = ours
                        .cpu_ms_per_request
                        .zip(theirs.cpu_ms_per_request)
                        .map(|(ours, theirs)| theirs / ours);
                    let hop_ratio = results
                        .get(&key(&PASS_THROUGH.to_string()))
                        .map(|hop| hop.per_second / theirs.per_second);
                    println!(
                        "| {} | {concurrency} | {:.1} | {} | {:.1} | {:.1} | {} |",
                        mode.name(),
                        ours.per_second / theirs.per_second,
                        shown(hop_ratio, 1),
                        ours.p99_ms - base.p99_ms,
                        theirs.p50_ms - base.p50_ms,
                        shown(cpu_ratio, 1),
                    );
                }
            }
        }
    }
    drop(pass_through);
    if !broken.is_empty() {
        eprintln!("peer run failed: {}", broken.join("; "));
        std::process::exit(1);
    }
}
