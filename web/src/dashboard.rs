//! The TTFT dashboard: for a chosen window, every model's time to first token and total time as
//! the browser measured them (p50 / p95 / p99 from the stored history) beside the relay's own
//! figures (from `GET /v1/stats` for the same window, refreshed every few seconds while the page
//! is shown, and from each request's `done` event), the median gap between the two, a histogram
//! of TTFT and TTFT over time.

use std::time::Duration;

use fm_protocol::{Percentiles, StatsResponse};
use leptos::prelude::*;
use leptos::task::spawn_local;

use crate::api;
use crate::charts::{Histogram, PALETTE, Series, TimeSeries};
use crate::history::{History, Sample, summarize};

/// The windows a user can pick, in seconds (the relay keeps an hour).
const WINDOWS: [(u64, &str); 3] = [(300, "5 minutes"), (900, "15 minutes"), (3600, "1 hour")];

/// How often the relay's figures are fetched again while the dashboard is shown.
const REFRESH: Duration = Duration::from_secs(5);

/// The page; `shown` is whether it is on screen (the relay is polled only then).
#[component]
pub fn DashboardPage(history: History, #[prop(into)] shown: Signal<bool>) -> impl IntoView {
    let window_secs = RwSignal::new(900_u64);
    let server = RwSignal::new(None::<Result<StatsResponse, String>>);
    // Bumped every few seconds so the window's start moves and the relay is asked again.
    let tick = RwSignal::new(0_u64);

    let refresh = move || {
        let secs = window_secs.get_untracked();
        spawn_local(async move {
            let answer = api::stats(secs).await.map_err(|err| match err {
                api::CallError::Aborted => "stopped".to_string(),
                api::CallError::Failed(message) | api::CallError::Unauthorized(message) => message,
            });
            server.set(Some(answer));
        });
    };
    Effect::new(move |_| {
        window_secs.track();
        tick.track();
        if shown.get() {
            refresh();
        }
    });
    if let Ok(handle) = set_interval_with_handle(
        move || {
            if shown.get_untracked() {
                tick.update(|t| *t += 1);
            }
        },
        REFRESH,
    ) {
        on_cleanup(move || handle.clear());
    }

    let since_ms = move || {
        tick.track();
        js_sys::Date::now() - window_secs.get() as f64 * 1000.0
    };
    let in_window = Memo::new(move |_| {
        let since = since_ms();
        history.0.with(|samples| {
            samples
                .iter()
                .filter(|s| s.at_ms >= since)
                .cloned()
                .collect::<Vec<Sample>>()
        })
    });
    let summaries = Memo::new(move |_| in_window.with(|samples| summarize(samples, f64::MIN)));
    let colors = move |model: &str| {
        let index = summaries.with(|all| all.iter().position(|s| s.model == model));
        PALETTE[index.unwrap_or(0) % PALETTE.len()]
    };

    view! {
        <section class="dashboard" aria-labelledby="dashboard-title">
            <div class="dashboard-bar">
                <h2 id="dashboard-title">"Time to first token"</h2>
                <label>
                    "Window"
                    <select
                        aria-label="Window"
                        on:change=move |ev| {
                            if let Ok(secs) = event_target_value(&ev).parse() {
                                window_secs.set(secs);
                            }
                        }
                    >
                        {WINDOWS
                            .into_iter()
                            .map(|(secs, label)| view! {
                                <option value=secs.to_string() selected=move || window_secs.get() == secs>{label}</option>
                            })
                            .collect_view()}
                    </select>
                </label>
                <button type="button" on:click=move |_| refresh()>"Refresh"</button>
                <button type="button" on:click=move |_| history.clear()>"Clear history"</button>
            </div>
            <p class="explain">
                "Browser: from sending the request to the first text on the page, kept for the last "
                {crate::history::MAX_SAMPLES}
                " requests. Relay: from the request reaching the relay to the first token it sent. The gap is network, browser and rendering."
            </p>
            <table class="summary">
                <thead>
                    <tr>
                        <th scope="col">"Model"</th>
                        <th scope="col">"Requests (browser / relay)"</th>
                        <th scope="col">"TTFT browser p50 / p95 / p99"</th>
                        <th scope="col">"TTFT relay p50 / p95 / p99"</th>
                        <th scope="col">"Median gap"</th>
                        <th scope="col">"Total browser p50 / p95 / p99"</th>
                        <th scope="col">"Total relay p50 / p95 / p99"</th>
                    </tr>
                </thead>
                <tbody>
                    {move || {
                        let server_models = server.with(|answer| match answer {
                            Some(Ok(stats)) => stats.models.clone(),
                            _ => Vec::new(),
                        });
                        let mut rows: Vec<String> = summaries.with(|all| all.iter().map(|s| s.model.clone()).collect());
                        for stats in &server_models {
                            if stats.requests > 0 && !rows.contains(&stats.model) {
                                rows.push(stats.model.clone());
                            }
                        }
                        if rows.is_empty() {
                            return view! { <tr><td colspan="7" class="empty">"No requests in this window yet."</td></tr> }.into_any();
                        }
                        rows.into_iter()
                            .map(|model| {
                                let mine = summaries.with(|all| all.iter().find(|s| s.model == model).cloned());
                                let relay = server_models.iter().find(|s| s.model == model);
                                view! {
                                    <tr data-model=model.clone()>
                                        <th scope="row">{model.clone()}</th>
                                        <td>{format!(
                                            "{} / {}",
                                            mine.as_ref().map_or(0, |s| s.requests),
                                            relay.map_or(0, |s| s.requests)
                                        )}</td>
                                        <td class="ttft-browser">{triple(mine.as_ref().and_then(|s| s.ttft))}</td>
                                        <td class="ttft-relay">{triple(relay.and_then(|s| s.ttft_ms))}</td>
                                        <td class="gap">{mine.as_ref().and_then(|s| s.ttft_gap_median).map_or("–".to_string(), |gap| format!("{gap:.1} ms"))}</td>
                                        <td>{triple(mine.as_ref().and_then(|s| s.total))}</td>
                                        <td>{triple(relay.and_then(|s| s.total_ms))}</td>
                                    </tr>
                                }
                            })
                            .collect_view()
                            .into_any()
                    }}
                </tbody>
            </table>
            {move || server.with(|answer| match answer {
                Some(Err(message)) => Some(view! { <p class="error" role="alert">"The relay's figures are unavailable: "{message.clone()}</p> }),
                _ => None,
            })}
            <div class="charts">
                {move || {
                    let samples = in_window.get();
                    let mut browser: Vec<Series> = Vec::new();
                    for sample in samples.iter().filter(|s| s.ttft_ms.is_some()) {
                        let point = (sample.at_ms, sample.ttft_ms.unwrap_or_default());
                        match browser.iter_mut().find(|s| s.name == sample.model) {
                            Some(series) => series.points.push(point),
                            None => browser.push(Series {
                                name: sample.model.clone(),
                                color: colors(&sample.model),
                                points: vec![point],
                            }),
                        }
                    }
                    if browser.is_empty() {
                        return None;
                    }
                    let relay_ttft = Series {
                        name: "relay (same requests)".into(),
                        color: PALETTE[PALETTE.len() - 1],
                        points: samples.iter().filter_map(|s| Some((s.at_ms, s.server_ttft_ms?))).collect(),
                    };
                    let mut histogram = browser.clone();
                    histogram.push(relay_ttft);
                    Some(view! {
                        <Histogram title="TTFT histogram (browser per model, and the relay)".to_string() series=histogram />
                        <TimeSeries title="TTFT over time (browser)".to_string() series=browser />
                    })
                }}
            </div>
        </section>
    }
}

/// `p50 / p95 / p99` in milliseconds, or a dash.
fn triple(figures: Option<Percentiles>) -> String {
    figures.map_or("–".to_string(), |p| {
        format!("{:.0} / {:.0} / {:.0} ms", p.p50, p.p95, p.p99)
    })
}
