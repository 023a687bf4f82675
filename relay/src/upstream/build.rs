//! Building the targets of the configured models ([`TargetBuilder`]): one Bedrock client per
//! region, shared by every model served there, and one HTTP client for every OpenAI-compatible
//! server. The builder lives as long as the relay, so a configuration reload reuses its clients
//! and hands back, unchanged, every target the new file still declares the same way — with its
//! breaker, rate limiter, live window of calls and health gates as they are.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Target, TargetIdentity};
use crate::config::{BreakerConfig, ModelConfig, ProviderKind, RelayConfig};
use crate::error::RelayError;
use crate::provider::bedrock::{BedrockEndpoint, BedrockHttp};
use crate::provider::{BedrockProvider, OpenAiProvider, Provider, openai};

/// Makes (or, for a reload, finds again) the targets of each configured model.
#[derive(Debug)]
pub struct TargetBuilder {
    endpoint: BedrockEndpoint,
    /// The HTTP clients Bedrock calls are spread over.
    http: BedrockHttp,
    connect_timeout: Duration,
    breaker: BreakerConfig,
    adaptive_rate_limit: bool,
    /// The Bedrock clients made so far, by region.
    bedrock_clients: tokio::sync::Mutex<Vec<(String, BedrockProvider)>>,
    /// The HTTP client of the OpenAI-compatible servers, once one is configured.
    openai_http: Mutex<Option<reqwest::Client>>,
}

impl TargetBuilder {
    /// A builder for `config`'s targets; Bedrock calls go to `endpoint`. The breaker and rate
    /// limiter settings are fixed for the relay's life (changing them takes a restart).
    pub fn new(
        config: &RelayConfig,
        endpoint: BedrockEndpoint,
    ) -> Result<TargetBuilder, RelayError> {
        Ok(TargetBuilder {
            endpoint,
            http: BedrockHttp::new(
                config.bedrock.http2_connections,
                config.bedrock.ca_file.as_deref(),
            )?,
            connect_timeout: config.timeouts.connect(),
            breaker: config.breaker,
            adaptive_rate_limit: config.rate_limit.adaptive,
            bedrock_clients: tokio::sync::Mutex::default(),
            openai_http: Mutex::default(),
        })
    }

    /// Where Bedrock calls go.
    pub fn endpoint(&self) -> &BedrockEndpoint {
        &self.endpoint
    }

    /// `model`'s targets in failover order. A target of `previous` (the targets the model had
    /// before a reload) that is declared the same way is handed back as it is.
    pub async fn targets(
        &self,
        model: &ModelConfig,
        previous: &[Arc<Target>],
    ) -> Result<Vec<Arc<Target>>, RelayError> {
        let mut targets = Vec::new();
        for spec in model.targets() {
            let identity = TargetIdentity {
                provider: model.provider,
                region: spec.region.to_string(),
                endpoint: spec.endpoint.map(str::to_string),
                upstream_id: spec.upstream_id.to_string(),
                api_key_env: model.api_key_env.clone(),
            };
            if let Some(kept) = previous.iter().find(|t| t.identity == identity) {
                targets.push(kept.clone());
                continue;
            }
            let provider = self.provider(&identity).await?;
            targets.push(Arc::new(Target::new(
                identity,
                provider,
                self.breaker,
                self.adaptive_rate_limit,
            )));
        }
        Ok(targets)
    }

    async fn provider(&self, identity: &TargetIdentity) -> Result<Provider, RelayError> {
        let region = identity.region.as_str();
        Ok(match identity.provider {
            ProviderKind::OpenAi => {
                let http = {
                    let mut shared = self.openai_http.lock().unwrap_or_else(|e| e.into_inner());
                    match &*shared {
                        Some(http) => http.clone(),
                        None => {
                            let http = openai::http_client(self.connect_timeout)?;
                            *shared = Some(http.clone());
                            http
                        }
                    }
                };
                let api_key = identity
                    .api_key_env
                    .as_ref()
                    .and_then(|name| std::env::var(name).ok());
                Provider::OpenAi(OpenAiProvider::new(
                    http,
                    identity.endpoint.as_deref().unwrap_or_default(),
                    api_key,
                    region,
                ))
            }
            ProviderKind::Bedrock => {
                let mut clients = self.bedrock_clients.lock().await;
                let client = match clients.iter().find(|(known, _)| known == region) {
                    Some((_, client)) => client.clone(),
                    None => {
                        let client = BedrockProvider::connect(
                            &self.endpoint,
                            region,
                            &self.http,
                            self.connect_timeout,
                        )
                        .await;
                        clients.push((region.to_string(), client.clone()));
                        client
                    }
                };
                Provider::Bedrock(client)
            }
        })
    }
}
