//! FM Relay on AWS Lambda: one binary, two functions, told apart by the function's handler
//! setting (`_HANDLER`, which Lambda sets from the function's `Handler`; `FM_LAMBDA_HANDLER`
//! overrides it, as `cargo lambda watch` needs):
//!
//! - `http` ([`http`]) — the relay's whole API, every surface behind the same edge (keys,
//!   limits, content types, sizes), for a function URL or API Gateway; answers stream as they
//!   are made (the function URL's `RESPONSE_STREAM` invoke mode), or are sent whole with
//!   `FM_LAMBDA_RESPONSE=buffered`.
//! - `jobs` ([`worker`]) — the SQS-triggered job worker: one attempt of one job per message,
//!   through the relay's own job code, failed messages reported alone.
//!
//! The configuration is the relay's ([`settings`]): `FM_RELAY_CONFIG_TOML` (the file's text, as a
//! template sets it), else the file `FM_RELAY_CONFIG` names, else the embedded default; then the
//! same `FM_RELAY_*` variables `fm-relay serve` reads; then what Lambda requires of it.

mod error;
mod http;
mod settings;
mod worker;

use std::process::ExitCode;

use error::LambdaError;
use fm_relay::telemetry;

/// Which function this process serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Function {
    Http,
    Jobs,
}

impl Function {
    /// The handler setting: `FM_LAMBDA_HANDLER`, else Lambda's `_HANDLER`.
    fn from_env() -> Result<Function, LambdaError> {
        let handler = std::env::var("FM_LAMBDA_HANDLER")
            .or_else(|_| std::env::var("_HANDLER"))
            .unwrap_or_default();
        match handler.as_str() {
            "http" => Ok(Function::Http),
            "jobs" => Ok(Function::Jobs),
            _ => Err(LambdaError::UnknownHandler { got: handler }),
        }
    }
}

/// What both functions start from: the settings' warnings logged, the relay assembled without
/// the tasks that run between requests, except the refresh of routing's figures, which runs
/// while the function serves.
async fn assemble(
    config: fm_relay::RelayConfig,
) -> Result<fm_relay::server::Assembled, LambdaError> {
    for warning in settings::warnings(&config) {
        tracing::warn!("{warning}");
    }
    let assembled = fm_relay::server::assemble_without_tasks(config).await?;
    fm_relay::api::spawn_routing_refresh(&assembled.state);
    Ok(assembled)
}

fn main() -> ExitCode {
    let started = std::time::Instant::now();
    let prepared = Function::from_env().and_then(|function| {
        let config = settings::load(function)?;
        telemetry::traces::init(&config.tracing)?;
        Ok((function, config))
    });
    let (function, config) = match prepared {
        Ok(prepared) => prepared,
        Err(err) => {
            // Lambda shows the init error in the function's log and its invoke answer.
            eprintln!("fm-relay-lambda: {err}");
            return ExitCode::from(2);
        }
    };
    fm_relay::server::run_to_exit("fm-relay-lambda", async move {
        match function {
            Function::Http => http::serve(config, started).await,
            Function::Jobs => worker::serve(config, started).await,
        }
    })
}
