//! Discovery's state file: the last discovered set, persisted so a restart without the API
//! still knows every control plane. Reads and writes the file only; never decides the set.

use std::path::Path;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::error::DiscoveryError;
use crate::server::ServerSpec;

pub const STATE_FILE: &str = "servers.json";

#[derive(Serialize, Deserialize)]
struct StateFile {
    servers: Vec<String>,
    /// Seconds since the Unix epoch of the discovery that produced it.
    updated: u64,
}

/// Loads the last discovered set. A missing file is an empty set; a corrupt one is warned
/// about and ignored, never fatal.
pub fn load_state(dir: &Path) -> Vec<ServerSpec> {
    let path = dir.join(STATE_FILE);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot read the state file; starting from the seeds");
            return Vec::new();
        }
    };
    match parse_state(&text) {
        Ok(list) => list,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e,
                "corrupt state file ignored; starting from the seeds (it is rewritten at the next discovery)");
            Vec::new()
        }
    }
}

/// Parses the state file's text: the servers it lists, or why it is unusable.
pub fn parse_state(text: &[u8]) -> Result<Vec<ServerSpec>, DiscoveryError> {
    let parsed: StateFile =
        serde_json::from_slice(text).map_err(|e| DiscoveryError::StateFile(e.to_string()))?;
    parsed
        .servers
        .iter()
        .map(|s| ServerSpec::parse(s).map_err(DiscoveryError::StateFile))
        .collect()
}

pub(super) fn save_state(dir: &Path, servers: &[ServerSpec]) -> Result<(), DiscoveryError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| DiscoveryError::StateFile(format!("cannot create {}: {e}", dir.display())))?;
    let st = StateFile {
        servers: servers.iter().map(ToString::to_string).collect(),
        updated: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    let body =
        serde_json::to_vec_pretty(&st).map_err(|e| DiscoveryError::StateFile(e.to_string()))?;
    // New files get mode 0600; the write is atomic (temp file, fsync, rename, fsync dir).
    crate::util::atomic_file::write_atomic(&dir.join(STATE_FILE), &body)
        .map_err(|e| DiscoveryError::StateFile(e.to_string()))
}
