//! Document jobs through the embedded backend (SQLite queue, local object folder): jobs per
//! second with fm-sim answering at a fixed latency, and the time from submit to a worker taking
//! the job (p50, p99) at a rate well under capacity. The load to carry is 50 000 documents a day
//! (0.58 a second).
//!
//! `cargo bench -p fm-bench --bench jobs` (env: JOBS_COUNT, default 2000; JOBS_WORKERS, default
//! 32; JOBS_LATENCY_MS, the sim's time to answer, default 50).

use std::time::{Duration, Instant};

use fm_protocol::{JobInfo, JobList, JobStatus};
use fm_relay::RelayConfig;
use fm_relay::config::{BedrockMode, ModelConfig, ProviderKind};
use fm_sim::{ModelProfile, SimConfig};
use serde_json::json;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DAILY_LOAD_PER_SEC: f64 = 50_000.0 / 86_400.0;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn submit(http: &reqwest::Client, base: &str, n: usize) -> String {
    let response = http
        .post(format!("{base}/v1/jobs"))
        .header("content-type", "application/json")
        .body(
            json!({"analysis_type": "summarize", "text": format!("Report {n}: the quarter went well.")})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    response.json::<JobInfo>().await.unwrap().job_id
}

/// Every job of the relay, from its list.
async fn all_jobs(http: &reqwest::Client, base: &str) -> Vec<JobInfo> {
    let mut jobs = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let mut url = format!("{base}/v1/jobs?limit=100");
        if let Some(cursor) = &before {
            url.push_str(&format!("&before={cursor}"));
        }
        let page: JobList = http.get(url).send().await.unwrap().json().await.unwrap();
        jobs.extend(page.jobs);
        match page.next_before {
            Some(cursor) => before = Some(cursor),
            None => return jobs,
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let count: usize = env_or("JOBS_COUNT", 2000);
    let workers: usize = env_or("JOBS_WORKERS", 32);
    let latency_ms: u64 = env_or("JOBS_LATENCY_MS", 50);
    let mut sim_config = SimConfig::instant();
    sim_config.default_model = ModelProfile {
        first_token_ms: latency_ms,
        tokens_per_second: 0.0,
        answer_tokens: Some(40),
    };
    let sim = fm_sim::spawn(sim_config).await.unwrap();
    let dir = std::env::temp_dir().join(format!("fm-bench-jobs-{}", std::process::id()));
    let mut config = RelayConfig::embedded_default();
    config.server.port = 0;
    config.bedrock.mode = BedrockMode::Endpoint;
    config.bedrock.endpoint = Some(sim.endpoint_url());
    config.limits.data_dir = dir.clone();
    config.auth.keys_file = dir.join("keys.toml");
    config.cache.enabled = false;
    config.default_model = "doc".into();
    config.routing.rules.clear();
    config.routes.clear();
    config.models = vec![ModelConfig {
        id: "doc".into(),
        provider: ProviderKind::Bedrock,
        upstream_id: Some("anthropic.doc-v1:0".into()),
        region: "us-east-1".into(),
        endpoint: None,
        api_key_env: None,
        input_price_per_1k: 0.001,
        output_price_per_1k: 0.002,
        context_window: 200_000,
        tier: Default::default(),
        capabilities: Vec::new(),
        accepts_prefill: false,
        failover: Vec::new(),
        fallback_models: Vec::new(),
        tokens_per_minute: None,
    }];
    config.jobs.workers = workers;
    config.jobs.max_queued_per_key = u32::try_from(count).unwrap_or(u32::MAX) + 10;
    config.jobs.poll_ms = 100;
    let relay = fm_relay::start(config).await.unwrap();
    let base = relay.url();
    fm_relay::provider::openai::install_crypto_provider();
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .unwrap();

    // 1. Throughput: the whole batch submitted at once, then run to the end.
    let start = Instant::now();
    let mut submitters = Vec::new();
    for part in 0..8 {
        let (http, base) = (http.clone(), base.clone());
        submitters.push(tokio::spawn(async move {
            for n in (part..count).step_by(8) {
                submit(&http, &base, n).await;
            }
        }));
    }
    for submitter in submitters {
        submitter.await.unwrap();
    }
    let submitted = start.elapsed();
    // Whether any job has `status`.
    let any = |status: &'static str| {
        let request = http.get(format!("{base}/v1/jobs?status={status}&limit=1"));
        async move {
            let page: JobList = request.send().await.unwrap().json().await.unwrap();
            !page.jobs.is_empty()
        }
    };
    loop {
        if !any("QUEUED").await && !any("RUNNING").await && any("COMPLETED").await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let jobs = all_jobs(&http, &base).await;
    assert_eq!(jobs.len(), count);
    assert!(jobs.iter().all(|j| j.status == JobStatus::Completed));
    let first = jobs.iter().map(|j| j.created_at).min().unwrap();
    let last = jobs.iter().filter_map(|j| j.finished_at).max().unwrap();
    let span_s = (last - first) as f64 / 1000.0;
    let throughput = count as f64 / span_s;
    println!("## Document jobs (embedded backend)\n");
    println!(
        "{count} jobs, {workers} workers, fm-sim answering in {latency_ms} ms: submitted in {:.2} s, all completed {span_s:.2} s after the first was submitted",
        submitted.as_secs_f64()
    );
    println!(
        "\n| what | figure |\n|---|---|\n| jobs per second | **{throughput:.0}** |\n| the ceiling the sim's latency sets ({workers} workers / {latency_ms} ms) | {:.0} |\n| times the 50 000 a day (0.58/s) load | **{:.0}x** |",
        workers as f64 * 1000.0 / latency_ms as f64,
        throughput / DAILY_LOAD_PER_SEC
    );

    // 2. Pick-up time at a steady rate under capacity: submit to a worker taking the job.
    let rate = (throughput / 4.0).clamp(1.0, 200.0);
    let paced = 400.min(count);
    let mut ids = Vec::with_capacity(paced);
    let gap = Duration::from_secs_f64(1.0 / rate);
    let mut next = tokio::time::Instant::now();
    for n in 0..paced {
        tokio::time::sleep_until(next).await;
        next += gap;
        ids.push(submit(&http, &base, count + n).await);
    }
    let mut waits = Vec::with_capacity(paced);
    for id in &ids {
        let job = loop {
            let job: JobInfo = http
                .get(format!("{base}/v1/jobs/{id}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if job.started_at.is_some() {
                break job;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        waits.push((job.started_at.unwrap() - job.created_at) as f64);
    }
    waits.sort_by(f64::total_cmp);
    println!(
        "\nSubmit to pick-up, {paced} jobs at {rate:.0}/s (a quarter of the throughput):\n\n| p50 ms | p99 ms | max ms |\n|---|---|---|\n| {:.0} | {:.0} | {:.0} |",
        percentile(&waits, 50.0),
        percentile(&waits, 99.0),
        waits.last().unwrap()
    );
    relay.begin_shutdown();
    relay.stopped().await;
    let _ = std::fs::remove_dir_all(dir);
}
