//! Discovery's merge rules: the seeds, the state file's servers and the discovered set
//! become the set apilb balances over. Pure: it neither asks the API nor touches files.

use crate::control::backend::Source;
use crate::server::DiscoveryMode as Mode;
use crate::server::ServerSpec;

/// The merge rules: seeds, the state file's servers and the discovered set → the set.
#[derive(Debug, Clone)]
pub struct ServerList {
    pub seeds: Vec<ServerSpec>,
    pub from_state: Vec<ServerSpec>,
    pub discovered: Option<Vec<ServerSpec>>,
    pub mode: Mode,
}

impl ServerList {
    pub fn effective(&self) -> Vec<(ServerSpec, Source)> {
        match (&self.discovered, self.mode) {
            (Some(found), Mode::Seed) if !found.is_empty() => found
                .iter()
                .map(|s| (s.clone(), Source::Discovered))
                .collect(),
            (_, Mode::Pin) => self
                .seeds
                .iter()
                .map(|s| (s.clone(), Source::Seed))
                .collect(),
            _ => {
                let mut out: Vec<(ServerSpec, Source)> = self
                    .seeds
                    .iter()
                    .map(|s| (s.clone(), Source::Seed))
                    .collect();
                for s in &self.from_state {
                    if !self.seeds.contains(s) {
                        out.push((s.clone(), Source::StateFile));
                    }
                }
                out
            }
        }
    }
}
