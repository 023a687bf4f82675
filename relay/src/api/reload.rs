//! Configuration reload: `POST /v1/admin/reload` (an admin key) or `SIGHUP` reads the
//! configuration file again, with the same environment and flag overrides, validates it, and —
//! when it changes nothing that only a restart applies — puts its routing rules and routes in
//! force at once ([`reload`]). Requests decide with the policy they read, so open streams finish
//! under the one they started with; the catalog stays, with every target's breaker, rate limiter
//! and live window. An invalid file, or one that changes other sections, is refused with a log
//! line that says why (and a 409 `reload_refused` for the endpoint), and the running
//! configuration is kept.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::AppState;
use super::edge::Edge;
use crate::error::{RelayError, ReloadRefusal, RequestError};

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/admin/reload", post(reload_now))
}

async fn reload_now(
    State(state): State<AppState>,
    edge: Edge,
) -> Result<Json<Value>, RequestError> {
    reload(&state)
        .map(Json)
        .map_err(|error| error.with_request_id(&edge.request_id))
}

/// Reads the file again and applies what it changed; see the module's documentation.
pub fn reload(state: &AppState) -> Result<Value, RelayError> {
    let outcome = (|| {
        let running = state.config();
        let new = running.reread()?;
        let needs_restart = running.changes_needing_restart(&new);
        if !needs_restart.is_empty() {
            return Err(RelayError::ReloadRefused(ReloadRefusal::NeedsRestart(
                needs_restart,
            )));
        }
        state.routing().replace_policy(&new);
        Ok(new)
    })();
    match outcome {
        Ok(new) => {
            let file = new
                .source
                .path
                .as_deref()
                .map(|path| path.display().to_string());
            tracing::info!(
                file = file.as_deref().unwrap_or_default(),
                rules = new.routing.rules.len(),
                routes = new.routes.len(),
                "configuration reloaded: its routing rules and routes are in force"
            );
            Ok(json!({
                "reloaded": true,
                "file": file,
                "rules": new.routing.rules.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
                "routes": new.routes.iter().map(|r| r.path.as_str()).collect::<Vec<_>>(),
            }))
        }
        Err(err) => {
            tracing::warn!(error = %err, "configuration reload refused; the running configuration is kept");
            Err(err)
        }
    }
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
                let _ = reload(&state);
            }
        });
    }
}
