//! The chat page: model, routing-hint and transport pickers (the models and hints from
//! `/v1/models`; "Automatic" names no model, so the relay's routing policy picks one), the
//! conversation with each answer growing token by token as Markdown (announced to screen readers
//! through `aria-live`), the facts under each answer (model, time to first token in the browser
//! and at the relay, tokens per second, total time, usage, source and route reason), inline
//! errors with a retry, and a composer where Enter sends, Shift+Enter adds a line, and Stop
//! cancels the answer being streamed. Every finished request is added to the latency
//! [`History`] the dashboard reads.

use fm_protocol::{ChatRequest, ModelInfo, ResponseSource, StreamEvent, validate_chat_request};
use leptos::prelude::*;
use leptos::task::spawn_local;
use web_sys::AbortController;

use crate::api::{self, CallError, Transport};
use crate::history::{Ending, History, Sample};
use crate::markdown::Markdown;
use crate::store::{self, Facts, Turn, TurnState};

/// The page.
#[component]
pub fn ChatPage(history: History) -> impl IntoView {
    let turns = RwSignal::new(store::load());
    let next_id = StoredValue::new(
        turns
            .get_untracked()
            .iter()
            .map(|t| t.id)
            .max()
            .unwrap_or(0)
            + 1,
    );
    let models = RwSignal::new(Vec::<ModelInfo>::new());
    // Empty: no model named, so the relay's routing policy picks one.
    let model = RwSignal::new(String::new());
    let hints = RwSignal::new(Vec::<String>::new());
    let hint = RwSignal::new(String::new());
    let transport = RwSignal::new(store::load_transport());
    if transport.get_untracked() == Transport::WebSocket {
        api::warm_up_socket();
    }
    let draft = RwSignal::new(String::new());
    // The relay answered 401: the key field is shown open, with why.
    let needs_key = RwSignal::new(None::<String>);
    let key_draft = RwSignal::new(api::api_key().unwrap_or_default());
    let validation = RwSignal::new(None::<String>);
    // The call in flight, to stop it.
    let current = StoredValue::new_local(None::<AbortController>);
    let streaming = RwSignal::new(false);

    let load_models = move || {
        spawn_local(async move {
            match api::models().await {
                Ok(list) => {
                    hints.set(list.hints);
                    models.set(list.data);
                }
                Err(CallError::Unauthorized(message)) => needs_key.set(Some(message)),
                Err(_) => {}
            }
        });
    };
    load_models();
    let save_key = move || {
        api::set_api_key(&key_draft.get_untracked());
        needs_key.set(None);
        load_models();
    };

    // Sends `prompt` as a new turn (or as `retry` of a failed one).
    let send = move |prompt: String, retry: Option<Turn>| {
        let messages = turns.with_untracked(|all| {
            let before: Vec<Turn> = all
                .iter()
                .copied()
                .take_while(|t| retry.is_none_or(|r| r.id != t.id))
                .collect();
            store::history_for(&before, &prompt)
        });
        let request = ChatRequest {
            messages,
            model: Some(model.get_untracked()).filter(|m| !m.is_empty()),
            routing_hint: Some(hint.get_untracked()).filter(|h| !h.trim().is_empty()),
            ..ChatRequest::default()
        };
        let known = models.get_untracked();
        let checked = validate_chat_request(&request, |id| {
            known.is_empty() || known.iter().any(|m| m.id == id)
        });
        if let Err(err) = checked {
            validation.set(Some(err.to_string()));
            return;
        }
        validation.set(None);
        let turn = match retry {
            Some(turn) => {
                turn.answer.set(String::new());
                turn.state.set(TurnState::Streaming);
                turn.facts.set(Facts::default());
                turn
            }
            None => {
                let id = next_id.get_value();
                next_id.set_value(id + 1);
                let turn = Turn::new(id, prompt);
                turns.update(|all| all.push(turn));
                turn
            }
        };
        turns.with_untracked(|all| store::save(all));
        let Ok(abort) = AbortController::new() else {
            turn.state.set(TurnState::Failed(
                "the browser cannot cancel requests".into(),
            ));
            return;
        };
        current.set_value(Some(abort.clone()));
        streaming.set(true);
        let via = transport.get_untracked();
        // The model a failed request is filed under when no model answered.
        let asked_model = request
            .model
            .clone()
            .unwrap_or_else(|| "(default model)".to_string());
        spawn_local(async move {
            let sent_at_ms = js_sys::Date::now();
            let sent = api::now_ms();
            turn.facts.update(|facts| facts.transport = via);
            let mut first_text_seen = false;
            let outcome = api::stream_chat(via, &request, &abort, |event| match event {
                StreamEvent::Start { model, .. } => turn.facts.update(|facts| facts.model = model),
                StreamEvent::TextDelta { text } => {
                    turn.answer.update(|answer| answer.push_str(&text));
                    if !first_text_seen {
                        first_text_seen = true;
                        // Measured in a task queued after the DOM update the new text scheduled,
                        // so the time includes putting the text on the page.
                        spawn_local(async move {
                            let ttft = api::now_ms() - sent;
                            turn.facts.update(|facts| facts.ttft_ms = Some(ttft));
                        });
                    }
                }
                StreamEvent::Usage { usage } => {
                    turn.facts.update(|facts| facts.usage = Some(usage))
                }
                StreamEvent::Failover {
                    discard_partial: true,
                    ..
                } => turn.answer.set(String::new()),
                StreamEvent::Done {
                    usage,
                    route,
                    degraded,
                    timings,
                    ..
                } => {
                    turn.facts.update(|facts| {
                        // Absent when the upstream reported none: shown as unknown.
                        facts.usage = usage.or(facts.usage);
                        facts.model = route.model;
                        facts.region = route.region;
                        facts.source = Some(route.source);
                        facts.route_reason = route.reason;
                        facts.degraded = degraded;
                        facts.server_ttft_ms = timings.ttft_ms;
                        facts.server_total_ms = Some(timings.total_ms);
                        facts.total_ms = Some(api::now_ms() - sent);
                    });
                    turn.state.set(TurnState::Done);
                }
                StreamEvent::Error { message, .. } => {
                    turn.facts
                        .update(|facts| facts.total_ms = Some(api::now_ms() - sent));
                    turn.state.set(TurnState::Failed(message));
                }
                // A failover that keeps the text; tool calls (with fm-protocol's `tools`
                // feature, which a workspace build turns on): the page offers no tools.
                _ => {}
            })
            .await;
            match outcome {
                Err(CallError::Aborted) => turn.state.set(TurnState::Stopped),
                Err(CallError::Failed(message)) => turn.state.set(TurnState::Failed(message)),
                Err(CallError::Unauthorized(message)) => {
                    needs_key.set(Some(message.clone()));
                    turn.state.set(TurnState::Failed(format!(
                        "{message}: enter an API key above (it is kept in this browser)"
                    )));
                }
                Ok(()) if turn.state.get_untracked() == TurnState::Streaming => turn
                    .state
                    .set(TurnState::Failed("the answer broke off".into())),
                Ok(()) => {}
            }
            current.set_value(None);
            streaming.set(false);
            turns.with_untracked(|all| store::save(all));
            // Queued behind the TTFT measurement, which may still be pending.
            spawn_local(async move {
                let facts = turn.facts.get_untracked();
                let ending = match turn.state.get_untracked() {
                    TurnState::Done => Ending::Done,
                    TurnState::Stopped => Ending::Stopped,
                    _ => Ending::Failed,
                };
                let complete = ending == Ending::Done && !facts.degraded;
                history.record(Sample {
                    at_ms: sent_at_ms,
                    model: if facts.model.is_empty() {
                        asked_model
                    } else {
                        facts.model
                    },
                    transport: via,
                    ending,
                    ttft_ms: facts.ttft_ms,
                    total_ms: facts.total_ms.filter(|_| complete),
                    server_ttft_ms: facts.server_ttft_ms,
                    server_total_ms: facts.server_total_ms.filter(|_| complete),
                });
            });
        });
    };

    let submit = move || {
        let prompt = draft.get_untracked();
        if prompt.trim().is_empty() || streaming.get_untracked() {
            return;
        }
        draft.set(String::new());
        send(prompt, None);
    };
    let stop = move |_| {
        if let Some(abort) = current.get_value() {
            abort.abort();
        }
    };
    let clear = move |_| {
        turns.set(Vec::new());
        store::clear();
    };

    view! {
        <main>
            <header>
                <label>
                    "Model"
                    <select
                        aria-label="Model"
                        prop:value=move || model.get()
                        on:change=move |ev| model.set(event_target_value(&ev))
                    >
                        <Show when=move || models.with(|m| !m.is_empty())>
                            <option value="" selected=move || model.get().is_empty()>
                                "Automatic (the relay's routing)"
                            </option>
                        </Show>
                        <For each=move || models.get() key=|m| m.id.clone() let:info>
                            <option value=info.id.clone() selected=move || model.get() == info.id>
                                {format!(
                                    "{} ({}, {}{})",
                                    info.id,
                                    info.tier.as_str(),
                                    info.region,
                                    if info.default { ", default" } else { "" },
                                )}
                            </option>
                        </For>
                    </select>
                </label>
                <label>
                    "Routing hint"
                    <select
                        aria-label="Routing hint"
                        prop:value=move || hint.get()
                        on:change=move |ev| hint.set(event_target_value(&ev))
                    >
                        <option value="" selected=move || hint.get().is_empty()>"None"</option>
                        <For each=move || hints.get() key=|h| h.clone() let:name>
                            <option value=name.clone() selected=move || hint.get() == name>
                                {name.clone()}
                            </option>
                        </For>
                    </select>
                </label>
                <label>
                    "Transport"
                    <select
                        aria-label="Transport"
                        on:change=move |ev| {
                            if let Some(chosen) = Transport::from_id(&event_target_value(&ev)) {
                                transport.set(chosen);
                                store::save_transport(chosen);
                                if chosen == Transport::WebSocket {
                                    api::warm_up_socket();
                                }
                            }
                        }
                    >
                        {Transport::ALL
                            .into_iter()
                            .map(|t| view! { <option value=t.id() selected=move || transport.get() == t>{t.label()}</option> })
                            .collect_view()}
                    </select>
                </label>
                <form
                    class="api-key"
                    class:needs-key=move || needs_key.get().is_some()
                    on:submit=move |ev| { ev.prevent_default(); save_key(); }
                >
                    <label>
                        "API key"
                        <input
                            type="password"
                            autocomplete="off"
                            placeholder="fmr_… (if the relay needs one)"
                            prop:value=move || key_draft.get()
                            on:input=move |ev| key_draft.set(event_target_value(&ev))
                        />
                    </label>
                    <button type="submit">"Use key"</button>
                </form>
                <button type="button" on:click=clear>"New conversation"</button>
            </header>
            {move || needs_key.get().map(|message| view! {
                <p class="needs-key" role="alert">
                    {format!("The relay refused the request: {message}. Enter an API key above; it is kept in this browser only.")}
                </p>
            })}
            <section class="conversation" aria-label="Conversation">
                <For each=move || turns.get() key=|turn| turn.id let:turn>
                    <TurnView
                        turn=turn
                        on_retry=Callback::new(move |turn: Turn| send(turn.prompt.get_untracked(), Some(turn)))
                    />
                </For>
            </section>
            {move || validation.get().map(|message| view! { <p class="validation" role="alert">{message}</p> })}
            <form class="composer" on:submit=move |ev| { ev.prevent_default(); submit(); }>
                <label for="prompt" class="visually-hidden" style="position:absolute;left:-10000px">"Message"</label>
                <textarea
                    id="prompt"
                    placeholder="Ask something (Enter sends, Shift+Enter adds a line)"
                    prop:value=move || draft.get()
                    on:input=move |ev| draft.set(event_target_value(&ev))
                    on:keydown=move |ev: leptos::ev::KeyboardEvent| {
                        if ev.key() == "Enter" && !ev.shift_key() {
                            ev.prevent_default();
                            submit();
                        }
                    }
                ></textarea>
                <Show
                    when=move || streaming.get()
                    fallback=|| view! { <button type="submit">"Send"</button> }
                >
                    <button type="button" class="stop" on:click=stop>"Stop"</button>
                </Show>
            </form>
        </main>
    }
}

/// One turn: the prompt, the answer as it grows, and its facts or its error.
#[component]
pub fn TurnView(turn: Turn, on_retry: Callback<Turn>) -> impl IntoView {
    let failed = move || match turn.state.get() {
        TurnState::Failed(message) => Some(message),
        _ => None,
    };
    view! {
        <article class="turn" data-state=move || state_name(&turn.state.get())>
            <div class="prompt">{move || turn.prompt.get()}</div>
            <div class="answer" aria-live="polite" aria-busy=move || (turn.state.get() == TurnState::Streaming).to_string()>
                <Markdown text=turn.answer />
            </div>
            <FactsView turn=turn />
            {move || failed().map(|message| view! {
                <div class="error" role="alert">
                    <span>{message}</span>
                    " "
                    <button type="button" on:click=move |_| on_retry.run(turn)>"Retry"</button>
                </div>
            })}
            {move || (turn.state.get() == TurnState::Stopped).then(|| view! { <div class="facts">"stopped"</div> })}
            {move || (turn.state.get() == TurnState::Interrupted).then(|| view! { <div class="facts">"interrupted by a reload"</div> })}
        </article>
    }
}

/// The facts measured about an answer.
#[component]
fn FactsView(turn: Turn) -> impl IntoView {
    view! {
        <div class="facts">
            {move || {
                let facts = turn.facts.get();
                let mut parts: Vec<String> = Vec::new();
                if !facts.model.is_empty() {
                    parts.push(format!("model {}", facts.model));
                }
                match (facts.ttft_ms, facts.server_ttft_ms) {
                    (Some(ttft), Some(relay)) => parts.push(format!("TTFT {ttft:.0} ms (relay {relay:.0} ms)")),
                    (Some(ttft), None) => parts.push(format!("TTFT {ttft:.0} ms")),
                    _ => {}
                }
                if let Some(rate) = facts.tokens_per_second() {
                    parts.push(format!("{rate:.0} tokens/s"));
                }
                if let Some(total) = facts.total_ms {
                    parts.push(format!("total {total:.0} ms"));
                }
                match facts.usage {
                    Some(usage) => parts.push(format!("{} in / {} out tokens", usage.input_tokens, usage.output_tokens)),
                    // The answer is complete (it has a source) but the upstream reported no usage.
                    None if facts.source.is_some() => parts.push("usage not reported".into()),
                    None => {}
                }
                if let Some(source) = facts.source {
                    parts.push(format!("source {}", source_name(source)));
                }
                if facts.degraded {
                    parts.push("degraded answer".into());
                }
                if !facts.model.is_empty() {
                    parts.push(format!("via {}", facts.transport.label()));
                }
                let reason = (!facts.route_reason.is_empty())
                    .then(|| view! { <span class="route-reason">{format!("route: {}", facts.route_reason)}</span> });
                view! {
                    {parts.into_iter().map(|part| view! { <span>{part}</span> }).collect_view()}
                    {reason}
                }
            }}
        </div>
    }
}

fn state_name(state: &TurnState) -> &'static str {
    match state {
        TurnState::Streaming => "streaming",
        TurnState::Done => "done",
        TurnState::Stopped => "stopped",
        TurnState::Failed(_) => "failed",
        TurnState::Interrupted => "interrupted",
    }
}

fn source_name(source: ResponseSource) -> &'static str {
    match source {
        ResponseSource::Primary => "primary",
        ResponseSource::FallbackRegion => "fallback region",
        ResponseSource::FallbackModel => "fallback model",
        ResponseSource::Cache => "cache",
        ResponseSource::Degraded => "degraded",
    }
}
