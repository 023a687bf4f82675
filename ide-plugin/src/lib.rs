//! # fm-ide — the FM Relay code assistant's core, for IDE panels
//!
//! Compiled to WASM with wasm-bindgen for Node (`--target nodejs`: the VS Code extension host)
//! and for the web (`--target web`: a webview), on `fm-protocol`. The extension's JavaScript is
//! thin glue around what this crate exports:
//!
//! - `buildRequest(contextJson)` ([`context`]): an editor context (task, question, selection,
//!   the lines around it, language, path) to a chat request, validated with the relay's own
//!   rules before it is sent; a bad context throws an `Error` with `kind: "invalid"` and the
//!   `field`.
//! - `RelayClient` / `Answer` ([`client`]): the answer streamed from the relay over SSE or a
//!   WebSocket into callbacks, cancelled with `answer.cancel()` (the relay cancels the upstream
//!   call), with the time to first token and tokens per second measured here
//!   ([`session`]).
//! - `MarkdownBlocks` ([`blocks`]): the streamed Markdown read into prose and code blocks, each
//!   code block marked complete once its closing fence arrived — what "insert" and "replace
//!   selection" wait for.
//! - Typed errors ([`error`]) for everything that ends an answer.

pub mod blocks;
pub mod client;
pub mod context;
pub mod error;
pub mod session;

use wasm_bindgen::prelude::*;

pub use blocks::{Block, BlockKind, BlockReader};
pub use client::{Answer, RelayClient};
pub use context::{EditorContext, Task};
pub use error::IdeError;
pub use session::{Session, Summary, Update};

/// The request (JSON) for an editor context (JSON; see [`EditorContext`]).
#[wasm_bindgen(js_name = buildRequest)]
pub fn build_request(context: &str) -> Result<String, JsValue> {
    let request = context::request_for(context)?;
    serde_json::to_string(&request).map_err(|err| {
        IdeError::Protocol(format!("the request could not be written: {err}")).into()
    })
}

/// [`BlockReader`] for JavaScript: push the answer's text as it comes, read its blocks.
#[wasm_bindgen]
#[derive(Debug, Default)]
pub struct MarkdownBlocks {
    reader: BlockReader,
}

#[wasm_bindgen]
impl MarkdownBlocks {
    #[wasm_bindgen(constructor)]
    pub fn new() -> MarkdownBlocks {
        MarkdownBlocks::default()
    }

    /// Reads the next piece; returns the blocks it changed (`{index, kind, language, text,
    /// complete}`).
    pub fn push(&mut self, text: &str) -> JsValue {
        self.reader.push(text);
        changed_to_js(self.reader.take_changed())
    }

    /// The answer ended; returns the blocks that changed.
    pub fn finish(&mut self) -> JsValue {
        self.reader.finish();
        changed_to_js(self.reader.take_changed())
    }

    /// Every block as it stands.
    pub fn blocks(&self) -> JsValue {
        to_js(&self.reader.blocks())
    }
}

fn changed_to_js(changed: Vec<(usize, Block)>) -> JsValue {
    let changed: Vec<session::ChangedBlock> = changed
        .into_iter()
        .map(|(index, block)| session::ChangedBlock { index, block })
        .collect();
    to_js(&changed)
}

fn to_js(value: &impl serde::Serialize) -> JsValue {
    serde_json::to_string(value)
        .ok()
        .and_then(|json| js_sys::JSON::parse(&json).ok())
        .unwrap_or(JsValue::NULL)
}
