//! `kill -9` of the relay in the middle of a batch of document jobs loses none: after a restart
//! on the same job store, every unfinished job runs again — the ones that were running are taken
//! over when their worker's hold runs out — and each ends exactly once, completed, with its
//! result.

mod common;

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::*;
use fm_protocol::{JobInfo, JobList, JobResult, JobStatus};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_fm-relay");

/// Starts `fm-relay serve --config FILE`; the child and its URL.
fn serve(file: &std::path::Path) -> (Child, String) {
    let served = serve_binary(
        BIN,
        ["serve".as_ref(), "--config".as_ref(), file.as_os_str()],
    );
    (served.child, served.url)
}

/// `GET url` read as JSON.
async fn get_json<T: serde::de::DeserializeOwned>(http: &reqwest::Client, url: String) -> T {
    http.get(url).send().await.unwrap().json().await.unwrap()
}

async fn job(http: &reqwest::Client, url: &str, id: &str) -> JobInfo {
    get_json(http, format!("{url}/v1/jobs/{id}")).await
}

#[tokio::test]
async fn a_relay_killed_mid_batch_loses_no_job_and_ends_each_once() {
    // Each answer takes 150 ms: the batch is still running when the relay is killed.
    let mut sim_config = sim_config();
    sim_config.models.insert(
        UPSTREAM.into(),
        fm_sim::ModelProfile {
            first_token_ms: 150,
            tokens_per_second: 0.0,
            answer_tokens: None,
        },
    );
    let sim = fm_sim::spawn(sim_config).await.unwrap();
    let mut config = relay_config(&sim);
    config.jobs.workers = 2;
    config.jobs.visibility_timeout_secs = 2;
    config.jobs.heartbeat_secs = 1;
    config.jobs.poll_ms = 50;
    config.server.watch_config_ms = 0;
    let file = config_file("jobs-kill", &config);
    let http = http_client();

    let (mut first, url) = serve(&file);
    let mut ids = Vec::new();
    for n in 0..12 {
        let response = http
            .post(format!("{url}/v1/jobs"))
            .header("content-type", "application/json")
            .body(
                json!({"analysis_type": "summarize", "text": format!("Report number {n}.")})
                    .to_string(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        ids.push(response.json::<JobInfo>().await.unwrap().job_id);
    }
    // Kill it once some jobs have completed and others are running.
    let start = Instant::now();
    let running_at_kill = loop {
        let mut completed = 0;
        let mut running = Vec::new();
        for id in &ids {
            match job(&http, &url, id).await.status {
                JobStatus::Completed => completed += 1,
                JobStatus::Running => running.push(id.clone()),
                _ => {}
            }
        }
        if completed >= 2 && !running.is_empty() {
            first.kill().unwrap(); // SIGKILL
            first.wait().unwrap();
            break running;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the batch never got going"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };

    // Restarted on the same job store: every job ends, completed, once.
    let (mut second, url) = serve(&file);
    let start = Instant::now();
    for id in &ids {
        let done = loop {
            let now = job(&http, &url, id).await;
            if now.status.is_final() {
                break now;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "job {id} never ended: {now:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(done.status, JobStatus::Completed, "{done:?}");
        let result: JobResult = get_json(&http, format!("{url}/v1/jobs/{id}/result")).await;
        assert_eq!(&result.job_id, id);
        assert!(!result.text.is_empty());
    }
    // The jobs that were running when the relay died were taken over: a second attempt.
    for id in &running_at_kill {
        let taken_over = job(&http, &url, id).await;
        assert!(taken_over.attempts >= 2, "{taken_over:?}");
    }
    // Each job is listed once, and no job is left unfinished.
    let listed: JobList = get_json(&http, format!("{url}/v1/jobs?limit=100")).await;
    let mut listed_ids: Vec<String> = listed.jobs.iter().map(|j| j.job_id.clone()).collect();
    listed_ids.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(listed_ids, expected);
    assert!(listed.jobs.iter().all(|j| j.status == JobStatus::Completed));
    let _ = Command::new("kill")
        .args(["-TERM", &second.id().to_string()])
        .status();
    let _ = second.wait();
}
