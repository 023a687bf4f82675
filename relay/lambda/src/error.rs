//! The Lambda functions' one error type.

/// Why a Lambda function could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum LambdaError {
    /// The handler setting names neither function.
    #[error(
        "the function's handler is `{got}`: set the function's Handler (or FM_LAMBDA_HANDLER) to `http` (the API) or `jobs` (the SQS job worker)"
    )]
    UnknownHandler { got: String },
    /// A setting that cannot work on Lambda.
    #[error("{setting}: {why}")]
    UnfitSetting {
        setting: &'static str,
        why: &'static str,
    },
    /// The relay's configuration or assembly failed.
    #[error(transparent)]
    Relay(#[from] fm_relay::RelayError),
    /// The configuration in `FM_RELAY_CONFIG_TOML` or the environment could not be read.
    #[error("the environment's settings: {0}")]
    Environment(#[source] clap::Error),
    /// The Lambda runtime stopped with an error (its API unreachable, an event it could not read).
    #[error("the Lambda runtime: {0}")]
    Runtime(#[source] lambda_runtime::Error),
}
