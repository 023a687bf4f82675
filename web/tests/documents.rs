//! The documents page in a real browser (`cargo test -p fm-web --target wasm32-unknown-unknown`):
//! the rules it applies on its own (what a file is read as, the form as a job request, progress
//! and times in words), a job row in each state, and the upload form refusing what it must
//! before anything is sent. The relay's side (uploads, live status, cancel) is the end-to-end
//! test's (`tests/e2e/documents.test.mjs`).

#![cfg(target_arch = "wasm32")]

use fm_protocol::{
    AnalysisType, DocumentFormat, JobError, JobInfo, JobProgress, JobStatus, Priority, Usage,
    validate_job_request,
};
use fm_web::api::JobAnswer;
use fm_web::documents::{
    DocumentsPage, JobRow, duration_text, job_request, json_block, pretty_json, progress_text,
    relative_time, size_text, split_list, times_text,
};
use leptos::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};
use web_sys::{Element, HtmlElement, HtmlInputElement, HtmlSelectElement};

wasm_bindgen_test_configure!(run_in_browser);

mod common;
use common::*;

fn job(status: JobStatus, analysis: AnalysisType, progress: (u32, u32)) -> JobInfo {
    JobInfo {
        job_id: "0123abcd".into(),
        document_name: None,
        status,
        analysis_type: analysis,
        priority: Priority::Normal,
        format: DocumentFormat::Pdf,
        status_url: "/v1/jobs/0123abcd".into(),
        result_url: None,
        created_at: 1_700_000_000_000,
        started_at: Some(1_700_000_001_500),
        finished_at: status.is_final().then_some(1_700_000_004_000),
        attempts: 1,
        progress: JobProgress {
            done: progress.0,
            total: progress.1,
        },
        error: None,
        callback: None,
    }
}

#[wasm_bindgen_test]
fn the_page_has_its_own_address() {
    use fm_web::app::Page;
    assert_eq!(Page::from_hash("#/documents"), Page::Documents);
    assert_eq!(Page::from_hash("#/dashboard"), Page::Dashboard);
    assert_eq!(Page::from_hash("#/elsewhere"), Page::Chat);
}

#[wasm_bindgen_test]
fn the_form_becomes_the_job_the_relay_validates() {
    assert_eq!(
        split_list(" tenant, start date ,,rent , "),
        ["tenant", "start date", "rent"]
    );
    let extract = job_request(
        AnalysisType::Extract,
        "tenant, rent",
        "ignored",
        Priority::High,
        None,
    );
    assert_eq!(extract.fields, ["tenant", "rent"]);
    assert!(extract.labels.is_empty() && extract.question.is_none());
    assert_eq!(extract.priority, Priority::High);
    assert_eq!(
        validate_job_request(&extract, true),
        Ok(AnalysisType::Extract)
    );

    let no_fields = job_request(AnalysisType::Extract, " , ", "", Priority::Normal, None);
    assert_eq!(
        validate_job_request(&no_fields, true).unwrap_err().field,
        "fields"
    );
    let one_label = job_request(
        AnalysisType::Classify,
        "invoice",
        "",
        Priority::Normal,
        None,
    );
    assert_eq!(
        validate_job_request(&one_label, true).unwrap_err().field,
        "labels"
    );
    let blank_question = job_request(AnalysisType::Qa, "a, b", "   ", Priority::Low, None);
    assert_eq!(
        validate_job_request(&blank_question, true)
            .unwrap_err()
            .field,
        "question"
    );
    assert!(
        blank_question.fields.is_empty(),
        "only what qa uses is sent"
    );
    let summary = job_request(
        AnalysisType::Summarize,
        "",
        "",
        Priority::Normal,
        Some(DocumentFormat::Markdown),
    );
    assert_eq!(summary.format, Some(DocumentFormat::Markdown));
    assert_eq!(
        validate_job_request(&summary, true),
        Ok(AnalysisType::Summarize)
    );
}

#[wasm_bindgen_test]
fn progress_is_told_in_chunks_with_the_combining_call_apart() {
    let text = |analysis, status, done, total| {
        progress_text(analysis, status, JobProgress { done, total })
    };
    use AnalysisType::*;
    use JobStatus::*;
    assert_eq!(text(Summarize, Queued, 0, 0), "waiting for a worker");
    assert_eq!(text(Summarize, Running, 0, 0), "reading the document");
    assert_eq!(text(Summarize, Running, 0, 1), "0/1 chunks");
    // Four chunks and a call that combines their summaries.
    assert_eq!(text(Summarize, Running, 2, 5), "2/4 chunks");
    assert_eq!(text(Qa, Running, 4, 5), "4/4 chunks, combining");
    assert_eq!(text(Summarize, Completed, 5, 5), "4/4 chunks");
    // An extraction merges its chunks' fields without a call: every call is a chunk.
    assert_eq!(text(Extract, Running, 2, 3), "2/3 chunks");
    assert_eq!(text(Classify, Completed, 3, 3), "3/3 chunks");
    assert_eq!(text(Extract, Cancelled, 0, 0), "");
}

#[wasm_bindgen_test]
fn times_and_sizes_read_as_people_say_them() {
    let at = 1_700_000_000_000_u64;
    let now = |seconds: f64| at as f64 + seconds * 1000.0;
    assert_eq!(relative_time(now(2.0), at), "just now");
    assert_eq!(relative_time(now(4.9), at), "just now");
    assert_eq!(relative_time(now(5.0), at), "5 s ago");
    assert_eq!(relative_time(now(-30.0), at), "just now", "a clock ahead");
    assert_eq!(relative_time(now(42.0), at), "42 s ago");
    assert_eq!(relative_time(now(600.0), at), "10 min ago");
    assert_eq!(relative_time(now(7300.0), at), "2 h ago");
    assert_eq!(relative_time(now(3.0 * 86_400.0), at), "3 d ago");
    assert_eq!(duration_text(420), "0.4 s");
    assert_eq!(duration_text(12_345), "12 s");
    assert_eq!(duration_text(185_000), "3 min 5 s");
    assert_eq!(size_text(812.0), "812 B");
    assert_eq!(size_text(12_345.0), "12.3 KB");
    assert_eq!(size_text(4_100_000.0), "4.1 MB");
}

#[wasm_bindgen_test]
fn an_extraction_is_shown_as_json_a_field_per_line() {
    assert_eq!(
        pretty_json(
            r#"{"tenant":"ACME, Ltd","rent":900,"parties":["a","b"],"none":{},"q":"say \"hi\": {x}"}"#
        ),
        "{\n  \"tenant\": \"ACME, Ltd\",\n  \"rent\": 900,\n  \"parties\": [\n    \"a\",\n    \"b\"\n  ],\n  \"none\": {},\n  \"q\": \"say \\\"hi\\\": {x}\"\n}"
    );
    assert_eq!(
        json_block(r#"{"a":"b"}"#),
        "```json\n{\n  \"a\": \"b\"\n}\n```"
    );
    // A value holding a fence gets a longer one.
    assert!(json_block(r#"{"code":"````"}"#).starts_with("`````json\n"));
}

#[wasm_bindgen_test]
async fn a_job_row_follows_its_status_and_shows_the_result_or_the_error() {
    let root = container();
    let mut row = JobRow::new(
        job(JobStatus::Running, AnalysisType::Extract, (1, 3)),
        Some("lease.pdf"),
    );
    root.append_child(row.element()).unwrap();
    let item = row.element().clone();
    assert_eq!(
        item.get_attribute("data-status").as_deref(),
        Some("RUNNING")
    );
    assert_eq!(
        item.get_attribute("data-job-id").as_deref(),
        Some("0123abcd")
    );
    assert_eq!(text_of(&item, ".file"), "lease.pdf");
    assert_eq!(text_of(&item, ".kind"), "extract · PDF · normal priority");
    assert_eq!(text_of(&item, ".status"), "RUNNING");
    assert_eq!(text_of(&item, ".progress-text"), "1/3 chunks");
    let bar = find(&item, "progress");
    assert!(!bar.has_attribute("hidden"));
    assert_eq!(bar.get_attribute("max").as_deref(), Some("3"));
    assert_eq!(bar.get_attribute("value").as_deref(), Some("1"));
    assert!(!find(&item, "button.cancel").has_attribute("hidden"));
    row.show_times(1_700_000_090_000.0);
    assert_eq!(
        text_of(&item, ".times"),
        "submitted 1 min ago · waited 1.5 s"
    );

    // A late event from before cannot bring a finished job back.
    let completed = job(JobStatus::Completed, AnalysisType::Extract, (3, 3));
    assert!(row.update(completed.clone()), "its result is to be fetched");
    assert!(!row.update(completed), "once");
    assert!(!row.update(job(JobStatus::Running, AnalysisType::Extract, (2, 3))));
    assert_eq!(
        item.get_attribute("data-status").as_deref(),
        Some("COMPLETED")
    );
    assert!(find(&item, "button.cancel").has_attribute("hidden"));
    assert!(find(&item, "progress").has_attribute("hidden"));
    assert_eq!(text_of(&item, ".progress-text"), "3/3 chunks");
    assert_eq!(text_of(&item, ".outcome"), "Loading the result…");
    row.show_result(Ok(JobAnswer {
        analysis_type: AnalysisType::Extract,
        model: "claude-3-5-haiku".into(),
        text: r#"{"tenant":"ACME Ltd","rent":900}"#.into(),
        chunks: 3,
        document_chars: 61_000,
        usage: Usage {
            input_tokens: 15_000,
            output_tokens: 120,
            total_tokens: 15_120,
            estimated: false,
        },
    }));
    settle().await;
    let code = find(&item, ".result figure.code-block");
    assert_eq!(code.get_attribute("data-language").as_deref(), Some("json"));
    assert_eq!(
        text_of(&code, "pre code"),
        "{\n  \"tenant\": \"ACME Ltd\",\n  \"rent\": 900\n}\n"
    );
    let facts = text_of(&item, ".facts");
    assert_eq!(
        facts,
        "3 chunks covered (61000 characters) · model claude-3-5-haiku · 15000 in / 120 out tokens"
    );

    // A summary is Markdown; a label is named.
    let mut summary = JobRow::new(
        job(JobStatus::Completed, AnalysisType::Summarize, (1, 1)),
        None,
    );
    root.append_child(summary.element()).unwrap();
    let answer = |analysis, text: &str| JobAnswer {
        analysis_type: analysis,
        model: "m".into(),
        text: text.into(),
        chunks: 1,
        document_chars: 10,
        usage: Usage::default(),
    };
    summary.show_result(Ok(answer(
        AnalysisType::Summarize,
        "The **lease** runs a year.",
    )));
    settle().await;
    assert_eq!(text_of(summary.element(), ".result strong"), "lease");
    assert_eq!(
        text_of(summary.element(), ".result"),
        "The lease runs a year."
    );
    assert_eq!(
        text_of(summary.element(), ".file"),
        "0123abcd",
        "no file name: the id"
    );
    let mut label = JobRow::new(
        job(JobStatus::Completed, AnalysisType::Classify, (1, 1)),
        None,
    );
    label.show_result(Ok(answer(AnalysisType::Classify, "contract")));
    assert_eq!(text_of(label.element(), ".result"), "Label: contract");
    label.show_result(Err("the relay answered 500".into()));
    assert_eq!(
        text_of(label.element(), ".outcome"),
        "The result could not be read: the relay answered 500"
    );

    // Failed: the relay's reason and code; a note when there is one.
    let mut failed = job(JobStatus::Failed, AnalysisType::Extract, (0, 0));
    failed.error = Some(JobError {
        code: "unreadable_document".into(),
        message: "the PDF has no text layer".into(),
    });
    let failed = JobRow::new(failed, None);
    let error = find(failed.element(), ".job-error");
    assert!(!error.has_attribute("hidden"));
    assert_eq!(
        error.text_content().unwrap(),
        "the PDF has no text layer (unreadable_document)"
    );
    assert!(find(failed.element(), ".note").has_attribute("hidden"));
    failed.show_note(Some("could not cancel: gone"));
    assert_eq!(text_of(failed.element(), ".note"), "could not cancel: gone");
    assert!(!find(failed.element(), ".note").has_attribute("hidden"));
    // The name the relay kept wins over this browser's record; the id when neither has one.
    let named = JobInfo {
        document_name: Some("lease.pdf".into()),
        ..job(JobStatus::Queued, AnalysisType::Summarize, (0, 0))
    };
    assert_eq!(
        text_of(JobRow::new(named, Some("old.pdf")).element(), ".file"),
        "lease.pdf"
    );
    let unnamed = job(JobStatus::Queued, AnalysisType::Summarize, (0, 0));
    assert_eq!(
        text_of(
            JobRow::new(unnamed.clone(), Some("old.pdf")).element(),
            ".file"
        ),
        "old.pdf"
    );
    assert_eq!(
        text_of(JobRow::new(unnamed, None).element(), ".file"),
        "0123abcd"
    );
}

#[wasm_bindgen_test]
fn times_say_when_a_job_was_sent_how_long_it_waited_and_ran() {
    let mut info = job(JobStatus::Completed, AnalysisType::Qa, (1, 1));
    info.attempts = 2;
    assert_eq!(
        times_text(&info, 1_700_000_000_000.0 + 7_300_000.0),
        "submitted 2 h ago · waited 1.5 s · ran 2.5 s · attempt 2"
    );
    let queued = JobInfo {
        started_at: None,
        ..job(JobStatus::Queued, AnalysisType::Qa, (0, 0))
    };
    assert_eq!(
        times_text(&queued, 1_700_000_000_000.0),
        "submitted just now"
    );
}

/// Puts `files` (name, type) on the page's drop zone as a drag and drop does.
fn drop_files(root: &Element, files: &[(&str, &str)]) {
    let transfer = web_sys::DataTransfer::new().unwrap();
    for (name, media_type) in files {
        let options = web_sys::FilePropertyBag::new();
        options.set_type(media_type);
        let parts = js_sys::Array::of1(&"some text".into());
        let file =
            web_sys::File::new_with_str_sequence_and_options(&parts, name, &options).unwrap();
        transfer.items().add_with_file(&file).unwrap();
    }
    let init = web_sys::DragEventInit::new();
    init.set_data_transfer(Some(&transfer));
    init.set_bubbles(true);
    init.set_cancelable(true);
    let event = web_sys::DragEvent::new_with_event_init_dict("drop", &init).unwrap();
    find(root, ".drop-zone").dispatch_event(&event).unwrap();
}

/// Tells the page its select or input changed, as a browser does (the event bubbles).
fn changed(element: &Element) {
    let init = web_sys::EventInit::new();
    init.set_bubbles(true);
    let event = web_sys::Event::new_with_event_init_dict("change", &init).unwrap();
    element.dispatch_event(&event).unwrap();
}

#[wasm_bindgen_test]
async fn the_upload_form_refuses_an_incomplete_job_and_an_unreadable_type_before_sending() {
    let root = container();
    // Not shown: the relay is not asked for the list (there is none here).
    let _mounted =
        leptos::mount::mount_to(root.clone(), || view! { <DocumentsPage shown=false /> });
    settle().await;
    assert!(
        root.query_selector("section.documents input[type=file]")
            .unwrap()
            .is_some()
    );
    assert_eq!(text_of(&root, "h2#documents-title"), "Documents");
    let submit: HtmlElement = find(&root, "form.upload button[type=submit]").unchecked_into();
    assert!(submit.has_attribute("disabled"), "nothing chosen yet");
    let detail = find(&root, "label.detail");
    assert!(
        detail.has_attribute("hidden"),
        "a summary needs nothing more"
    );

    drop_files(&root, &[("lease.pdf", "application/pdf"), ("notes.md", "")]);
    settle().await;
    assert_eq!(
        text_of(&root, ".chosen"),
        "lease.pdf (PDF, 9 B)\nnotes.md (Markdown, 9 B)"
    );
    assert_eq!(submit.text_content().unwrap(), "Analyse 2 documents");
    assert!(!submit.has_attribute("disabled"));

    // Extract without fields: the relay's own rule refuses it here.
    let analysis: HtmlSelectElement = find(&root, "select[name=analysis_type]").unchecked_into();
    analysis.set_value("extract");
    changed(&analysis);
    assert!(!detail.has_attribute("hidden"));
    assert_eq!(text_of(&detail, "span"), "Fields");
    let fields: HtmlInputElement = find(&root, "input[name=detail]").unchecked_into();
    assert!(fields.placeholder().contains("comma-separated"));
    fields.set_value(" , ");
    submit.click();
    settle().await;
    let error = find(&root, ".upload-error[role=alert]");
    assert!(!error.has_attribute("hidden"));
    assert!(
        error
            .text_content()
            .unwrap()
            .starts_with("Not sent: fields:"),
        "{}",
        error.text_content().unwrap()
    );
    assert!(
        root.query_selector("li.job").unwrap().is_none(),
        "nothing was sent"
    );

    // A type the relay does not read is named and not sent.
    analysis.set_value("summarize");
    changed(&analysis);
    assert!(detail.has_attribute("hidden"));
    drop_files(&root, &[("setup.exe", "application/x-msdownload")]);
    settle().await;
    assert!(
        error.has_attribute("hidden"),
        "a new choice clears the old error"
    );
    submit.click();
    settle().await;
    settle().await;
    let said = error.text_content().unwrap();
    assert!(
        said.contains("“setup.exe” was not sent") && said.contains("application/x-msdownload"),
        "{said}"
    );
    assert!(!error.has_attribute("hidden"));
    assert!(root.query_selector("li.job").unwrap().is_none());
    assert_eq!(text_of(&root, ".chosen"), "", "the choice is cleared");
    assert!(submit.has_attribute("disabled"));
}
