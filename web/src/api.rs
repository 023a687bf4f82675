//! The relay's HTTP API as the page uses it: the model list, and a streaming chat call over
//! `fetch` whose body is read chunk by chunk and decoded with `fm_protocol`'s SSE decoder, so
//! every event is handled the moment its bytes arrive. A call is cancelled through its
//! `AbortController`; the relay sees the disconnect and cancels the upstream call.

use fm_protocol::{ApiErrorBody, ChatRequest, ModelList, SseDecoder, StreamEvent};
use js_sys::{Reflect, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{
    AbortController, Headers, ReadableStreamDefaultReader, Request, RequestInit, Response,
};

/// Why a call failed, in words for the page.
#[derive(Debug, Clone, PartialEq)]
pub enum CallError {
    /// The user stopped it.
    Aborted,
    /// The relay answered with an error, or the network failed.
    Failed(String),
}

impl From<JsValue> for CallError {
    fn from(value: JsValue) -> Self {
        let name = Reflect::get(&value, &"name".into())
            .ok()
            .and_then(|name| name.as_string());
        if name.as_deref() == Some("AbortError") {
            return CallError::Aborted;
        }
        let message = Reflect::get(&value, &"message".into())
            .ok()
            .and_then(|message| message.as_string())
            .unwrap_or_else(|| format!("{value:?}"));
        CallError::Failed(format!("network error: {message}"))
    }
}

fn window() -> Result<web_sys::Window, CallError> {
    web_sys::window().ok_or_else(|| CallError::Failed("no window".into()))
}

/// Milliseconds since the page loaded (`performance.now()`).
pub fn now_ms() -> f64 {
    web_sys::window()
        .and_then(|window| window.performance())
        .map_or(0.0, |performance| performance.now())
}

async fn fetch(request: &Request) -> Result<Response, CallError> {
    let response = JsFuture::from(window()?.fetch_with_request(request)).await?;
    response
        .dyn_into::<Response>()
        .map_err(|_| CallError::Failed("fetch did not return a Response".into()))
}

/// The error a non-2xx answer carries, as a sentence.
async fn error_of(response: &Response) -> CallError {
    let status = response.status();
    let text = match response.text() {
        Ok(promise) => JsFuture::from(promise)
            .await
            .ok()
            .and_then(|text| text.as_string())
            .unwrap_or_default(),
        Err(_) => String::new(),
    };
    match serde_json::from_str::<ApiErrorBody>(&text) {
        Ok(body) => CallError::Failed(format!("{} ({status})", body.error.message)),
        Err(_) => CallError::Failed(format!("the relay answered {status}")),
    }
}

/// `GET /v1/models`.
pub async fn models() -> Result<ModelList, CallError> {
    let request = Request::new_with_str("/v1/models")?;
    let response = fetch(&request).await?;
    if !response.ok() {
        return Err(error_of(&response).await);
    }
    let text = JsFuture::from(response.text()?).await?;
    serde_json::from_str(&text.as_string().unwrap_or_default())
        .map_err(|err| CallError::Failed(format!("the model list is not readable: {err}")))
}

/// `POST /v1/chat/stream`: calls `on_event` for every event as it arrives, until the stream ends
/// or `abort` is aborted.
pub async fn stream_chat(
    request: &ChatRequest,
    abort: &AbortController,
    mut on_event: impl FnMut(StreamEvent),
) -> Result<(), CallError> {
    let body = serde_json::to_string(request)
        .map_err(|err| CallError::Failed(format!("the request cannot be encoded: {err}")))?;
    let headers = Headers::new()?;
    headers.set("content-type", "application/json")?;
    let init = RequestInit::new();
    init.set_method("POST");
    init.set_headers(&headers);
    init.set_body(&JsValue::from_str(&body));
    init.set_signal(Some(&abort.signal()));
    let request = Request::new_with_str_and_init("/v1/chat/stream", &init)?;
    let response = fetch(&request).await?;
    if !response.ok() {
        return Err(error_of(&response).await);
    }
    let body = response
        .body()
        .ok_or_else(|| CallError::Failed("the answer has no body".into()))?;
    let reader: ReadableStreamDefaultReader = body
        .get_reader()
        .dyn_into()
        .map_err(|_| CallError::Failed("the body cannot be read as a stream".into()))?;
    let mut decoder = SseDecoder::new();
    loop {
        let chunk = JsFuture::from(reader.read()).await?;
        if Reflect::get(&chunk, &"done".into())?.as_bool() == Some(true) {
            return Ok(());
        }
        let bytes = Uint8Array::new(&Reflect::get(&chunk, &"value".into())?).to_vec();
        for frame in decoder.feed(&bytes) {
            match frame.stream_event() {
                Ok(event) => on_event(event),
                Err(err) => {
                    return Err(CallError::Failed(format!(
                        "an event was not readable: {err}"
                    )));
                }
            }
        }
    }
}
