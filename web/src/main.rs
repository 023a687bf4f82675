//! # fm-web — the FM Relay chat page
//!
//! A Leptos app rendered in the browser and served by `fm-relay` at `/`. It streams answers from
//! `POST /v1/chat/stream` over `fetch` and paints them token by token, measures the time to first
//! token in the browser, keeps the conversation in `localStorage`, and validates every request
//! with the same `fm_protocol` function the relay runs.
//!
//! Modules: [`api`] (the relay's HTTP API: models, streaming chat, cancellation), [`store`] (the
//! conversation and what is saved of it), [`chat`] (the page).

mod api;
mod chat;
mod store;

fn main() {
    leptos::mount::mount_to_body(chat::ChatPage);
}
