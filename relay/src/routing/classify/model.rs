//! The classifier's linear model: softmax regression over four domains and logistic regression
//! for complexity, on features of a text — the cue scores of the hand-written lexicon and the
//! text's shapes (dense), and the words and word pairs it contains (sparse, the vocabulary of
//! the training set). Trained when first used, in a few milliseconds, from the labelled prompts
//! shipped beside it (`train.jsonl`, 480 prompts written for this project and never part of the
//! evaluation set): deterministic (a fixed order, no threads), so every process has the same
//! weights.

use fm_protocol::{Complexity, Domain};
use rustc_hash::FxHashMap;

use super::{Scores, Shapes, scan};

/// The training prompts, one JSON object per line: `prompt`, `domain`, `complexity`.
const TRAINING_SET: &str = include_str!("train.jsonl");

/// Dense features: the lexicon's scores and the text's shapes, scaled to about 0-1.
pub const DENSE: usize = 16;

/// A word or pair in fewer training prompts than this is not in the vocabulary.
const MIN_COUNT: u32 = 2;
const EPOCHS: usize = 40;
const LEARNING_RATE: f32 = 0.2;
const L2: f32 = 1e-4;

/// A text's features: the dense ones, and the vocabulary indices of its words and pairs.
#[derive(Debug, Default)]
pub struct Features {
    pub dense: [f32; DENSE],
    pub sparse: Vec<u32>,
}

/// Weights of one output: per dense feature, per vocabulary entry, and a bias.
#[derive(Debug, Clone)]
struct Output {
    dense: [f32; DENSE],
    sparse: Vec<f32>,
    bias: f32,
}

impl Output {
    fn new(vocabulary: usize) -> Output {
        Output {
            dense: [0.0; DENSE],
            sparse: vec![0.0; vocabulary],
            bias: 0.0,
        }
    }

    fn score(&self, features: &Features) -> f32 {
        let dense: f32 = self
            .dense
            .iter()
            .zip(&features.dense)
            .map(|(w, x)| w * x)
            .sum();
        let sparse: f32 = features
            .sparse
            .iter()
            .map(|&i| self.sparse[i as usize])
            .sum();
        self.bias + dense + sparse * sparse_scale(features)
    }

    /// One gradient step of `gradient` (the loss's derivative by this output's score).
    fn step(&mut self, features: &Features, gradient: f32, rate: f32) {
        for (w, x) in self.dense.iter_mut().zip(&features.dense) {
            *w -= rate * (gradient * x + L2 * *w);
        }
        let scale = sparse_scale(features);
        for &i in &features.sparse {
            let w = &mut self.sparse[i as usize];
            *w -= rate * (gradient * scale + L2 * *w);
        }
        self.bias -= rate * gradient;
    }
}

/// Long texts have many words: each counts for less.
fn sparse_scale(features: &Features) -> f32 {
    1.0 / (features.sparse.len().max(1) as f32).sqrt()
}

/// The trained model.
#[derive(Debug)]
pub struct Model {
    vocabulary: FxHashMap<String, u32>,
    domains: [Output; 4],
    complexity: Output,
}

impl Model {
    /// Trains the model on the shipped training set.
    pub fn train() -> Model {
        let samples: Vec<(String, usize, bool)> = TRAINING_SET
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter_map(|value| {
                let prompt = value["prompt"].as_str()?.to_string();
                let domain: Domain = serde_json::from_value(value["domain"].clone()).ok()?;
                let complexity: Complexity =
                    serde_json::from_value(value["complexity"].clone()).ok()?;
                Some((prompt, super::index(domain), complexity == Complexity::High))
            })
            .collect();
        // The vocabulary: words and pairs in at least MIN_COUNT prompts, in first-seen order.
        let mut counts: FxHashMap<String, u32> = FxHashMap::default();
        let mut order = Vec::new();
        for (prompt, _, _) in &samples {
            let mut seen = rustc_hash::FxHashSet::default();
            scan(super::bounded(prompt), |term| {
                if seen.insert(term.to_string()) {
                    let count = counts.entry(term.to_string()).or_insert(0);
                    if *count == 0 {
                        order.push(term.to_string());
                    }
                    *count += 1;
                }
            });
        }
        let vocabulary: FxHashMap<String, u32> = order
            .into_iter()
            .filter(|term| counts[term] >= MIN_COUNT)
            .enumerate()
            .map(|(index, term)| (term, index as u32))
            .collect();
        let mut model = Model {
            domains: std::array::from_fn(|_| Output::new(vocabulary.len())),
            complexity: Output::new(vocabulary.len()),
            vocabulary,
        };
        let examples: Vec<(Features, usize, bool)> = samples
            .iter()
            .map(|(prompt, domain, high)| (model.features(prompt), *domain, *high))
            .collect();
        // A fixed permutation per epoch (a linear congruential walk): the same weights every time.
        let n = examples.len();
        for epoch in 0..EPOCHS {
            let rate = LEARNING_RATE / (1.0 + epoch as f32 * 0.1);
            let stride = [7usize, 11, 13, 17][epoch % 4];
            for k in 0..n {
                let (features, domain, high) = &examples[(k * stride + epoch) % n];
                let probabilities = softmax(model.domains.each_ref().map(|o| o.score(features)));
                for (class, output) in model.domains.iter_mut().enumerate() {
                    let target = if class == *domain { 1.0 } else { 0.0 };
                    output.step(features, probabilities[class] - target, rate);
                }
                let p = sigmoid(model.complexity.score(features));
                let target = if *high { 1.0 } else { 0.0 };
                model.complexity.step(features, p - target, rate);
            }
        }
        model
    }

    /// The features of `text`.
    pub fn features(&self, text: &str) -> Features {
        let mut sparse = Vec::new();
        let scores = scan(text, |term| {
            if let Some(&index) = self.vocabulary.get(term) {
                sparse.push(index);
            }
        });
        sparse.sort_unstable();
        sparse.dedup();
        Features {
            dense: dense(&scores.0, &scores.1),
            sparse,
        }
    }

    /// The label of `features`.
    pub fn label(&self, features: &Features) -> (Domain, Complexity) {
        let scores = self.domains.each_ref().map(|o| o.score(features));
        let best = (0..4).fold(0, |best, i| if scores[i] > scores[best] { i } else { best });
        let complexity = match self.complexity.score(features) > 0.0 {
            true => Complexity::High,
            false => Complexity::Simple,
        };
        (Domain::ALL[best], complexity)
    }
}

fn dense(scores: &Scores, shapes: &Shapes) -> [f32; DENSE] {
    let [code, legal, math, general] = scores.domain;
    [
        code / 8.0,
        legal / 8.0,
        math / 8.0,
        general / 8.0,
        scores.high / 6.0,
        scores.simple / 3.0,
        shapes.code / 8.0,
        shapes.math / 8.0,
        shapes.algebra.min(6) as f32 / 3.0,
        shapes.list_items.min(8) as f32 / 4.0,
        shapes.code_lines.min(20) as f32 / 10.0,
        scores.numbers.min(8) as f32 / 4.0,
        (1.0 + scores.words as f32).ln() / 5.0,
        scores.questions.min(5) as f32 / 3.0,
        f32::from(u8::from(scores.words <= 15)),
        1.0,
    ]
}

fn softmax(scores: [f32; 4]) -> [f32; 4] {
    let max = scores.iter().copied().fold(f32::MIN, f32::max);
    let exp = scores.map(|s| (s - max).exp());
    let sum: f32 = exp.iter().sum();
    exp.map(|e| e / sum)
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}
