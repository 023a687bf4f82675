//! The documents page (`#/documents`): send documents to the relay's background analysis
//! (`/v1/jobs`) and watch the caller's jobs live.
//!
//! Files come from a drop zone (a drop anywhere on the page counts) or a file picker, several at
//! once (one job each), with the analysis (summarize; extract with a comma-separated field list;
//! classify with labels; qa with a question), a priority and, for a file whose name says
//! nothing, its format. The form is checked with `fm_protocol::validate_job_request` (the
//! relay's own rules) before anything is sent, and a file the relay refuses (too large, empty,
//! unreadable, of a type it does not read) is named with the relay's reason by the drop zone.
//!
//! The list is the caller's jobs, newest first, read whenever the page is shown. Unfinished jobs
//! are followed live through their `status` event streams — at most [`MAX_STREAMS`] at once,
//! since every stream holds one of the six HTTP/1.1 connections a browser opens to a host (the
//! others, and a job whose stream broke, are brought up to date by reading the list again every
//! few seconds while the page is shown). A completed job shows its answer through the chat's
//! Markdown renderer (an extraction's fields as a JSON block, a classification's label), the
//! chunks covered and the model; a failed one its error; a queued or running one a Cancel
//! button. A job's name is the one the relay keeps (`document_name`, an upload's file name);
//! for jobs of relays from before that, the page's own record, per job id, in `localStorage`
//! ([`FILE_NAMES_KEY`]).
//!
//! **Written against the DOM, not as Leptos views.** The page's fixed markup is HTML text (words
//! and form controls, no data: [`PAGE_HTML`], [`ROW_HTML`]); one listener on the page's root
//! handles its events, and the parts that change are written with `web-sys` calls. Measured with
//! `trunk build --release` (gzipped WASM, against the 256 000-byte budget, 224 698 bytes before
//! this page): the same page as Leptos views — a reactive binding per changing part, a component
//! per row — added 45 KB, more than the budget left; this one adds 26 KB. The app still mounts
//! it as a component ([`DocumentsPage`]), and a result's Markdown is the chat's component,
//! mounted into its row.

use std::cell::RefCell;
use std::rc::{Rc, Weak};
use std::time::Duration;

use fm_protocol::{
    AnalysisType, DocumentFormat, JobInfo, JobProgress, JobRequest, JobStatus, Priority,
    validate_job_request,
};
use leptos::prelude::*;
use leptos::task::spawn_local;
use wasm_bindgen::JsCast;
use wasm_bindgen::closure::Closure;
use web_sys::{
    AbortController, DragEvent, Element, Event, File, FileList, FormData, HtmlFormElement,
    HtmlInputElement, HtmlSelectElement, Node,
};

use crate::api::{self, CallError, JobAnswer};
use crate::markdown::Markdown;
use crate::store::local_storage;

/// Job event streams open at once (a browser opens six HTTP/1.1 connections to a host; the
/// rest are for uploads, results and the chat).
pub const MAX_STREAMS: usize = 3;

/// How often, while the page is shown, the times move on and the list is reloaded when an
/// unfinished job is not followed.
const REFRESH: Duration = Duration::from_secs(5);

/// Where the file names of the jobs sent from this browser are kept: a line per job,
/// `<id>\t<name>`, oldest first.
pub const FILE_NAMES_KEY: &str = "fm-relay.job-files.v1";

/// File names kept; the oldest go first.
const MAX_FILE_NAMES: usize = 500;

/// The formats the relay reads, as the page names them.
const FORMATS: [(DocumentFormat, &str); 4] = [
    (DocumentFormat::Pdf, "PDF"),
    (DocumentFormat::Text, "Plain text"),
    (DocumentFormat::Markdown, "Markdown"),
    (DocumentFormat::Html, "HTML"),
];

/// The page's fixed markup: the upload form (its values are read from it when it is sent), the
/// drop zone, and the places the list, its notices and errors are written to.
pub const PAGE_HTML: &str = concat!(
    "<h2 id=\"documents-title\">Documents</h2>",
    "<p class=\"explain\">The relay analyses each document in the background, in chunks that fit",
    " a model call; the jobs below update live.</p>",
    "<form class=\"upload\"><div class=\"options\">",
    "<label>Analysis<select name=\"analysis_type\">",
    "<option value=\"summarize\">Summarize</option>",
    "<option value=\"extract\">Extract fields</option>",
    "<option value=\"classify\">Classify</option>",
    "<option value=\"qa\">Answer a question</option></select></label>",
    "<label>Priority<select name=\"priority\">",
    "<option value=\"high\">High</option>",
    "<option value=\"normal\" selected>Normal</option>",
    "<option value=\"low\">Low</option></select></label>",
    "<label>Format<select name=\"format\">",
    "<option value=\"\">From the file's name</option>",
    "<option value=\"pdf\">PDF</option>",
    "<option value=\"text\">Plain text</option>",
    "<option value=\"markdown\">Markdown</option>",
    "<option value=\"html\">HTML</option></select></label>",
    "<label class=\"detail\" hidden><span></span><input type=\"text\" name=\"detail\"></label>",
    "</div><div class=\"drop-zone\">",
    "<p>Drop documents here, or <label class=\"pick\">choose files<input type=\"file\" multiple",
    " accept=\".pdf,.txt,.text,.md,.markdown,.html,.htm,.xhtml,application/pdf,text/plain,",
    "text/markdown,text/html\"></label></p>",
    "<p class=\"hint\">PDF (with a text layer), plain text, Markdown or HTML; one job per file.</p>",
    "<p class=\"chosen\"></p></div>",
    "<div class=\"upload-error\" role=\"alert\" hidden></div>",
    "<button type=\"submit\" disabled>Analyse</button></form>",
    "<div class=\"jobs-bar\"><h3>Your jobs</h3>",
    "<button type=\"button\" class=\"refresh\">Refresh</button></div>",
    "<ul class=\"jobs\"></ul>",
    "<p class=\"error notice\" role=\"alert\" hidden></p>",
    "<p class=\"empty\" hidden>No jobs yet: send a document above.</p>",
    "<button type=\"button\" class=\"older\" hidden>Show older jobs</button>",
);

/// A job's fixed markup (inside its `<li class="job">`).
pub const ROW_HTML: &str = concat!(
    "<div class=\"job-head\"><span class=\"file\"></span><span class=\"kind\"></span>",
    "<span class=\"status\"></span><button type=\"button\" class=\"cancel\">Cancel</button></div>",
    "<div class=\"job-progress\"><progress></progress><span class=\"progress-text\"></span></div>",
    "<div class=\"times\"></div>",
    "<p class=\"job-error\" role=\"alert\" hidden></p>",
    "<p class=\"note\" hidden></p>",
    "<div class=\"outcome\"></div>",
);

/// The name people read for a format.
pub fn format_label(format: DocumentFormat) -> &'static str {
    FORMATS
        .iter()
        .find(|(f, _)| *f == format)
        .map_or("", |(_, label)| label)
}

/// A comma-separated list (fields, labels) as its items, trimmed, blanks dropped.
pub fn split_list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_string)
        .collect()
}

/// The job the form describes. Only what the chosen analysis uses is sent; `format` is the
/// picker's choice (`None`: the relay reads it from the file).
pub fn job_request(
    analysis: AnalysisType,
    list: &str,
    question: &str,
    priority: Priority,
    format: Option<DocumentFormat>,
) -> JobRequest {
    let mut job = JobRequest {
        analysis_type: Some(analysis),
        priority,
        format,
        ..JobRequest::default()
    };
    match analysis {
        AnalysisType::Extract => job.fields = split_list(list),
        AnalysisType::Classify => job.labels = split_list(list),
        AnalysisType::Qa => job.question = Some(question.trim().to_string()),
        AnalysisType::Summarize => {}
    }
    job
}

/// How far a job is, in chunks of its document: `progress` counts model calls, one per chunk,
/// plus one that combines the chunks' answers for a summary or an answer of several chunks.
pub fn progress_text(analysis: AnalysisType, status: JobStatus, progress: JobProgress) -> String {
    let JobProgress { done, total } = progress;
    if total == 0 {
        return match status {
            JobStatus::Queued => "waiting for a worker".into(),
            JobStatus::Running => "reading the document".into(),
            _ => String::new(),
        };
    }
    let combines = matches!(analysis, AnalysisType::Summarize | AnalysisType::Qa) && total > 1;
    let chunks = total - u32::from(combines);
    if combines && done >= chunks && done < total && status == JobStatus::Running {
        return format!("{chunks}/{chunks} chunks, combining");
    }
    format!("{}/{chunks} chunks", done.min(chunks))
}

/// How long ago `at_ms` was, `now_ms` being now (both milliseconds since the Unix epoch).
pub fn relative_time(now_ms: f64, at_ms: u64) -> String {
    let seconds = ((now_ms - at_ms as f64) / 1000.0).max(0.0) as u64;
    match seconds {
        0..5 => "just now".into(),
        5..60 => format!("{seconds} s ago"),
        60..3600 => format!("{} min ago", seconds / 60),
        3600..86_400 => format!("{} h ago", seconds / 3600),
        _ => format!("{} d ago", seconds / 86_400),
    }
}

/// A duration for people: `0.4 s`, `12 s`, `3 min 5 s`.
pub fn duration_text(ms: u64) -> String {
    match ms {
        0..10_000 => format!("{:.1} s", ms as f64 / 1000.0),
        10_000..60_000 => format!("{} s", ms / 1000),
        _ => format!("{} min {} s", ms / 60_000, ms / 1000 % 60),
    }
}

/// A file size for people: `812 B`, `12.3 KB`, `4.1 MB`.
pub fn size_text(bytes: f64) -> String {
    if bytes < 1000.0 {
        format!("{bytes} B")
    } else if bytes < 1_000_000.0 {
        format!("{:.1} KB", bytes / 1000.0)
    } else {
        format!("{:.1} MB", bytes / 1_000_000.0)
    }
}

/// A date for people, in the browser's locale and time zone.
fn local_time(ms: u64) -> String {
    js_sys::Date::new(&(ms as f64).into())
        .to_locale_string("default", &wasm_bindgen::JsValue::UNDEFINED)
        .into()
}

/// When a job was submitted, how long it waited and ran, and its attempt when not its first.
pub fn times_text(info: &JobInfo, now_ms: f64) -> String {
    let mut times = vec![format!(
        "submitted {}",
        relative_time(now_ms, info.created_at)
    )];
    if let Some(started) = info.started_at {
        let waited = started.saturating_sub(info.created_at);
        times.push(format!("waited {}", duration_text(waited)));
        if let Some(finished) = info.finished_at {
            let ran = finished.saturating_sub(started);
            times.push(format!("ran {}", duration_text(ran)));
        }
    }
    if info.attempts > 1 {
        times.push(format!("attempt {}", info.attempts));
    }
    times.join(" · ")
}

/// The file names of the jobs sent from this browser, by job id, oldest first.
fn load_file_names() -> Vec<(String, String)> {
    let saved = local_storage()
        .and_then(|storage| storage.get_item(FILE_NAMES_KEY).ok().flatten())
        .unwrap_or_default();
    saved
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .map(|(id, name)| (id.to_string(), name.to_string()))
        .collect()
}

/// Keeps `name` as the file of job `id` (best effort).
fn remember_file_name(id: &str, name: &str) {
    let mut names = load_file_names();
    names.retain(|(known, _)| known != id);
    // A line per job: a name cannot hold a line break or a tab that would split it.
    names.push((id.to_string(), name.replace(['\n', '\r', '\t'], " ")));
    let excess = names.len().saturating_sub(MAX_FILE_NAMES);
    let lines: Vec<String> = names[excess..]
        .iter()
        .map(|(id, name)| format!("{id}\t{name}"))
        .collect();
    if let Some(storage) = local_storage() {
        let _ = storage.set_item(FILE_NAMES_KEY, &lines.join("\n"));
    }
}

/// The element of `root` that `selector` names. The page's markup is this file's constants, so
/// a part that is not there is a bug in them (the component tests mount every part).
fn part(root: &Element, selector: &str) -> Element {
    root.query_selector(selector)
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("the documents page's markup has no `{selector}`"))
}

/// A new `<tag class=class>text</tag>` at the end of `parent`.
fn append(parent: &Element, tag: &str, class: &str, text: &str) -> Element {
    let document = parent.owner_document().unwrap_or_else(document);
    let element = document
        .create_element(tag)
        .unwrap_or_else(|_| panic!("`{tag}` is an element"));
    if !class.is_empty() {
        element.set_class_name(class);
    }
    if !text.is_empty() {
        element.set_text_content(Some(text));
    }
    let _ = parent.append_child(&element);
    element
}

fn set_hidden(element: &Element, hidden: bool) {
    let _ = element.toggle_attribute_with_force("hidden", hidden);
}

fn set_text(element: &Element, text: &str) {
    element.set_text_content(Some(text));
}

/// A completed job's result, as far as its row has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fetched {
    NotYet,
    Loading,
    Shown,
}

/// One job in the list: what the relay last said of it, and its `<li>`.
#[derive(Debug)]
pub struct JobRow {
    info: JobInfo,
    li: Element,
    status: Element,
    cancel: Element,
    progress: Element,
    progress_text: Element,
    times: Element,
    error: Element,
    note: Element,
    outcome: Element,
    fetched: Fetched,
}

impl JobRow {
    /// The row of the job `info`, named as the relay kept it, else as `file_name` when this
    /// browser knows it.
    pub fn new(info: JobInfo, file_name: Option<&str>) -> JobRow {
        let li = document()
            .create_element("li")
            .unwrap_or_else(|_| panic!("`li` is an element"));
        li.set_class_name("job");
        let _ = li.set_attribute("data-job-id", &info.job_id);
        li.set_inner_html(ROW_HTML);
        let file = part(&li, ".file");
        let name = info.document_name.as_deref().or(file_name);
        set_text(&file, name.unwrap_or(&info.job_id));
        let _ = file.set_attribute("title", &info.job_id);
        let kind = format!(
            "{} · {} · {} priority",
            info.analysis_type.as_str(),
            format_label(info.format),
            info.priority.as_str(),
        );
        set_text(&part(&li, ".kind"), &kind);
        let _ = part(&li, ".times").set_attribute("title", &local_time(info.created_at));
        let row = JobRow {
            status: part(&li, ".status"),
            cancel: part(&li, ".cancel"),
            progress: part(&li, "progress"),
            progress_text: part(&li, ".progress-text"),
            times: part(&li, ".times"),
            error: part(&li, ".job-error"),
            note: part(&li, ".note"),
            outcome: part(&li, ".outcome"),
            li,
            info,
            fetched: Fetched::NotYet,
        };
        row.show(js_sys::Date::now());
        row
    }

    pub fn info(&self) -> &JobInfo {
        &self.info
    }

    /// The row's `<li class="job" data-status=... data-job-id=...>`.
    pub fn element(&self) -> &Element {
        &self.li
    }

    /// The job as the relay now says it is. A finished job stays finished (a late event of a
    /// stream, or a list read before a cancel, cannot bring it back). True when the job is
    /// completed and its result is yet to be fetched (the caller fetches it).
    pub fn update(&mut self, info: JobInfo) -> bool {
        if self.info.status.is_final() && !info.status.is_final() {
            return false;
        }
        if self.info != info {
            self.info = info;
            self.show(js_sys::Date::now());
        }
        if self.info.status == JobStatus::Completed && self.fetched == Fetched::NotYet {
            self.fetched = Fetched::Loading;
            set_text(&self.outcome, "Loading the result…");
            return true;
        }
        false
    }

    /// Writes the job's status, progress, times and error.
    fn show(&self, now_ms: f64) {
        let info = &self.info;
        let status = info.status.as_str();
        let _ = self.li.set_attribute("data-status", status);
        set_text(&self.status, status);
        let finished = info.status.is_final();
        set_hidden(&self.cancel, finished);
        let JobProgress { done, total } = info.progress;
        set_hidden(&self.progress, finished || total == 0);
        let _ = self.progress.set_attribute("max", &total.to_string());
        let _ = self.progress.set_attribute("value", &done.to_string());
        let said = progress_text(info.analysis_type, info.status, info.progress);
        set_text(&self.progress_text, &said);
        self.show_times(now_ms);
        let error = info.error.as_ref().filter(|_| finished);
        set_hidden(&self.error, error.is_none());
        if let Some(error) = error {
            set_text(&self.error, &format!("{} ({})", error.message, error.code));
        }
    }

    /// Writes how long ago the job was submitted (and how long it waited and ran).
    pub fn show_times(&self, now_ms: f64) {
        set_text(&self.times, &times_text(&self.info, now_ms));
    }

    /// A note under the job (a failed cancel, lost live updates), or none.
    pub fn show_note(&self, note: Option<&str>) {
        set_hidden(&self.note, note.is_none());
        set_text(&self.note, note.unwrap_or_default());
    }

    /// Whether a cancel is under way (its button is disabled meanwhile).
    pub fn set_cancelling(&self, cancelling: bool) {
        let _ = self
            .cancel
            .toggle_attribute_with_force("disabled", cancelling);
    }

    /// Shows the job's answer — a summary or an answer as Markdown, an extraction's fields as a
    /// JSON block, a classification's label — and what it covered; or why it could not be read.
    pub fn show_result(&mut self, answer: Result<JobAnswer, String>) {
        set_text(&self.outcome, "");
        let answer = match answer {
            Ok(answer) => answer,
            Err(message) => {
                // Asked again when the list is next read.
                self.fetched = Fetched::NotYet;
                let said = format!("The result could not be read: {message}");
                append(&self.outcome, "p", "job-error", &said);
                return;
            }
        };
        self.fetched = Fetched::Shown;
        let holder = append(&self.outcome, "div", "result", "");
        let markdown = match answer.analysis_type {
            AnalysisType::Classify => {
                let line = append(&holder, "p", "data", "Label: ");
                append(&line, "strong", "", &answer.text);
                None
            }
            AnalysisType::Extract => Some(json_block(&answer.text)),
            AnalysisType::Summarize | AnalysisType::Qa => Some(answer.text),
        };
        if let Some(markdown) = markdown {
            let text = Signal::stored(markdown);
            // The row lives as long as the page, and the answer with it.
            leptos::mount::mount_to(holder.unchecked_into(), move || {
                view! { <Markdown text=text /> }
            })
            .forget();
        }
        let facts = format!(
            "{} {} covered ({} characters) · model {} · {} in / {} out tokens{}",
            answer.chunks,
            if answer.chunks == 1 {
                "chunk"
            } else {
                "chunks"
            },
            answer.document_chars,
            answer.model,
            answer.usage.input_tokens,
            answer.usage.output_tokens,
            if answer.usage.estimated {
                " (estimated)"
            } else {
                ""
            },
        );
        append(&self.outcome, "p", "facts", &facts);
    }
}

/// JSON as a fenced Markdown code block (the chat's renderer gives it a copy button), a value
/// per line. The fence is longer than any run of backticks inside.
pub fn json_block(json: &str) -> String {
    let mut longest = 0;
    let mut run = 0;
    for c in json.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    let fence = "`".repeat(longest.max(2) + 1);
    format!("{fence}json\n{}\n{fence}", pretty_json(json))
}

/// JSON laid out a value per line, indented by depth (the relay writes an extraction's fields
/// on one line). Only the layout between tokens changes; strings are kept as they are.
pub fn pretty_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len() + 32);
    let mut depth = 0_usize;
    let mut in_string = false;
    let mut escaped = false;
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.push_str(&"  ".repeat(depth));
    };
    for c in json.trim().chars() {
        if in_string {
            out.push(c);
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                depth += 1;
                out.push(c);
                newline(&mut out, depth);
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                // An empty object or list stays on its line.
                let opened = out.trim_end().ends_with(['{', '[']);
                if opened {
                    out.truncate(out.trim_end().len());
                } else {
                    newline(&mut out, depth);
                }
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

fn document() -> web_sys::Document {
    web_sys::window()
        .and_then(|window| window.document())
        .unwrap_or_else(|| panic!("the page has a document"))
}

/// The files of a `FileList` (from the picker or a drop).
fn files_of(list: Option<FileList>) -> Vec<File> {
    let Some(list) = list else {
        return Vec::new();
    };
    (0..list.length()).filter_map(|i| list.get(i)).collect()
}

/// What the form's one text field is for, by analysis: its label and an example.
fn detail_of(analysis: AnalysisType) -> (&'static str, &'static str) {
    match analysis {
        AnalysisType::Extract => (
            "Fields",
            "Fields to extract, comma-separated: tenant, start date, rent",
        ),
        AnalysisType::Classify => (
            "Labels",
            "Labels to choose from, comma-separated: invoice, contract, letter",
        ),
        AnalysisType::Qa => ("Question", "What does the document say about…?"),
        AnalysisType::Summarize => ("", ""),
    }
}

/// What the page holds between events.
#[derive(Debug)]
struct State {
    analysis: AnalysisType,
    /// The files chosen and not yet sent.
    files: Vec<File>,
    sending: bool,
    /// Newest first, in the list's order.
    rows: Vec<JobRow>,
    /// The jobs followed through an event stream, and how to stop each.
    followed: Vec<(String, AbortController)>,
    /// Where the next older page of the list starts, if there is one.
    next_before: Option<String>,
    /// Whether an older page was loaded (a reload of the first page keeps its place then).
    paged: bool,
    /// Why the list cannot be shown (no key, jobs off, the relay unreachable).
    notice: Option<String>,
}

/// The page once mounted: its parts, its state, and the listener of its events.
#[derive(Debug)]
struct Page {
    root: Element,
    detail: Element,
    drop_zone: Element,
    chosen: Element,
    errors: Element,
    submit: Element,
    list: Element,
    notice: Element,
    empty: Element,
    older: Element,
    state: RefCell<State>,
    /// Every event of the page goes through this one listener (on its root).
    listener: Closure<dyn FnMut(Event)>,
}

/// The events the page listens to.
const EVENTS: [&str; 7] = [
    "click",
    "change",
    "submit",
    "dragenter",
    "dragover",
    "dragleave",
    "drop",
];

impl Page {
    /// Writes the page's markup into `root` and starts listening.
    fn start(root: Element) -> Rc<Page> {
        root.set_inner_html(PAGE_HTML);
        let page = Rc::new_cyclic(|me: &Weak<Page>| {
            let me = me.clone();
            Page {
                detail: part(&root, "label.detail"),
                drop_zone: part(&root, ".drop-zone"),
                chosen: part(&root, ".chosen"),
                errors: part(&root, ".upload-error"),
                submit: part(&root, "button[type=submit]"),
                list: part(&root, "ul.jobs"),
                notice: part(&root, ".notice"),
                empty: part(&root, ".empty"),
                older: part(&root, "button.older"),
                root,
                state: RefCell::new(State {
                    analysis: AnalysisType::Summarize,
                    files: Vec::new(),
                    sending: false,
                    rows: Vec::new(),
                    followed: Vec::new(),
                    next_before: None,
                    paged: false,
                    notice: None,
                }),
                listener: Closure::new(move |event: Event| {
                    if let Some(page) = me.upgrade() {
                        page.handle(&event);
                    }
                }),
            }
        });
        for name in EVENTS {
            let _ = page
                .root
                .add_event_listener_with_callback(name, page.listener.as_ref().unchecked_ref());
        }
        page
    }

    fn handle(self: &Rc<Self>, event: &Event) {
        let Some(target) = event.target().and_then(|t| t.dyn_into::<Element>().ok()) else {
            return;
        };
        match event.type_().as_str() {
            "click" => {
                let Some(button) = target.closest("button").ok().flatten() else {
                    return;
                };
                let class = button.class_name();
                if class == "cancel" {
                    let id = button
                        .closest("li.job")
                        .ok()
                        .flatten()
                        .and_then(|li| li.get_attribute("data-job-id"));
                    if let Some(id) = id {
                        self.cancel(id);
                    }
                } else if class == "refresh" {
                    self.load(None);
                } else if class == "older" {
                    let before = self.state.borrow().next_before.clone();
                    self.load(before);
                }
            }
            "change" => {
                if let Some(select) = target.dyn_ref::<HtmlSelectElement>()
                    && select.name() == "analysis_type"
                {
                    let analysis = match select.value().as_str() {
                        "extract" => AnalysisType::Extract,
                        "classify" => AnalysisType::Classify,
                        "qa" => AnalysisType::Qa,
                        _ => AnalysisType::Summarize,
                    };
                    self.state.borrow_mut().analysis = analysis;
                    let (label, example) = detail_of(analysis);
                    set_hidden(&self.detail, label.is_empty());
                    set_text(&part(&self.detail, "span"), label);
                    let _ = part(&self.detail, "input").set_attribute("placeholder", example);
                } else if let Some(input) = target.dyn_ref::<HtmlInputElement>()
                    && input.type_() == "file"
                {
                    self.choose(files_of(input.files()));
                    // The same file may be chosen again.
                    input.set_value("");
                }
            }
            "submit" => {
                event.prevent_default();
                if let Some(form) = target.dyn_ref::<HtmlFormElement>() {
                    self.send(form);
                }
            }
            // A file dropped anywhere on the page is taken (a browser would otherwise open it in
            // place of the app); the drop zone shows that it will be.
            "dragenter" | "dragover" => {
                event.prevent_default();
                let _ = self.drop_zone.class_list().add_1("dragging");
            }
            "dragleave" => {
                // Moving onto another of the page's elements is not leaving the page.
                let inside = event
                    .dyn_ref::<DragEvent>()
                    .and_then(|drag| drag.related_target())
                    .and_then(|to| to.dyn_into::<Node>().ok())
                    .is_some_and(|to| self.root.contains(Some(&to)));
                if !inside {
                    let _ = self.drop_zone.class_list().remove_1("dragging");
                }
            }
            "drop" => {
                event.prevent_default();
                let _ = self.drop_zone.class_list().remove_1("dragging");
                let files = event
                    .dyn_ref::<DragEvent>()
                    .and_then(|drag| drag.data_transfer())
                    .and_then(|transfer| transfer.files());
                self.choose(files_of(files));
            }
            _ => {}
        }
    }

    /// Files from the picker or a drop, to be sent with the next submission.
    fn choose(&self, files: Vec<File>) {
        if files.is_empty() {
            return;
        }
        let lines: Vec<String> = files
            .iter()
            .map(|file| {
                let kind = DocumentFormat::of_file(&file.name(), &file.type_())
                    .map_or("unknown type", format_label);
                format!("{} ({}, {})", file.name(), kind, size_text(file.size()))
            })
            .collect();
        set_text(&self.chosen, &lines.join("\n"));
        self.state.borrow_mut().files = files;
        self.show_errors(&[]);
        self.show_submit();
    }

    /// The submit button: what it would send, and whether it can.
    fn show_submit(&self) {
        let state = self.state.borrow();
        let label = match (state.sending, state.files.len()) {
            (true, _) => "Sending…".to_string(),
            (false, 0 | 1) => "Analyse".to_string(),
            (false, n) => format!("Analyse {n} documents"),
        };
        set_text(&self.submit, &label);
        let idle = !state.sending && !state.files.is_empty();
        let _ = self.submit.toggle_attribute_with_force("disabled", !idle);
    }

    /// Why the last submission was not (all) accepted, a line per file; nothing hides it.
    fn show_errors(&self, errors: &[String]) {
        set_hidden(&self.errors, errors.is_empty());
        set_text(&self.errors, &errors.join("\n"));
    }

    /// Sends every chosen file as a job the form describes, one after the other.
    fn send(self: &Rc<Self>, form: &HtmlFormElement) {
        let (analysis, files) = {
            let state = self.state.borrow();
            if state.files.is_empty() || state.sending {
                return;
            }
            (state.analysis, state.files.clone())
        };
        let Ok(values) = FormData::new_with_form(form) else {
            return;
        };
        let value = |name: &str| values.get(name).as_string().unwrap_or_default();
        let format = FORMATS
            .iter()
            .map(|(format, _)| *format)
            .find(|format| format.as_str() == value("format"));
        let priority = match value("priority").as_str() {
            "high" => Priority::High,
            "low" => Priority::Low,
            _ => Priority::Normal,
        };
        let detail = value("detail");
        let job = job_request(analysis, &detail, &detail, priority, format);
        if let Err(err) = validate_job_request(&job, true) {
            self.show_errors(&[format!("Not sent: {err}")]);
            return;
        }
        self.show_errors(&[]);
        self.state.borrow_mut().sending = true;
        self.show_submit();
        let page = self.clone();
        spawn_local(async move {
            let mut refused = Vec::new();
            for file in files {
                let name = file.name();
                let media_type = file.type_();
                if format.is_none() && DocumentFormat::of_file(&name, &media_type).is_none() {
                    let media_type = if media_type.is_empty() {
                        "none".to_string()
                    } else {
                        media_type
                    };
                    refused.push(format!(
                        "“{name}” was not sent: the relay reads PDF, plain text, Markdown and HTML, and its name and type ({media_type}) say none of them (choose its format if it is one)"
                    ));
                    continue;
                }
                match api::submit_job(&file, &job).await {
                    Ok(info) => {
                        remember_file_name(&info.job_id, &name);
                        page.merge(vec![info]);
                    }
                    Err(CallError::Failed(message) | CallError::Unauthorized(message)) => {
                        refused.push(format!("“{name}” was refused: {message}"));
                    }
                    Err(CallError::Aborted) => {}
                }
            }
            {
                let mut state = page.state.borrow_mut();
                state.sending = false;
                state.files.clear();
            }
            set_text(&page.chosen, "");
            page.show_errors(&refused);
            page.show_submit();
        });
    }

    /// `GET /v1/jobs` (the first page, or the one after `before`), merged into the list.
    fn load(self: &Rc<Self>, before: Option<String>) {
        let page = self.clone();
        spawn_local(async move {
            match api::list_jobs(before.as_deref()).await {
                Ok(list) => {
                    {
                        let mut state = page.state.borrow_mut();
                        state.notice = None;
                        if before.is_some() || !state.paged {
                            state.next_before = list.next_before;
                        }
                        state.paged |= before.is_some();
                    }
                    page.merge(list.jobs);
                }
                Err(CallError::Aborted) => {}
                Err(err) => {
                    let message = match err {
                        CallError::Unauthorized(message) => format!(
                            "The relay refused the request: {message}. Enter an API key on the Chat page; it is kept in this browser only."
                        ),
                        CallError::Failed(message) => {
                            format!("Your jobs could not be loaded: {message}")
                        }
                        CallError::Aborted => return,
                    };
                    page.state.borrow_mut().notice = Some(message);
                    page.show_list_state();
                }
            }
        });
    }

    /// The notice, the empty list's words and the button to older jobs, as the state says.
    fn show_list_state(&self) {
        let state = self.state.borrow();
        set_hidden(&self.notice, state.notice.is_none());
        set_text(&self.notice, state.notice.as_deref().unwrap_or_default());
        set_hidden(
            &self.empty,
            state.notice.is_some() || !state.rows.is_empty(),
        );
        set_hidden(&self.older, state.next_before.is_none());
    }

    /// Brings known jobs up to date and adds new ones in their place (newest first).
    fn merge(self: &Rc<Self>, jobs: Vec<JobInfo>) {
        let names = load_file_names();
        for info in jobs {
            let known = self
                .state
                .borrow()
                .rows
                .iter()
                .any(|row| row.info.job_id == info.job_id);
            if known {
                self.apply(info);
                continue;
            }
            let name = names
                .iter()
                .find(|(id, _)| *id == info.job_id)
                .map(|(_, name)| name.as_str());
            let row = JobRow::new(info.clone(), name);
            {
                let mut state = self.state.borrow_mut();
                let at = state
                    .rows
                    .iter()
                    .position(|other| other.info.created_at < info.created_at)
                    .unwrap_or(state.rows.len());
                let before = state.rows.get(at).map(|other| other.li.clone());
                let _ = self
                    .list
                    .insert_before(&row.li, before.as_ref().map(|li| li.unchecked_ref()));
                state.rows.insert(at, row);
            }
            self.apply(info);
        }
        self.show_list_state();
        self.pump();
    }

    /// The job as the relay now says it is; a completed one gets its result.
    fn apply(self: &Rc<Self>, info: JobInfo) {
        let id = info.job_id.clone();
        let fetch = self
            .state
            .borrow_mut()
            .rows
            .iter_mut()
            .find(|row| row.info.job_id == id)
            .is_some_and(|row| row.update(info));
        if !fetch {
            return;
        }
        let page = self.clone();
        spawn_local(async move {
            let result = api::job_result(&id).await.map_err(|err| match err {
                CallError::Failed(message) | CallError::Unauthorized(message) => message,
                CallError::Aborted => "stopped".to_string(),
            });
            if let Some(row) = page.row_mut(&id).as_deref_mut() {
                row.show_result(result);
            }
        });
    }

    /// The row of job `id`, to change it.
    fn row_mut(&self, id: &str) -> Option<std::cell::RefMut<'_, JobRow>> {
        std::cell::RefMut::filter_map(self.state.borrow_mut(), |state| {
            state.rows.iter_mut().find(|row| row.info.job_id == id)
        })
        .ok()
    }

    /// Follows unfinished jobs, newest first, while fewer than [`MAX_STREAMS`] are followed.
    fn pump(self: &Rc<Self>) {
        let waiting: Vec<String> = {
            let state = self.state.borrow();
            let free = MAX_STREAMS.saturating_sub(state.followed.len());
            state
                .rows
                .iter()
                .filter(|row| !row.info.status.is_final())
                .map(|row| row.info.job_id.clone())
                .filter(|id| !state.followed.iter().any(|(known, _)| known == id))
                .take(free)
                .collect()
        };
        for id in waiting {
            self.follow(id);
        }
    }

    /// Reads job `id`'s event stream until the job ends, then follows the next one. A stream
    /// that breaks is not opened again at once: the list's next reload (every few seconds while
    /// the page is shown) brings the job up to date and follows it again.
    fn follow(self: &Rc<Self>, id: String) {
        let Ok(abort) = AbortController::new() else {
            return;
        };
        self.state
            .borrow_mut()
            .followed
            .push((id.clone(), abort.clone()));
        let page = self.clone();
        spawn_local(async move {
            let outcome = api::follow_job(&id, &abort, |info| page.apply(info)).await;
            page.state
                .borrow_mut()
                .followed
                .retain(|(known, _)| *known != id);
            let note = match outcome {
                Err(CallError::Aborted) => return,
                Ok(()) => None,
                Err(CallError::Failed(message) | CallError::Unauthorized(message)) => {
                    Some(format!("live updates interrupted: {message}"))
                }
            };
            if let Some(row) = page.row_mut(&id) {
                row.show_note(note.as_deref());
            }
            if note.is_none() {
                page.pump();
            }
        });
    }

    /// `DELETE /v1/jobs/{id}`.
    fn cancel(self: &Rc<Self>, id: String) {
        if let Some(row) = self.row_mut(&id) {
            row.set_cancelling(true);
        }
        let page = self.clone();
        spawn_local(async move {
            let outcome = api::cancel_job(&id).await;
            if let Some(row) = page.row_mut(&id) {
                row.set_cancelling(false);
                match &outcome {
                    Ok(_) => row.show_note(None),
                    Err(CallError::Failed(message) | CallError::Unauthorized(message)) => {
                        row.show_note(Some(&format!("could not cancel: {message}")))
                    }
                    Err(CallError::Aborted) => {}
                }
            }
            if let Ok(info) = outcome {
                page.apply(info);
            }
        });
    }

    /// Every few seconds while the page is shown: the times move on, and the list is read again
    /// when an unfinished job is not followed.
    fn tick(self: &Rc<Self>) {
        let now = js_sys::Date::now();
        let reload = {
            let state = self.state.borrow();
            state.rows.iter().for_each(|row| row.show_times(now));
            state.rows.iter().any(|row| {
                !row.info.status.is_final()
                    && !state.followed.iter().any(|(id, _)| *id == row.info.job_id)
            })
        };
        if reload {
            self.load(None);
        }
    }

    /// Stops every stream and listener (the page is going away).
    fn stop(&self) {
        let followed = std::mem::take(&mut self.state.borrow_mut().followed);
        followed.iter().for_each(|(_, abort)| abort.abort());
        for name in EVENTS {
            let _ = self
                .root
                .remove_event_listener_with_callback(name, self.listener.as_ref().unchecked_ref());
        }
    }
}

/// The page; `shown` is whether it is on screen (the list is read whenever it becomes so).
#[component]
pub fn DocumentsPage(#[prop(into)] shown: Signal<bool>) -> impl IntoView {
    let root = NodeRef::<leptos::html::Section>::new();
    let page = StoredValue::new_local(None::<Rc<Page>>);
    Effect::new(move |_| {
        let shown = shown.get();
        let Some(section) = root.get() else {
            return;
        };
        let started = page.with_value(Option::clone).unwrap_or_else(|| {
            let started = Page::start(section.into());
            page.set_value(Some(started.clone()));
            started
        });
        if shown {
            started.load(None);
        }
    });
    let ticks = set_interval_with_handle(
        move || {
            if shown.get_untracked()
                && let Some(page) = page.with_value(Option::clone)
            {
                page.tick();
            }
        },
        REFRESH,
    );
    let ticks = ticks.ok();
    on_cleanup(move || {
        if let Some(ticks) = ticks {
            ticks.clear();
        }
        if let Some(page) = page.try_update_value(Option::take).flatten() {
            page.stop();
        }
    });
    view! { <section class="documents" aria-labelledby="documents-title" node_ref=root></section> }
}
