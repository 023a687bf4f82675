//! [`IdeError`]: everything that can end an answer or refuse a request, typed, and how it reaches
//! JavaScript — an `Error` whose `kind` says which (`invalid`, `relay`, `network`, `protocol`,
//! `cancelled`, `unsupported`) with the relay's `code`, `retryable` and the `field` of a refused
//! request beside the message. (A `failover` that restarts the answer is not an error: the
//! session reports it as an event of its own, see [`crate::session`].)

use fm_protocol::ErrorCode;
use wasm_bindgen::JsValue;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IdeError {
    /// The editor context or the request breaks a rule; `field` names which.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// The relay answered with an error (an error answer, or an `error` event mid-stream).
    #[error("{message}")]
    Relay {
        code: ErrorCode,
        message: String,
        retryable: bool,
    },
    /// The relay could not be reached, or the connection broke.
    #[error("the relay could not be reached: {0}")]
    Network(String),
    /// The answer did not follow the relay's protocol (an unreadable event, an end without `done`).
    #[error("the answer broke off: {0}")]
    Protocol(String),
    /// The caller cancelled the answer.
    #[error("cancelled")]
    Cancelled,
    /// The host lacks what the request needs (a WebSocket in a Node without one).
    #[error("{0}")]
    Unsupported(String),
}

impl IdeError {
    /// The `kind` JavaScript sees.
    pub fn kind(&self) -> &'static str {
        match self {
            IdeError::Invalid { .. } => "invalid",
            IdeError::Relay { .. } => "relay",
            IdeError::Network(_) => "network",
            IdeError::Protocol(_) => "protocol",
            IdeError::Cancelled => "cancelled",
            IdeError::Unsupported(_) => "unsupported",
        }
    }

    /// Whether the same request may succeed when sent again.
    pub fn retryable(&self) -> bool {
        match self {
            IdeError::Relay { retryable, .. } => *retryable,
            IdeError::Network(_) | IdeError::Protocol(_) => true,
            IdeError::Invalid { .. } | IdeError::Cancelled | IdeError::Unsupported(_) => false,
        }
    }

    /// The error as a plain JSON object: `kind`, `message`, `retryable`, and `code` and `field`
    /// where they apply.
    pub fn to_json(&self) -> serde_json::Value {
        let mut body = serde_json::json!({
            "kind": self.kind(),
            "message": self.to_string(),
            "retryable": self.retryable(),
        });
        match self {
            IdeError::Invalid { field, .. } => body["field"] = field.clone().into(),
            IdeError::Relay { code, .. } => body["code"] = serde_json::json!(code),
            _ => {}
        }
        body
    }
}

impl From<fm_protocol::ValidationError> for IdeError {
    fn from(err: fm_protocol::ValidationError) -> Self {
        IdeError::Invalid {
            field: err.field,
            message: err.message,
        }
    }
}

/// A JavaScript `Error` with the fields of [`IdeError::to_json`] set on it.
impl From<IdeError> for JsValue {
    fn from(err: IdeError) -> Self {
        let error = js_sys::Error::new(&err.to_string());
        if let serde_json::Value::Object(fields) = err.to_json() {
            for (name, value) in fields {
                let value = match value {
                    serde_json::Value::String(text) => JsValue::from_str(&text),
                    serde_json::Value::Bool(flag) => JsValue::from_bool(flag),
                    other => JsValue::from_str(&other.to_string()),
                };
                // Setting a property on a fresh Error cannot fail.
                let _ = js_sys::Reflect::set(&error, &JsValue::from_str(&name), &value);
            }
        }
        error.into()
    }
}
