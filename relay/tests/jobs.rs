//! Async document jobs end to end against fm-sim: every analysis type on every inline document
//! format, a long document split and combined, clear 4xx answers for bad submissions, paging and
//! filters, another key's jobs invisible, cancel of a queued and of a running job, retries and
//! the dead letter, priorities, and progress as Server-Sent Events.

mod common;

use std::time::{Duration, Instant};

use common::*;
use fm_protocol::{JobInfo, JobList, JobResult, JobStatus};
use fm_relay::RelayConfig;
use serde_json::{Value, json};

/// Jobs that are quick to retry and to take over.
fn quick_jobs(config: &mut RelayConfig) {
    config.jobs.retry_base_ms = 50;
    config.jobs.retry_max_ms = 200;
    config.jobs.poll_ms = 50;
}

async fn submit(harness: &Harness, body: Value) -> JobInfo {
    let response = harness.post("/v1/jobs", body.to_string()).await;
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    assert_eq!(status, 202, "{text}");
    serde_json::from_str(&text).unwrap()
}

async fn job(harness: &Harness, id: &str) -> JobInfo {
    harness
        .get(&format!("/v1/jobs/{id}"))
        .await
        .json()
        .await
        .unwrap()
}

/// Waits until a worker is running the job.
async fn running(harness: &Harness, id: &str) {
    let start = Instant::now();
    while job(harness, id).await.status != JobStatus::Running {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "job {id} never ran"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (at most `within`) until the job has ended; the job then.
async fn ended(harness: &Harness, id: &str, within: Duration) -> JobInfo {
    let start = Instant::now();
    loop {
        let job = job(harness, id).await;
        if job.status.is_final() {
            return job;
        }
        assert!(start.elapsed() < within, "job {id} did not end: {job:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn result(harness: &Harness, id: &str) -> JobResult {
    let response = harness.get(&format!("/v1/jobs/{id}/result")).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

async fn refused(harness: &Harness, body: Value) -> (u16, Value) {
    let response = harness.post("/v1/jobs", body.to_string()).await;
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn every_analysis_type_completes_on_every_inline_format() {
    let harness = start_with(sim_config(), quick_jobs).await;
    let markdown = "# Lease agreement\n\nThe tenant, ACME Ltd, rents the flat from 1 March.\n\nRent is due monthly.";
    let html =
        "<html><body><h1>Invoice</h1><p>Total: <b>120 EUR</b>, due in 30 days.</p></body></html>";
    let submissions = [
        json!({"analysis_type": "summarize", "text": markdown, "format": "markdown"}),
        json!({"analysis_type": "extract", "text": html, "format": "html",
               "fields": ["total"], "schema": {"properties": {"due": {"type": "string"}}}}),
        json!({"analysis_type": "classify", "text": "Dear customer, thank you for your letter.",
               "labels": ["invoice", "letter", "contract"], "priority": "high"}),
        json!({"analysis_type": "qa", "text": markdown, "format": "markdown",
               "question": "Who is the tenant?", "priority": "low"}),
    ];
    let mut jobs = Vec::new();
    for body in submissions {
        let queued = submit(&harness, body).await;
        assert_eq!(queued.status_url, format!("/v1/jobs/{}", queued.job_id));
        jobs.push(queued);
    }
    for queued in &jobs {
        let done = ended(&harness, &queued.job_id, Duration::from_secs(10)).await;
        assert_eq!(done.status, JobStatus::Completed, "{done:?}");
        assert_eq!(done.attempts, 1);
        assert!(done.started_at.is_some() && done.finished_at >= done.started_at);
        assert_eq!(done.progress.done, done.progress.total);
        assert_eq!(
            done.result_url.as_deref(),
            Some(format!("/v1/jobs/{}/result", done.job_id).as_str())
        );
        let answer = result(&harness, &queued.job_id).await;
        assert_eq!((answer.chunks, answer.model.as_str()), (1, "plain"));
        assert!(!answer.text.trim().is_empty());
        assert!(answer.usage.output_tokens > 0, "{answer:?}");
        match answer.analysis_type {
            fm_protocol::AnalysisType::Extract => {
                let data = answer.data.unwrap();
                for field in ["total", "due"] {
                    assert!(
                        data[field].as_str().is_some_and(|v| !v.is_empty()),
                        "{data}"
                    );
                }
                assert_eq!(done.format, fm_protocol::DocumentFormat::Html);
            }
            fm_protocol::AnalysisType::Classify => {
                let label = answer.data.unwrap();
                assert!(["invoice", "letter", "contract"].contains(&label.as_str().unwrap()));
                assert_eq!(answer.text, label.as_str().unwrap());
            }
            _ => assert!(answer.data.is_none()),
        }
    }
}

#[tokio::test]
async fn a_long_document_is_split_on_paragraphs_and_its_answers_combined() {
    let harness = start_with(sim_config(), |config| {
        quick_jobs(config);
        config.jobs.chunk_chars = 1000;
    })
    .await;
    let paragraph = "The committee met on Tuesday and discussed the budget at length. ".repeat(9);
    let document = [paragraph.trim(); 6].join("\n\n");
    let before = harness.sim.stats().requests;
    let queued = submit(
        &harness,
        json!({"analysis_type": "summarize", "text": document}),
    )
    .await;
    let done = ended(&harness, &queued.job_id, Duration::from_secs(10)).await;
    assert_eq!(done.status, JobStatus::Completed, "{done:?}");
    let answer = result(&harness, &queued.job_id).await;
    // Six paragraphs of ~590 characters: one a piece.
    assert_eq!(answer.chunks, 6);
    assert_eq!(answer.document_chars, document.chars().count() as u64);
    assert_eq!(done.progress.total, 7, "six pieces and the combining call");
    // Six pieces, then their summaries combined (in groups that fit a call).
    let calls = harness.sim.stats().requests - before;
    assert!(calls >= 7, "{calls} calls");
}

#[tokio::test]
async fn bad_submissions_are_clear_client_errors() {
    let harness = start_with(sim_config(), |config| {
        config.jobs.max_document_bytes = 100;
    })
    .await;
    let cases = [
        (json!({"text": "x"}), 400, "analysis_type"),
        (json!({"analysis_type": "summarize"}), 400, "text"),
        (
            json!({"analysis_type": "summarize", "text": "  \n "}),
            400,
            "text",
        ),
        (json!({"analysis_type": "qa", "text": "x"}), 400, "question"),
        (
            json!({"analysis_type": "classify", "text": "x", "labels": ["one"]}),
            400,
            "labels",
        ),
        (
            json!({"analysis_type": "extract", "text": "x"}),
            400,
            "fields",
        ),
        (
            json!({"analysis_type": "summarize", "text": "x", "model": "nope"}),
            400,
            "model",
        ),
        (
            json!({"analysis_type": "summarize", "text": "x", "routing_hint": "nope"}),
            400,
            "routing_hint",
        ),
        (
            json!({"analysis_type": "summarize", "document_ref": "documents/missing.txt"}),
            400,
            "document_ref",
        ),
        (
            json!({"analysis_type": "summarize", "document_ref": "../../etc/passwd"}),
            400,
            "document_ref",
        ),
        (
            json!({"analysis_type": "summarize", "text": "x", "format": "pdf"}),
            400,
            "format",
        ),
        (
            json!({"analysis_type": "summarize", "text": "x", "colour": "red"}),
            400,
            "",
        ),
    ];
    for (body, status, field) in cases {
        let (got, answer) = refused(&harness, body.clone()).await;
        assert_eq!(got, status, "{body} -> {answer}");
        if !field.is_empty() {
            assert_eq!(answer["error"]["field"], field, "{body} -> {answer}");
        }
    }
    let (status, answer) = refused(
        &harness,
        json!({"analysis_type": "summarize", "text": "x".repeat(101)}),
    )
    .await;
    assert_eq!(
        (
            status,
            answer["error"]["code"].as_str(),
            answer["error"]["field"].as_str()
        ),
        (413, Some("payload_too_large"), Some("text"))
    );
    // Not JSON: 415.
    let response = harness
        .http
        .post(harness.url("/v1/jobs"))
        .header("content-type", "text/plain")
        .body("summarize this")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    // Unknown jobs and filters.
    assert_eq!(harness.get("/v1/jobs/nope").await.status(), 404);
    assert_eq!(harness.get("/v1/jobs?status=DONE").await.status(), 400);
    assert_eq!(harness.get("/v1/jobs?limit=0").await.status(), 400);
    assert_eq!(harness.get("/v1/jobs?before=x").await.status(), 400);
}

#[tokio::test]
async fn jobs_are_listed_newest_first_in_pages_and_by_status() {
    let harness = start_with(sim_config(), quick_jobs).await;
    let mut ids = Vec::new();
    for n in 0..5 {
        let queued = submit(
            &harness,
            json!({"analysis_type": "summarize", "text": format!("Document {n}.")}),
        )
        .await;
        ids.push(queued.job_id);
    }
    for id in &ids {
        ended(&harness, id, Duration::from_secs(10)).await;
    }
    let page: JobList = harness.get("/v1/jobs?limit=2").await.json().await.unwrap();
    let mut listed: Vec<String> = page.jobs.iter().map(|j| j.job_id.clone()).collect();
    let mut cursor = page.next_before;
    while let Some(before) = cursor {
        let text = harness
            .get(&format!("/v1/jobs?limit=2&before={before}"))
            .await
            .text()
            .await
            .unwrap();
        let page: JobList = serde_json::from_str(&text).expect(&text);
        assert!(page.jobs.len() <= 2);
        listed.extend(page.jobs.iter().map(|j| j.job_id.clone()));
        cursor = page.next_before;
    }
    ids.reverse();
    assert_eq!(listed, ids, "newest first, each once");
    let completed: JobList = harness
        .get("/v1/jobs?status=completed&limit=100")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(completed.jobs.len(), 5);
    let queued: JobList = harness
        .get("/v1/jobs?status=QUEUED")
        .await
        .json()
        .await
        .unwrap();
    assert!(queued.jobs.is_empty());
}

#[tokio::test]
async fn a_key_sees_and_cancels_only_its_own_jobs() {
    use fm_relay::config::{AuthMode, KeyLimits};
    let key = |name: &str, secret: &str| api_key(name, secret, KeyLimits::default());
    let harness = start_with(sim_config(), |config| {
        quick_jobs(config);
        config.auth.mode = AuthMode::Keys;
        config.auth.keys = vec![key("alice", "fmr_alice"), key("bob", "fmr_bob")];
    })
    .await;
    let as_key = |secret: &'static str, method: reqwest::Method, path: String| {
        harness
            .http
            .request(method, harness.url(&path))
            .bearer_auth(secret)
            .header("content-type", "application/json")
    };
    let response = as_key("fmr_alice", reqwest::Method::POST, "/v1/jobs".into())
        .body(json!({"analysis_type": "summarize", "text": "Alice's notes."}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let job: JobInfo = response.json().await.unwrap();
    let path = format!("/v1/jobs/{}", job.job_id);
    for (method, path) in [
        (reqwest::Method::GET, path.clone()),
        (reqwest::Method::GET, format!("{path}/result")),
        (reqwest::Method::GET, format!("{path}/events")),
        (reqwest::Method::DELETE, path.clone()),
    ] {
        let response = as_key("fmr_bob", method.clone(), path.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{method} {path} as bob");
    }
    let bobs: JobList = as_key("fmr_bob", reqwest::Method::GET, "/v1/jobs".into())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(bobs.jobs.is_empty());
    let alices: JobInfo = as_key("fmr_alice", reqwest::Method::GET, path)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(alices.job_id, job.job_id);
    // No key at all: 401.
    let anonymous = harness.get("/v1/jobs").await;
    assert_eq!(anonymous.status(), 401);
}

#[tokio::test]
async fn a_queued_job_is_cancelled_before_it_runs_and_a_running_one_stops() {
    let harness = start_with(sim_config(), |config| {
        quick_jobs(config);
        config.jobs.workers = 1;
    })
    .await;
    // `paced` takes five seconds an answer: the one worker is busy with the first job.
    let busy = submit(
        &harness,
        json!({"analysis_type": "summarize", "text": "Long work.", "model": "paced"}),
    )
    .await;
    let waiting = submit(
        &harness,
        json!({"analysis_type": "summarize", "text": "Next.", "model": "paced"}),
    )
    .await;
    let start = Instant::now();
    running(&harness, &busy.job_id).await;
    let cancel = |id: String| {
        let request = harness.http.delete(harness.url(&format!("/v1/jobs/{id}")));
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.json::<JobInfo>().await.unwrap()
        }
    };
    assert_eq!(
        cancel(waiting.job_id.clone()).await.status,
        JobStatus::Cancelled
    );
    let stopped = cancel(busy.job_id.clone()).await;
    assert_eq!(stopped.status, JobStatus::Cancelled);
    // The worker is free again at once: a new job completes long before `paced` could have
    // answered the cancelled one.
    let after = submit(
        &harness,
        json!({"analysis_type": "summarize", "text": "Quick."}),
    )
    .await;
    let done = ended(&harness, &after.job_id, Duration::from_secs(3)).await;
    assert_eq!(done.status, JobStatus::Completed);
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    // The cancelled jobs stay cancelled, the waiting one never ran, neither has a result.
    for id in [&busy.job_id, &waiting.job_id] {
        assert_eq!(job(&harness, id).await.status, JobStatus::Cancelled);
        let response = harness.get(&format!("/v1/jobs/{id}/result")).await;
        assert_eq!(response.status(), 409);
    }
    assert_eq!(job(&harness, &waiting.job_id).await.attempts, 0);
    // Cancelling an ended job changes nothing.
    assert_eq!(cancel(after.job_id).await.status, JobStatus::Completed);
}

#[tokio::test]
async fn a_key_may_have_only_its_quota_of_unfinished_jobs() {
    let harness = start_with(sim_config(), |config| {
        quick_jobs(config);
        config.jobs.workers = 1;
        config.limits.per_key.max_unfinished_jobs = Some(2);
    })
    .await;
    let slow = json!({"analysis_type": "summarize", "text": "Slow.", "model": "paced"});
    let first = submit(&harness, slow.clone()).await;
    submit(&harness, slow.clone()).await;
    let (status, answer) = refused(&harness, slow.clone()).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (429, Some("quota_exceeded")),
        "{answer}"
    );
    assert!(
        answer["error"]["message"].as_str().unwrap().contains('2'),
        "{answer}"
    );
    // An ended job frees its place.
    harness
        .http
        .delete(harness.url(&format!("/v1/jobs/{}", first.job_id)))
        .send()
        .await
        .unwrap();
    submit(&harness, slow).await;
}

#[tokio::test]
async fn failing_calls_are_retried_then_dead_lettered() {
    let harness = start_with(sim_config(), |config| {
        quick_jobs(config);
        config.jobs.max_attempts = 4;
        // One call per attempt: the relay's own retries out of the way.
        config.retry.max_attempts = 1;
    })
    .await;
    // Fails three times, then answers.
    let recovering = submit(
        &harness,
        json!({"analysis_type": "summarize", "text": "Try again.", "model": "recovering"}),
    )
    .await;
    // Fails every time.
    let failing = submit(
        &harness,
        json!({"analysis_type": "summarize", "text": "Never.", "model": "unavailable"}),
    )
    .await;
    // Refused by the model: no attempt would help.
    let refused = submit(
        &harness,
        json!({"analysis_type": "summarize", "text": "Invalid.", "model": "validation"}),
    )
    .await;
    let done = ended(&harness, &recovering.job_id, Duration::from_secs(10)).await;
    assert_eq!(
        (done.status, done.attempts),
        (JobStatus::Completed, 4),
        "{done:?}"
    );
    assert!(done.error.is_none());
    let dead = ended(&harness, &failing.job_id, Duration::from_secs(10)).await;
    assert_eq!(
        (dead.status, dead.attempts),
        (JobStatus::DeadLetter, 4),
        "{dead:?}"
    );
    assert_eq!(dead.error.unwrap().code, "upstream_unavailable");
    let failed = ended(&harness, &refused.job_id, Duration::from_secs(10)).await;
    assert_eq!(
        (failed.status, failed.attempts),
        (JobStatus::Failed, 1),
        "{failed:?}"
    );
    assert_eq!(failed.error.unwrap().code, "upstream_rejected");
    let listed: JobList = harness
        .get("/v1/jobs?status=DEAD_LETTER")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed.jobs.len(), 1);
}

#[tokio::test]
async fn higher_priorities_run_first() {
    let harness = start_with(sim_config(), |config| {
        quick_jobs(config);
        config.jobs.workers = 1;
    })
    .await;
    // Keeps the worker busy while the others queue up.
    let first = submit(
        &harness,
        json!({"analysis_type": "summarize", "text": "First.", "model": "paced"}),
    )
    .await;
    running(&harness, &first.job_id).await;
    let mut queued = Vec::new();
    for priority in ["low", "normal", "high", "low", "high"] {
        let job = submit(
            &harness,
            json!({"analysis_type": "summarize", "text": format!("A {priority} job."), "priority": priority}),
        )
        .await;
        queued.push((priority, job.job_id));
    }
    let mut started = Vec::new();
    for (priority, id) in &queued {
        let done = ended(&harness, id, Duration::from_secs(15)).await;
        assert_eq!(done.status, JobStatus::Completed);
        started.push((done.started_at.unwrap(), *priority));
    }
    started.sort();
    let order: Vec<&str> = started.iter().map(|(_, p)| *p).collect();
    assert_eq!(order, ["high", "high", "normal", "low", "low"]);
}

#[tokio::test]
async fn progress_arrives_as_server_sent_events_until_the_job_ends() {
    // Each answer takes 300 ms: the job's progress can be watched.
    let mut sim = sim_config();
    sim.models.insert(
        UPSTREAM.into(),
        fm_sim::ModelProfile {
            first_token_ms: 300,
            tokens_per_second: 0.0,
            answer_tokens: None,
        },
    );
    let harness = start_with(sim, |config| {
        quick_jobs(config);
        config.jobs.chunk_chars = 1000;
    })
    .await;
    let document =
        vec!["A paragraph about the annual report and its figures. ".repeat(15); 4].join("\n\n");
    let queued = submit(
        &harness,
        json!({"analysis_type": "summarize", "text": document}),
    )
    .await;
    let response = harness
        .get(&format!("/v1/jobs/{}/events", queued.job_id))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let body = response.text().await.unwrap();
    let statuses: Vec<JobInfo> = fm_protocol::SseDecoder::new()
        .feed(body.as_bytes())
        .unwrap()
        .into_iter()
        .map(|frame| {
            assert_eq!(frame.event, "status");
            serde_json::from_str(&frame.data).unwrap()
        })
        .collect();
    let last = statuses.last().unwrap();
    assert_eq!(last.status, JobStatus::Completed);
    // It was seen working, piece by piece.
    let progress: Vec<u32> = statuses
        .iter()
        .filter(|s| s.status == JobStatus::Running)
        .map(|s| s.progress.done)
        .collect();
    assert!(progress.len() >= 3, "{statuses:?}");
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "{progress:?}");
}

/// One part of a multipart form: its name, its file name and type (for a file), its bytes.
struct Part<'a> {
    name: &'a str,
    file: Option<(&'a str, &'a str)>,
    body: &'a [u8],
}

fn text_part<'a>(name: &'a str, body: &'a str) -> Part<'a> {
    Part {
        name,
        file: None,
        body: body.as_bytes(),
    }
}

/// POSTs `parts` to `/v1/jobs` as `multipart/form-data`; the status and the body.
async fn upload(harness: &Harness, parts: &[Part<'_>]) -> (u16, Value) {
    let boundary = "fm-relay-test-boundary-7d1c";
    let mut body = Vec::new();
    for part in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match part.file {
            Some((file_name, media_type)) => body.extend_from_slice(
                format!(
                    "Content-Disposition: form-data; name=\"{}\"; filename=\"{file_name}\"\r\nContent-Type: {media_type}\r\n\r\n",
                    part.name
                )
                .as_bytes(),
            ),
            None => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{}\"\r\n\r\n", part.name)
                    .as_bytes(),
            ),
        }
        body.extend_from_slice(part.body);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    let response = harness
        .http
        .post(harness.url("/v1/jobs"))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// A one-page PDF showing `lines` (none: a page with no text at all, like a scan).
fn pdf(lines: &[&str]) -> Vec<u8> {
    use lopdf::content::{Content, Operation};
    use lopdf::{Document, Object, Stream, dictionary};
    let mut doc = Document::with_version("1.5");
    let pages_id = doc.new_object_id();
    let font_id = doc.add_object(dictionary! {
        "Type" => "Font",
        "Subtype" => "Type1",
        "BaseFont" => "Helvetica",
    });
    let resources_id = doc.add_object(dictionary! {
        "Font" => dictionary! { "F1" => font_id },
    });
    let mut operations = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        operations.extend([
            Operation::new("BT", vec![]),
            Operation::new("Tf", vec!["F1".into(), 12.into()]),
            Operation::new("Td", vec![72.into(), (760 - 20 * index as i64).into()]),
            Operation::new("Tj", vec![Object::string_literal(*line)]),
            Operation::new("ET", vec![]),
        ]);
    }
    let content = Content { operations };
    let content_id = doc.add_object(Stream::new(dictionary! {}, content.encode().unwrap()));
    let page_id = doc.add_object(dictionary! {
        "Type" => "Page",
        "Parent" => pages_id,
        "Contents" => content_id,
    });
    doc.objects.insert(
        pages_id,
        Object::Dictionary(dictionary! {
            "Type" => "Pages",
            "Kids" => vec![page_id.into()],
            "Count" => 1,
            "Resources" => resources_id,
            "MediaBox" => vec![0.into(), 0.into(), 595.into(), 842.into()],
        }),
    );
    let catalog_id = doc.add_object(dictionary! {
        "Type" => "Catalog",
        "Pages" => pages_id,
    });
    doc.trailer.set("Root", catalog_id);
    let mut bytes = Vec::new();
    doc.save_to(&mut bytes).unwrap();
    bytes
}

#[tokio::test]
async fn uploaded_pdf_and_html_documents_are_read_and_bad_files_refused() {
    let harness = start_with(sim_config(), |config| {
        quick_jobs(config);
        config.jobs.max_document_bytes = 20_000;
    })
    .await;
    let report = pdf(&[
        "Quarterly report of ACME Ltd.",
        "Revenue grew by twelve percent.",
    ]);
    // The job as one part per field, the PDF as the file.
    let (status, queued) = upload(
        &harness,
        &[
            text_part("analysis_type", "qa"),
            text_part("question", "How much did revenue grow?"),
            Part {
                name: "file",
                file: Some(("report.pdf", "application/pdf")),
                body: &report,
            },
        ],
    )
    .await;
    assert_eq!(status, 202, "{queued}");
    assert_eq!(queued["format"], "pdf");
    // The file's name names the job's document.
    assert_eq!(queued["document_name"], "report.pdf");
    let id = queued["job_id"].as_str().unwrap();
    let done = ended(&harness, id, Duration::from_secs(10)).await;
    assert_eq!(done.status, JobStatus::Completed, "{done:?}");
    assert_eq!(done.document_name.as_deref(), Some("report.pdf"));
    let answer = result(&harness, id).await;
    // Both lines of the page were read.
    assert!(answer.document_chars >= 55, "{answer:?}");
    // The job as a JSON `request` part, HTML told by the file's name.
    let (status, queued) = upload(
        &harness,
        &[
            text_part(
                "request",
                r#"{"analysis_type": "classify", "labels": ["invoice", "letter"]}"#,
            ),
            Part {
                name: "file",
                file: Some(("bill.htm", "application/octet-stream")),
                body: b"<html><body><p>Invoice 42: 120 EUR.</p></body></html>",
            },
        ],
    )
    .await;
    assert_eq!(
        (status, queued["format"].as_str()),
        (202, Some("html")),
        "{queued}"
    );
    // A name given with the job wins over the file's; one with control characters is refused.
    for (name, status) in [("Bill of March", 202), ("two\nlines", 400)] {
        let (got, queued) = upload(
            &harness,
            &[
                text_part("analysis_type", "summarize"),
                text_part("document_name", name),
                Part {
                    name: "file",
                    file: Some(("bill.txt", "text/plain")),
                    body: b"Invoice 43: 80 EUR.",
                },
            ],
        )
        .await;
        assert_eq!(got, status, "{queued}");
        if status == 202 {
            assert_eq!(queued["document_name"], name);
        } else {
            assert_eq!(queued["error"]["field"], "document_name", "{queued}");
        }
    }
    // A PDF without a text layer, an image, no file, an oversized file, a stray part.
    let scan = pdf(&[]);
    let image = [0x89u8, b'P', b'N', b'G'];
    let big = vec![b'a'; 30_000];
    let cases: Vec<(Vec<Part>, u16, &str)> = vec![
        (
            vec![
                text_part("analysis_type", "summarize"),
                Part {
                    name: "file",
                    file: Some(("scan.pdf", "application/pdf")),
                    body: &scan,
                },
            ],
            400,
            "unreadable_document",
        ),
        (
            vec![
                text_part("analysis_type", "summarize"),
                Part {
                    name: "file",
                    file: Some(("photo.png", "image/png")),
                    body: &image,
                },
            ],
            400,
            "invalid_request",
        ),
        (
            vec![text_part("analysis_type", "summarize")],
            400,
            "invalid_request",
        ),
        (
            vec![
                text_part("analysis_type", "summarize"),
                Part {
                    name: "file",
                    file: Some(("big.txt", "text/plain")),
                    body: &big,
                },
            ],
            413,
            "payload_too_large",
        ),
        (
            vec![
                text_part("analysis_type", "summarize"),
                text_part("colour", "red"),
                Part {
                    name: "file",
                    file: Some(("a.txt", "text/plain")),
                    body: b"text",
                },
            ],
            400,
            "invalid_request",
        ),
    ];
    for (parts, status, code) in cases {
        let (got, answer) = upload(&harness, &parts).await;
        assert_eq!(
            (got, answer["error"]["code"].as_str()),
            (status, Some(code)),
            "{answer}"
        );
    }
    // A refused file is named as the `file` part: empty, without a text layer, too large.
    for (body, code) in [
        (&b""[..], "invalid_request"),
        (&scan[..], "unreadable_document"),
        (&big[..], "payload_too_large"),
    ] {
        let name = if body.starts_with(b"%PDF") {
            "scan.pdf"
        } else {
            "notes.txt"
        };
        let (_, answer) = upload(
            &harness,
            &[
                text_part("analysis_type", "summarize"),
                Part {
                    name: "file",
                    file: Some((name, "")),
                    body,
                },
            ],
        )
        .await;
        assert_eq!(
            (
                answer["error"]["code"].as_str(),
                answer["error"]["field"].as_str()
            ),
            (Some(code), Some("file")),
            "{answer}"
        );
    }
    // Multipart is for jobs only: elsewhere still 415.
    let response = harness
        .http
        .post(harness.url("/v1/chat"))
        .header("content-type", "multipart/form-data; boundary=x")
        .body("--x--")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
}

/// A callback receiver on 127.0.0.1: records every request (path, signature, attempt, body) and
/// answers with `statuses` in turn, then 200; `/redirect` answers 307 to `/hook` on 127.0.0.1.
struct Receiver {
    port: u16,
    seen: std::sync::Arc<std::sync::Mutex<Vec<Delivered>>>,
}

/// One request a receiver got: its path, `x-fm-signature`, `x-fm-delivery-attempt` and body.
type Delivered = (String, String, String, bytes::Bytes);

async fn receiver(statuses: Vec<u16>) -> Receiver {
    use axum::response::IntoResponse;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: std::sync::Arc<std::sync::Mutex<Vec<_>>> = Default::default();
    let statuses = std::sync::Arc::new(std::sync::Mutex::new(statuses));
    let record = seen.clone();
    let app = axum::Router::new().fallback(
        move |uri: axum::http::Uri, headers: axum::http::HeaderMap, body: bytes::Bytes| {
            let (record, statuses) = (record.clone(), statuses.clone());
            async move {
                let header = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string()
                };
                record.lock().unwrap().push((
                    uri.path().to_string(),
                    header("x-fm-signature"),
                    header("x-fm-delivery-attempt"),
                    body,
                ));
                if uri.path() == "/redirect" {
                    return (
                        axum::http::StatusCode::TEMPORARY_REDIRECT,
                        [("location", format!("http://127.0.0.1:{port}/hook"))],
                    )
                        .into_response();
                }
                let mut statuses = statuses.lock().unwrap();
                let status = if statuses.is_empty() {
                    200
                } else {
                    statuses.remove(0)
                };
                axum::http::StatusCode::from_u16(status)
                    .unwrap()
                    .into_response()
            }
        },
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    Receiver { port, seen }
}

/// Callbacks signed with this, to loopback receivers.
fn with_callbacks(config: &mut RelayConfig) {
    quick_jobs(config);
    config.jobs.callback_secret = "s3cret".into();
    config.jobs.callback_allow_private = true;
}

/// Waits until the job's callback is `state`; the job then.
async fn callback_is(harness: &Harness, id: &str, state: &str) -> JobInfo {
    let start = Instant::now();
    loop {
        let job = job(harness, id).await;
        if job.callback.as_ref().is_some_and(|c| c.state == state) {
            return job;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "callback never {state}: {job:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_signed_callback_is_delivered_and_retried_until_the_receiver_takes_it() {
    use hmac::{Hmac, KeyInit, Mac};
    let receiver = receiver(vec![500, 503]).await;
    let harness = start_with(sim_config(), with_callbacks).await;
    let queued = submit(
        &harness,
        json!({"analysis_type": "summarize", "text": "Notify me.",
               "callback_url": format!("http://127.0.0.1:{}/hook", receiver.port)}),
    )
    .await;
    let done = callback_is(&harness, &queued.job_id, "delivered").await;
    assert_eq!(done.status, JobStatus::Completed);
    assert_eq!(done.callback.unwrap().attempts, 3);
    let seen = receiver.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "two refusals, then the delivery");
    for (index, (path, signature, attempt, body)) in seen.iter().enumerate() {
        assert_eq!(path, "/hook");
        assert_eq!(attempt, &(index + 1).to_string());
        // The documented check: HMAC-SHA256 of "<t>.<body>" with the shared secret.
        let (t, v1) = signature
            .strip_prefix("t=")
            .and_then(|rest| rest.split_once(",v1="))
            .unwrap_or_else(|| panic!("{signature}"));
        let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(b"s3cret").unwrap();
        mac.update(format!("{t}.").as_bytes());
        mac.update(body);
        mac.verify_slice(&hex::decode(v1).unwrap())
            .expect("the signature verifies");
        let status: JobInfo = serde_json::from_slice(body).unwrap();
        assert_eq!(
            (status.job_id.as_str(), status.status),
            (queued.job_id.as_str(), JobStatus::Completed)
        );
    }
}

#[tokio::test]
async fn callback_targets_are_checked_and_a_redirect_to_a_refused_host_is_not_followed() {
    // Private addresses refused (the default), and no secret: refused when submitted.
    let strict = start_with(sim_config(), |config| {
        quick_jobs(config);
        config.jobs.callback_secret = "s3cret".into();
    })
    .await;
    for url in [
        "http://127.0.0.1:9/hook",
        "http://localhost:9/hook",
        "http://[::1]:9/x",
        "file:///etc/passwd",
    ] {
        let (status, answer) = refused(
            &strict,
            json!({"analysis_type": "summarize", "text": "x", "callback_url": url}),
        )
        .await;
        assert_eq!(
            (status, answer["error"]["field"].as_str()),
            (400, Some("callback_url")),
            "{url}: {answer}"
        );
    }
    let unsigned = start_with(sim_config(), quick_jobs).await;
    let (status, answer) = refused(
        &unsigned,
        json!({"analysis_type": "summarize", "text": "x", "callback_url": "https://example.com/hook"}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("secret"),
        "{answer}"
    );

    // Only `localhost` is allowed: its redirect to 127.0.0.1 is refused, not followed.
    let receiver = receiver(Vec::new()).await;
    let harness = start_with(sim_config(), |config| {
        with_callbacks(config);
        config.jobs.callback_allowed_hosts = vec!["localhost".into()];
    })
    .await;
    let queued = submit(
        &harness,
        json!({"analysis_type": "summarize", "text": "Redirect me.",
               "callback_url": format!("http://localhost:{}/redirect", receiver.port)}),
    )
    .await;
    let done = callback_is(&harness, &queued.job_id, "failed").await;
    assert_eq!(
        done.callback.unwrap().attempts,
        1,
        "a refused target is not tried again"
    );
    let paths: Vec<String> = receiver
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.0.clone())
        .collect();
    assert_eq!(paths, ["/redirect"]);
}
