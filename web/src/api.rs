//! The relay's API as the page uses it: the model list, the server-side statistics, a
//! streaming chat call over either transport: `POST /v1/chat/stream` over `fetch`, whose body is
//! read chunk by chunk and decoded with `fm_protocol`'s SSE decoder, or `GET /v1/ws`, where each
//! event is one JSON text frame. Either way every event is handled the moment its bytes arrive,
//! and the call is cancelled through its `AbortController`: the relay sees the disconnect (or the
//! closed socket) and cancels the upstream call.
//!
//! And the document jobs (`/v1/jobs`): an upload as `multipart/form-data`, the caller's list, one
//! job's result, a cancel, and a job's `status` events, read over `fetch` like the chat's SSE (an
//! `EventSource` cannot send the API key). Every call carries the key the page keeps.

use std::cell::RefCell;
use std::ops::ControlFlow;

use fm_protocol::fetch::BodyError;
use fm_protocol::{
    AnalysisType, ChatRequest, JobInfo, JobList, JobRequest, ModelList, SseFrame, StatsResponse,
    StreamEvent, Usage,
};
use futures_util::StreamExt;
use js_sys::Reflect;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{
    AbortController, CloseEvent, Event, File, FormData, Headers, MessageEvent, Request,
    RequestInit, Response, WebSocket,
};

/// How an answer is streamed from the relay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// Server-sent events over `fetch` streaming.
    #[default]
    Sse,
    /// A WebSocket kept open between requests, the events as JSON text frames.
    WebSocket,
}

impl Transport {
    pub const ALL: [Transport; 2] = [Transport::Sse, Transport::WebSocket];

    /// The value of the transport picker's option.
    pub fn id(self) -> &'static str {
        match self {
            Transport::Sse => "sse",
            Transport::WebSocket => "websocket",
        }
    }

    pub fn from_id(id: &str) -> Option<Transport> {
        Transport::ALL.into_iter().find(|t| t.id() == id)
    }

    /// The name people read.
    pub fn label(self) -> &'static str {
        match self {
            Transport::Sse => "SSE (fetch)",
            Transport::WebSocket => "WebSocket",
        }
    }
}

/// Why a call failed, in words for the page.
#[derive(Debug, Clone, PartialEq)]
pub enum CallError {
    /// The user stopped it.
    Aborted,
    /// The relay answered with an error, or the network failed.
    Failed(String),
    /// The relay needs an API key, or refused the one the page sent (401).
    Unauthorized(String),
}

/// Where the page keeps the API key it sends (this browser only).
const API_KEY_STORAGE: &str = "fm-relay.api-key.v1";

/// The API key the page sends, if one was given.
pub fn api_key() -> Option<String> {
    crate::store::local_storage()
        .and_then(|storage| storage.get_item(API_KEY_STORAGE).ok().flatten())
        .filter(|key| !key.trim().is_empty())
}

/// Keeps `key` for the page's requests (an empty key forgets it); the open WebSocket is closed,
/// so the next one carries the new key.
pub fn set_api_key(key: &str) {
    if let Some(storage) = crate::store::local_storage() {
        let _ = match key.trim() {
            "" => storage.remove_item(API_KEY_STORAGE),
            key => storage.set_item(API_KEY_STORAGE, key),
        };
    }
    if let Some(socket) = SOCKET.with_borrow_mut(Option::take) {
        let _ = socket.close_with_code(1000);
    }
}

/// Request headers with the API key, when there is one.
fn headers() -> Result<Headers, CallError> {
    let headers = Headers::new()?;
    if let Some(key) = api_key() {
        headers.set("authorization", &format!("Bearer {key}"))?;
    }
    Ok(headers)
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
    let message = match fm_protocol::fetch::error_body(response).await {
        Ok(body) => format!("{} ({status})", body.error.message),
        Err(_) => format!("the relay answered {status}"),
    };
    match status {
        401 => CallError::Unauthorized(message),
        _ => CallError::Failed(message),
    }
}

/// `GET path` answered with JSON; `what` names it in errors.
async fn get_json<T: DeserializeOwned>(path: &str, what: &str) -> Result<T, CallError> {
    call_json("GET", path, None, what).await
}

/// `method path` (with `body`, if any) answered with JSON; `what` names it in errors.
async fn call_json<T: DeserializeOwned>(
    method: &str,
    path: &str,
    body: Option<&JsValue>,
    what: &str,
) -> Result<T, CallError> {
    let text = call(method, path, body).await?;
    serde_json::from_str(&text)
        .map_err(|err| CallError::Failed(format!("{what} is not readable: {err}")))
}

/// `method path` (with `body`, if any): the answer's text, or its error. Apart from
/// [`call_json`] so the request is written once in the WASM, not once per answer type.
async fn call(method: &str, path: &str, body: Option<&JsValue>) -> Result<String, CallError> {
    let init = RequestInit::new();
    init.set_method(method);
    init.set_headers(&headers()?.into());
    if let Some(body) = body {
        init.set_body(body);
    }
    let request = Request::new_with_str_and_init(path, &init)?;
    let response = fetch(&request).await?;
    if !response.ok() {
        return Err(error_of(&response).await);
    }
    let text = JsFuture::from(response.text()?).await?;
    Ok(text.as_string().unwrap_or_default())
}

/// `GET /v1/models`.
pub async fn models() -> Result<ModelList, CallError> {
    get_json("/v1/models", "the model list").await
}

/// `GET /v1/stats?window_secs=N`: the relay's own latency figures over the last N seconds.
pub async fn stats(window_secs: u64) -> Result<StatsResponse, CallError> {
    get_json(
        &format!("/v1/stats?window_secs={window_secs}"),
        "the relay's statistics",
    )
    .await
}

fn encode(request: &ChatRequest) -> Result<String, CallError> {
    serde_json::to_string(request)
        .map_err(|err| CallError::Failed(format!("the request cannot be encoded: {err}")))
}

/// Streams the answer to `request` over `transport`, calling `on_event` for every event as it
/// arrives, until the stream ends or `abort` is aborted.
pub async fn stream_chat(
    transport: Transport,
    request: &ChatRequest,
    abort: &AbortController,
    on_event: impl FnMut(StreamEvent),
) -> Result<(), CallError> {
    match transport {
        Transport::Sse => stream_chat_sse(request, abort, on_event).await,
        Transport::WebSocket => stream_chat_ws(request, abort, on_event).await,
    }
}

/// `POST /v1/chat/stream`.
async fn stream_chat_sse(
    request: &ChatRequest,
    abort: &AbortController,
    mut on_event: impl FnMut(StreamEvent),
) -> Result<(), CallError> {
    let body = encode(request)?;
    let headers = headers()?;
    headers.set("content-type", "application/json")?;
    let init = RequestInit::new();
    init.set_method("POST");
    init.set_headers(&headers);
    init.set_body(&JsValue::from_str(&body));
    init.set_signal(Some(&abort.signal()));
    let request = Request::new_with_str_and_init("/v1/chat/stream", &init)?;
    read_sse(&request, &mut |frame| {
        let event = frame
            .stream_event()
            .map_err(|err| CallError::Failed(format!("an event was not readable: {err}")))?;
        on_event(event);
        Ok(())
    })
    .await
}

/// Sends `request` and reads its answer as Server-Sent Events, handing each event to `on_frame`
/// the moment it is complete, until the stream ends (`Ok`), `on_frame` fails, or the request's
/// signal aborts it. (`dyn`: one copy of the reading loop for every caller.)
async fn read_sse(
    request: &Request,
    on_frame: &mut dyn FnMut(SseFrame) -> Result<(), CallError>,
) -> Result<(), CallError> {
    let response = fetch(request).await?;
    if !response.ok() {
        return Err(error_of(&response).await);
    }
    fm_protocol::fetch::read_sse_body(&response, &mut |frame| {
        on_frame(frame).map(|()| ControlFlow::Continue(()))
    })
    .await
    .map_err(|err| match err {
        BodyError::Unreadable => CallError::Failed("the answer has no readable body".into()),
        BodyError::Js(err) => CallError::from(err),
        BodyError::Frame(err) => err,
        BodyError::TooLarge(err) => CallError::Failed(err.to_string()),
    })
}

/// A path segment (a job id) as it may go into a URL.
fn segment(value: &str) -> String {
    String::from(js_sys::encode_uri_component(value))
}

/// How many jobs one `GET /v1/jobs` asks for.
pub const JOBS_PAGE: u32 = 50;

/// `GET /v1/jobs`: the caller's jobs, newest first; `before` is the `next_before` of the page
/// above, for the one after it.
pub async fn list_jobs(before: Option<&str>) -> Result<JobList, CallError> {
    let mut path = format!("/v1/jobs?limit={JOBS_PAGE}");
    if let Some(before) = before {
        path.push_str("&before=");
        path.push_str(&segment(before));
    }
    get_json(&path, "the job list").await
}

/// `POST /v1/jobs` as `multipart/form-data`: `file` as the `file` part, and the job's analysis,
/// priority, format (when set: else the relay reads it from the file's name or type), fields,
/// labels and question — what the page's form sets — one part each (`fields` and `labels` once
/// per value). One part per field, not a `request` part of JSON, so the page carries no JSON
/// writer for job requests.
pub async fn submit_job(file: &File, job: &JobRequest) -> Result<JobInfo, CallError> {
    let form = FormData::new()?;
    if let Some(analysis) = job.analysis_type {
        form.append_with_str("analysis_type", analysis.as_str())?;
    }
    form.append_with_str("priority", job.priority.as_str())?;
    if let Some(format) = job.format {
        form.append_with_str("format", format.as_str())?;
    }
    for field in &job.fields {
        form.append_with_str("fields", field)?;
    }
    for label in &job.labels {
        form.append_with_str("labels", label)?;
    }
    if let Some(question) = &job.question {
        form.append_with_str("question", question)?;
    }
    form.append_with_blob_and_filename("file", file, &file.name())?;
    // No content type set here: the browser writes it, with the form's boundary.
    call_json("POST", "/v1/jobs", Some(&form.into()), "the queued job").await
}

/// A completed job's answer as the page reads it: a [`fm_protocol::JobResult`] without its
/// `data`, which holds what `text` already says (an extraction's fields are its JSON text, a
/// classification's label is its text) and would need a JSON value decoder in the WASM.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct JobAnswer {
    pub analysis_type: AnalysisType,
    /// The model that gave the final answer.
    pub model: String,
    pub text: String,
    /// Parts the document was split into.
    pub chunks: u32,
    /// Characters of text read from the document.
    pub document_chars: u64,
    pub usage: Usage,
}

/// `GET /v1/jobs/{id}/result`: a completed job's answer.
pub async fn job_result(id: &str) -> Result<JobAnswer, CallError> {
    get_json(
        &format!("/v1/jobs/{}/result", segment(id)),
        "the job's result",
    )
    .await
}

/// `DELETE /v1/jobs/{id}`: cancels a queued or running job; answers the job as it is now.
pub async fn cancel_job(id: &str) -> Result<JobInfo, CallError> {
    call_json(
        "DELETE",
        &format!("/v1/jobs/{}", segment(id)),
        None,
        "the cancelled job",
    )
    .await
}

/// `GET /v1/jobs/{id}/events`: calls `on_status` with the job now and whenever it changes, until
/// the relay ends the stream (the job ended, or the stream's time ran out: then the job may still
/// be unfinished and another stream may follow it) or `abort` is aborted.
pub async fn follow_job(
    id: &str,
    abort: &AbortController,
    mut on_status: impl FnMut(JobInfo),
) -> Result<(), CallError> {
    let init = RequestInit::new();
    init.set_headers(&headers()?.into());
    init.set_signal(Some(&abort.signal()));
    let request =
        Request::new_with_str_and_init(&format!("/v1/jobs/{}/events", segment(id)), &init)?;
    read_sse(&request, &mut |frame| {
        if frame.event == "status" {
            let job = serde_json::from_str(&frame.data).map_err(|err| {
                CallError::Failed(format!("a job status was not readable: {err}"))
            })?;
            on_status(job);
        }
        Ok(())
    })
    .await
}

/// What the socket's callbacks report to [`stream_chat_ws`].
enum SocketNews {
    Open,
    Text(String),
    Closed { code: u16, reason: String },
    Aborted,
}

/// The `ws:`/`wss:` address of `GET /v1/ws` on the page's own host.
fn socket_url() -> Result<String, CallError> {
    let location = window()?.location();
    let scheme = if location.protocol()? == "https:" {
        "wss"
    } else {
        "ws"
    };
    Ok(format!("{scheme}://{}/v1/ws", location.host()?))
}

thread_local! {
    /// The page's socket to `/v1/ws`, kept open between requests so an answer does not wait for
    /// a handshake (the relay answers any number of requests on one socket).
    static SOCKET: RefCell<Option<WebSocket>> = const { RefCell::new(None) };
}

/// The open (or opening) socket, or a new one.
fn socket() -> Result<WebSocket, CallError> {
    let reusable = SOCKET.with_borrow(|slot| {
        slot.clone().filter(|socket| {
            matches!(
                socket.ready_state(),
                WebSocket::OPEN | WebSocket::CONNECTING
            )
        })
    });
    if let Some(socket) = reusable {
        return Ok(socket);
    }
    // A browser cannot set headers on a WebSocket: the key travels as a second subprotocol
    // beside `fm-relay` (which the relay picks), never in the URL.
    let socket = match api_key() {
        Some(key) => {
            let protocols = js_sys::Array::of2(&"fm-relay".into(), &key.into());
            WebSocket::new_with_str_sequence(&socket_url()?, &protocols)?
        }
        None => WebSocket::new_with_str_sequence(&socket_url()?, &"fm-relay".into())?,
    };
    SOCKET.with_borrow_mut(|slot| *slot = Some(socket.clone()));
    Ok(socket)
}

/// Opens the socket ahead of the first request (when the user picks the WebSocket transport).
pub fn warm_up_socket() {
    let _ = socket();
}

/// Closes the socket (the relay cancels what it was answering); the next request opens another.
fn drop_socket(socket: &WebSocket) {
    let _ = socket.close_with_code(1000);
    SOCKET.with_borrow_mut(|slot| {
        if slot.as_ref() == Some(socket) {
            *slot = None;
        }
    });
}

/// `GET /v1/ws`: sends the request on the page's socket and reads its events until the terminal
/// one. The socket stays open for the next request unless the answer failed or `abort` fired;
/// then it is closed, which makes the relay cancel the upstream call.
async fn stream_chat_ws(
    request: &ChatRequest,
    abort: &AbortController,
    mut on_event: impl FnMut(StreamEvent),
) -> Result<(), CallError> {
    let body = encode(request)?;
    let socket = socket()?;
    let (news, mut inbox) = futures_channel::mpsc::unbounded::<SocketNews>();
    let tell = move |item: SocketNews| {
        // The receiver lives until the handlers are detached below.
        let _ = news.unbounded_send(item);
    };
    let on_open = Closure::<dyn FnMut()>::new({
        let tell = tell.clone();
        move || tell(SocketNews::Open)
    });
    let on_message = Closure::<dyn FnMut(MessageEvent)>::new({
        let tell = tell.clone();
        move |message: MessageEvent| {
            if let Some(text) = message.data().as_string() {
                tell(SocketNews::Text(text));
            }
        }
    });
    let on_close = Closure::<dyn FnMut(CloseEvent)>::new({
        let tell = tell.clone();
        move |close: CloseEvent| {
            tell(SocketNews::Closed {
                code: close.code(),
                reason: close.reason(),
            })
        }
    });
    let on_abort = Closure::<dyn FnMut(Event)>::new(move |_: Event| tell(SocketNews::Aborted));
    socket.set_onopen(Some(on_open.as_ref().unchecked_ref()));
    socket.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    socket.set_onclose(Some(on_close.as_ref().unchecked_ref()));
    abort
        .signal()
        .set_onabort(Some(on_abort.as_ref().unchecked_ref()));

    let mut opened = socket.ready_state() == WebSocket::OPEN;
    if opened && let Err(err) = socket.send_with_str(&body) {
        drop_socket(&socket);
        return Err(err.into());
    }
    let outcome = loop {
        let Some(news) = inbox.next().await else {
            break Err(CallError::Failed("the WebSocket went away".into()));
        };
        match news {
            SocketNews::Open => {
                opened = true;
                if let Err(err) = socket.send_with_str(&body) {
                    break Err(err.into());
                }
            }
            SocketNews::Text(text) => match serde_json::from_str::<StreamEvent>(&text) {
                Ok(event) => {
                    let terminal = event.is_terminal();
                    on_event(event);
                    if terminal {
                        break Ok(());
                    }
                }
                Err(err) => {
                    break Err(CallError::Failed(format!(
                        "an event was not readable: {err}"
                    )));
                }
            },
            SocketNews::Closed { code, reason } => {
                let why = if reason.is_empty() {
                    format!("code {code}")
                } else {
                    format!("{reason}, code {code}")
                };
                break Err(CallError::Failed(if opened {
                    format!("the WebSocket closed before the answer was complete ({why})")
                } else {
                    format!("the WebSocket to the relay could not be opened ({why})")
                }));
            }
            SocketNews::Aborted => break Err(CallError::Aborted),
        }
    };
    socket.set_onopen(None);
    socket.set_onmessage(None);
    socket.set_onclose(None);
    abort.signal().set_onabort(None);
    if outcome.is_err() {
        // Stopped or broken: closing tells the relay to cancel whatever is still running.
        drop_socket(&socket);
    }
    outcome
}
