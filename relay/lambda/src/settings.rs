//! The configuration a Lambda function runs with: the relay's own (`FM_RELAY_CONFIG_TOML`, else
//! the file `FM_RELAY_CONFIG` names, else the embedded default; then the `FM_RELAY_*`
//! variables), then what Lambda requires of it — a refusal, naming the setting, for what cannot
//! work there, and a warning for what works per instance only.

use std::path::{Path, PathBuf};

use clap::Parser;
use fm_relay::RelayConfig;
use fm_relay::config::{BedrockMode, CacheBackend, JobsBackend, LimitsBackend, ServeArgs};

use crate::Function;
use crate::error::LambdaError;

/// The variable a template puts the configuration's text in.
pub const CONFIG_TOML_ENV: &str = "FM_RELAY_CONFIG_TOML";

/// The `FM_RELAY_*` variables, read as `fm-relay serve` reads them (there are no arguments).
#[derive(Debug, Parser)]
struct Environment {
    #[command(flatten)]
    serve: ServeArgs,
}

/// Reads the configuration and fits it to `function` on Lambda.
pub fn load(function: Function) -> Result<RelayConfig, LambdaError> {
    let environment =
        Environment::try_parse_from(["fm-relay-lambda"]).map_err(LambdaError::Environment)?;
    let config = match std::env::var(CONFIG_TOML_ENV) {
        Ok(text) if !text.trim().is_empty() => RelayConfig::from_toml(&text, CONFIG_TOML_ENV)?,
        _ => RelayConfig::load(environment.serve.config.as_deref())?,
    };
    let config = config.apply(&environment.serve.overrides())?;
    fit(config, function, &std::env::temp_dir())
}

/// What Lambda requires: the folders the relay writes under `writable` (Lambda's `/tmp`, the
/// only folder a function may write), and a job backend both functions share.
fn fit(
    mut config: RelayConfig,
    function: Function,
    writable: &Path,
) -> Result<RelayConfig, LambdaError> {
    let jobs_aws = config.jobs.enabled && config.jobs.backend == JobsBackend::Aws;
    match function {
        Function::Jobs if !jobs_aws => {
            return Err(LambdaError::UnfitSetting {
                setting: "jobs.backend",
                why: "the job worker function takes its jobs from SQS: set jobs.enabled = true and jobs.backend = \"aws\", as the API function has",
            });
        }
        Function::Http if config.jobs.enabled && !jobs_aws => {
            return Err(LambdaError::UnfitSetting {
                setting: "jobs.backend",
                why: "on Lambda no process stays up to run the embedded queue's jobs: set jobs.backend = \"aws\" (the worker function runs them), or jobs.enabled = false",
            });
        }
        _ => {}
    }
    config.limits.data_dir = under(writable, &config.limits.data_dir);
    if let Some(dir) = &config.jobs.dir {
        config.jobs.dir = Some(under(writable, dir));
    }
    Ok(config)
}

/// A relative folder is taken under `writable`.
fn under(writable: &Path, dir: &Path) -> PathBuf {
    match dir.is_relative() {
        true => writable.join("fm-relay").join(dir),
        false => dir.to_path_buf(),
    }
}

/// What works on Lambda but per instance only, or not at all, for the log at start-up.
pub fn warnings(config: &RelayConfig) -> Vec<&'static str> {
    let mut warnings = Vec::new();
    if config.limits.backend == LimitsBackend::Memory {
        warnings.push(
            "limits.backend = \"memory\": each Lambda instance counts rates, budgets and quotas on its own, and its usage ledger lives in its /tmp; set limits.backend = \"redis\" to share them",
        );
    }
    if config.cache.enabled && config.cache.backend == CacheBackend::Memory {
        warnings.push(
            "cache.backend = \"memory\": each Lambda instance keeps its own answer cache; set cache.backend = \"redis\" to share it",
        );
    }
    if config.bedrock.mode == BedrockMode::Sim {
        warnings.push(
            "bedrock.mode = \"sim\": calls go to the embedded simulator, not Bedrock; set bedrock.mode = \"aws\" (credentials come from the function's role)",
        );
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_jobs(backend: JobsBackend) -> RelayConfig {
        let mut config = RelayConfig::embedded_default();
        config.jobs.enabled = true;
        config.jobs.backend = backend;
        config
    }

    #[test]
    fn the_worker_needs_the_aws_job_backend() {
        let refused = fit(
            with_jobs(JobsBackend::Embedded),
            Function::Jobs,
            Path::new("/tmp"),
        );
        assert!(
            matches!(
                refused,
                Err(LambdaError::UnfitSetting {
                    setting: "jobs.backend",
                    ..
                })
            ),
            "{refused:?}"
        );
        let mut disabled = with_jobs(JobsBackend::Aws);
        disabled.jobs.enabled = false;
        assert!(fit(disabled, Function::Jobs, Path::new("/tmp")).is_err());
        assert!(
            fit(
                with_jobs(JobsBackend::Aws),
                Function::Jobs,
                Path::new("/tmp")
            )
            .is_ok()
        );
    }

    #[test]
    fn the_api_refuses_the_embedded_queue_but_not_jobs_switched_off() {
        assert!(
            fit(
                with_jobs(JobsBackend::Embedded),
                Function::Http,
                Path::new("/tmp")
            )
            .is_err()
        );
        let mut off = with_jobs(JobsBackend::Embedded);
        off.jobs.enabled = false;
        assert!(fit(off, Function::Http, Path::new("/tmp")).is_ok());
    }

    #[test]
    fn relative_folders_move_under_the_writable_one() {
        let mut config = with_jobs(JobsBackend::Aws);
        config.limits.data_dir = PathBuf::from("data");
        config.jobs.dir = Some(PathBuf::from("/var/jobs"));
        let fitted = fit(config, Function::Http, Path::new("/tmp")).unwrap();
        assert_eq!(fitted.limits.data_dir, Path::new("/tmp/fm-relay/data"));
        assert_eq!(fitted.jobs.dir.as_deref(), Some(Path::new("/var/jobs")));
    }

    #[test]
    fn per_instance_settings_are_warned_about() {
        let mut config = RelayConfig::embedded_default();
        config.limits.backend = LimitsBackend::Memory;
        config.bedrock.mode = BedrockMode::Sim;
        let warnings = warnings(&config);
        assert!(warnings.iter().any(|w| w.starts_with("limits.backend")));
        assert!(warnings.iter().any(|w| w.starts_with("bedrock.mode")));
        config.limits.backend = LimitsBackend::Redis;
        config.bedrock.mode = BedrockMode::Aws;
        config.cache.enabled = false;
        assert!(super::warnings(&config).is_empty());
    }
}
