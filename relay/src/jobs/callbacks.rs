//! Callbacks: when a job ends (completed, failed, dead-lettered), its status is POSTed to the
//! job's `callback_url`, signed, and retried with backoff until the receiver answers 2xx or
//! `jobs.callback_max_attempts` deliveries failed. Due callbacks are kept in the job table, so a
//! restart loses none.
//!
//! **The signature** — header `x-fm-signature: t=<unix seconds>,v1=<hex>`, where `<hex>` is the
//! HMAC-SHA256, keyed with `jobs.callback_secret`, of `<t>.<body>` (the timestamp, a full stop,
//! then the raw body). A receiver recomputes it over the bytes it got and compares in constant
//! time, and rejects old timestamps to stop replays. `x-fm-job-id` and `x-fm-delivery-attempt`
//! say which job and which try.
//!
//! **Where callbacks may go** — `http` or `https` URLs only; a host on the allow-list
//! (`jobs.callback_allowed_hosts`, when set); and, unless `jobs.callback_allow_private`, no
//! private, loopback, link-local, shared or unspecified address — checked on the addresses the
//! name resolves to, and the connection made to the addresses checked (no second lookup a DNS
//! rebinding could change). Redirects are followed by hand, at most [`MAX_REDIRECTS`], each
//! target checked the same way. A refused target is given up at once.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::backend::{Delivery, DueCallback, now_ms};
use super::{Jobs, info};
use crate::config::JobsConfig;
use crate::error::RelayError;

/// Redirects followed for one delivery.
pub const MAX_REDIRECTS: usize = 5;
/// Callbacks taken per look at the table.
const BATCH: u32 = 16;

/// Why a callback target is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetRefusal {
    #[error("`{0}` is not an http:// or https:// URL")]
    NotHttp(String),
    #[error("`{0}` is not on the callback allow-list (`jobs.callback_allowed_hosts`)")]
    NotAllowed(String),
    #[error(
        "`{host}` resolves to {address}, a private, loopback or link-local address (set `jobs.callback_allow_private` to allow it)"
    )]
    Private { host: String, address: IpAddr },
    #[error("`{0}` does not resolve to any address")]
    Unresolved(String),
}

/// Whether `address` is one callbacks may not reach unless private targets are allowed.
pub fn is_private(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                // 100.64.0.0/10, shared address space (carrier-grade NAT)
                || (a == 100 && (64..128).contains(&b))
                // 0.0.0.0/8
                || a == 0
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                // fc00::/7 unique local, fe80::/10 link-local
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
        }
    }
}

/// Whether `host` is on `allowed` (exact, or `*.domain` for its subdomains); an empty list
/// allows every host.
fn host_allowed(host: &str, allowed: &[String]) -> bool {
    allowed.is_empty()
        || allowed.iter().any(|entry| {
            let entry = entry.to_ascii_lowercase();
            match entry.strip_prefix("*.") {
                Some(domain) => host.ends_with(&format!(".{domain}")),
                None => host == entry,
            }
        })
}

/// Checks `url` against the rules and resolves it: the host and the addresses to connect to.
pub async fn check_target(
    url: &reqwest::Url,
    config: &JobsConfig,
) -> Result<(String, Vec<SocketAddr>), TargetRefusal> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(TargetRefusal::NotHttp(url.to_string()));
    }
    let host = url
        .host_str()
        .ok_or_else(|| TargetRefusal::NotHttp(url.to_string()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    if !host_allowed(&host, &config.callback_allowed_hosts) {
        return Err(TargetRefusal::NotAllowed(host));
    }
    let port = url.port_or_known_default().unwrap_or(80);
    let addresses: Vec<SocketAddr> = match tokio::net::lookup_host((host.as_str(), port)).await {
        Ok(found) => found.collect(),
        Err(_) => Vec::new(),
    };
    if addresses.is_empty() {
        return Err(TargetRefusal::Unresolved(host));
    }
    if !config.callback_allow_private
        && let Some(private) = addresses.iter().find(|a| is_private(a.ip()))
    {
        return Err(TargetRefusal::Private {
            host,
            address: private.ip(),
        });
    }
    Ok((host, addresses))
}

/// The `x-fm-signature` header of `body` sent at `timestamp` (unix seconds).
pub fn signature(secret: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// How one delivery went.
#[derive(Debug)]
enum Attempt {
    Delivered,
    /// Worth trying again (a network error, a 5xx, a 429).
    Failed(String),
    /// Never worth trying again (a refused target, a 4xx).
    Refused(String),
}

/// How long a callback is held for its delivery: longer than a delivery with its redirects can
/// take.
pub(super) fn hold_ms(config: &JobsConfig) -> u64 {
    config.callback_timeout_ms * (MAX_REDIRECTS as u64 + 2)
}

/// Delivers due callbacks until the relay stops: looks every `jobs.poll_ms`.
pub async fn run(jobs: Jobs, secret: String, shutdown: crate::shutdown::Shutdown) {
    let poll = Duration::from_millis(jobs.inner.config.poll_ms);
    let hold_ms = hold_ms(&jobs.inner.config);
    while shutdown.phase() == crate::shutdown::Phase::Running {
        let due = match jobs.inner.backend.due_callbacks(BATCH, hold_ms).await {
            Ok(due) => due,
            Err(err) => {
                tracing::error!(error = %err, "cannot read the due callbacks");
                Vec::new()
            }
        };
        if due.is_empty() {
            tokio::select! {
                () = tokio::time::sleep(poll) => {}
                () = shutdown.reached(crate::shutdown::Phase::Draining) => {}
            }
            continue;
        }
        for callback in due {
            if let Err(err) = settle(&jobs, &callback, &secret).await {
                tracing::error!(job_id = %callback.job.id, error = %err, "cannot record a callback's delivery");
            }
        }
    }
}

/// Delivers one due callback and records how it went: delivered, given up, or due again after
/// a wait that doubles with each failed try. An error when the record could not be written (the
/// callback is then due again when its hold runs out).
pub(super) async fn settle(
    jobs: &Jobs,
    callback: &DueCallback,
    secret: &str,
) -> Result<Delivery, RelayError> {
    let config = &jobs.inner.config;
    let timeout = Duration::from_millis(config.callback_timeout_ms);
    let attempt = deliver(callback, config, secret, timeout).await;
    let outcome = match &attempt {
        Attempt::Delivered => Delivery::Delivered,
        Attempt::Refused(_) => Delivery::Failed,
        Attempt::Failed(_) if callback.attempts + 1 >= config.callback_max_attempts => {
            Delivery::Failed
        }
        Attempt::Failed(_) => {
            let wait = 1_000u64.saturating_mul(1 << callback.attempts.min(16));
            Delivery::RetryAt(now_ms() + wait / 2 + fastrand::u64(0..=wait / 2))
        }
    };
    match &attempt {
        Attempt::Delivered => {
            tracing::info!(job_id = %callback.job.id, url = %callback.url, "callback delivered")
        }
        Attempt::Failed(why) | Attempt::Refused(why) => tracing::warn!(
            job_id = %callback.job.id, url = %callback.url, attempt = callback.attempts + 1,
            ?outcome, "callback not delivered: {why}"
        ),
    }
    jobs.inner.backend.delivered(callback, outcome).await?;
    Ok(outcome)
}

/// One delivery: the job's status, signed, POSTed to its URL and to the redirects it gives.
async fn deliver(
    callback: &DueCallback,
    config: &JobsConfig,
    secret: &str,
    timeout: Duration,
) -> Attempt {
    let body = match serde_json::to_vec(&info(&callback.job)) {
        Ok(body) => body,
        Err(err) => return Attempt::Refused(format!("the status as JSON: {err}")),
    };
    let mut url = match reqwest::Url::parse(&callback.url) {
        Ok(url) => url,
        Err(err) => return Attempt::Refused(format!("`{}` is not a URL: {err}", callback.url)),
    };
    for _ in 0..=MAX_REDIRECTS {
        let (host, addresses) = match check_target(&url, config).await {
            Ok(target) => target,
            Err(refusal) => return Attempt::Refused(refusal.to_string()),
        };
        // Connect to the address just checked, whatever a later lookup would say.
        let client = match reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .resolve_to_addrs(&host, &addresses)
            .timeout(timeout)
            .build()
        {
            Ok(client) => client,
            Err(err) => return Attempt::Failed(format!("an HTTP client: {err}")),
        };
        let timestamp = now_ms() / 1000;
        let sent = client
            .post(url.clone())
            .header("content-type", "application/json")
            .header("x-fm-signature", signature(secret, timestamp, &body))
            .header("x-fm-job-id", &callback.job.id)
            .header("x-fm-delivery-attempt", (callback.attempts + 1).to_string())
            .body(body.clone())
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(err) => return Attempt::Failed(err.to_string()),
        };
        let status = response.status();
        if status.is_redirection() {
            let next = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|value| value.to_str().ok())
                .and_then(|location| url.join(location).ok());
            match next {
                Some(next) => {
                    url = next;
                    continue;
                }
                None => return Attempt::Refused(format!("a {status} without a usable Location")),
            }
        }
        return match status.as_u16() {
            200..=299 => Attempt::Delivered,
            408 | 429 | 500..=599 => Attempt::Failed(format!("the receiver answered {status}")),
            _ => Attempt::Refused(format!("the receiver answered {status}")),
        };
    }
    Attempt::Refused(format!("more than {MAX_REDIRECTS} redirects"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_addresses_are_told_apart_from_public_ones() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::",
        ] {
            assert!(is_private(private.parse().unwrap()), "{private}");
        }
        for public in ["93.184.216.34", "8.8.8.8", "2606:4700::1111"] {
            assert!(!is_private(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn the_allow_list_takes_names_and_subdomains() {
        let allowed = vec![
            "hooks.example.com".to_string(),
            "*.corp.example".to_string(),
        ];
        assert!(host_allowed("hooks.example.com", &allowed));
        assert!(host_allowed("a.b.corp.example", &allowed));
        assert!(!host_allowed("corp.example", &allowed));
        assert!(!host_allowed("evil.com", &allowed));
        assert!(host_allowed("anything", &[]));
    }

    #[test]
    fn the_signature_is_the_documented_hmac() {
        // HMAC-SHA256("secret", "1700000000.{}"), computed independently.
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(b"secret").unwrap();
        mac.update(b"1700000000.{}");
        let expected = hex::encode(mac.finalize().into_bytes());
        assert_eq!(
            signature("secret", 1_700_000_000, b"{}"),
            format!("t=1700000000,v1={expected}")
        );
    }

    #[tokio::test]
    async fn targets_are_checked_after_resolution() {
        let config = JobsConfig::default();
        let url = |u: &str| reqwest::Url::parse(u).unwrap();
        assert!(matches!(
            check_target(&url("http://127.0.0.1:9/hook"), &config).await,
            Err(TargetRefusal::Private { .. })
        ));
        assert!(matches!(
            check_target(&url("http://localhost:9/hook"), &config).await,
            Err(TargetRefusal::Private { .. })
        ));
        assert!(matches!(
            check_target(&url("ftp://example.com/x"), &config).await,
            Err(TargetRefusal::NotHttp(_))
        ));
        let allowing = JobsConfig {
            callback_allow_private: true,
            callback_allowed_hosts: vec!["localhost".into()],
            ..JobsConfig::default()
        };
        assert!(
            check_target(&url("http://localhost:9/hook"), &allowing)
                .await
                .is_ok()
        );
        assert!(matches!(
            check_target(&url("http://127.0.0.1:9/hook"), &allowing).await,
            Err(TargetRefusal::NotAllowed(_))
        ));
    }
}
