//! The config file: reading it, bounded, and parsing it into [`Settings`] (the file's shape,
//! which is the flags'), with unknown keys refused and the nearest real key as the fix.
//!
//! It owns the file's reading and parsing only: it must not apply defaults or flags, nor
//! judge a value (that is `resolve`, with the checks of `check`).

use std::path::Path;

use super::{ConfigError, Settings};

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
pub fn read_file(path: &Path) -> Result<Settings, ConfigError> {
    let bytes = read_text(path, ReadFor::Start)?;
    parse_bytes(&bytes, path)
}

/// Parses a config file's bytes (`path` names it in errors).
pub fn parse_bytes(bytes: &[u8], path: &Path) -> Result<Settings, ConfigError> {
    let origin = path.display().to_string();
    let text = std::str::from_utf8(bytes).map_err(|e| ConfigError {
        origin: origin.clone(),
        message: format!("the config file is not UTF-8 text ({e}); write it as YAML text"),
    })?;
    parse_file(text, origin)
}

/// Every key of the config file: the long names of `apilb run`'s flags but the two that are
/// flags only (`--config`, `--check`).
pub fn keys() -> Vec<String> {
    use clap::Args;
    Settings::augment_args(clap::Command::new("run"))
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
pub fn parse_file(text: &str, origin: String) -> Result<Settings, ConfigError> {
    if text.trim().is_empty() {
        return Ok(Settings::default());
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
