//! Soak: mixed traffic through the relay binary for a long time, with its resident memory sampled
//! every second: after a warm-up the curve must stay flat (no growth beyond noise), and the
//! traffic must be served.
//!
//! The mix, over `SOAK_WORKERS` connections each sending again as soon as answered: sync chat
//! (`/v1/chat`), SSE streams read to the end, a WebSocket opened for one request and closed,
//! streams cancelled after their first event, and failovers — the simulator cuts 10% of the
//! primary region's streams after five tokens, and the relay carries on in the failover region.
//! Every request opts out of the cache, so each reaches the upstream.
//!
//! Run: `cargo bench -p fm-relay --bench soak` (env `SOAK_SECS`, default 1800; `SOAK_WARMUP_SECS`,
//! default a sixth of the run, at most 120; `SOAK_WORKERS`, default 16;
//! `SOAK_GROWTH_BUDGET_KIB`, default 4096: the run fails, exit code 1, when the relay's memory
//! at the end is more than this above where it stood after the warm-up, or when more than 0.5% of
//! the requests failed; `SOAK_CSV` and `SOAK_SVG`: files for the samples and their plot). The
//! test command runs it for 20 seconds (`SOAK_SECS=20 cargo test -p fm-relay --bench soak`), so
//! it cannot rot.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{RelayProcess, env_or};
use fm_protocol::{SseDecoder, StreamEvent};
use fm_sim::{FaultRule, ModelProfile, SimConfig};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

const MODEL: &str = "claude-3-5-haiku";

/// What the traffic saw.
#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    failed: AtomicU64,
    failovers: AtomicU64,
    cancelled: AtomicU64,
    /// The first failures, for the report.
    failures: std::sync::Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut failures = self.failures.lock().unwrap();
        if failures.len() < 5 {
            failures.push(what);
        }
    }
}

fn request_body(serial: u64) -> String {
    serde_json::json!({
        "model": MODEL,
        "no_cache": true,
        "max_tokens": 64,
        "messages": [{"role": "user", "content": format!("Soak request {serial}: say something.")}],
    })
    .to_string()
}

/// One request of kind `kind`; `Err` says what went wrong.
async fn one_request(
    http: &reqwest::Client,
    addr: &str,
    kind: u64,
    serial: u64,
    tally: &Tally,
) -> Result<(), String> {
    let body = request_body(serial);
    match kind {
        0 => {
            let response = http
                .post(format!("http://{addr}/v1/chat"))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .map_err(|err| format!("sync: {err}"))?;
            let status = response.status();
            let answer: serde_json::Value = response
                .json()
                .await
                .map_err(|err| format!("sync answer: {err}"))?;
            if status != 200 {
                return Err(format!("sync: {status} {answer}"));
            }
            Ok(())
        }
        1 | 3 => {
            let cancel = kind == 3;
            let response = http
                .post(format!("http://{addr}/v1/chat/stream"))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .map_err(|err| format!("stream: {err}"))?;
            if response.status() != 200 {
                return Err(format!("stream: {}", response.status()));
            }
            let mut chunks = response.bytes_stream();
            let mut decoder = SseDecoder::new();
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk.map_err(|err| format!("stream body: {err}"))?;
                if cancel {
                    // Hang up after the first bytes: the relay cancels the upstream call.
                    tally.cancelled.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                let frames = decoder.feed(&chunk).map_err(|err| err.to_string())?;
                for frame in frames {
                    match frame.stream_event() {
                        Ok(StreamEvent::Done { .. }) => return Ok(()),
                        Ok(StreamEvent::Failover { .. }) => {
                            tally.failovers.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(StreamEvent::Error { code, message, .. }) => {
                            return Err(format!("stream error event: {code:?} {message}"));
                        }
                        Ok(_) => {}
                        Err(err) => return Err(format!("stream event: {err}")),
                    }
                }
            }
            Err("the stream ended without `done`".into())
        }
        _ => {
            let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws"))
                .await
                .map_err(|err| format!("ws connect: {err}"))?;
            socket
                .send(Message::text(body))
                .await
                .map_err(|err| format!("ws send: {err}"))?;
            while let Some(message) = socket.next().await {
                let Message::Text(text) = message.map_err(|err| format!("ws: {err}"))? else {
                    continue;
                };
                match serde_json::from_str::<StreamEvent>(&text) {
                    Ok(StreamEvent::Done { .. }) => {
                        let _ = socket.close(None).await;
                        return Ok(());
                    }
                    Ok(StreamEvent::Failover { .. }) => {
                        tally.failovers.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(StreamEvent::Error { code, message, .. }) => {
                        return Err(format!("ws error event: {code:?} {message}"));
                    }
                    Ok(_) => {}
                    Err(err) => return Err(format!("ws event: {err}")),
                }
            }
            Err("the WebSocket closed without `done`".into())
        }
    }
}

/// The median of `values` (which must not be empty).
fn median(values: &mut [u64]) -> u64 {
    values.sort_unstable();
    values[values.len() / 2]
}

/// The samples as an SVG line plot: resident MiB over minutes, the warm-up shaded.
fn plot(samples: &[(f64, u64)], warmup_secs: f64) -> String {
    let (width, height, margin) = (640.0, 260.0, 48.0);
    let last = samples.last().map_or(1.0, |s| s.0).max(1.0);
    let peak = samples.iter().map(|s| s.1).max().unwrap_or(1) as f64 / 1024.0;
    let top = (peak * 1.2).ceil().max(1.0);
    let x = |secs: f64| margin + secs / last * (width - 2.0 * margin);
    let y = |kib: u64| height - margin - (kib as f64 / 1024.0) / top * (height - 2.0 * margin);
    let points: Vec<String> = samples
        .iter()
        .map(|(secs, kib)| format!("{:.1},{:.1}", x(*secs), y(*kib)))
        .collect();
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <rect x=\"{m}\" y=\"{m}\" width=\"{w:.1}\" height=\"{h:.1}\" fill=\"#eee\"/>\n\
         <polyline fill=\"none\" stroke=\"#1f6feb\" stroke-width=\"1.5\" points=\"{points}\"/>\n\
         <line x1=\"{m}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"black\"/>\n\
         <line x1=\"{m}\" y1=\"{m}\" x2=\"{m}\" y2=\"{b}\" stroke=\"black\"/>\n\
         <text x=\"{m}\" y=\"{t}\">fm-relay resident memory (MiB) under mixed load; warm-up shaded</text>\n\
         <text x=\"{r}\" y=\"{xl}\" text-anchor=\"end\">{minutes:.1} min</text>\n\
         <text x=\"{m}\" y=\"{xl}\">0</text>\n\
         <text x=\"{yl}\" y=\"{ty}\" text-anchor=\"end\">{top}</text>\n\
         <text x=\"{yl}\" y=\"{b}\" text-anchor=\"end\">0</text>\n",
        m = margin,
        w = x(warmup_secs) - margin,
        h = height - 2.0 * margin,
        points = points.join(" "),
        b = height - margin,
        r = width - margin,
        t = margin - 16.0,
        xl = height - margin + 18.0,
        minutes = last / 60.0,
        yl = margin - 6.0,
        ty = margin + 4.0,
    );
    svg.push_str("</svg>\n");
    svg
}

#[tokio::main]
async fn main() {
    let secs: u64 = env_or("SOAK_SECS", 1800);
    let warmup: u64 = env_or("SOAK_WARMUP_SECS", (secs / 6).min(120));
    let workers: u64 = env_or("SOAK_WORKERS", 16);
    let budget_kib: u64 = env_or("SOAK_GROWTH_BUDGET_KIB", 4096);

    let mut sim_config = SimConfig::instant();
    sim_config.default_model = ModelProfile {
        first_token_ms: 5,
        tokens_per_second: 400.0,
        answer_tokens: Some(30),
    };
    let sim = fm_sim::spawn(sim_config).await.unwrap();
    sim.set_faults(vec![
        FaultRule::always("cut@5".parse().unwrap())
            .in_region("us-east-1")
            .at_rate(0.1),
    ])
    .unwrap();
    let relay = RelayProcess::start(&sim.endpoint_url(), &[]);
    let addr = relay.addr.clone();
    eprintln!("soak: {secs} s of mixed traffic on {workers} connections, warm-up {warmup} s");

    let tally = Arc::new(Tally::default());
    let serial = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    fm_relay::provider::openai::install_crypto_provider();
    let http = reqwest::Client::new();
    let mut tasks = Vec::new();
    for worker in 0..workers {
        let (http, addr, tally, serial) =
            (http.clone(), addr.clone(), tally.clone(), serial.clone());
        tasks.push(tokio::spawn(async move {
            let mut round = worker;
            while Instant::now() < deadline {
                let serial = serial.fetch_add(1, Ordering::Relaxed);
                tally.requests.fetch_add(1, Ordering::Relaxed);
                let kind = round % 5;
                round += 1;
                let outcome = tokio::time::timeout(
                    Duration::from_secs(30),
                    one_request(&http, &addr, kind, serial, &tally),
                )
                .await;
                match outcome {
                    Ok(Ok(())) => {}
                    Ok(Err(what)) => tally.fail(what),
                    Err(_) => tally.fail(format!("kind {kind}: no answer within 30 s")),
                }
            }
        }));
    }
    let mut samples: Vec<(f64, u64)> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while Instant::now() < deadline {
        tick.tick().await;
        samples.push((started.elapsed().as_secs_f64(), relay.resident_kib()));
    }
    for task in tasks {
        task.await.unwrap();
    }
    // Everything closed: what the relay still holds.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let at_rest = relay.resident_kib();
    drop(relay);

    let after_warmup: Vec<u64> = samples
        .iter()
        .filter(|(secs, _)| *secs >= warmup as f64)
        .map(|(_, kib)| *kib)
        .collect();
    assert!(
        after_warmup.len() >= 6,
        "too few samples after the warm-up: run longer than SOAK_WARMUP_SECS"
    );
    let tenth = (after_warmup.len() / 10).max(3);
    let baseline = median(&mut after_warmup[..tenth].to_vec());
    let end = median(&mut after_warmup[after_warmup.len() - tenth..].to_vec());
    let peak = after_warmup.iter().copied().max().unwrap_or(0);
    let growth = end as i64 - baseline as i64;
    let requests = tally.requests.load(Ordering::Relaxed);
    let failed = tally.failed.load(Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();

    println!(
        "fm-relay soak: {secs} s, {workers} connections, mixed sync / SSE / WebSocket / cancelled / failover\n"
    );
    println!(
        "| seconds | requests | per second | failed | failovers seen | cancelled | RSS after warm-up (KiB) | at the end (KiB) | growth (KiB) | peak (KiB) | at rest (KiB) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {secs} | {requests} | {:.0} | {failed} | {} | {} | {baseline} | {end} | {growth:+} | {peak} | {at_rest} |",
        requests as f64 / elapsed,
        tally.failovers.load(Ordering::Relaxed),
        tally.cancelled.load(Ordering::Relaxed),
    );
    let step = (samples.len() / 12).max(1);
    let curve: Vec<String> = samples
        .iter()
        .step_by(step)
        .map(|(secs, kib)| format!("{secs:.0}s {:.1}", *kib as f64 / 1024.0))
        .collect();
    println!("\nRSS (MiB) over the run: {}", curve.join(", "));
    for failure in tally.failures.lock().unwrap().iter() {
        println!("failed: {failure}");
    }
    if let Ok(path) = std::env::var("SOAK_CSV") {
        let mut csv = String::from("seconds,rss_kib\n");
        for (secs, kib) in &samples {
            csv.push_str(&format!("{secs:.1},{kib}\n"));
        }
        std::fs::write(&path, csv).expect("SOAK_CSV is writable");
    }
    if let Ok(path) = std::env::var("SOAK_SVG") {
        std::fs::write(&path, plot(&samples, warmup as f64)).expect("SOAK_SVG is writable");
    }

    let mut broken = Vec::new();
    if growth > budget_kib as i64 {
        broken.push(format!(
            "memory grew {growth} KiB after the warm-up, budget {budget_kib} KiB (SOAK_GROWTH_BUDGET_KIB)"
        ));
    }
    if failed * 200 > requests {
        broken.push(format!(
            "{failed} of {requests} requests failed (over 0.5%)"
        ));
    }
    if requests == 0 || tally.failovers.load(Ordering::Relaxed) == 0 {
        broken.push("no traffic, or no failover seen: the mix did not run".into());
    }
    if !broken.is_empty() {
        eprintln!("soak failed: {}", broken.join("; "));
        std::process::exit(1);
    }
    println!("\nFlat: within {budget_kib} KiB of the post-warm-up level; {failed} failures.");
}
