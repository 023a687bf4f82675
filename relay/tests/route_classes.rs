//! The content classifier against the labelled evaluation set (`tests/data/route_classes.jsonl`,
//! 360 prompts written for this project, apart from the 480 it is trained on): its accuracy on
//! the 260 held out from all tuning may not fall below the floors here.
//! `FM_SHOW_MISSES=1` prints every prompt it gets wrong (for tuning on the `dev` split).
//! BENCHMARKS.md reports the accuracy per label and the confusion matrices (`cargo bench -p
//! fm-bench --bench routing`).

use fm_protocol::{ChatRequest, Complexity, Domain};
use fm_relay::routing::classify::{classify, score};
use serde_json::Value;

struct Sample {
    prompt: String,
    domain: Domain,
    complexity: Complexity,
    dev: bool,
}

fn samples() -> Vec<Sample> {
    include_str!("data/route_classes.jsonl")
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let value: Value = serde_json::from_str(line).expect("each line is JSON");
            Sample {
                prompt: value["prompt"].as_str().unwrap().to_string(),
                domain: serde_json::from_value(value["domain"].clone()).unwrap(),
                complexity: serde_json::from_value(value["complexity"].clone()).unwrap(),
                dev: value["split"] == "dev",
            }
        })
        .collect()
}

#[test]
fn the_classifier_reads_the_evaluation_set() {
    let samples = samples();
    assert!(samples.len() >= 300, "{} samples", samples.len());
    let show = std::env::var_os("FM_SHOW_MISSES").is_some();
    let (mut domain_hits, mut complexity_hits) = ([0usize; 2], [0usize; 2]);
    let mut counts = [0usize; 2];
    for sample in &samples {
        let class = classify(&ChatRequest::from_prompt(sample.prompt.clone()));
        let split = usize::from(!sample.dev);
        counts[split] += 1;
        domain_hits[split] += usize::from(class.domain == sample.domain);
        complexity_hits[split] += usize::from(class.complexity == sample.complexity);
        if show && (class.domain != sample.domain || class.complexity != sample.complexity) {
            let scores = score(&sample.prompt);
            println!(
                "{} want {:?}/{:?} got {:?}/{:?} {:?} {:.1}/{:.1}: {}",
                if sample.dev { "dev " } else { "test" },
                sample.domain,
                sample.complexity,
                class.domain,
                class.complexity,
                scores.domain,
                scores.high,
                scores.simple,
                sample.prompt.chars().take(160).collect::<String>()
            );
        }
    }
    let share = |hits: usize, split: usize| hits as f64 / counts[split] as f64;
    let (domain_test, complexity_test) = (share(domain_hits[1], 1), share(complexity_hits[1], 1));
    println!(
        "domain: dev {:.3} test {:.3}; complexity: dev {:.3} test {:.3}",
        share(domain_hits[0], 0),
        domain_test,
        share(complexity_hits[0], 0),
        complexity_test
    );
    assert!(
        domain_test >= 0.90,
        "domain accuracy on the held-out split: {domain_test:.3}"
    );
    assert!(
        complexity_test >= 0.80,
        "complexity accuracy on the held-out split: {complexity_test:.3}"
    );
}
