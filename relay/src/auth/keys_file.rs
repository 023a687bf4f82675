//! The keys file: `[[keys]]` tables in TOML, as in the config's `[[auth.keys]]` — each with the
//! key's name and SHA-256, never the key. `fm-relay keys add NAME` ([`add`]) makes a key, prints
//! it once and appends its entry; the relay reads the file at start-up ([`read`]).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::ApiKeyConfig;
use crate::error::RelayError;

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    keys: Vec<ApiKeyConfig>,
}

const HEADER: &str = "# FM Relay API keys, written by `fm-relay keys add`. Each entry holds the SHA-256 of a key,\n\
# never the key. Edit limits, models, routes or `revoked = true` here; the relay reads this file\n\
# at start-up.\n\n";

fn config_error(path: &Path, message: String) -> RelayError {
    RelayError::Config {
        origin: path.display().to_string(),
        message,
    }
}

/// The keys in the file at `path`.
pub fn read(path: &Path) -> Result<Vec<ApiKeyConfig>, RelayError> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| config_error(path, format!("cannot read the keys file: {err}")))?;
    let file: KeysFile =
        toml::from_str(&text).map_err(|err| config_error(path, err.to_string()))?;
    Ok(file.keys)
}

/// Appends `key` to the file at `path` (made, with its folder, when missing); refuses a name the
/// file already has. The file is replaced in one step, so a reader never sees half of it.
pub fn add(path: &Path, key: ApiKeyConfig) -> Result<(), RelayError> {
    let mut file = match path.is_file() {
        true => KeysFile { keys: read(path)? },
        false => KeysFile::default(),
    };
    if file.keys.iter().any(|known| known.name == key.name) {
        return Err(config_error(
            path,
            format!(
                "a key named `{}` exists already; choose another name, or revoke it there",
                key.name
            ),
        ));
    }
    file.keys.push(key);
    let text = toml::to_string(&file)
        .map_err(|err| RelayError::Internal(format!("cannot write the keys file: {err}")))?;
    let write_error = |err: std::io::Error| config_error(path, format!("cannot write: {err}"));
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(write_error)?;
    }
    let temporary = path.with_extension("toml.tmp");
    std::fs::write(&temporary, format!("{HEADER}{text}")).map_err(write_error)?;
    std::fs::rename(&temporary, path).map_err(write_error)
}
