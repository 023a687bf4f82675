//! For the WASM clients (the chat page and the IDE core), with the `fetch` feature: a `fetch`
//! answer's body read as Server-Sent Events the moment its bytes arrive, and the relay's error
//! body of an answer that failed. The clients differ in how they fetch (the page through
//! `window`, the IDE core through the host's global `fetch`, which Node has too) and in their
//! error types; this is the part they share.

use std::ops::ControlFlow;

use js_sys::{Reflect, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{ReadableStreamDefaultReader, Response};

use crate::{ApiErrorBody, EventTooLarge, SseDecoder, SseFrame};

/// Why reading an answer's body stopped short.
#[derive(Debug)]
pub enum BodyError<E> {
    /// The answer has no body, or one that cannot be read as a stream.
    Unreadable,
    /// Reading failed — the connection broke, or the request's signal aborted it: the
    /// JavaScript error.
    Js(JsValue),
    /// The caller's `on_frame` failed.
    Frame(E),
    /// An event outgrew the decoder's bound.
    TooLarge(EventTooLarge),
}

/// Reads `response`'s body as SSE, handing each frame to `on_frame` as soon as it is complete,
/// until the body ends or `on_frame` breaks (the body is then let go of). (`dyn`: one copy of
/// the loop for every caller.)
pub async fn read_sse_body<E>(
    response: &Response,
    on_frame: &mut dyn FnMut(SseFrame) -> Result<ControlFlow<()>, E>,
) -> Result<(), BodyError<E>> {
    let reader: ReadableStreamDefaultReader = response
        .body()
        .ok_or(BodyError::Unreadable)?
        .get_reader()
        .dyn_into()
        .map_err(|_| BodyError::Unreadable)?;
    let mut decoder = SseDecoder::new();
    loop {
        let chunk = JsFuture::from(reader.read()).await.map_err(BodyError::Js)?;
        if Reflect::get(&chunk, &"done".into())
            .map_err(BodyError::Js)?
            .as_bool()
            == Some(true)
        {
            return Ok(());
        }
        let value = Reflect::get(&chunk, &"value".into()).map_err(BodyError::Js)?;
        let frames = decoder.feed(&Uint8Array::new(&value).to_vec());
        for frame in frames.map_err(BodyError::TooLarge)? {
            if on_frame(frame).map_err(BodyError::Frame)?.is_break() {
                // The promise only says when the body is released; nothing waits for it.
                let _ = reader.cancel();
                return Ok(());
            }
        }
    }
}

/// The relay's error body of a failed answer; `Err` with the HTTP status when the body is not
/// one (a proxy's error page, say).
pub async fn error_body(response: &Response) -> Result<ApiErrorBody, u16> {
    let text = match response.text() {
        Ok(promise) => JsFuture::from(promise)
            .await
            .ok()
            .and_then(|text| text.as_string())
            .unwrap_or_default(),
        Err(_) => String::new(),
    };
    serde_json::from_str(&text).map_err(|_| response.status())
}
