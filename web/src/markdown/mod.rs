//! Answers as Markdown: [`parse`] reads the text into a small tree, and the tree becomes DOM
//! nodes (never HTML strings, so a model's output cannot inject markup: raw HTML shows as text and
//! only `http`, `https` and `mailto` links are live). Fenced code blocks get a language label and
//! a copy button.
//!
//! While an answer streams it is parsed again on every delta (cheap next to the network), and the
//! top-level blocks are keyed by position and content, so only the block still growing is built
//! again: earlier paragraphs and code blocks keep their DOM nodes (and a copy button its state).

pub mod parse;

use js_sys::{Function, Reflect};
use leptos::prelude::*;
use leptos::tachys::html::element::custom;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

pub use parse::{Block, Element, Node, parse_blocks};

/// `text` rendered as Markdown, block by block.
#[component]
pub fn Markdown(#[prop(into)] text: Signal<String>) -> impl IntoView {
    let blocks = Memo::new(move |_| text.with(|text| parse_blocks(text)));
    view! {
        <For each=move || blocks.get() key=|block| block.key let:block>
            {render(block.node)}
        </For>
    }
}

fn render_all(nodes: Vec<Node>) -> Vec<AnyView> {
    nodes.into_iter().map(render).collect()
}

fn render(node: Node) -> AnyView {
    match node {
        Node::Text(text) => text.into_any(),
        Node::InlineCode(code) => view! { <code>{code}</code> }.into_any(),
        Node::CodeBlock { language, code } => {
            view! { <CodeBlock language=language code=code /> }.into_any()
        }
        Node::SoftBreak => " ".into_any(),
        Node::HardBreak => view! { <br /> }.into_any(),
        Node::Rule => view! { <hr /> }.into_any(),
        Node::Element { kind, children } => {
            let children = render_all(children);
            let tag = match kind {
                Element::Paragraph => "p",
                Element::Heading(level) => HEADINGS[usize::from(level.clamp(1, 6)) - 1],
                Element::BlockQuote => "blockquote",
                Element::List {
                    first_number: Some(start),
                } => return view! { <ol start=start>{children}</ol> }.into_any(),
                Element::List { first_number: None } => "ul",
                Element::Item => "li",
                Element::Emphasis => "em",
                Element::Strong => "strong",
                Element::Strikethrough => "s",
                Element::Link { href } => {
                    return view! {
                        <a href=href target="_blank" rel="noopener noreferrer">{children}</a>
                    }
                    .into_any();
                }
                Element::Table => "table",
                Element::TableHead => {
                    return view! { <thead><tr>{children}</tr></thead> }.into_any();
                }
                Element::TableRow => "tr",
                Element::TableCell { header: true } => "th",
                Element::TableCell { header: false } => "td",
                Element::Plain => return children.into_any(),
            };
            // One code path for every plain element keeps the WASM small.
            custom(tag).child(children).into_any()
        }
    }
}

const HEADINGS: [&str; 6] = ["h1", "h2", "h3", "h4", "h5", "h6"];

/// How long the copy button says "Copied" (or "Copy failed").
const COPIED_LABEL_FOR: std::time::Duration = std::time::Duration::from_secs(2);

/// What the copy button last did.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Copied {
    Not,
    Done,
    Failed,
}

/// A fenced code block: monospace, its language named above it, and a button that copies it.
#[component]
fn CodeBlock(language: String, code: String) -> impl IntoView {
    let copied = RwSignal::new(Copied::Not);
    let label = if language.is_empty() {
        "text".to_string()
    } else {
        language.clone()
    };
    let aria_label = format!("Copy the {label} code");
    let to_copy = code.clone();
    let copy = move |_| {
        let text = to_copy.clone();
        leptos::task::spawn_local(async move {
            let outcome = if copy_to_clipboard(&text).await {
                Copied::Done
            } else {
                Copied::Failed
            };
            copied.set(outcome);
            // The label goes back after a moment, ready for another copy.
            set_timeout(
                move || {
                    let _ = copied.try_set(Copied::Not);
                },
                COPIED_LABEL_FOR,
            );
        });
    };
    view! {
        <figure class="code-block" data-language=language.clone()>
            <figcaption>
                <span class="language">{label}</span>
                <button type="button" class="copy" aria-label=aria_label on:click=copy>
                    {move || match copied.get() {
                        Copied::Not => "Copy",
                        Copied::Done => "Copied",
                        Copied::Failed => "Copy failed",
                    }}
                </button>
            </figcaption>
            <pre><code class=format!("language-{language}")>{code}</code></pre>
        </figure>
    }
}

/// `navigator.clipboard.writeText(text)`, looked up at run time (the Clipboard API is behind an
/// unstable flag in web-sys); false when the browser has no clipboard access or refuses it.
async fn copy_to_clipboard(text: &str) -> bool {
    let Some(window) = web_sys::window() else {
        return false;
    };
    let Ok(clipboard) = Reflect::get(&window.navigator(), &"clipboard".into()) else {
        return false;
    };
    if clipboard.is_undefined() {
        return false;
    }
    let Ok(write_text) = Reflect::get(&clipboard, &"writeText".into()) else {
        return false;
    };
    let Ok(write_text) = write_text.dyn_into::<Function>() else {
        return false;
    };
    match write_text.call1(&clipboard, &JsValue::from_str(text)) {
        Ok(promise) => JsFuture::from(js_sys::Promise::resolve(&promise))
            .await
            .is_ok(),
        Err(_) => false,
    }
}
