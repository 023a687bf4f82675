//! Configuration reload: `POST /v1/admin/reload` (an admin key), `SIGHUP`, or a change of the
//! file's modification time (checked every `server.watch_config_ms`) reads the configuration
//! file again, with the same environment and flag overrides, validates it (the
//! API keys against its models too, as a restart would), and — when it changes nothing that only
//! a restart applies — puts its models, default model, `[routing]` settings and rules, and the
//! routes of the paths already served in force at once ([`reload`]).
//!
//! The new catalog is built beside the running one: a target the new file declares the same way
//! as before (same model, provider, region or endpoint, upstream id) is the same target, with its
//! breaker, rate limiter, live window of calls and health gates as they are; new targets start
//! fresh, and targets no longer declared end with the last request that holds them. Requests
//! decide with the routing table they read, so open streams finish under the one they started
//! with. The models' prices and token rates go to the limits, their series to the live window.
//! An invalid file, or one that changes other sections, is refused with a log line that says
//! why (and a 409 `reload_refused` for the endpoint), and the running configuration is kept.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use fm_protocol::ApiErrorBody;
use serde_json::{Value, json};

use super::AppState;
use super::edge::Edge;
use crate::auth::KeyRing;
use crate::config::RelayConfig;
use crate::error::{RelayError, ReloadRefusal, RequestError};
use crate::routing::ModelCatalog;

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/admin/reload", post(reload_now))
}

/// Reads the configuration file again and applies it (an admin key)
///
/// Applies the new file's models, default model, `[routing]` and the routes of the paths
/// already served, keeping the unchanged targets; a file that is invalid or changes what only a
/// restart applies is refused and the running configuration kept.
#[utoipa::path(
    post,
    path = "/v1/admin/reload",
    operation_id = "reload",
    tag = "admin",
    request_body(
        content = Object,
        content_type = "application/json",
        description = "Read by nobody: send `{}` (a POST body must be JSON, as everywhere).",
    ),
    responses(
        (status = 200, description = "Applied: what changed.", body = Object),
        (status = 409, description = "Refused (`reload_refused`): the running configuration is kept.", body = ApiErrorBody),
    ),
)]
async fn reload_now(
    State(state): State<AppState>,
    edge: Edge,
) -> Result<Json<Value>, RequestError> {
    reload(&state)
        .await
        .map(Json)
        .map_err(|error| error.with_request_id(&edge.request_id))
}

/// One reload at a time: two at once would each build a catalog from the table before them.
static RELOADING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Reads the file again and applies what it changed; see the module's documentation.
pub async fn reload(state: &AppState) -> Result<Value, RelayError> {
    let _one_at_a_time = RELOADING.lock().await;
    match apply(state).await {
        Ok((new, kept, made)) => {
            let file = new
                .source
                .path
                .as_deref()
                .map(|path| path.display().to_string());
            tracing::info!(
                file = file.as_deref().unwrap_or_default(),
                models = new.models.len(),
                rules = new.routing.rules.len(),
                routes = new.routes.len(),
                targets_kept = kept,
                targets_new = made,
                "configuration reloaded: its models, routing and routes are in force"
            );
            Ok(json!({
                "reloaded": true,
                "file": file,
                "default_model": new.default_model,
                "models": new.models.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
                "rules": new.routing.rules.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
                "routes": new.routes.iter().map(|r| r.path.as_str()).collect::<Vec<_>>(),
                "targets_kept": kept,
                "targets_new": made,
            }))
        }
        Err(err) => {
            tracing::warn!(error = %err, "configuration reload refused; the running configuration is kept");
            Err(err)
        }
    }
}

/// Validates the file and swaps it in: the new configuration, and how many targets were kept
/// and how many made.
async fn apply(state: &AppState) -> Result<(RelayConfig, usize, usize), RelayError> {
    let running = state.config();
    let new = running.reread()?;
    let needs_restart = running.changes_needing_restart(&new);
    if !needs_restart.is_empty() {
        return Err(RelayError::ReloadRefused(ReloadRefusal::NeedsRestart(
            needs_restart,
        )));
    }
    // The keys (the file's and the keys file's) must name only models the new file declares.
    KeyRing::load(&new)
        .map_err(|err| RelayError::ReloadRefused(ReloadRefusal::Invalid(Box::new(err))))?;
    let before = state.routing().table();
    let catalog = ModelCatalog::build(&new, state.targets(), Some(before.catalog())).await?;
    let (mut kept, mut made) = (0, 0);
    for entry in catalog.models() {
        for target in &entry.targets {
            let known = before.catalog().models().iter().any(|old| {
                old.targets
                    .iter()
                    .any(|old| std::sync::Arc::ptr_eq(old, target))
            });
            match known {
                true => kept += 1,
                false => made += 1,
            }
        }
    }
    state
        .window()
        .track(new.models.iter().map(|model| model.id.clone()));
    state.limits().set_models(&new.models);
    state.routing().replace(&new, catalog, state.window());
    Ok((new, kept, made))
}

/// Reloads on every `SIGHUP` for as long as the relay serves.
pub fn reload_on_hangup(state: &AppState) {
    #[cfg(unix)]
    {
        let weak = state.downgrade();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut hangups) = signal(SignalKind::hangup()) else {
                tracing::warn!("cannot listen for SIGHUP: reload with POST /v1/admin/reload");
                return;
            };
            while hangups.recv().await.is_some() {
                let Some(state) = weak.upgrade() else { break };
                tracing::info!("SIGHUP received: reloading the configuration");
                // `reload` logs its own outcome.
                let _ = reload(&state).await;
            }
        });
    }
}

/// Reloads whenever the config file's modification time changes, checked every
/// `server.watch_config_ms` (nothing to watch without a file, or with 0).
pub fn reload_on_change(state: &AppState) {
    let every = state.config().server.watch_config_ms;
    let Some(path) = state.config().source.path.clone() else {
        return;
    };
    if every == 0 {
        return;
    }
    let weak = state.downgrade();
    tokio::spawn(async move {
        let modified = async |path: &std::path::Path| {
            tokio::fs::metadata(path)
                .await
                .and_then(|meta| meta.modified())
                .ok()
        };
        let mut seen = modified(&path).await;
        let mut timer = tokio::time::interval(std::time::Duration::from_millis(every));
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            timer.tick().await;
            let Some(state) = weak.upgrade() else { break };
            let now = modified(&path).await;
            if now.is_none() || now == seen {
                continue;
            }
            seen = now;
            tracing::info!(file = %path.display(), "the config file changed: reloading it");
            // `reload` logs its own outcome.
            let _ = reload(&state).await;
        }
    });
}
