//! Async document jobs (`/v1/jobs`): what a client submits ([`JobRequest`]), what it reads back
//! while the job waits and runs ([`JobInfo`], with its [`JobStatus`] and [`JobProgress`]), the
//! result ([`JobResult`]) and the caller's list ([`JobList`]). Times are milliseconds since the
//! Unix epoch (UTC).

use serde::{Deserialize, Serialize};

use crate::{Usage, ValidationError};

/// What a job does with its document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AnalysisType {
    /// A summary of the whole document.
    Summarize,
    /// Named fields (or the properties of a JSON schema) read from the document, as one JSON
    /// object.
    Extract,
    /// One of the given labels for the whole document.
    Classify,
    /// The answer to a question about the document.
    Qa,
}

impl AnalysisType {
    pub fn as_str(self) -> &'static str {
        match self {
            AnalysisType::Summarize => "summarize",
            AnalysisType::Extract => "extract",
            AnalysisType::Classify => "classify",
            AnalysisType::Qa => "qa",
        }
    }
}

/// How a document is written; the relay extracts its text accordingly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DocumentFormat {
    #[default]
    Text,
    Markdown,
    Html,
    Pdf,
}

impl DocumentFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DocumentFormat::Text => "text",
            DocumentFormat::Markdown => "markdown",
            DocumentFormat::Html => "html",
            DocumentFormat::Pdf => "pdf",
        }
    }

    /// The format a file's name or media type says, if it says one the relay reads (the rule
    /// of the relay's uploads and of the web UI's documents page): a specific media type
    /// decides; a generic one (`text/plain`, `application/octet-stream`, none) gives way to the
    /// name's extension.
    pub fn of_file(name: &str, media_type: &str) -> Option<DocumentFormat> {
        let media = media_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let by_media = match media.as_str() {
            "application/pdf" => Some(DocumentFormat::Pdf),
            "text/html" | "application/xhtml+xml" => Some(DocumentFormat::Html),
            "text/markdown" | "text/x-markdown" => Some(DocumentFormat::Markdown),
            "text/plain" => Some(DocumentFormat::Text),
            _ => None,
        };
        let extension = name
            .rsplit_once('.')
            .map(|(_, extension)| extension.to_ascii_lowercase());
        let by_name = match extension.as_deref() {
            Some("pdf") => Some(DocumentFormat::Pdf),
            Some("html" | "htm" | "xhtml") => Some(DocumentFormat::Html),
            Some("md" | "markdown") => Some(DocumentFormat::Markdown),
            Some("txt" | "text") => Some(DocumentFormat::Text),
            _ => None,
        };
        match (by_media, by_name) {
            (Some(DocumentFormat::Text), Some(named)) => Some(named),
            (Some(media), _) => Some(media),
            (None, named) => named,
        }
    }
}

/// Which jobs a worker takes first. Low-priority jobs still run while higher ones keep coming:
/// a job's priority counts for a bounded time only (see the relay's `jobs.priority_step_secs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    High,
    #[default]
    Normal,
    Low,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }
}

/// `POST /v1/jobs` as JSON. The document is either inline (`text`, with its `format`) or an
/// object already in the relay's document store (`document_ref`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(example = crate::openapi::job_request_example))]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    pub analysis_type: Option<AnalysisType>,
    /// The document's text (`format` says how it is written: text, markdown or html).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<DocumentFormat>,
    /// The key of a document in the relay's store (under `documents/`), instead of `text`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document_ref: Option<String>,
    /// What to call the document (1 to 200 characters): an upload's file name when not given.
    /// The job's status shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::job_document_name))]
    pub document_name: Option<String>,
    /// `extract`: the fields to read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::job_fields))]
    pub fields: Vec<String>,
    /// `extract`: a JSON schema whose `properties` are the fields to read (instead of `fields`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<serde_json::Value>,
    /// `classify`: the labels to choose from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::job_labels))]
    pub labels: Vec<String>,
    /// `qa`: the question.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::job_question))]
    pub question: Option<String>,
    #[serde(default)]
    pub priority: Priority,
    /// Where the relay POSTs the job's status when it ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::job_callback_url))]
    pub callback_url: Option<String>,
    /// A model to use (one the key may use); the routing policy decides otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_hint: Option<String>,
}

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobStatus {
    /// Waiting for a worker (also after a failed attempt, until its retry is due).
    Queued,
    Running,
    Completed,
    /// Ended by an error that another attempt would not mend (an unreadable document, a request
    /// the model refuses).
    Failed,
    /// Failed on every attempt it was given (`jobs.max_attempts`).
    DeadLetter,
    Cancelled,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "QUEUED",
            JobStatus::Running => "RUNNING",
            JobStatus::Completed => "COMPLETED",
            JobStatus::Failed => "FAILED",
            JobStatus::DeadLetter => "DEAD_LETTER",
            JobStatus::Cancelled => "CANCELLED",
        }
    }

    /// Whether the job has ended (nothing about it changes any more).
    pub fn is_final(self) -> bool {
        !matches!(self, JobStatus::Queued | JobStatus::Running)
    }

    pub fn parse(value: &str) -> Option<JobStatus> {
        [
            JobStatus::Queued,
            JobStatus::Running,
            JobStatus::Completed,
            JobStatus::Failed,
            JobStatus::DeadLetter,
            JobStatus::Cancelled,
        ]
        .into_iter()
        .find(|status| status.as_str().eq_ignore_ascii_case(value))
    }
}

/// How far a running job is, in steps done and in all: one per chunk of the document (a model
/// call each), and for `summarize` and `qa` over more than one chunk one more for combining the
/// chunks' answers (a call, or several for a long document), done when the job completes.
/// `extract` and `classify` combine their chunks' answers without a call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobProgress {
    pub done: u32,
    pub total: u32,
}

/// Why a job failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobError {
    /// Stable, like the API's error codes (`empty_document`, `no_text_layer`,
    /// `upstream_unavailable`, ...).
    pub code: String,
    pub message: String,
}

/// A job as `GET /v1/jobs/{id}` shows it (and `POST /v1/jobs` answers, with 202).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobInfo {
    pub job_id: String,
    /// The document's name, when the submission gave one (an upload's file name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document_name: Option<String>,
    pub status: JobStatus,
    pub analysis_type: AnalysisType,
    pub priority: Priority,
    pub format: DocumentFormat,
    /// `/v1/jobs/{id}`.
    pub status_url: String,
    /// `/v1/jobs/{id}/result`, once the job completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_url: Option<String>,
    pub created_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<u64>,
    /// Attempts started so far (a retry after a failure, or after a worker died, is another).
    pub attempts: u32,
    pub progress: JobProgress,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
    /// The delivery of the job's callback, when it has a `callback_url` and has ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<CallbackStatus>,
}

/// How the delivery of a job's callback stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CallbackStatus {
    /// `pending` (due, or waiting for its next try), `delivered`, or `failed` (given up).
    pub state: String,
    /// Deliveries tried so far.
    pub attempts: u32,
}

/// A completed job's answer (`GET /v1/jobs/{id}/result`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobResult {
    pub job_id: String,
    pub analysis_type: AnalysisType,
    /// The model that gave the final answer.
    pub model: String,
    /// The answer as the model wrote it (a summary, an answer, the label, the JSON text).
    pub text: String,
    /// `extract`: the fields as a JSON object; `classify`: the label as a JSON string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    /// Parts the document was split into (1 when it fitted the model's context at once).
    pub chunks: u32,
    /// Characters of text read from the document.
    pub document_chars: u64,
    /// Tokens of every model call the job made.
    pub usage: Usage,
}

/// `GET /v1/jobs`: the caller's jobs, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobList {
    pub jobs: Vec<JobInfo>,
    /// Pass as `?before=` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_before: Option<String>,
}

/// The most fields an `extract` job may ask for, labels a `classify` job may offer, and
/// characters in a question, a field or a label.
pub mod job_limits {
    pub const MAX_FIELDS: usize = 100;
    pub const MAX_LABELS: usize = 100;
    pub const MAX_QUESTION_CHARS: usize = 2_000;
    pub const MAX_NAME_CHARS: usize = 200;
    pub const MAX_CALLBACK_URL_CHARS: usize = 2_000;
}

/// Checks a job request's own rules (the document's size and contents are the relay's to
/// check): an `analysis_type`; one document — inline, by reference, or `uploaded` with the
/// request (a multipart `file`); what the analysis needs (fields or a schema with properties for
/// `extract`, two or more labels for `classify`, a question for `qa`); an http(s) callback URL.
pub fn validate_job_request(
    request: &JobRequest,
    uploaded: bool,
) -> Result<AnalysisType, ValidationError> {
    use job_limits::*;
    let Some(analysis) = request.analysis_type else {
        return Err(ValidationError::new(
            "analysis_type",
            "is required: one of summarize, extract, classify, qa",
        ));
    };
    if uploaded && (request.text.is_some() || request.document_ref.is_some()) {
        return Err(ValidationError::new(
            if request.text.is_some() {
                "text"
            } else {
                "document_ref"
            },
            "give one document: the uploaded file, `text` or `document_ref`",
        ));
    }
    match (&request.text, &request.document_ref) {
        _ if uploaded => {}
        (Some(_), Some(_)) => {
            return Err(ValidationError::new(
                "document_ref",
                "give the document either inline (`text`) or by reference (`document_ref`), not both",
            ));
        }
        (None, None) => {
            return Err(ValidationError::new(
                "text",
                "a document is required: `text` (with `format`), `document_ref`, or a multipart upload",
            ));
        }
        (Some(_), None) if request.format == Some(DocumentFormat::Pdf) => {
            return Err(ValidationError::new(
                "format",
                "a PDF cannot be sent as `text`: upload it (multipart) or give its `document_ref`",
            ));
        }
        _ => {}
    }
    let name_ok = |name: &String| !name.trim().is_empty() && name.chars().count() <= MAX_NAME_CHARS;
    if let Some(name) = &request.document_name
        && (!name_ok(name) || name.chars().any(char::is_control))
    {
        return Err(ValidationError::new(
            "document_name",
            format!(
                "a document's name is 1 to {MAX_NAME_CHARS} characters, none of them control characters"
            ),
        ));
    }
    match analysis {
        AnalysisType::Extract => {
            let schema_fields = request
                .schema
                .as_ref()
                .map(|schema| {
                    schema
                        .get("properties")
                        .and_then(|p| p.as_object())
                        .map(|p| p.len())
                        .ok_or_else(|| {
                            ValidationError::new(
                                "schema",
                                "must be a JSON schema object with `properties` (the fields to read)",
                            )
                        })
                })
                .transpose()?;
            let count = request.fields.len() + schema_fields.unwrap_or(0);
            if count == 0 {
                return Err(ValidationError::new(
                    "fields",
                    "`extract` needs the fields to read: `fields` or a `schema` with `properties`",
                ));
            }
            if count > MAX_FIELDS {
                return Err(ValidationError::new(
                    "fields",
                    format!("at most {MAX_FIELDS} fields"),
                ));
            }
            if let Some(index) = request.fields.iter().position(|f| !name_ok(f)) {
                return Err(ValidationError::new(
                    format!("fields[{index}]"),
                    format!("a field name is 1 to {MAX_NAME_CHARS} characters"),
                ));
            }
        }
        AnalysisType::Classify => {
            if request.labels.len() < 2 || request.labels.len() > MAX_LABELS {
                return Err(ValidationError::new(
                    "labels",
                    format!("`classify` needs 2 to {MAX_LABELS} labels to choose from"),
                ));
            }
            if let Some(index) = request.labels.iter().position(|l| !name_ok(l)) {
                return Err(ValidationError::new(
                    format!("labels[{index}]"),
                    format!("a label is 1 to {MAX_NAME_CHARS} characters"),
                ));
            }
        }
        AnalysisType::Qa => match &request.question {
            Some(question)
                if !question.trim().is_empty()
                    && question.chars().count() <= MAX_QUESTION_CHARS => {}
            _ => {
                return Err(ValidationError::new(
                    "question",
                    format!("`qa` needs a question of 1 to {MAX_QUESTION_CHARS} characters"),
                ));
            }
        },
        AnalysisType::Summarize => {}
    }
    if let Some(url) = &request.callback_url
        && (!(url.starts_with("http://") || url.starts_with("https://"))
            || url.len() > MAX_CALLBACK_URL_CHARS)
    {
        return Err(ValidationError::new(
            "callback_url",
            format!(
                "must be an http:// or https:// URL of at most {MAX_CALLBACK_URL_CHARS} characters"
            ),
        ));
    }
    Ok(analysis)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(analysis: AnalysisType) -> JobRequest {
        JobRequest {
            analysis_type: Some(analysis),
            text: Some("A document.".into()),
            ..JobRequest::default()
        }
    }

    #[test]
    fn each_analysis_names_what_it_misses() {
        let field = |request: &JobRequest| validate_job_request(request, false).unwrap_err().field;
        assert_eq!(field(&JobRequest::default()), "analysis_type");
        assert_eq!(field(&job(AnalysisType::Extract)), "fields");
        assert_eq!(field(&job(AnalysisType::Classify)), "labels");
        assert_eq!(field(&job(AnalysisType::Qa)), "question");
        let no_document = JobRequest {
            text: None,
            ..job(AnalysisType::Summarize)
        };
        assert_eq!(field(&no_document), "text");
        let both = JobRequest {
            document_ref: Some("documents/a".into()),
            ..job(AnalysisType::Summarize)
        };
        assert_eq!(field(&both), "document_ref");
        let bad_schema = JobRequest {
            schema: Some(serde_json::json!({"type": "object"})),
            ..job(AnalysisType::Extract)
        };
        assert_eq!(field(&bad_schema), "schema");
        let blank_label = JobRequest {
            labels: vec!["a".into(), " ".into()],
            ..job(AnalysisType::Classify)
        };
        assert_eq!(field(&blank_label), "labels[1]");
        let callback = JobRequest {
            callback_url: Some("ftp://x".into()),
            ..job(AnalysisType::Summarize)
        };
        assert_eq!(field(&callback), "callback_url");
        let schema = JobRequest {
            schema: Some(serde_json::json!({"properties": {"party": {"type": "string"}}})),
            ..job(AnalysisType::Extract)
        };
        assert_eq!(
            validate_job_request(&schema, false),
            Ok(AnalysisType::Extract)
        );
        // An upload is the document: no `text` or `document_ref` beside it.
        let upload = JobRequest {
            text: None,
            format: Some(DocumentFormat::Pdf),
            ..job(AnalysisType::Summarize)
        };
        assert_eq!(
            validate_job_request(&upload, true),
            Ok(AnalysisType::Summarize)
        );
        assert_eq!(
            validate_job_request(&job(AnalysisType::Summarize), true)
                .unwrap_err()
                .field,
            "text"
        );
    }
}

#[cfg(test)]
mod format_tests {
    use super::DocumentFormat;

    #[test]
    fn a_file_is_read_as_its_type_says_or_its_name_when_the_type_is_generic() {
        let of = DocumentFormat::of_file;
        assert_eq!(
            of("report.pdf", "application/pdf"),
            Some(DocumentFormat::Pdf)
        );
        assert_eq!(of("REPORT.PDF", ""), Some(DocumentFormat::Pdf));
        assert_eq!(of("notes.md", "text/plain"), Some(DocumentFormat::Markdown));
        assert_eq!(
            of("page", "text/html; charset=utf-8"),
            Some(DocumentFormat::Html)
        );
        assert_eq!(
            of("x.bin", "application/pdf; q=1"),
            Some(DocumentFormat::Pdf)
        );
        assert_eq!(
            of("readme.txt", "application/octet-stream"),
            Some(DocumentFormat::Text)
        );
        assert_eq!(of("setup.exe", "application/x-msdownload"), None);
        assert_eq!(of("photo.png", "image/png"), None);
        assert_eq!(of("no-extension", ""), None);
    }
}
