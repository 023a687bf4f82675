//! The latency history behind the dashboard: one [`Sample`] per finished request (the browser's
//! time to first token and total time, and the relay's own figures for the same request from its
//! `done` event), kept in `localStorage` under [`HISTORY_KEY`], newest last and at most
//! [`MAX_SAMPLES`] of them; and the per-model summaries the dashboard shows.

use std::collections::BTreeMap;

use fm_protocol::Percentiles;
use leptos::prelude::*;
use serde::{Deserialize, Serialize};

use crate::api::Transport;
use crate::store::local_storage;

/// Where the history is saved.
pub const HISTORY_KEY: &str = "fm-relay.ttft-history.v1";

/// How many requests are kept; the oldest go first.
pub const MAX_SAMPLES: usize = 1000;

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
    Done,
    Stopped,
    Failed,
}

/// One request as measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// When it was sent, in milliseconds since the Unix epoch (`Date.now()`).
    pub at_ms: f64,
    /// The model that answered (or was asked, when none did).
    pub model: String,
    pub transport: Transport,
    pub ending: Ending,
    /// Browser-side time to the first text painted.
    pub ttft_ms: Option<f64>,
    /// Browser-side time to the end of a complete answer.
    pub total_ms: Option<f64>,
    /// The relay's time to first token for this request.
    pub server_ttft_ms: Option<f64>,
    /// The relay's total time for this request.
    pub server_total_ms: Option<f64>,
}

/// The history, shared by the chat page (which adds to it) and the dashboard (which reads it).
#[derive(Debug, Clone, Copy)]
pub struct History(pub RwSignal<Vec<Sample>>);

impl History {
    /// The saved history.
    pub fn load() -> History {
        let samples = local_storage()
            .and_then(|storage| storage.get_item(HISTORY_KEY).ok().flatten())
            .and_then(|json| serde_json::from_str::<Vec<Sample>>(&json).ok())
            .unwrap_or_default();
        History(RwSignal::new(samples))
    }

    /// Adds a request and saves the history (best effort: without storage it lasts the page).
    pub fn record(&self, sample: Sample) {
        self.0.update(|samples| {
            samples.push(sample);
            if samples.len() > MAX_SAMPLES {
                samples.drain(..samples.len() - MAX_SAMPLES);
            }
        });
        self.0.with_untracked(|samples| {
            if let (Some(storage), Ok(json)) = (local_storage(), serde_json::to_string(samples)) {
                let _ = storage.set_item(HISTORY_KEY, &json);
            }
        });
    }

    pub fn clear(&self) {
        self.0.set(Vec::new());
        if let Some(storage) = local_storage() {
            let _ = storage.remove_item(HISTORY_KEY);
        }
    }
}

/// One model's figures over a window, browser and relay side by side.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSummary {
    pub model: String,
    /// Requests in the window, whatever their ending.
    pub requests: usize,
    pub ttft: Option<Percentiles>,
    pub total: Option<Percentiles>,
    /// The relay's figures for the same requests, from their `done` events.
    pub server_ttft: Option<Percentiles>,
    pub server_total: Option<Percentiles>,
    /// Median of browser TTFT minus relay TTFT, request by request: the network and the page.
    pub ttft_gap_median: Option<f64>,
}

/// Per-model summaries of the samples sent at or after `since_ms`, by model name.
pub fn summarize(samples: &[Sample], since_ms: f64) -> Vec<ModelSummary> {
    let mut by_model: BTreeMap<&str, Vec<&Sample>> = BTreeMap::new();
    for sample in samples.iter().filter(|s| s.at_ms >= since_ms) {
        by_model.entry(&sample.model).or_default().push(sample);
    }
    by_model
        .into_iter()
        .map(|(model, samples)| {
            let figures = |pick: fn(&Sample) -> Option<f64>| {
                Percentiles::nearest_rank(samples.iter().filter_map(|s| pick(s)).collect())
            };
            let gaps: Vec<f64> = samples
                .iter()
                .filter_map(|s| Some(s.ttft_ms? - s.server_ttft_ms?))
                .collect();
            ModelSummary {
                model: model.to_string(),
                requests: samples.len(),
                ttft: figures(|s| s.ttft_ms),
                total: figures(|s| s.total_ms),
                server_ttft: figures(|s| s.server_ttft_ms),
                server_total: figures(|s| s.server_total_ms),
                ttft_gap_median: Percentiles::nearest_rank(gaps).map(|p| p.p50),
            }
        })
        .collect()
}

#[cfg(all(test, target_arch = "wasm32"))]
mod tests {
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn sample(at_ms: f64, model: &str, ttft: f64, server_ttft: f64) -> Sample {
        Sample {
            at_ms,
            model: model.into(),
            transport: Transport::Sse,
            ending: Ending::Done,
            ttft_ms: Some(ttft),
            total_ms: Some(ttft * 2.0),
            server_ttft_ms: Some(server_ttft),
            server_total_ms: Some(server_ttft * 2.0),
        }
    }

    #[test]
    fn summaries_split_by_model_and_window_and_pair_each_request() {
        let samples = vec![
            sample(0.0, "old", 500.0, 1.0),
            sample(10.0, "a", 30.0, 20.0),
            sample(11.0, "a", 50.0, 44.0),
            sample(12.0, "a", 40.0, 38.0),
            sample(13.0, "b", 9.0, 8.0),
        ];
        let summaries = summarize(&samples, 10.0);
        assert_eq!(summaries.len(), 2);
        let a = &summaries[0];
        assert_eq!((a.model.as_str(), a.requests), ("a", 3));
        assert_eq!(a.ttft.unwrap().p50, 40.0);
        assert_eq!(a.server_ttft.unwrap().p99, 44.0);
        // Gaps 10, 6, 2: the median of the differences, not the difference of the medians.
        assert_eq!(a.ttft_gap_median, Some(6.0));
        assert_eq!(summaries[1].ttft_gap_median, Some(1.0));
    }

    #[test]
    fn requests_without_a_first_token_count_but_add_no_latency() {
        let mut stopped = sample(1.0, "a", 0.0, 0.0);
        stopped.ending = Ending::Stopped;
        stopped.ttft_ms = None;
        stopped.total_ms = None;
        stopped.server_ttft_ms = None;
        let summaries = summarize(&[stopped], 0.0);
        assert_eq!(summaries[0].requests, 1);
        assert_eq!(summaries[0].ttft, None);
        assert_eq!(summaries[0].ttft_gap_median, None);
    }
}
