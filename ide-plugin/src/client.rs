//! The relay from JavaScript: [`RelayClient`] starts an answer over SSE (`POST /v1/chat/stream`
//! through the host's global `fetch`, which Node 18+ and every webview have) or a WebSocket
//! (`/v1/ws`, where the host has one: a webview, or Node with `--experimental-websocket` / 22+),
//! and hands each [`Update`] to the caller's callbacks the moment its bytes arrive. The returned
//! [`Answer`] cancels: the request's `AbortController` (or the socket) is closed, the relay sees
//! the client go and cancels the upstream call, and `onError` gets a `cancelled` error at once.
//! `Answer.finished` always resolves — `{ok: true, summary}` or `{ok: false, error}` — so an
//! unobserved failure is never an unhandled rejection.

use std::cell::RefCell;
use std::ops::ControlFlow;
use std::rc::Rc;

use fm_protocol::fetch::{BodyError, error_body, read_sse_body};
use fm_protocol::{ChatRequest, StreamEvent};
use futures_util::StreamExt;
use js_sys::{Function, Promise, Reflect};
use serde::Serialize;
use wasm_bindgen::closure::Closure;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use web_sys::{
    AbortController, CloseEvent, Headers, MessageEvent, Request, RequestInit, Response, WebSocket,
};

use crate::error::IdeError;
use crate::session::{Session, Update};

#[wasm_bindgen]
extern "C" {
    /// The host's global `fetch` (no `window` in Node).
    #[wasm_bindgen(js_name = fetch)]
    fn global_fetch(request: &Request) -> Promise;
}

/// How the answer travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Sse,
    WebSocket,
}

/// A relay and how to reach it.
#[wasm_bindgen]
#[derive(Debug, Clone)]
pub struct RelayClient {
    base_url: String,
    api_key: Option<String>,
    route_hint: Option<String>,
    transport: Transport,
}

/// A string option of `options`, if set and not empty.
fn option(options: &JsValue, name: &str) -> Option<String> {
    Reflect::get(options, &JsValue::from_str(name))
        .ok()
        .and_then(|value| value.as_string())
        .map(|value| value.trim().to_string())
        .filter(|value| !value.is_empty())
}

#[wasm_bindgen]
impl RelayClient {
    /// `options`: `baseUrl` (required, e.g. `http://127.0.0.1:8080`), `apiKey`, `routeHint` (sent
    /// as `x-fm-route-hint`), `transport` (`"sse"`, the default, or `"websocket"`).
    #[wasm_bindgen(constructor)]
    pub fn new(options: &JsValue) -> Result<RelayClient, JsValue> {
        let base_url = option(options, "baseUrl").ok_or_else(|| IdeError::Invalid {
            field: "baseUrl".into(),
            message: "is required: the relay's URL, e.g. http://127.0.0.1:8080".into(),
        })?;
        if !base_url.starts_with("http://") && !base_url.starts_with("https://") {
            return Err(IdeError::Invalid {
                field: "baseUrl".into(),
                message: format!("`{base_url}` is not an http:// or https:// URL"),
            }
            .into());
        }
        let transport = match option(options, "transport").as_deref() {
            None | Some("sse") => Transport::Sse,
            Some("websocket") => Transport::WebSocket,
            Some(other) => {
                return Err(IdeError::Invalid {
                    field: "transport".into(),
                    message: format!("`{other}` is not `sse` or `websocket`"),
                }
                .into());
            }
        };
        Ok(RelayClient {
            base_url: base_url.trim_end_matches('/').to_string(),
            api_key: option(options, "apiKey"),
            route_hint: option(options, "routeHint"),
            transport,
        })
    }

    /// Starts the answer to `request` (the JSON `buildRequest` made). `callbacks` may have
    /// `onStart(model)`, `onDelta({text, changed})`, `onFailover({model, reason,
    /// discardPartial})`, `onDone(summary)` and `onError(error)`; exactly one of the last two is
    /// called.
    pub fn start(&self, request: &str, callbacks: &JsValue) -> Result<Answer, JsValue> {
        let parsed: ChatRequest =
            serde_json::from_str(request).map_err(|err| IdeError::Invalid {
                field: "request".into(),
                message: format!("is not a chat request: {err}"),
            })?;
        fm_protocol::validate_chat_request(&parsed, |_| true).map_err(IdeError::from)?;
        let abort = AbortController::new()?;
        let state = Rc::new(RefCell::new(Running {
            session: Session::new(js_sys::Date::now()),
            outcome: None,
        }));
        let callbacks = Rc::new(Callbacks::from(callbacks));
        let client = self.clone();
        let body = request.to_string();
        let (signal_owner, running, notify) = (abort.clone(), state.clone(), callbacks.clone());
        let finished = wasm_bindgen_futures::future_to_promise(async move {
            let on_event = &mut |event: StreamEvent| {
                let (notice, ended) = running.borrow_mut().event(event);
                notify.notify(notice);
                ended
            };
            let ended = match client.transport {
                Transport::Sse => client.stream_sse(&body, &signal_owner, on_event).await,
                Transport::WebSocket => client.stream_ws(&body, &signal_owner, on_event).await,
            };
            let notice = {
                let mut running = running.borrow_mut();
                match ended.and_then(|()| running.session.end_of_stream()) {
                    Ok(()) => None,
                    Err(err) => running.fail(err),
                }
            };
            notify.notify(notice);
            let outcome = running.borrow().outcome.clone();
            Ok(outcome.unwrap_or(JsValue::NULL))
        });
        Ok(Answer {
            abort,
            state,
            callbacks,
            finished,
        })
    }
}

/// The caller's callbacks. Called with no borrow held, so a callback may cancel its answer.
struct Callbacks {
    on_start: Option<Function>,
    on_delta: Option<Function>,
    on_failover: Option<Function>,
    on_done: Option<Function>,
    on_error: Option<Function>,
}

/// A callback due, with its argument.
enum Notice {
    Start(JsValue),
    Delta(JsValue),
    Failover(JsValue),
    Done(JsValue),
    Error(JsValue),
}

impl From<&JsValue> for Callbacks {
    fn from(callbacks: &JsValue) -> Self {
        let get = |name: &str| {
            Reflect::get(callbacks, &JsValue::from_str(name))
                .ok()
                .and_then(|f| f.dyn_into::<Function>().ok())
        };
        Callbacks {
            on_start: get("onStart"),
            on_delta: get("onDelta"),
            on_failover: get("onFailover"),
            on_done: get("onDone"),
            on_error: get("onError"),
        }
    }
}

impl Callbacks {
    /// Calls the callback `notice` is for; what it throws is the caller's own affair (the host
    /// reports it), not allowed to stop the answer.
    fn notify(&self, notice: Option<Notice>) {
        let (callback, payload) = match notice {
            Some(Notice::Start(payload)) => (&self.on_start, payload),
            Some(Notice::Delta(payload)) => (&self.on_delta, payload),
            Some(Notice::Failover(payload)) => (&self.on_failover, payload),
            Some(Notice::Done(payload)) => (&self.on_done, payload),
            Some(Notice::Error(payload)) => (&self.on_error, payload),
            None => return,
        };
        if let Some(callback) = callback {
            let _ = callback.call1(&JsValue::NULL, &payload);
        }
    }
}

/// A value as a plain JavaScript object.
fn to_js(value: &impl Serialize) -> JsValue {
    serde_json::to_string(value)
        .ok()
        .and_then(|json| js_sys::JSON::parse(&json).ok())
        .unwrap_or(JsValue::NULL)
}

/// `{ok, <name>: value}`: what `finished` resolves with.
fn outcome(ok: bool, name: &str, value: &JsValue) -> JsValue {
    let outcome = js_sys::Object::new();
    // Setting properties on a fresh object cannot fail.
    let _ = Reflect::set(&outcome, &"ok".into(), &JsValue::from_bool(ok));
    let _ = Reflect::set(&outcome, &JsValue::from_str(name), value);
    outcome.into()
}

/// One answer in progress.
struct Running {
    session: Session,
    /// What `finished` resolves with, once the answer ended.
    outcome: Option<JsValue>,
}

impl Running {
    /// Reads one event: the callback due, and whether the answer ended with it.
    fn event(&mut self, event: StreamEvent) -> (Option<Notice>, bool) {
        let notice = match self.session.handle(event, js_sys::Date::now()) {
            Ok(Some(update)) => Some(self.notice(update)),
            Ok(None) => None,
            Err(err) => self.fail(err),
        };
        (notice, self.session.ended())
    }

    fn notice(&mut self, update: Update) -> Notice {
        match &update {
            Update::Start { model } => Notice::Start(JsValue::from_str(model)),
            Update::Delta { .. } => Notice::Delta(to_js(&update)),
            Update::Failover { .. } => Notice::Failover(to_js(&update)),
            Update::Done(summary) => {
                let summary = to_js(summary);
                self.outcome = Some(outcome(true, "summary", &summary));
                Notice::Done(summary)
            }
        }
    }

    /// Ends the answer with `err` — once: what fails after the end (the transport torn down by
    /// a cancel, say) is what the end caused.
    fn fail(&mut self, err: IdeError) -> Option<Notice> {
        if self.outcome.is_some() {
            return None;
        }
        // Marks the session ended; it may be already (an error event ends it).
        let _ = self.session.fail(err.clone());
        let error = JsValue::from(err);
        self.outcome = Some(outcome(false, "error", &error));
        Some(Notice::Error(error))
    }
}

/// An answer being streamed.
#[wasm_bindgen]
pub struct Answer {
    abort: AbortController,
    state: Rc<RefCell<Running>>,
    callbacks: Rc<Callbacks>,
    finished: Promise,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answer")
            .field("text", &self.state.borrow().session.text())
            .finish_non_exhaustive()
    }
}

#[wasm_bindgen]
impl Answer {
    /// Stops the answer: the connection closes (the relay cancels the upstream call) and
    /// `onError` gets a `cancelled` error, unless the answer had ended already.
    pub fn cancel(&self) {
        let notice = {
            let mut running = self.state.borrow_mut();
            running.session.cancel().and_then(|err| running.fail(err))
        };
        self.callbacks.notify(notice);
        self.abort.abort();
    }

    /// Resolves when the answer ended: `{ok: true, summary}` or `{ok: false, error}`.
    #[wasm_bindgen(getter)]
    pub fn finished(&self) -> Promise {
        self.finished.clone()
    }

    /// The answer's text so far.
    #[wasm_bindgen(getter)]
    pub fn text(&self) -> String {
        self.state.borrow().session.text().to_string()
    }
}

/// A JavaScript exception as a transport error: a cancel when the signal was aborted.
fn transport_error(abort: &AbortController, err: JsValue) -> IdeError {
    if abort.signal().aborted() {
        return IdeError::Cancelled;
    }
    let message = Reflect::get(&err, &"message".into())
        .ok()
        .and_then(|m| m.as_string())
        .or_else(|| err.as_string())
        .unwrap_or_else(|| "the request failed".into());
    IdeError::Network(message)
}

impl RelayClient {
    /// `POST /v1/chat/stream`, its events handed to `on_event` until it says the answer ended.
    async fn stream_sse(
        &self,
        body: &str,
        abort: &AbortController,
        on_event: &mut dyn FnMut(StreamEvent) -> bool,
    ) -> Result<(), IdeError> {
        let failed = |err: JsValue| transport_error(abort, err);
        let headers = Headers::new().map_err(failed)?;
        headers
            .set("content-type", "application/json")
            .map_err(failed)?;
        headers.set("accept", "text/event-stream").map_err(failed)?;
        if let Some(key) = &self.api_key {
            headers
                .set("authorization", &format!("Bearer {key}"))
                .map_err(failed)?;
        }
        if let Some(hint) = &self.route_hint {
            headers.set("x-fm-route-hint", hint).map_err(failed)?;
        }
        let init = RequestInit::new();
        init.set_method("POST");
        init.set_headers(&headers);
        init.set_body(&JsValue::from_str(body));
        init.set_signal(Some(&abort.signal()));
        let url = format!("{}/v1/chat/stream", self.base_url);
        let request = Request::new_with_str_and_init(&url, &init).map_err(failed)?;
        let response: Response = JsFuture::from(global_fetch(&request))
            .await
            .map_err(failed)?
            .dyn_into()
            .map_err(failed)?;
        if !response.ok() {
            return Err(error_answer(&response).await);
        }
        read_sse_body(&response, &mut |frame| {
            let event = frame
                .stream_event()
                .map_err(|err| IdeError::Protocol(format!("an event was not readable: {err}")))?;
            Ok(match on_event(event) {
                // The answer ended: the body is let go of.
                true => ControlFlow::Break(()),
                false => ControlFlow::Continue(()),
            })
        })
        .await
        .map_err(|err| match err {
            BodyError::Unreadable => IdeError::Protocol("the answer has no readable body".into()),
            BodyError::Js(err) => failed(err),
            BodyError::Frame(err) => err,
            BodyError::TooLarge(err) => IdeError::Protocol(err.to_string()),
        })
    }

    /// `GET /v1/ws`: the request as one text frame, the events as text frames back.
    async fn stream_ws(
        &self,
        body: &str,
        abort: &AbortController,
        on_event: &mut dyn FnMut(StreamEvent) -> bool,
    ) -> Result<(), IdeError> {
        let has_websocket = Reflect::has(&js_sys::global(), &"WebSocket".into()).unwrap_or(false);
        if !has_websocket {
            return Err(IdeError::Unsupported(
                "this host has no WebSocket (Node before 22 needs --experimental-websocket): use \
                 the sse transport"
                    .into(),
            ));
        }
        let url = format!(
            "{}/v1/ws",
            self.base_url
                .replacen("https://", "wss://", 1)
                .replacen("http://", "ws://", 1)
        );
        let protocols = js_sys::Array::of1(&"fm-relay".into());
        if let Some(key) = &self.api_key {
            protocols.push(&JsValue::from_str(key));
        }
        let failed = |err: JsValue| transport_error(abort, err);
        let socket = WebSocket::new_with_str_sequence(&url, &protocols).map_err(failed)?;
        let (sender, mut frames) = futures_channel::mpsc::unbounded::<Option<String>>();
        let on_message = {
            let sender = sender.clone();
            Closure::<dyn FnMut(MessageEvent)>::new(move |event: MessageEvent| {
                let _ = sender.unbounded_send(event.data().as_string());
            })
        };
        let on_close = {
            let sender = sender.clone();
            Closure::<dyn FnMut(CloseEvent)>::new(move |_: CloseEvent| {
                let _ = sender.unbounded_send(None);
            })
        };
        let on_open = {
            let socket = socket.clone();
            let body = body.to_string();
            Closure::<dyn FnMut()>::new(move || {
                let _ = socket.send_with_str(&body);
            })
        };
        let on_abort = {
            let socket = socket.clone();
            Closure::<dyn FnMut()>::new(move || {
                let _ = socket.close();
            })
        };
        socket.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        socket.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        socket.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        abort
            .signal()
            .set_onabort(Some(on_abort.as_ref().unchecked_ref()));
        let result = loop {
            match frames.next().await.flatten() {
                Some(text) => {
                    let event: StreamEvent = match serde_json::from_str(&text) {
                        Ok(event) => event,
                        Err(err) => {
                            break Err(IdeError::Protocol(format!(
                                "an event was not readable: {err}"
                            )));
                        }
                    };
                    if on_event(event) {
                        break Ok(());
                    }
                }
                // Closed: by the relay, the network, or a cancel.
                None if abort.signal().aborted() => break Err(IdeError::Cancelled),
                None => break Ok(()),
            }
        };
        socket.set_onmessage(None);
        socket.set_onclose(None);
        socket.set_onopen(None);
        abort.signal().set_onabort(None);
        let _ = socket.close();
        result
    }
}

/// The error a non-2xx answer carries.
async fn error_answer(response: &Response) -> IdeError {
    match error_body(response).await {
        Ok(body) => IdeError::Relay {
            code: body.error.code,
            message: body.error.message,
            retryable: body.error.retryable,
        },
        Err(status) => IdeError::Relay {
            code: fm_protocol::ErrorCode::Unknown,
            message: format!("the relay answered {status}"),
            retryable: status >= 500 || status == 429,
        },
    }
}
