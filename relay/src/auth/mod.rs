//! API keys: who is calling, and what they may use.
//!
//! A key is `fmr_` and 64 hex digits of the OS's randomness ([`new_key`]); the relay keeps only
//! its SHA-256 ([`key_digest`]) — in the config's `[[auth.keys]]` or the keys file that
//! `fm-relay keys add` writes ([`keys_file`]). A presented key is hashed and looked up by its
//! digest; the digest found is then compared with the presented one in constant time
//! (`subtle`), so neither the lookup nor the comparison tells an attacker how close a guess came.
//! (A 256-bit random key needs no slow password hash: there is nothing to guess.)
//!
//! [`KeyRing::identify`] answers who the caller is: with `auth.mode = "keys"` a missing,
//! unknown or revoked key is refused (unknown and revoked alike, so a refusal never tells whether
//! a key exists); with `"open"` a request without a key is the [`ANONYMOUS`] caller, and a key
//! that is sent must still be valid. [`ApiKey::may_call`] and [`ApiKey::may_use_model`] are the
//! key's permissions. The HTTP side (which headers carry the key) is `api::edge`'s.

pub mod keys_file;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{ApiKeyConfig, AuthMode, KeyLimits, RelayConfig};
use crate::error::{AuthFailure, RelayError};

/// The name usage is filed under for requests without a key (open mode).
pub const ANONYMOUS: &str = "anonymous";

/// What every key starts with, so a key in a log or a leaked file is recognisable.
pub const KEY_PREFIX: &str = "fmr_";

/// A SHA-256 digest of a key.
pub type KeyDigest = [u8; 32];

/// One caller's identity and permissions.
#[derive(Debug)]
pub struct ApiKey {
    pub name: String,
    pub admin: bool,
    digest: KeyDigest,
    revoked: bool,
    /// Empty: every model.
    models: HashSet<String>,
    /// Empty: every route.
    routes: Vec<String>,
    /// The key's limits, with those it leaves out taken from `limits.per_key`.
    pub limits: KeyLimits,
}

impl ApiKey {
    fn from_config(config: &ApiKeyConfig, defaults: KeyLimits) -> Result<ApiKey, String> {
        let digest = hex::decode(&config.key_sha256)
            .ok()
            .and_then(|bytes| KeyDigest::try_from(bytes).ok())
            .ok_or_else(|| {
                format!(
                    "API key `{}`: `key_sha256` is not 64 hex digits",
                    config.name
                )
            })?;
        Ok(ApiKey {
            name: config.name.clone(),
            admin: config.admin,
            digest,
            revoked: config.revoked,
            models: config.models.iter().cloned().collect(),
            routes: config.routes.clone(),
            limits: config.limits.or(defaults),
        })
    }

    /// The caller of open mode: every model, every route.
    pub(crate) fn anonymous(limits: KeyLimits) -> ApiKey {
        ApiKey {
            name: ANONYMOUS.into(),
            // Open mode is for one person's machine: its admin routes are open too.
            admin: true,
            digest: [0; 32],
            revoked: false,
            models: HashSet::new(),
            routes: Vec::new(),
            limits,
        }
    }

    /// Whether the key may call `path`: one of its routes or a path under one.
    pub fn may_call(&self, path: &str) -> bool {
        self.routes.is_empty()
            || self.routes.iter().any(|route| {
                let route = route.trim_end_matches('/');
                path == route
                    || path
                        .strip_prefix(route)
                        .is_some_and(|rest| rest.starts_with('/'))
            })
    }

    /// Whether the key may use `model`.
    pub fn may_use_model(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.contains(model)
    }

    /// Whether the key limits which models it may use.
    pub fn restricts_models(&self) -> bool {
        !self.models.is_empty()
    }
}

/// Who is calling: the key the request carried, or the anonymous caller of open mode.
#[derive(Debug, Clone)]
pub struct Caller(pub Arc<ApiKey>);

impl Caller {
    pub fn key(&self) -> &ApiKey {
        &self.0
    }

    pub fn name(&self) -> &str {
        &self.0.name
    }
}

/// Every key the relay knows, by digest.
#[derive(Debug)]
pub struct KeyRing {
    mode: AuthMode,
    by_digest: HashMap<KeyDigest, Arc<ApiKey>>,
    anonymous: Arc<ApiKey>,
}

impl KeyRing {
    /// The keys of `config`: `[[auth.keys]]` and the keys file, when it exists.
    pub fn load(config: &RelayConfig) -> Result<KeyRing, RelayError> {
        let mut declared = config.auth.keys.clone();
        let file = &config.auth.keys_file;
        if file.is_file() {
            declared.extend(keys_file::read(file)?);
        }
        let models: HashSet<&str> = config.models.iter().map(|m| m.id.as_str()).collect();
        let origin = file.display().to_string();
        let invalid = |message: String| RelayError::Config {
            origin: origin.clone(),
            message,
        };
        let mut by_digest = HashMap::with_capacity(declared.len());
        let mut names = HashSet::new();
        for key in &declared {
            key.validate(&models).map_err(invalid)?;
            if !names.insert(key.name.clone()) {
                return Err(invalid(format!(
                    "API key name `{}` is declared twice (config and keys file together)",
                    key.name
                )));
            }
            let key = ApiKey::from_config(key, config.limits.per_key).map_err(invalid)?;
            if by_digest.insert(key.digest, Arc::new(key)).is_some() {
                return Err(invalid("two API keys have the same `key_sha256`".into()));
            }
        }
        Ok(KeyRing {
            mode: config.auth.mode,
            by_digest,
            anonymous: Arc::new(ApiKey::anonymous(config.limits.per_key)),
        })
    }

    /// The caller of the key named `name` (the anonymous caller for `anonymous` in open mode):
    /// who a job submitted earlier runs as. `None` for a key no longer known, or revoked.
    pub fn by_name(&self, name: &str) -> Option<Caller> {
        if name == self.anonymous.name {
            return (self.mode == AuthMode::Open).then(|| Caller(self.anonymous.clone()));
        }
        self.by_digest
            .values()
            .find(|key| key.name == name && !key.revoked)
            .map(|key| Caller(key.clone()))
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// How many keys are declared (revoked ones included).
    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    /// The caller a request with `presented` (the key it carried, if any) comes from.
    pub fn identify(&self, presented: Option<&str>) -> Result<Caller, RelayError> {
        let Some(presented) = presented.filter(|key| !key.is_empty()) else {
            return match self.mode {
                AuthMode::Open => Ok(Caller(self.anonymous.clone())),
                AuthMode::Keys => Err(RelayError::Unauthorized(AuthFailure::Missing)),
            };
        };
        let digest = key_digest(presented);
        match self.by_digest.get(&digest) {
            Some(key) if bool::from(key.digest.ct_eq(&digest)) && !key.revoked => {
                Ok(Caller(key.clone()))
            }
            _ => Err(RelayError::Unauthorized(AuthFailure::Invalid)),
        }
    }
}

/// The SHA-256 of a key.
pub fn key_digest(key: &str) -> KeyDigest {
    Sha256::digest(key.as_bytes()).into()
}

/// A new random key.
pub fn new_key() -> Result<String, RelayError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|err| {
        RelayError::Internal(format!("the OS gave no randomness for a new key: {err}"))
    })?;
    Ok(format!("{KEY_PREFIX}{}", hex::encode(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(mode: AuthMode, keys: &[(&str, &str, bool)]) -> KeyRing {
        let mut config = RelayConfig::embedded_default();
        config.auth.mode = mode;
        config.auth.keys_file = "/nonexistent/keys.toml".into();
        config.auth.keys = keys
            .iter()
            .map(|(name, key, revoked)| ApiKeyConfig {
                name: (*name).into(),
                key_sha256: hex::encode(key_digest(key)),
                admin: false,
                revoked: *revoked,
                models: Vec::new(),
                routes: vec!["/v1/chat".into()],
                limits: KeyLimits::default(),
            })
            .collect();
        KeyRing::load(&config).unwrap()
    }

    #[test]
    fn keys_are_known_by_their_digest_and_revoked_ones_look_unknown() {
        let ring = ring(
            AuthMode::Keys,
            &[("a", "fmr_a", false), ("b", "fmr_b", true)],
        );
        assert_eq!(ring.identify(Some("fmr_a")).unwrap().name(), "a");
        let refusal = |presented| ring.identify(presented).unwrap_err().to_string();
        assert_eq!(refusal(Some("fmr_b")), refusal(Some("fmr_nope")));
        assert_ne!(refusal(None), refusal(Some("fmr_nope")));
    }

    #[test]
    fn open_mode_admits_requests_without_a_key_but_not_bad_keys() {
        let ring = ring(AuthMode::Open, &[("a", "fmr_a", false)]);
        assert_eq!(ring.identify(None).unwrap().name(), ANONYMOUS);
        assert_eq!(ring.identify(Some("fmr_a")).unwrap().name(), "a");
        assert!(ring.identify(Some("wrong")).is_err());
    }

    #[test]
    fn routes_cover_the_paths_under_them() {
        let ring = ring(AuthMode::Keys, &[("a", "fmr_a", false)]);
        let key = ring.identify(Some("fmr_a")).unwrap();
        assert!(key.key().may_call("/v1/chat"));
        assert!(key.key().may_call("/v1/chat/stream"));
        assert!(!key.key().may_call("/v1/chatter"));
        assert!(!key.key().may_call("/v1/usage"));
    }

    #[test]
    fn new_keys_are_distinct_and_recognisable() {
        let (a, b) = (new_key().unwrap(), new_key().unwrap());
        assert_ne!(a, b);
        assert!(a.starts_with(KEY_PREFIX) && a.len() == KEY_PREFIX.len() + 64);
    }
}
