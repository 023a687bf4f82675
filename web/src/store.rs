//! The conversation: each turn's prompt, its answer as it grows, its state and the facts measured
//! about it; and what survives a reload (`localStorage`, key [`STORAGE_KEY`]).

use fm_protocol::{Message, ResponseSource, Usage};
use leptos::prelude::*;
use serde::{Deserialize, Serialize};

use crate::api::Transport;

/// Where the conversation is saved.
pub const STORAGE_KEY: &str = "fm-relay.conversation.v1";

/// Where a turn's answer stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TurnState {
    Streaming,
    Done,
    /// The user pressed Stop.
    Stopped,
    /// The request failed; the message says why.
    Failed(String),
    /// The page was reloaded while the answer streamed.
    Interrupted,
}

/// What was measured about an answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Facts {
    pub model: String,
    pub region: String,
    pub source: Option<ResponseSource>,
    pub route_reason: String,
    /// Browser-side: from sending the request to the first text painted.
    pub ttft_ms: Option<f64>,
    /// Browser-side: from sending the request to the last event.
    pub total_ms: Option<f64>,
    /// The relay's own time to first token for this request (from its `done` event).
    #[serde(default)]
    pub server_ttft_ms: Option<f64>,
    /// The relay's own total time for this request.
    #[serde(default)]
    pub server_total_ms: Option<f64>,
    #[serde(default)]
    pub transport: Transport,
    pub usage: Option<Usage>,
    pub degraded: bool,
}

impl Facts {
    /// Output tokens per second after the first token.
    pub fn tokens_per_second(&self) -> Option<f64> {
        let usage = self.usage?;
        let streaming_ms = self.total_ms? - self.ttft_ms?;
        (streaming_ms > 0.0 && usage.output_tokens > 1)
            .then(|| f64::from(usage.output_tokens - 1) * 1000.0 / streaming_ms)
    }
}

/// One prompt and its answer, reactive field by field so a growing answer re-renders only itself.
#[derive(Debug, Clone, Copy)]
pub struct Turn {
    pub id: u64,
    pub prompt: RwSignal<String>,
    pub answer: RwSignal<String>,
    pub state: RwSignal<TurnState>,
    pub facts: RwSignal<Facts>,
}

/// A turn as saved.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SavedTurn {
    id: u64,
    prompt: String,
    answer: String,
    state: TurnState,
    facts: Facts,
}

impl Turn {
    pub fn new(id: u64, prompt: String) -> Self {
        Turn {
            id,
            prompt: RwSignal::new(prompt),
            answer: RwSignal::new(String::new()),
            state: RwSignal::new(TurnState::Streaming),
            facts: RwSignal::new(Facts::default()),
        }
    }

    fn saved(&self) -> SavedTurn {
        SavedTurn {
            id: self.id,
            prompt: self.prompt.get_untracked(),
            answer: self.answer.get_untracked(),
            state: self.state.get_untracked(),
            facts: self.facts.get_untracked(),
        }
    }

    fn restored(saved: SavedTurn) -> Self {
        let state = match saved.state {
            TurnState::Streaming => TurnState::Interrupted,
            other => other,
        };
        Turn {
            id: saved.id,
            prompt: RwSignal::new(saved.prompt),
            answer: RwSignal::new(saved.answer),
            state: RwSignal::new(state),
            facts: RwSignal::new(saved.facts),
        }
    }
}

/// The messages the relay gets for a new prompt: every completed turn before it, then the prompt.
pub fn history_for(turns: &[Turn], prompt: &str) -> Vec<Message> {
    let mut messages = Vec::with_capacity(turns.len() * 2 + 1);
    for turn in turns {
        if turn.state.get_untracked() == TurnState::Done && !turn.facts.get_untracked().degraded {
            messages.push(Message::user(turn.prompt.get_untracked()));
            messages.push(Message::assistant(turn.answer.get_untracked()));
        }
    }
    messages.push(Message::user(prompt));
    messages
}

/// The browser's `localStorage`, when the page may use it.
pub fn local_storage() -> Option<web_sys::Storage> {
    web_sys::window()?.local_storage().ok()?
}

/// Saves the conversation (best effort: a full or disabled storage only loses persistence).
pub fn save(turns: &[Turn]) {
    let saved: Vec<SavedTurn> = turns.iter().map(Turn::saved).collect();
    if let (Some(storage), Ok(json)) = (local_storage(), serde_json::to_string(&saved)) {
        let _ = storage.set_item(STORAGE_KEY, &json);
    }
}

/// The saved conversation, or none.
pub fn load() -> Vec<Turn> {
    local_storage()
        .and_then(|storage| storage.get_item(STORAGE_KEY).ok().flatten())
        .and_then(|json| serde_json::from_str::<Vec<SavedTurn>>(&json).ok())
        .map(|saved| saved.into_iter().map(Turn::restored).collect())
        .unwrap_or_default()
}

/// Forgets the saved conversation.
pub fn clear() {
    if let Some(storage) = local_storage() {
        let _ = storage.remove_item(STORAGE_KEY);
    }
}

/// Where the chosen transport is saved.
const TRANSPORT_KEY: &str = "fm-relay.transport.v1";

/// The transport chosen last time (SSE unless WebSocket was picked).
pub fn load_transport() -> Transport {
    local_storage()
        .and_then(|storage| storage.get_item(TRANSPORT_KEY).ok().flatten())
        .and_then(|id| Transport::from_id(&id))
        .unwrap_or_default()
}

pub fn save_transport(transport: Transport) {
    if let Some(storage) = local_storage() {
        let _ = storage.set_item(TRANSPORT_KEY, transport.id());
    }
}
