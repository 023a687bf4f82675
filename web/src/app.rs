//! The app shell: a navigation bar and three pages, the chat (`#/`), the TTFT dashboard
//! (`#/dashboard`) and the documents (`#/documents`), chosen by the address's fragment so links,
//! reloads and the back button work without a router. Every page stays mounted (the hidden ones
//! are only hidden), so an answer keeps streaming while the dashboard is open and document jobs
//! keep being followed while the chat is.

use leptos::prelude::*;

use crate::chat::ChatPage;
use crate::dashboard::DashboardPage;
use crate::documents::DocumentsPage;
use crate::history::History;

/// The pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    Chat,
    Dashboard,
    Documents,
}

impl Page {
    /// The page an address fragment names (anything unknown is the chat).
    pub fn from_hash(hash: &str) -> Page {
        match hash.trim_start_matches('#').trim_start_matches('/') {
            "dashboard" => Page::Dashboard,
            "documents" => Page::Documents,
            _ => Page::Chat,
        }
    }
}

fn current_page() -> Page {
    let hash = web_sys::window()
        .and_then(|window| window.location().hash().ok())
        .unwrap_or_default();
    Page::from_hash(&hash)
}

/// The whole page.
#[component]
pub fn App() -> impl IntoView {
    let page = RwSignal::new(current_page());
    let handle = window_event_listener(leptos::ev::hashchange, move |_| page.set(current_page()));
    on_cleanup(move || handle.remove());
    let history = History::load();
    let link = move |target: Page, href: &'static str, label: &'static str| {
        view! {
            <a
                href=href
                aria-current=move || (page.get() == target).then_some("page")
            >
                {label}
            </a>
        }
    };
    view! {
        <nav class="top" aria-label="Pages">
            <span class="brand">"FM Relay"</span>
            {link(Page::Chat, "#/", "Chat")}
            {link(Page::Dashboard, "#/dashboard", "TTFT dashboard")}
            {link(Page::Documents, "#/documents", "Documents")}
        </nav>
        <div class="page" hidden=move || page.get() != Page::Chat>
            <ChatPage history=history />
        </div>
        <div class="page" hidden=move || page.get() != Page::Dashboard>
            <DashboardPage history=history shown=Signal::derive(move || page.get() == Page::Dashboard) />
        </div>
        <div class="page" hidden=move || page.get() != Page::Documents>
            <DocumentsPage shown=Signal::derive(move || page.get() == Page::Documents) />
        </div>
    }
}
