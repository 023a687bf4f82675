//! What callers spent, from the relay's usage ledger: `GET /v1/usage` (the calling key's own)
//! and `GET /v1/admin/usage` (every key's, and every model's today).

use serde::{Deserialize, Serialize};

/// Requests, tokens and dollars.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UsageTotals {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// From the model's configured prices.
    pub cost_usd: f64,
}

/// The spend on one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModelUsage {
    pub model: String,
    #[serde(flatten)]
    pub totals: UsageTotals,
}

/// One key's spend today and this month (UTC), in all and per model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyUsage {
    pub key: String,
    /// `YYYY-MM-DD`.
    pub day: String,
    /// `YYYY-MM`.
    pub month: String,
    pub today: UsageTotals,
    pub month_to_date: UsageTotals,
    pub today_by_model: Vec<ModelUsage>,
    pub month_by_model: Vec<ModelUsage>,
}

/// Every key's spend, and every model's today (`GET /v1/admin/usage`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UsageReport {
    pub day: String,
    pub month: String,
    pub keys: Vec<KeyUsage>,
    pub models_today: Vec<ModelUsage>,
}
