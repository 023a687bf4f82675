//! The routing policy's cost and the content classifier's quality:
//!
//! 1. **Classifier** — over the labelled evaluation set (`relay/tests/data/route_classes.jsonl`,
//!    360 prompts, 260 of them held out from tuning): accuracy per label, the domain and
//!    complexity confusion matrices, and the time to classify one prompt (p50, p99, max).
//! 2. **Route decision** — the embedded default's hybrid policy (budget, quality, metric, hint
//!    and content rules; the purpose-built routes) deciding requests as `POST /v1/chat` gets
//!    them: the evaluation prompts (which the content rule classifies), with a hint, with a named
//!    model, and on `/v1/analyze`; p50, p99 and max per decision.
//!
//! Run: `cargo bench -p fm-bench --bench routing` (env `BENCH_ROUNDS`, default 20: passes over
//! the prompts). Prints Markdown tables for BENCHMARKS.md.

use std::time::{Duration, Instant};

use fm_protocol::{ChatRequest, Complexity, Domain};
use fm_relay::RelayConfig;
use fm_relay::config::BedrockMode;
use fm_relay::routing::RouteInput;
use fm_relay::routing::classify::{classify, classify_by_lexicon};
use serde_json::Value;

struct Sample {
    prompt: String,
    domain: Domain,
    complexity: Complexity,
    held_out: bool,
}

fn samples() -> Vec<Sample> {
    include_str!("../../relay/tests/data/route_classes.jsonl")
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let value: Value = serde_json::from_str(line).expect("JSON lines");
            Sample {
                prompt: value["prompt"].as_str().unwrap_or_default().to_string(),
                domain: serde_json::from_value(value["domain"].clone()).expect("a domain"),
                complexity: serde_json::from_value(value["complexity"].clone())
                    .expect("a complexity"),
                held_out: value["split"] != "dev",
            }
        })
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn micros(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e6)
}

fn timing_row(name: &str, mut times: Vec<Duration>) -> String {
    times.sort();
    format!(
        "| {name} | {} | {} | {} | {} |",
        times.len(),
        micros(percentile(&times, 0.5)),
        micros(percentile(&times, 0.99)),
        micros(*times.last().unwrap_or(&Duration::ZERO)),
    )
}

fn confusion<L: Copy + PartialEq>(
    labels: &[L],
    name: impl Fn(L) -> &'static str,
    pairs: &[(L, L)],
) -> String {
    let mut out = String::from("| labelled \\ read as |");
    for label in labels {
        out.push_str(&format!(" {} |", name(*label)));
    }
    out.push_str(" recall |\n|---|");
    out.push_str(&"---|".repeat(labels.len() + 1));
    out.push('\n');
    for want in labels {
        let row: Vec<usize> = labels
            .iter()
            .map(|got| pairs.iter().filter(|(w, g)| w == want && g == got).count())
            .collect();
        let total: usize = row.iter().sum();
        let hits = row[labels.iter().position(|l| l == want).unwrap_or(0)];
        out.push_str(&format!("| {} |", name(*want)));
        for count in &row {
            out.push_str(&format!(" {count} |"));
        }
        out.push_str(&format!(
            " {:.1}% |\n",
            100.0 * hits as f64 / total.max(1) as f64
        ));
    }
    out
}

fn accuracy<L: PartialEq + Copy>(pairs: &[(L, L)]) -> String {
    let hits = pairs.iter().filter(|(w, g)| w == g).count();
    format!(
        "{:.1}% ({hits}/{})",
        100.0 * hits as f64 / pairs.len().max(1) as f64,
        pairs.len()
    )
}

fn classifier_report(samples: &[Sample], rounds: usize) {
    let started = Instant::now();
    fm_relay::routing::classify::warm_up();
    let training_ms = started.elapsed().as_secs_f64() * 1e3;
    let mut domains = (Vec::new(), Vec::new());
    let mut complexities = (Vec::new(), Vec::new());
    for sample in samples {
        let class = classify(&ChatRequest::from_prompt(sample.prompt.clone()));
        let (d, c) = match sample.held_out {
            true => (&mut domains.1, &mut complexities.1),
            false => (&mut domains.0, &mut complexities.0),
        };
        d.push((sample.domain, class.domain));
        c.push((sample.complexity, class.complexity));
    }
    let lexicon: Vec<_> = samples
        .iter()
        .filter(|s| s.held_out)
        .map(|s| {
            let class = classify_by_lexicon(&s.prompt);
            ((s.domain, class.domain), (s.complexity, class.complexity))
        })
        .collect();
    let lexicon_domains: Vec<_> = lexicon.iter().map(|(d, _)| *d).collect();
    let lexicon_complexities: Vec<_> = lexicon.iter().map(|(_, c)| *c).collect();
    let all_domains: Vec<_> = domains.0.iter().chain(&domains.1).copied().collect();
    let all_complexities: Vec<_> = complexities
        .0
        .iter()
        .chain(&complexities.1)
        .copied()
        .collect();
    println!("### Classifier accuracy\n");
    println!("Training the model on first use: {training_ms:.1} ms.\n");
    println!("| split | prompts | domain | complexity |\n|---|---|---|---|");
    for (name, d, c) in [
        ("tuning (dev)", &domains.0, &complexities.0),
        ("held out (test)", &domains.1, &complexities.1),
        ("all", &all_domains, &all_complexities),
        (
            "held out, the lexicon alone (no model)",
            &lexicon_domains,
            &lexicon_complexities,
        ),
    ] {
        println!(
            "| {name} | {} | {} | {} |",
            d.len(),
            accuracy(d),
            accuracy(c)
        );
    }
    println!("\nDomain, held-out prompts:\n");
    println!("{}", confusion(&Domain::ALL, Domain::as_str, &domains.1));
    println!("Complexity, held-out prompts:\n");
    println!(
        "{}",
        confusion(&Complexity::ALL, Complexity::as_str, &complexities.1)
    );

    let requests: Vec<ChatRequest> = samples
        .iter()
        .map(|s| ChatRequest::from_prompt(s.prompt.clone()))
        .collect();
    let mut times = Vec::with_capacity(requests.len() * rounds);
    for _ in 0..rounds {
        for request in &requests {
            let start = Instant::now();
            std::hint::black_box(classify(std::hint::black_box(request)));
            times.push(start.elapsed());
        }
    }
    let longest = samples.iter().map(|s| s.prompt.len()).max().unwrap_or(0);
    println!("### Classifier time (prompts of 11 to {longest} bytes)\n");
    println!("| what | calls | p50 µs | p99 µs | max µs |\n|---|---|---|---|---|");
    println!("{}", timing_row("classify one prompt", times));
}

async fn decision_report(samples: &[Sample], rounds: usize) {
    let mut config = RelayConfig::embedded_default();
    config.bedrock.mode = BedrockMode::Endpoint;
    config.bedrock.endpoint = Some("http://127.0.0.1:9".into());
    config.cache.enabled = false;
    config.limits.data_dir =
        std::env::temp_dir().join(format!("fm-bench-routing-{}", std::process::id()));
    config.auth.keys_file = config.limits.data_dir.join("keys.toml");
    let assembled = fm_relay::server::assemble(config)
        .await
        .expect("the relay assembles");
    let state = assembled.state;
    let caller = state.keys().identify(None).expect("open mode");
    let prompts: Vec<ChatRequest> = samples
        .iter()
        .map(|s| ChatRequest::from_prompt(s.prompt.clone()))
        .collect();
    let hinted: Vec<ChatRequest> = prompts
        .iter()
        .map(|r| ChatRequest {
            routing_hint: Some("fast".into()),
            ..r.clone()
        })
        .collect();
    let named: Vec<ChatRequest> = prompts
        .iter()
        .map(|r| ChatRequest {
            model: Some("claude-sonnet-4".into()),
            ..r.clone()
        })
        .collect();
    println!("### Route decision, the embedded default policy\n");
    println!("| requests | decisions | p50 µs | p99 µs | max µs |\n|---|---|---|---|---|");
    let mut everything = Vec::new();
    for (name, path, requests) in [
        (
            "chat, no hint (content rule classifies)",
            "/v1/chat",
            &prompts,
        ),
        ("chat, hint `fast`", "/v1/chat", &hinted),
        ("chat, a named model", "/v1/chat", &named),
        ("`/v1/analyze`", "/v1/analyze", &prompts),
    ] {
        let mut times = Vec::with_capacity(requests.len() * rounds);
        for _ in 0..rounds {
            for request in requests {
                let start = Instant::now();
                let decision = state.routing().decide(&RouteInput {
                    request,
                    path,
                    hint_header: None,
                    key: caller.key(),
                });
                std::hint::black_box(decision.expect("decided"));
                times.push(start.elapsed());
            }
        }
        everything.extend_from_slice(&times);
        println!("{}", timing_row(name, times));
    }
    println!("{}", timing_row("**all**", everything));
    let _ = std::fs::remove_dir_all(
        std::env::temp_dir().join(format!("fm-bench-routing-{}", std::process::id())),
    );
}

fn main() {
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let samples = samples();
    classifier_report(&samples, rounds);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(decision_report(&samples, rounds));
}
