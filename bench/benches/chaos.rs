//! The chaos run of issue 4: steady mixed traffic (sync and streaming) through the relay while the
//! primary region throttles 20% of requests and then goes down completely for a minute.
//!
//! fm-sim stands in for Bedrock in two regions (it reads the region from each request's SigV4
//! signature); its fault schedule scripts the weather: from the start, 20% of primary-region
//! requests are throttled; after the first phase every primary-region request fails with 503 for
//! the outage phase; then the region recovers completely. The relay runs its
//! embedded defaults — retries, retry budget, breakers, adaptive rate limiting, cache — with one
//! model served from `us-east-1` and failing over to `us-west-2`. Every request has its own prompt,
//! so the cache never hides the upstream.
//!
//! Reported: the error rate clients saw (an error, a broken stream or a degraded answer all
//! count), latency and TTFT percentiles per phase, the calls the primary region received during
//! the outage (probes, not a storm), and how long after the recovery the traffic returned to it.
//!
//! Run: `cargo bench -p fm-bench --bench chaos` (env `CHAOS_RATE`, requests per second, default
//! 100; `CHAOS_PHASES`, seconds of throttling, outage and recovery, default `30,60,40`;
//! `CHAOS_QUOTA`, requests per second: instead of a random 20%, throttle the primary region above
//! this quota, as Bedrock does).

use std::time::{Duration, Instant};

use fm_protocol::{ChatResponse, ResponseSource, SseDecoder, StreamEvent};
use fm_relay::RelayConfig;
use fm_relay::config::{BedrockMode, FailoverTarget, ModelConfig, ProviderKind};
use fm_sim::{FaultRule, ModelProfile, SimConfig};
use futures_util::StreamExt;

const PRIMARY: &str = "us-east-1";
const SECONDARY: &str = "us-west-2";
const UPSTREAM: &str = "anthropic.chaos-v1:0";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Throttling,
    Outage,
    Recovered,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Throttling => "throttling",
            Phase::Outage => "primary down",
            Phase::Recovered => "recovered",
        }
    }
}

/// What one request saw.
#[derive(Debug, Clone)]
struct Sample {
    /// When it was sent, since the run started.
    sent: Duration,
    phase: Phase,
    ok: bool,
    latency: Duration,
    ttft: Option<Duration>,
    region: Option<String>,
    source: Option<ResponseSource>,
    attempts: u32,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rate: f64 = std::env::var("CHAOS_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100.0);
    let phases: Vec<u64> = std::env::var("CHAOS_PHASES")
        .unwrap_or_else(|_| "30,60,40".into())
        .split(',')
        .map(|p| {
            p.trim()
                .parse()
                .expect("CHAOS_PHASES: three whole numbers of seconds")
        })
        .collect();
    let [throttling, outage, recovered] = phases[..] else {
        panic!("CHAOS_PHASES needs three numbers: throttling, outage and recovery seconds");
    };
    let outage_start = Duration::from_secs(throttling);
    let outage_end = outage_start + Duration::from_secs(outage);
    let total = outage_end + Duration::from_secs(recovered);

    if std::env::var_os("RUST_LOG").is_some() {
        fm_relay::telemetry::init_logging();
    }
    let mut sim_config = SimConfig::instant();
    sim_config.default_model = ModelProfile {
        first_token_ms: 20,
        tokens_per_second: 500.0,
        answer_tokens: Some(24),
    };
    let sim = fm_sim::spawn(sim_config).await.unwrap();
    let mut config = RelayConfig::embedded_default();
    config.server.port = 0;
    config.bedrock.mode = BedrockMode::Endpoint;
    config.bedrock.endpoint = Some(sim.endpoint_url());
    config.default_model = "chat".into();
    // The default policy names the default config's models.
    config.routing.rules.clear();
    config.routes.clear();
    config.models = vec![ModelConfig {
        id: "chat".into(),
        provider: ProviderKind::Bedrock,
        upstream_id: Some(UPSTREAM.into()),
        region: PRIMARY.into(),
        endpoint: None,
        api_key_env: None,
        input_price_per_1k: 0.001,
        output_price_per_1k: 0.002,
        context_window: 200_000,
        tier: Default::default(),
        capabilities: Vec::new(),
        accepts_prefill: true,
        failover: vec![FailoverTarget {
            region: SECONDARY.into(),
            upstream_id: None,
            endpoint: None,
        }],
        fallback_models: Vec::new(),
        tokens_per_minute: None,
    }];
    let relay = fm_relay::start(config).await.unwrap();
    let base = relay.url();
    fm_relay::provider::openai::install_crypto_provider();
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();

    let quota: Option<u32> = std::env::var("CHAOS_QUOTA").ok().map(|q| {
        q.parse()
            .expect("CHAOS_QUOTA: a whole number of requests per second")
    });
    let throttling_rule = match quota {
        Some(quota) => FaultRule {
            above_per_sec: Some(quota),
            ..FaultRule::always("throttle".parse().unwrap()).in_region(PRIMARY)
        },
        None => FaultRule::always("throttle".parse().unwrap())
            .in_region(PRIMARY)
            .at_rate(0.2),
    };
    sim.set_faults(vec![
        FaultRule {
            for_ms: Some((throttling + outage) * 1000),
            ..throttling_rule
        },
        FaultRule {
            after_ms: outage_start.as_millis() as u64,
            for_ms: Some(outage * 1000),
            ..FaultRule::always("unavailable".parse().unwrap()).in_region(PRIMARY)
        },
    ])
    .unwrap();
    let started = Instant::now();
    eprintln!(
        "chaos run: {rate} requests/s for {}s ({throttling}s throttling {}, {outage}s outage, \
         {recovered}s recovered)",
        total.as_secs(),
        quota.map_or("20%".to_string(), |q| format!("above {q}/s")),
    );

    let primary_calls = |sim: &fm_sim::SimHandle| {
        sim.stats()
            .requests_by_region
            .get(PRIMARY)
            .copied()
            .unwrap_or(0)
    };
    let mut tasks = Vec::new();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut primary_at_outage = (0, 0);
    let mut next = Duration::ZERO;
    let mut index: u64 = 0;
    while next < total {
        tokio::time::sleep_until((started + next).into()).await;
        if primary_at_outage.0 == 0 && next >= outage_start {
            primary_at_outage.0 = primary_calls(&sim).max(1);
        }
        if primary_at_outage.1 == 0 && next >= outage_end {
            primary_at_outage.1 = primary_calls(&sim).max(1);
        }
        let phase = if next < outage_start {
            Phase::Throttling
        } else if next < outage_end {
            Phase::Outage
        } else {
            Phase::Recovered
        };
        let http = http.clone();
        let base = base.clone();
        let sent = next;
        let stream = index % 2 == 1;
        tasks.push(tokio::spawn(async move {
            let prompt = format!("Request {index}: explain failover in one paragraph.");
            one_request(&http, &base, &prompt, stream, sent, phase).await
        }));
        index += 1;
        next += interval;
    }
    let mut samples = Vec::with_capacity(tasks.len());
    for task in tasks {
        samples.push(task.await.unwrap());
    }
    report(&samples, primary_at_outage, outage_start, outage_end);
    drop(relay);
}

async fn one_request(
    http: &reqwest::Client,
    base: &str,
    prompt: &str,
    stream: bool,
    sent: Duration,
    phase: Phase,
) -> Sample {
    let body = serde_json::json!({"messages": [{"role": "user", "content": prompt}]}).to_string();
    let start = Instant::now();
    let mut sample = Sample {
        sent,
        phase,
        ok: false,
        latency: Duration::ZERO,
        ttft: None,
        region: None,
        source: None,
        attempts: 0,
    };
    let path = if stream {
        "/v1/chat/stream"
    } else {
        "/v1/chat"
    };
    let response = http
        .post(format!("{base}{path}"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await;
    let Ok(response) = response else {
        sample.latency = start.elapsed();
        return sample;
    };
    if response.status() != 200 {
        sample.latency = start.elapsed();
        return sample;
    }
    if !stream {
        if let Ok(answer) = response.json::<ChatResponse>().await {
            sample.ok = !answer.degraded;
            sample.region = Some(answer.route.region);
            sample.source = Some(answer.route.source);
            sample.attempts = answer.route.attempts;
        }
        sample.latency = start.elapsed();
        return sample;
    }
    let mut decoder = SseDecoder::new();
    let mut body = response.bytes_stream();
    while let Some(Ok(chunk)) = body.next().await {
        for frame in decoder.feed(&chunk).expect("the relay's events are small") {
            let Ok(event) = frame.stream_event() else {
                continue;
            };
            match event {
                StreamEvent::TextDelta { .. } => {
                    sample.ttft.get_or_insert_with(|| start.elapsed());
                }
                StreamEvent::Done {
                    route, degraded, ..
                } => {
                    sample.ok = !degraded;
                    sample.region = Some(route.region);
                    sample.source = Some(route.source);
                    sample.attempts = route.attempts;
                }
                _ => {}
            }
        }
    }
    sample.latency = start.elapsed();
    sample
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[index.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
}

fn report(
    samples: &[Sample],
    primary_at_outage: (u64, u64),
    outage_start: Duration,
    outage_end: Duration,
) {
    println!(
        "| phase | requests | errors | error rate | p50 ms | p99 ms | TTFT p50 ms | TTFT p99 ms | from primary | from secondary | mean attempts |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let phases = [
        Some(Phase::Throttling),
        Some(Phase::Outage),
        Some(Phase::Recovered),
        None,
    ];
    for phase in phases {
        let chosen: Vec<&Sample> = samples
            .iter()
            .filter(|s| phase.is_none_or(|p| s.phase == p))
            .collect();
        let errors = chosen.iter().filter(|s| !s.ok).count();
        let mut latencies: Vec<Duration> = chosen.iter().map(|s| s.latency).collect();
        latencies.sort();
        let mut ttfts: Vec<Duration> = chosen.iter().filter_map(|s| s.ttft).collect();
        ttfts.sort();
        let from = |region: &str| {
            chosen
                .iter()
                .filter(|s| s.ok && s.region.as_deref() == Some(region))
                .count()
        };
        let attempts: u32 = chosen.iter().map(|s| s.attempts).sum();
        println!(
            "| {} | {} | {} | {:.3}% | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {:.2} |",
            phase.map_or("whole run", Phase::name),
            chosen.len(),
            errors,
            100.0 * errors as f64 / chosen.len().max(1) as f64,
            percentile(&latencies, 50.0),
            percentile(&latencies, 99.0),
            percentile(&ttfts, 50.0),
            percentile(&ttfts, 99.0),
            from(PRIMARY),
            from(SECONDARY),
            attempts as f64 / chosen.len().max(1) as f64,
        );
    }
    let outage_requests = samples.iter().filter(|s| s.phase == Phase::Outage).count();
    let primary_calls = primary_at_outage.1.saturating_sub(primary_at_outage.0);
    println!();
    println!(
        "Calls the primary region received during the {}s outage: {primary_calls} \
         (for {outage_requests} requests; {:.1} per second)",
        (outage_end - outage_start).as_secs(),
        primary_calls as f64 / (outage_end - outage_start).as_secs_f64()
    );
    let by_primary = |s: &Sample| s.ok && s.region.as_deref() == Some(PRIMARY);
    let first_back = samples
        .iter()
        .filter(|s| s.sent >= outage_end)
        .find(|s| by_primary(s))
        .map(|s| s.sent - outage_end);
    // Back for good: the first second after which at least 90% of every later second's answers
    // came from the primary.
    let seconds_after = samples
        .iter()
        .filter(|s| s.sent >= outage_end)
        .map(|s| (s.sent - outage_end).as_secs())
        .max()
        .unwrap_or(0);
    let share = |second: u64| {
        let in_second: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.sent >= outage_end && (s.sent - outage_end).as_secs() == second)
            .collect();
        in_second.iter().filter(|s| by_primary(s)).count() as f64 / in_second.len().max(1) as f64
    };
    let settled =
        (0..=seconds_after).find(|&start| (start..=seconds_after).all(|s| share(s) >= 0.9));
    println!(
        "Back to the primary after recovery: first answer {}, steady (>= 90% per second) after {}",
        first_back.map_or("never".into(), |d| format!("{:.1} s", d.as_secs_f64())),
        settled.map_or("never".into(), |s| format!("{s} s")),
    );
    let stale_or_degraded = samples
        .iter()
        .filter(|s| {
            matches!(
                s.source,
                Some(ResponseSource::Cache | ResponseSource::Degraded)
            )
        })
        .count();
    println!("Answers from the cache or degraded: {stale_or_degraded}");
}
