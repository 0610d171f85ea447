//! The config file as written: [`FileConfig`] (every key optional, unknown keys refused
//! with the nearest real key as the fix), the scalar-or-list form of list keys, and reading
//! the file, bounded.
//!
//! It owns the file's shape and its reading only: it must not apply defaults or flags, nor
//! judge a value (that is `resolve`, with the checks of `check`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

use super::RunArgs;
use super::{ConfigError, LogFormat};
use crate::server::DiscoveryMode;

/// A list, or one value standing for a list of one (`server: 10.0.0.11:6443`).
fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    match Option::<OneOrMany>::deserialize(d) {
        Ok(None) => Ok(None),
        Ok(Some(OneOrMany::One(s))) => Ok(Some(vec![s])),
        Ok(Some(OneOrMany::Many(v))) => Ok(Some(v)),
        Err(_) => Err(serde::de::Error::custom(
            "expected an address or a list of addresses, e.g. `[\"10.0.0.11:6443\", \"10.0.0.12:6443\"]`",
        )),
    }
}

/// The config file, as written. Every field optional; unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    #[serde(default, deserialize_with = "one_or_many")]
    pub listen: Option<Vec<String>>,
    pub allow_non_loopback: Option<bool>,
    #[serde(default, deserialize_with = "one_or_many")]
    pub server: Option<Vec<String>>,
    pub ca_file: Option<PathBuf>,
    pub health_client_cert: Option<PathBuf>,
    pub health_client_key: Option<PathBuf>,
    pub health_insecure_skip_verify: Option<bool>,
    pub health_tls_server_name: Option<String>,
    pub admin_listen: Option<String>,
    pub reuse_port: Option<bool>,
    pub log_format: Option<LogFormat>,
    pub log_level: Option<String>,
    pub connect_timeout: Option<String>,
    pub connect_race_delay: Option<String>,
    pub first_byte_timeout: Option<String>,
    pub client_hello_timeout: Option<String>,
    pub replay_limit: Option<usize>,
    pub health_ping_interval: Option<String>,
    pub health_ping_timeout: Option<String>,
    pub health_readyz_interval: Option<String>,
    pub health_timeout: Option<String>,
    pub health_fall: Option<u32>,
    pub health_rise: Option<u32>,
    pub max_connections: Option<usize>,
    pub workers: Option<usize>,
    pub drain_grace: Option<String>,
    pub half_closed_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub ready_timeout: Option<String>,
    pub resolve_interval: Option<String>,
    pub discovery_kubeconfig: Option<PathBuf>,
    pub discovery_interval: Option<String>,
    pub discovery_mode: Option<DiscoveryMode>,
    pub discovery_removal_grace: Option<String>,
    pub state_dir: Option<PathBuf>,
}

/// The largest config file read: far beyond any real one (a few hundred bytes), small
/// enough that a wrong path (a log, an image) cannot take memory.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// What a read of the config file is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFor {
    /// The start (and `--check`): anything readable, a pipe too (`--config <(…)`), since
    /// nothing is being served yet.
    Start,
    /// A reload while apilb serves: a regular file only, opened without blocking, so that a
    /// FIFO or a device put at the path is refused at once instead of holding the reload.
    Reload,
}

/// Reads the config file's bytes, bounded by [`MAX_CONFIG_BYTES`]; errors name the file and
/// the fix.
pub fn read_text(path: &Path, read_for: ReadFor) -> Result<Vec<u8>, ConfigError> {
    use std::io::Read;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let err = |message: String| ConfigError {
        origin: path.display().to_string(),
        message,
    };
    let mut open = std::fs::OpenOptions::new();
    open.read(true);
    if read_for == ReadFor::Reload {
        // Opening a FIFO for reading blocks until a writer comes; O_NONBLOCK returns at once.
        open.custom_flags(libc::O_NONBLOCK);
    }
    let file = open
        .open(path)
        .map_err(|e| err(format!("cannot read the config file: {e}; check --config")))?;
    let meta = file
        .metadata()
        .map_err(|e| err(format!("cannot read the config file: {e}; check --config")))?;
    let ft = meta.file_type();
    if !ft.is_file() && (read_for == ReadFor::Reload || ft.is_dir()) {
        let kind = if ft.is_dir() {
            "a directory"
        } else if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_socket() {
            "a socket"
        } else if ft.is_char_device() || ft.is_block_device() {
            "a device"
        } else {
            "not a regular file"
        };
        return Err(err(format!(
            "the config file is {kind}, not a regular file; put a regular file there \
             (write it to a temporary file next to it, then rename it over the path)"
        )));
    }
    if ft.is_file() && meta.len() > MAX_CONFIG_BYTES {
        return Err(err(format!(
            "the config file is {} bytes, more than the {MAX_CONFIG_BYTES} a config file may \
             have; check --config",
            meta.len()
        )));
    }
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| err(format!("cannot read the config file: {e}; check --config")))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(err(format!(
            "the config file has more than the {MAX_CONFIG_BYTES} bytes a config file may \
             have; check --config"
        )));
    }
    Ok(bytes)
}

/// Reads and parses a config file (as at start).
pub fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let bytes = read_text(path, ReadFor::Start)?;
    parse_bytes(&bytes, path)
}

/// Parses a config file's bytes (`path` names it in errors).
pub fn parse_bytes(bytes: &[u8], path: &Path) -> Result<FileConfig, ConfigError> {
    let origin = path.display().to_string();
    let text = std::str::from_utf8(bytes).map_err(|e| ConfigError {
        origin: origin.clone(),
        message: format!("the config file is not UTF-8 text ({e}); write it as YAML text"),
    })?;
    parse_file(text, origin)
}

/// Every key of the config file: the long names of `apilb run`'s flags but `--config`.
pub fn keys() -> Vec<String> {
    use clap::Args;
    RunArgs::augment_args(clap::Command::new("run"))
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|l| !matches!(*l, "config" | "help" | "check"))
        .map(str::to_string)
        .collect()
}

/// The key nearest to `unknown`, if one is near enough to be the one meant: a few letters
/// apart, `_` for `-`, or the key with a word more or less (`drain-grace-period`).
pub fn nearest_key(unknown: &str) -> Option<String> {
    let wanted = unknown.trim_start_matches('-').replace('_', "-");
    keys()
        .into_iter()
        .filter_map(|k| {
            let d = strsim::damerau_levenshtein(&wanted, &k);
            let words = wanted.len() >= 4
                && (wanted.starts_with(&format!("{k}-")) || k.starts_with(&format!("{wanted}-")));
            (d <= 2.max(k.len() / 4) || words).then_some((d, k))
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Parses the text of a config file; `origin` (its path) names it in errors.
pub fn parse_file(text: &str, origin: String) -> Result<FileConfig, ConfigError> {
    if text.trim().is_empty() {
        return Ok(FileConfig::default());
    }
    yaml_serde::from_str(text).map_err(|e| {
        let full = e.to_string();
        let at = e
            .location()
            .map(|l| format!("line {}: ", l.line()))
            .unwrap_or_default();
        // serde's own wording: "unknown field `servers`, expected one of `listen`, …".
        let unknown = full
            .strip_prefix("unknown field `")
            .and_then(|r| r.split_once('`'))
            .map(|(k, _)| k.to_string());
        let message = match unknown {
            Some(key) => match nearest_key(&key) {
                Some(near) => format!("{at}unknown key `{key}`; did you mean `{near}`?"),
                None => format!(
                    "{at}unknown key `{key}`; the keys are the `apilb run` flag names \
                     without the dashes in front (see `apilb run --help`)"
                ),
            },
            None => format!("invalid config: {full}"),
        };
        ConfigError { origin, message }
    })
}
