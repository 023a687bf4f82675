//! The relay as AWS Lambda functions (`fm-relay-lambda`, relay/lambda), run locally by
//! `cargo lambda watch` (PyPI `cargo-lambda`, installed into the test virtualenv by
//! scripts/setup.sh), which emulates Lambda's runtime API and function URLs: the API function
//! against fm-sim answers JSON, streams SSE as the tokens come (the first long before the last),
//! and answers a bad request with its 4xx; the job worker function, given an SQS event with two
//! jobs' messages (received from `moto_server`'s queue, as Lambda's event source mapping would),
//! completes one and reports the other, whose model fails, as the batch's one item failure — its
//! message left in the queue for its retry, the completed job's deleted. The deployment template
//! (deploy/lambda/template.yaml) passes `cfn-lint` and names what the functions read.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use fm_protocol::{JobInfo, JobResult, JobStatus, StreamEvent};
use fm_relay::config::JobsBackend;
use serde_json::json;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A tool of the test virtualenv.
fn venv_tool(name: &str) -> PathBuf {
    let bin = workspace().join(".venv/bin").join(name);
    assert!(
        bin.exists(),
        "{} is missing: run scripts/setup.sh (it installs the test tools into .venv)",
        bin.display()
    );
    bin
}

/// A process group a test started (`cargo lambda watch`, the `cargo run` it starts and the
/// function under it), killed when dropped.
struct GroupStoppedOnDrop(std::process::Child);

impl Drop for GroupStoppedOnDrop {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.0.wait();
    }
}

/// One `cargo lambda watch` serving `fm-relay-lambda` as the function `handler` (`http` or
/// `jobs`) with the relay configuration `config`.
struct Watch {
    _process: GroupStoppedOnDrop,
    /// Where the emulator takes invocations and function URL requests.
    base: String,
    log: PathBuf,
}

impl Watch {
    fn start(handler: &str, config: &Path) -> Watch {
        let port = free_port();
        let log = config.with_file_name(format!("watch-{handler}.log"));
        let mut env = format!(
            "FM_LAMBDA_HANDLER={handler},FM_RELAY_CONFIG={}",
            config.display()
        );
        for (name, value) in AWS_ENV {
            env.push_str(&format!(",{name}={value}"));
        }
        let child = {
            use std::os::unix::process::CommandExt;
            Command::new(venv_tool("cargo-lambda"))
                .args([
                    "lambda",
                    "watch",
                    "--ignore-changes",
                    "-A",
                    "127.0.0.1",
                    "-P",
                ])
                .arg(port.to_string())
                .args([
                    "-p",
                    "fm-relay-lambda",
                    "--bin",
                    "fm-relay-lambda",
                    "--env-var",
                ])
                .arg(env)
                .current_dir(workspace())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .process_group(0)
                .spawn()
                .expect("cargo lambda watch starts")
        };
        Watch {
            _process: GroupStoppedOnDrop(child),
            base: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    /// The function URL's base.
    fn url(&self) -> String {
        format!("{}/lambda-url/fm-relay-lambda", self.base)
    }

    /// Invokes the function with `event` (the Lambda Invoke API): its answer.
    async fn invoke(
        &self,
        http: &reqwest::Client,
        event: &serde_json::Value,
    ) -> reqwest::Result<reqwest::Response> {
        http.post(format!(
            "{}/2015-03-31/functions/fm-relay-lambda/invocations",
            self.base
        ))
        .json(event)
        .send()
        .await
    }

    /// Waits until `ready` holds: the emulator starts the function at its first request (and
    /// builds it first when it is not built: minutes on a cold target folder).
    async fn until_ready(&self, mut ready: impl AsyncFnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(600);
        while Instant::now() < deadline {
            if ready().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!(
            "cargo lambda watch did not serve the function; its log:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }
}

/// An SQS event as Lambda's event source mapping delivers it: one record per message.
fn sqs_event(queue_arn: &str, messages: &[aws_sdk_sqs::types::Message]) -> serde_json::Value {
    let records: Vec<_> = messages
        .iter()
        .map(|message| {
            json!({
                "messageId": message.message_id(),
                "receiptHandle": message.receipt_handle(),
                "body": message.body(),
                "attributes": {"ApproximateReceiveCount": "1"},
                "messageAttributes": {},
                "md5OfBody": message.md5_of_body(),
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": "us-east-1",
            })
        })
        .collect();
    json!({ "Records": records })
}

/// The job a queue message names.
fn job_of(message: &aws_sdk_sqs::types::Message) -> String {
    let body: serde_json::Value = serde_json::from_str(message.body().unwrap()).unwrap();
    body["job_id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_serves_and_runs_jobs_as_lambda_functions() {
    let moto = Moto::start().await;
    let sim = fm_sim::spawn(sim_config()).await.unwrap();
    let mut config = relay_config(&sim);
    // One model call per attempt: the job on the failing model fails at once.
    config.retry.max_attempts = 1;
    let prefix = format!("fm-relay-lambda-{}", std::process::id());
    let jobs = &mut config.jobs;
    jobs.backend = JobsBackend::Aws;
    jobs.aws.endpoint_url = moto.url.clone();
    jobs.aws.create_resources = true;
    jobs.aws.queue_prefix = prefix.clone();
    jobs.aws.table = prefix.clone();
    jobs.aws.bucket = prefix.clone();
    jobs.aws.wait_secs = 1;
    jobs.workers = 2;
    jobs.visibility_timeout_secs = 30;
    jobs.heartbeat_secs = 1;
    jobs.max_attempts = 3;
    jobs.retry_base_ms = 1_000;
    jobs.retry_max_ms = 2_000;
    let file = config_file("lambda", &config);
    let http = http_client();

    let api = Watch::start("http", &file);
    api.until_ready(async || {
        let healthz = http.get(format!("{}/healthz", api.url())).send().await;
        healthz.is_ok_and(|answer| answer.status() == 200)
    })
    .await;

    // A JSON answer.
    let answer = post_json(
        &http,
        format!("{}/v1/chat", api.url()),
        chat_body(Some("plain"), "Say hello."),
    )
    .await;
    assert_eq!(answer.status(), 200);
    assert_eq!(
        answer.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let answer: fm_protocol::ChatResponse = answer.json().await.unwrap();
    assert!(!answer.text.is_empty() && !answer.degraded, "{answer:?}");

    // A stream that arrives as it is made: `paced` sends 20 tokens a second, so 30 tokens take
    // 1.5 s, and the first must reach the client long before the last.
    let body = json!({"model": "paced", "max_tokens": 30,
        "messages": [{"role": "user", "content": "Tell me a long story."}]});
    let response = post_json(
        &http,
        format!("{}/v1/chat/stream", api.url()),
        body.to_string(),
    )
    .await;
    let mut reader = SseReader::new(response);
    let (mut first_text, mut texts) = (None, 0);
    let mut last = None;
    while let Some(event) = reader.next_event().await {
        match &event {
            StreamEvent::TextDelta { .. } => {
                texts += 1;
                first_text.get_or_insert_with(Instant::now);
            }
            StreamEvent::Error { .. } | StreamEvent::Failover { .. } => {
                panic!("the stream broke: {event:?}")
            }
            _ => {}
        }
        last = Some((event, Instant::now()));
    }
    let (last, ended) = last.expect("events");
    assert!(matches!(last, StreamEvent::Done { .. }), "{last:?}");
    assert_eq!(texts, 30);
    let spread = ended - first_text.expect("text arrived");
    assert!(
        spread >= Duration::from_millis(1_000),
        "the first token came only {spread:?} before the end: the answer was buffered"
    );

    // A client mistake is a 4xx that names the field.
    let refused = post_json(
        &http,
        format!("{}/v1/chat", api.url()),
        json!({"messages": []}).to_string(),
    )
    .await;
    let (status, code, field) = error_of(refused).await;
    assert_eq!(
        (status, code.as_str(), field.as_deref()),
        (400, "invalid_request", Some("messages"))
    );

    // A WebSocket cannot be opened through a function URL: the answer says so and where to go.
    let not_upgraded = http
        .get(format!("{}/v1/ws", api.url()))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(not_upgraded.status(), 400);
    let body: serde_json::Value = not_upgraded.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_request", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("POST /v1/chat/stream"),
        "{body}"
    );

    // Two jobs through the API function: one on a healthy model, one on a model that fails.
    let submit = async |body: serde_json::Value| -> JobInfo {
        let response = post_json(&http, format!("{}/v1/jobs", api.url()), body.to_string()).await;
        assert_eq!(response.status(), 202, "{:?}", response.text().await);
        response.json().await.unwrap()
    };
    let healthy = submit(json!({"analysis_type": "summarize", "text": "A short report."})).await;
    let failing = submit(
        json!({"analysis_type": "summarize", "text": "Never read.", "model": "unavailable"}),
    )
    .await;

    // Their messages, received as Lambda's event source mapping would.
    let sqs = aws_sdk_sqs::Client::new(&moto.sdk_config().await);
    let queue = sqs
        .get_queue_url()
        .queue_name(format!("{prefix}-normal"))
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let source_arn = queue_arn(&sqs, &queue).await;
    let receive = async |want: usize| {
        let mut messages = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while messages.len() < want && Instant::now() < deadline {
            let received = sqs
                .receive_message()
                .queue_url(&queue)
                .max_number_of_messages(10)
                .visibility_timeout(30)
                .wait_time_seconds(1)
                .send()
                .await
                .unwrap();
            messages.extend(received.messages.unwrap_or_default());
        }
        messages
    };
    let messages = receive(2).await;
    assert_eq!(messages.len(), 2, "{messages:?}");
    let failing_message = messages
        .iter()
        .find(|message| job_of(message) == failing.job_id)
        .expect("the failing job's message")
        .message_id()
        .unwrap()
        .to_string();

    let worker = Watch::start("jobs", &file);
    let empty = json!({ "Records": [] });
    worker
        .until_ready(async || {
            let answer = worker.invoke(&http, &empty).await;
            answer.is_ok_and(|answer| answer.status() == 200)
        })
        .await;
    let answer = worker
        .invoke(&http, &sqs_event(&source_arn, &messages))
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let answer: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(
        answer,
        json!({"batchItemFailures": [{"itemIdentifier": failing_message}]}),
        "the failing job alone is reported"
    );

    // The healthy job completed, its result stored; the failing one waits for its retry.
    let done = job_at(&http, &api.url(), &healthy.job_id, None).await;
    assert_eq!(
        (done.status, done.attempts),
        (JobStatus::Completed, 1),
        "{done:?}"
    );
    let result = http
        .get(format!("{}/v1/jobs/{}/result", api.url(), healthy.job_id))
        .send()
        .await
        .unwrap();
    assert_eq!(result.status(), 200);
    let result: JobResult = result.json().await.unwrap();
    assert!(!result.text.is_empty());
    let waiting = job_at(&http, &api.url(), &failing.job_id, None).await;
    assert_eq!(
        (waiting.status, waiting.attempts),
        (JobStatus::Queued, 1),
        "{waiting:?}"
    );
    assert!(waiting.error.is_some(), "{waiting:?}");

    // Only the failing job's message is left, due again after its retry wait.
    let again = receive(1).await;
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(job_of(&again[0]), failing.job_id);
    let rest = sqs
        .receive_message()
        .queue_url(&queue)
        .max_number_of_messages(10)
        .wait_time_seconds(2)
        .send()
        .await
        .unwrap();
    assert!(
        rest.messages.unwrap_or_default().is_empty(),
        "the completed job's message was deleted"
    );
}

/// The deployment template as JSON, read by cfn-lint's own reader (which knows CloudFormation's
/// short tags such as `!Sub`).
fn template() -> serde_json::Value {
    let read = Command::new(venv_tool("python"))
        .args([
            "-c",
            "import json, sys\nfrom cfnlint.decode import decode\ntemplate, errors = decode(sys.argv[1])\nassert not errors, errors\nprint(json.dumps(template))",
        ])
        .arg(workspace().join("deploy/lambda/template.yaml"))
        .output()
        .unwrap();
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    serde_json::from_slice(&read.stdout).unwrap()
}

/// A `Fn::Sub` string with the template's variables given sample values.
fn substituted(value: &serde_json::Value) -> String {
    let text = value["Fn::Sub"]
        .as_str()
        .unwrap_or_else(|| panic!("not a !Sub: {value}"));
    let text = [
        ("${AuthMode}", "keys"),
        ("${SharedStateBackend}", "redis"),
        ("${RedisUrl}", "redis://10.0.0.5:6379/"),
        ("${AWS::Region}", "us-east-1"),
        ("${AWS::StackName}", "fm"),
        ("${AWS::Partition}", "aws"),
        ("${AWS::AccountId}", "123456789012"),
        ("${ResultsBucket}", "fm-results"),
        ("${JobsTable}", "fm-jobs"),
        (
            "${NoticesTopic}",
            "arn:aws:sns:us-east-1:123456789012:fm-notices",
        ),
        ("${ResultsBucket.Arn}", "arn:aws:s3:::fm-results"),
        (
            "${JobsTable.Arn}",
            "arn:aws:dynamodb:us-east-1:123456789012:table/fm-jobs",
        ),
    ]
    .iter()
    .fold(text.to_string(), |text, (name, value)| {
        text.replace(name, value)
    });
    assert!(
        !text.contains("${"),
        "a variable left unsubstituted: {text}"
    );
    text
}

#[test]
fn the_deployment_template_passes_cfn_lint_and_matches_the_functions() {
    let template_file = workspace().join("deploy/lambda/template.yaml");
    let lint = Command::new(venv_tool("cfn-lint"))
        .arg(&template_file)
        .output()
        .unwrap();
    assert!(
        lint.status.success(),
        "cfn-lint:\n{}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );

    let template = template();
    let resources = &template["Resources"];
    // The configuration both functions run with is a valid relay configuration with the AWS job
    // backend on the template's own queues, table, bucket and topic.
    let config = fm_relay::RelayConfig::from_toml(
        &substituted(
            &template["Globals"]["Function"]["Environment"]["Variables"]["FM_RELAY_CONFIG_TOML"],
        ),
        "the template",
    )
    .unwrap();
    assert!(config.jobs.enabled && config.jobs.backend == JobsBackend::Aws);
    assert_eq!(config.jobs.aws.table, "fm-jobs");
    assert!(
        config.jobs.aws.topic.starts_with("arn:"),
        "no CreateTopic on Lambda"
    );

    // The handlers are the two the binary serves.
    let api = &resources["ApiFunction"]["Properties"];
    let worker = &resources["WorkerFunction"]["Properties"];
    assert_eq!(api["Handler"], "http");
    assert_eq!(worker["Handler"], "jobs");
    assert_eq!(api["FunctionUrlConfig"]["InvokeMode"], "RESPONSE_STREAM");

    // Each function may invoke exactly the configured models: each model's inference profile and
    // the foundation model behind it.
    for function in [api, worker] {
        let statements = function["Policies"][0]["Statement"].as_array().unwrap();
        let bedrock = statements
            .iter()
            .find(|statement| statement["Sid"] == "InvokeTheConfiguredModels")
            .unwrap();
        let allowed: Vec<String> = bedrock["Resource"]
            .as_array()
            .unwrap()
            .iter()
            .map(substituted)
            .collect();
        assert_eq!(allowed.len(), config.models.len() * 2, "{allowed:?}");
        for model in &config.models {
            let profile = format!("inference-profile/{}", model.upstream_id());
            let underlying = model.upstream_id().trim_start_matches("us.");
            let foundation = format!("foundation-model/{underlying}");
            for wanted in [profile, foundation] {
                assert!(
                    allowed.iter().any(|arn| arn.ends_with(&wanted)),
                    "{} may not be invoked: {allowed:?}",
                    model.id
                );
            }
        }
    }

    // The queues are the ones the relay looks for, each a source of the worker that reports
    // item failures, each hiding a message longer than the worker may run, each with the
    // dead-letter queue.
    let worker_timeout = worker["Timeout"].as_u64().unwrap();
    let events = worker["Events"].as_object().unwrap();
    for (resource, suffix) in [
        ("HighQueue", "high"),
        ("NormalQueue", "normal"),
        ("LowQueue", "low"),
        ("CallbacksQueue", "callbacks"),
    ] {
        let queue = &resources[resource]["Properties"];
        assert_eq!(
            substituted(&queue["QueueName"]),
            format!("{}-{suffix}", config.jobs.aws.queue_prefix)
        );
        assert!(queue["VisibilityTimeout"].as_u64().unwrap() >= worker_timeout);
        assert_eq!(
            queue["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0],
            "DeadLetterQueue"
        );
        let source = events
            .values()
            .find(|event| event["Properties"]["Queue"]["Fn::GetAtt"][0] == resource)
            .unwrap_or_else(|| panic!("{resource} does not trigger the worker"));
        assert_eq!(
            source["Properties"]["FunctionResponseTypes"],
            json!(["ReportBatchItemFailures"])
        );
    }
    assert!(config.jobs.visibility_timeout_secs >= worker_timeout);

    // The table has the index the relay queries.
    let table = &resources["JobsTable"]["Properties"];
    assert_eq!(
        table["KeySchema"],
        json!([{"AttributeName": "id", "KeyType": "HASH"}])
    );
    assert_eq!(
        table["GlobalSecondaryIndexes"][0]["KeySchema"],
        json!([
            {"AttributeName": "key_name", "KeyType": "HASH"},
            {"AttributeName": "seq", "KeyType": "RANGE"}
        ])
    );
}
