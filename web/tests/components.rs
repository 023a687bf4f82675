//! Component tests in a real browser (`cargo test -p fm-web --target wasm32-unknown-unknown`,
//! run by wasm-bindgen-test-runner in headless Chromium): the page's pieces mounted on their own,
//! driven through the DOM as a user would. Built for wasm32 only: natively there is no browser.

#![cfg(target_arch = "wasm32")]

use fm_web::chat::{ChatPage, TurnView};
use fm_web::dashboard::DashboardPage;
use fm_web::history::{Ending, History, MAX_SAMPLES, Sample};
use fm_web::store::Turn;
use leptos::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};
use web_sys::{HtmlElement, HtmlTextAreaElement};

wasm_bindgen_test_configure!(run_in_browser);

mod common;
use common::*;

#[wasm_bindgen_test]
async fn a_streamed_answer_grows_in_the_dom() {
    let root = container();
    let turn = Turn::new(1, "Say hello".into());
    let _mounted = leptos::mount::mount_to(root.clone(), move || {
        view! { <TurnView turn=turn on_retry=Callback::new(|_| {}) /> }
    });
    let mut seen = Vec::new();
    for piece in ["Hello", " there,", " friend."] {
        turn.answer.update(|answer| answer.push_str(piece));
        settle().await;
        seen.push(text_of(&root, ".answer"));
    }
    assert_eq!(seen, ["Hello", "Hello there,", "Hello there, friend."]);
    let answer = find(&root, ".answer");
    assert_eq!(answer.get_attribute("aria-live").as_deref(), Some("polite"));
    assert_eq!(answer.get_attribute("aria-busy").as_deref(), Some("true"));
}

#[wasm_bindgen_test]
async fn a_code_block_renders_with_its_language_and_a_copy_button_while_text_above_it_stays() {
    let root = container();
    let turn = Turn::new(2, "Show code".into());
    let _mounted = leptos::mount::mount_to(root.clone(), move || {
        view! { <TurnView turn=turn on_retry=Callback::new(|_| {}) /> }
    });
    turn.answer
        .set("Here is **the** code:\n\n```rust\nfn main() {".into());
    settle().await;
    let paragraph = find(&root, ".answer p");
    assert_eq!(find(&paragraph, "strong").text_content().unwrap(), "the");
    // The fence is still open: it already shows as code.
    assert_eq!(text_of(&root, "figure.code-block pre code"), "fn main() {");

    turn.answer
        .update(|answer| answer.push_str("}\n```\n\nDone <b>now</b>."));
    settle().await;
    let block = find(&root, "figure.code-block");
    assert_eq!(
        block.get_attribute("data-language").as_deref(),
        Some("rust")
    );
    assert_eq!(text_of(&block, ".language"), "rust");
    assert_eq!(text_of(&block, "pre code"), "fn main() {}\n");
    assert_eq!(
        find(&block, "pre code").class_name(),
        "language-rust",
        "the code element names its language"
    );
    let copy = find(&block, "button.copy");
    assert_eq!(copy.text_content().unwrap(), "Copy");
    assert_eq!(
        copy.get_attribute("aria-label").as_deref(),
        Some("Copy the rust code")
    );
    // The paragraph above did not change, so its DOM node was kept.
    assert!(paragraph.is_same_node(Some(&find(&root, ".answer p"))));
    // Raw HTML in an answer is text, never markup.
    assert!(
        root.query_selector(".answer b").unwrap().is_none(),
        "{}",
        root.inner_html()
    );
    assert!(text_of(&root, ".answer").contains("Done <b>now</b>."));
}

#[wasm_bindgen_test]
async fn validation_errors_show_before_anything_is_sent() {
    let root = container();
    let history = History::load();
    let _mounted =
        leptos::mount::mount_to(root.clone(), move || view! { <ChatPage history=history /> });
    settle().await;
    // A message longer than the protocol allows: the page's own validation refuses it.
    let prompt: HtmlTextAreaElement = find(&root, "textarea#prompt").unchecked_into();
    prompt.set_value(&"x".repeat(fm_protocol::limits::MAX_CONTENT_CHARS + 1));
    prompt
        .dispatch_event(&web_sys::Event::new("input").unwrap())
        .unwrap();
    let init = web_sys::KeyboardEventInit::new();
    init.set_key("Enter");
    init.set_cancelable(true);
    prompt
        .dispatch_event(
            &web_sys::KeyboardEvent::new_with_keyboard_event_init_dict("keydown", &init).unwrap(),
        )
        .unwrap();
    settle().await;
    let alert = find(&root, ".validation[role=alert]");
    assert!(
        alert.text_content().unwrap().contains("content"),
        "the error names the field: {}",
        alert.text_content().unwrap()
    );
    assert!(
        root.query_selector(".turn").unwrap().is_none(),
        "nothing was sent"
    );
}

#[wasm_bindgen_test]
fn the_latency_history_is_bounded_and_survives_a_reload() {
    let history = History::load();
    history.clear();
    for i in 0..MAX_SAMPLES + 5 {
        history.record(Sample {
            at_ms: i as f64,
            model: "m".into(),
            transport: Default::default(),
            ending: Ending::Done,
            ttft_ms: Some(1.0),
            total_ms: Some(2.0),
            server_ttft_ms: Some(0.5),
            server_total_ms: Some(1.5),
        });
    }
    let reloaded = History::load();
    let samples = reloaded.0.get_untracked();
    assert_eq!(samples.len(), MAX_SAMPLES);
    assert_eq!(samples[0].at_ms, 5.0, "the oldest went first");
    history.clear();
    assert!(History::load().0.get_untracked().is_empty());
}

#[wasm_bindgen_test]
async fn the_dashboard_summarises_and_charts_the_history_and_clears_it() {
    let history = History::load();
    history.clear();
    let now = js_sys::Date::now();
    for (i, (model, ttft)) in [("alpha", 40.0), ("alpha", 60.0), ("beta", 25.0)]
        .into_iter()
        .enumerate()
    {
        history.record(Sample {
            at_ms: now - 1000.0 * (3 - i) as f64,
            model: model.into(),
            transport: Default::default(),
            ending: Ending::Done,
            ttft_ms: Some(ttft),
            total_ms: Some(ttft * 10.0),
            server_ttft_ms: Some(ttft - 2.0),
            server_total_ms: Some(ttft * 10.0 - 2.0),
        });
    }
    // An hour-old request is outside the default 15-minute window.
    history.record(Sample {
        at_ms: now - 3_600_000.0,
        model: "old".into(),
        transport: Default::default(),
        ending: Ending::Done,
        ttft_ms: Some(1.0),
        total_ms: Some(1.0),
        server_ttft_ms: None,
        server_total_ms: None,
    });
    let root = container();
    let _mounted = leptos::mount::mount_to(root.clone(), move || {
        // Not shown: the relay is not asked (there is none here), the history is still summarised.
        view! { <DashboardPage history=history shown=false /> }
    });
    settle().await;
    let alpha = find(&root, "tr[data-model=alpha]");
    assert_eq!(text_of(&alpha, ".ttft-browser"), "40 / 60 / 60 ms");
    assert_eq!(text_of(&alpha, ".gap"), "2.0 ms");
    assert_eq!(
        text_of(&alpha, "td"),
        "2 / 0",
        "browser / relay request counts"
    );
    assert!(
        root.query_selector("tr[data-model=beta]")
            .unwrap()
            .is_some()
    );
    assert!(
        root.query_selector("tr[data-model=old]").unwrap().is_none(),
        "outside the window"
    );
    let bars = root.query_selector_all("svg rect.bar").unwrap().length();
    assert!(
        bars >= 3,
        "histogram bars for both models and the relay: {bars}"
    );
    assert_eq!(
        root.query_selector_all("svg circle.point")
            .unwrap()
            .length(),
        3,
        "one point per request in the window"
    );

    let clear: HtmlElement = root
        .query_selector_all("button")
        .unwrap()
        .get(1)
        .unwrap()
        .unchecked_into();
    assert_eq!(clear.text_content().unwrap(), "Clear history");
    clear.click();
    settle().await;
    assert!(text_of(&root, "table.summary").contains("No requests in this window yet."));
    assert!(History::load().0.get_untracked().is_empty());
}
