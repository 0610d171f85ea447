//! Validation and its errors: [`ConfigError`] (where a value came from, what is wrong and
//! the fix), naming a value's origin (the flag, or the file and key), and the checks of
//! single values shared by several settings (durations, listen addresses).
//!
//! It must not read files nor know which setting has which default: it judges one value
//! at a time, given where it came from.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::DurationArg;

/// A configuration error: where the value came from, and what is wrong and how to fix it.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct ConfigError {
    pub origin: String,
    pub message: String,
}

pub(super) fn flag_or_key(file: Option<&Path>, flag_given: bool, key: &str) -> String {
    match (flag_given, file) {
        (true, _) | (false, None) => format!("--{key}"),
        (false, Some(f)) => format!("{}: key `{key}`", f.display()),
    }
}

/// The longest any duration setting may be: a century (`100y`, humantime's years of 365.25
/// days), far beyond any sensible value and far below what the clock arithmetic holds
/// (`Instant + Duration` and the ±10% jitter panic on overflow, and `panic = "abort"` makes
/// that a crash at the next connection or health check).
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 31_557_600);

/// A duration setting: the flag's (parsed by clap), else the key's (parsed here, the error
/// naming the file and key), else `default`; at most [`MAX_DURATION`].
pub(super) fn duration(
    given: Option<&DurationArg>,
    file: Option<&Path>,
    key: &str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let (d, from_flag) = match given {
        None => return Ok(default),
        Some(DurationArg::Parsed(d)) => (*d, true),
        Some(DurationArg::Written(s)) => {
            let d = humantime::parse_duration(s).map_err(|e| ConfigError {
                origin: flag_or_key(file, false, key),
                message: format!("`{s}` is not a duration ({e}); write e.g. 500ms, 2s or 1m"),
            })?;
            (d, false)
        }
    };
    if d > MAX_DURATION {
        return Err(ConfigError {
            origin: flag_or_key(file, from_flag, key),
            message: format!(
                "{} is too long; use at most 100 years",
                humantime::format_duration(d)
            ),
        });
    }
    Ok(d)
}

pub(super) fn parse_listen(
    values: &[String],
    origin: &str,
    allow_non_loopback: bool,
) -> Result<Vec<SocketAddr>, ConfigError> {
    let mut out = Vec::new();
    for v in values {
        let addr: SocketAddr = v.trim().parse().map_err(|_| ConfigError {
            origin: origin.to_string(),
            message: format!(
                "`{v}` is not an IP:PORT address; write e.g. 127.0.0.1:6443 or [::1]:6443"
            ),
        })?;
        if !addr.ip().is_loopback() && !allow_non_loopback {
            return Err(ConfigError {
                origin: origin.to_string(),
                message: format!(
                    "`{addr}` is not a loopback address: apilb would expose the apiserver path \
                     to the network. Listen on 127.0.0.1 or [::1], or pass \
                     --allow-non-loopback if that is really meant"
                ),
            });
        }
        out.push(addr);
    }
    Ok(out)
}
