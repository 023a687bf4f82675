//! # fm-web — the FM Relay chat page, TTFT dashboard and documents page
//!
//! A Leptos app rendered in the browser and served by `fm-relay` at `/`. It streams answers from
//! the relay over SSE (`fetch`) or a WebSocket and paints them token by token as Markdown,
//! measures the time to first token in the browser beside the relay's own figure, keeps the
//! conversation and a bounded latency history in `localStorage`, sends documents to the relay's
//! background jobs and follows them live, and validates every request with the same
//! `fm_protocol` function the relay runs.
//!
//! Modules: [`api`] (the relay's API: models, statistics, streaming chat over either transport,
//! cancellation, document jobs and their event streams), [`store`] (the conversation and what is
//! saved of it), [`history`] (the latency history and its summaries), [`markdown`] (answers as
//! DOM), [`charts`] (SVG charts), [`chat`], [`dashboard`] and [`documents`] (the three pages),
//! [`app`] (the shell that switches between them).

pub mod api;
pub mod app;
pub mod charts;
pub mod chat;
pub mod dashboard;
pub mod documents;
pub mod history;
pub mod markdown;
pub mod store;

// The tests are wasm-bindgen tests, run in a browser (`--target wasm32-unknown-unknown`).
#[cfg(all(test, target_arch = "wasm32"))]
wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

/// Mounts the app on the page's `<body>`.
pub fn mount() {
    leptos::mount::mount_to_body(app::App);
}
