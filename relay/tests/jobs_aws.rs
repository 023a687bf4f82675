//! The AWS job backend end to end against `moto_server` (a local SQS, S3, DynamoDB and SNS from
//! the test virtualenv scripts/setup.sh makes, started here on a loopback port): two relay
//! processes share one set of queues, table, bucket and topic. Jobs submitted to either run on
//! either and are seen from both; each ends exactly once — one model call per attempt in all,
//! one notice on the topic per ended job — including a document referenced in the bucket, a job
//! dead-lettered after its retries, a running job cancelled through the other relay, and a
//! callback delivered through the callbacks queue after a failed first delivery.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use fm_protocol::{JobInfo, JobList, JobResult, JobStatus};
use fm_relay::config::JobsBackend;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_fm-relay");

/// A callback receiver that answers 500 to the first delivery of each job and 200 after;
/// the deliveries it got, by job id.
async fn receiver() -> (u16, Arc<Mutex<BTreeMap<String, u32>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Arc<Mutex<BTreeMap<String, u32>>> = Arc::default();
    let record = seen.clone();
    let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
        let record = record.clone();
        async move {
            let id = headers
                .get("x-fm-job-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let mut seen = record.lock().unwrap();
            let count = seen.entry(id).or_default();
            *count += 1;
            match *count {
                1 => axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                _ => axum::http::StatusCode::OK,
            }
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, seen)
}

async fn submit(http: &reqwest::Client, url: &str, body: serde_json::Value) -> JobInfo {
    let response = http
        .post(format!("{url}/v1/jobs"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "{:?}", response.text().await);
    response.json().await.unwrap()
}

async fn get_json<T: serde::de::DeserializeOwned>(http: &reqwest::Client, url: String) -> T {
    let response = http.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200, "{url}: {:?}", response.text().await);
    response.json().await.unwrap()
}

#[tokio::test]
async fn two_relays_share_the_aws_backend_and_end_each_job_once() {
    let moto = Moto::start().await;
    let aws = moto.sdk_config().await;
    let sqs = aws_sdk_sqs::Client::new(&aws);
    let sns = aws_sdk_sns::Client::new(&aws);

    // Notices land in a queue of this test's, as the topic's subscriber.
    let topic = sns
        .create_topic()
        .name("fm-relay-job-notices")
        .send()
        .await
        .unwrap()
        .topic_arn
        .unwrap();
    let notices = sqs
        .create_queue()
        .queue_name("notices")
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let notices_arn = queue_arn(&sqs, &notices).await;
    sns.subscribe()
        .topic_arn(&topic)
        .protocol("sqs")
        .endpoint(&notices_arn)
        .attributes("RawMessageDelivery", "true")
        .send()
        .await
        .unwrap();

    let mut sim_config = sim_config();
    // Answers take 100 ms: both relays' workers get a share of the batch.
    sim_config.models.insert(
        UPSTREAM.into(),
        fm_sim::ModelProfile {
            first_token_ms: 100,
            tokens_per_second: 0.0,
            answer_tokens: None,
        },
    );
    let sim = fm_sim::spawn(sim_config).await.unwrap();
    let mut config = relay_config(&sim);
    config.server.watch_config_ms = 0;
    // One model call per attempt: the relay's own retries out of the way.
    config.retry.max_attempts = 1;
    let jobs = &mut config.jobs;
    jobs.backend = JobsBackend::Aws;
    jobs.aws.endpoint_url = moto.url.clone();
    jobs.aws.create_resources = true;
    jobs.aws.topic = topic.clone();
    jobs.aws.wait_secs = 1;
    jobs.workers = 3;
    jobs.visibility_timeout_secs = 4;
    jobs.heartbeat_secs = 1;
    jobs.poll_ms = 100;
    jobs.max_attempts = 2;
    jobs.retry_base_ms = 200;
    jobs.retry_max_ms = 400;
    jobs.callback_secret = "s3cret".into();
    jobs.callback_allow_private = true;
    let file = config_file("jobs-aws", &config);
    let serve = || {
        serve_binary_with_env(
            BIN,
            ["serve".as_ref(), "--config".as_ref(), file.as_os_str()],
            AWS_ENV,
        )
    };
    let first = serve();
    let second = serve();
    let (a, b) = (first.url.clone(), second.url.clone());
    let http = http_client();

    // A document already in the bucket, referenced by a job.
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&aws)
            .force_path_style(true)
            .build(),
    )
    .put_object()
    .bucket(&config.jobs.aws.bucket)
    .key("documents/shared-report.txt")
    .body(bytes::Bytes::from_static(b"A report both relays can read.").into())
    .send()
    .await
    .unwrap();

    let (hook_port, deliveries) = receiver().await;
    let slow = submit(
        &http,
        &a,
        json!({"analysis_type": "summarize", "text": "Slowly.", "model": "slow"}),
    )
    .await;
    let mut plain = Vec::new();
    for n in 0..24 {
        let (url, priority) = match n % 3 {
            0 => (&a, "high"),
            1 => (&b, "normal"),
            _ => (&a, "low"),
        };
        let text = format!("Report number {n}.");
        let job = submit(
            &http,
            url,
            json!({"analysis_type": "summarize", "text": text, "priority": priority}),
        )
        .await;
        assert_eq!(job.status, JobStatus::Queued);
        plain.push(job.job_id);
    }
    let referenced = submit(
        &http,
        &b,
        json!({"analysis_type": "summarize", "document_ref": "documents/shared-report.txt"}),
    )
    .await;
    plain.push(referenced.job_id.clone());
    let called_back = submit(
        &http,
        &b,
        json!({"analysis_type": "summarize", "text": "Call me.",
               "callback_url": format!("http://127.0.0.1:{hook_port}/hook")}),
    )
    .await;
    plain.push(called_back.job_id.clone());
    let dead = submit(
        &http,
        &a,
        json!({"analysis_type": "summarize", "text": "Never.", "model": "unavailable"}),
    )
    .await;

    // The slow job is cancelled through the other relay while it runs.
    until_job(&http, &b, &slow.job_id, None, "running", |job| {
        job.status == JobStatus::Running
    })
    .await;
    // ... and its model call reached the upstream (a busy machine may take a while between the
    // two), so the count of calls below is exact.
    let asked = Instant::now();
    while !sim
        .stats()
        .recent
        .iter()
        .any(|r| r.model_id == SLOW_UPSTREAM)
    {
        assert!(
            asked.elapsed() < Duration::from_secs(30),
            "the slow job never called its model"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let response = http
        .delete(format!("{b}/v1/jobs/{}", slow.job_id))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<JobInfo>().await.unwrap().status,
        JobStatus::Cancelled
    );

    // Every job ends, as the relay it was not submitted to sees it.
    for (n, id) in plain.iter().enumerate() {
        let other = if n % 3 == 1 { &a } else { &b };
        let done = until_job(&http, other, id, None, "completed", |job| {
            job.status.is_final()
        })
        .await;
        assert_eq!(
            (done.status, done.attempts),
            (JobStatus::Completed, 1),
            "{done:?}"
        );
        let result: JobResult = get_json(&http, format!("{other}/v1/jobs/{id}/result")).await;
        assert_eq!(result.chunks, 1);
        assert!(!result.text.is_empty());
    }
    let dead = until_job(&http, &b, &dead.job_id, None, "ended", |job| {
        job.status.is_final()
    })
    .await;
    assert_eq!(
        (dead.status, dead.attempts),
        (JobStatus::DeadLetter, 2),
        "{dead:?}"
    );
    assert_eq!(dead.error.unwrap().code, "upstream_unavailable");
    let delivered = until_job(&http, &a, &called_back.job_id, None, "called back", |job| {
        job.callback
            .as_ref()
            .is_some_and(|c| c.state == "delivered")
    })
    .await;
    assert_eq!(delivered.callback.unwrap().attempts, 2);
    assert_eq!(
        deliveries.lock().unwrap().get(&called_back.job_id),
        Some(&2),
        "a failed delivery, then one that took"
    );

    // The cancelled job's worker lets go at its next heartbeat; it never ends otherwise.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cancelled = job_at(&http, &a, &slow.job_id, None).await;
    assert_eq!(cancelled.status, JobStatus::Cancelled, "{cancelled:?}");

    // One model call per attempt: 26 completed jobs, 2 attempts of the dead one, the slow one.
    assert_eq!(sim.stats().requests, 26 + 2 + 1);

    // One notice per ended job (the cancelled one has none), with its final status.
    let mut noticed: HashMap<String, Vec<JobStatus>> = HashMap::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        let received = sqs
            .receive_message()
            .queue_url(&notices)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        for message in received.messages() {
            let info: JobInfo = serde_json::from_str(message.body().unwrap()).unwrap();
            noticed.entry(info.job_id).or_default().push(info.status);
            sqs.delete_message()
                .queue_url(&notices)
                .receipt_handle(message.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
        }
        if noticed.len() == plain.len() + 1 && received.messages().is_empty() {
            break;
        }
    }
    assert_eq!(noticed.len(), plain.len() + 1, "{noticed:?}");
    for id in &plain {
        assert_eq!(noticed[id], [JobStatus::Completed], "job {id}");
    }
    assert_eq!(noticed[&dead.job_id], [JobStatus::DeadLetter]);

    // The key's jobs, newest first, in pages, from either relay.
    let mut listed = Vec::new();
    let mut before: Option<String> = None;
    for _ in 0..10 {
        let cursor = before
            .as_ref()
            .map(|c| format!("&before={c}"))
            .unwrap_or_default();
        let page: JobList = get_json(&http, format!("{a}/v1/jobs?limit=10{cursor}")).await;
        listed.extend(page.jobs);
        before = page.next_before;
        if before.is_none() {
            break;
        }
    }
    assert_eq!(listed.len(), 28);
    assert!(
        listed
            .windows(2)
            .all(|w| w[0].created_at >= w[1].created_at)
    );
    assert_eq!(
        listed.last().unwrap().job_id,
        slow.job_id,
        "the first job is last"
    );
    let dead_letters: JobList = get_json(&http, format!("{b}/v1/jobs?status=DEAD_LETTER")).await;
    assert_eq!(dead_letters.jobs.len(), 1);
    let response = http
        .get(format!("{b}/v1/jobs?before=42"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400, "a cursor of the other backend");

    // The key's count of unfinished jobs is back to none.
    let counter = aws_sdk_dynamodb::Client::new(&aws)
        .get_item()
        .table_name(&config.jobs.aws.table)
        .key(
            "id",
            aws_sdk_dynamodb::types::AttributeValue::S(format!(
                "key#{}",
                fm_relay::auth::ANONYMOUS
            )),
        )
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
        .unwrap();
    assert_eq!(counter["unfinished"].as_n().unwrap(), "0");

    // Both relays ran jobs.
    let mut completed_by = Vec::new();
    for mut served in [first, second] {
        served.child.kill().unwrap();
        served.child.wait().unwrap();
        let log = served.rest_of_log.join().unwrap();
        completed_by.push(
            log.iter()
                .filter(|line| line.contains("job completed"))
                .count(),
        );
    }
    assert_eq!(
        completed_by.iter().sum::<usize>(),
        plain.len(),
        "{completed_by:?}"
    );
    assert!(completed_by.iter().all(|&n| n > 0), "{completed_by:?}");
}
