//! apilb as a library: the modules behind the `apilb` binary (src/main.rs), exposed so that
//! the fuzz targets under `fuzz/` and the corpus test can call the parsers directly. Not a
//! stable API: the binary is the product. `docs/architecture.md` draws the whole.
//!
//! * `proxy`: the data plane: accepting, choosing a server, connecting, copying bytes;
//! * `control`: the control plane: server state, health checks, verdicts, discovery, TLS;
//! * `admin`: the admin endpoint and its client (`apilb status`);
//! * `node`: node tooling: `apilb kubeconfig`, `kubeadm post-join`, `manifest`, kubespray;
//! * `util`: small shared tools (atomic files, the YAML 1.1 emitter, diffs);
//! * at the top: `cli` (flags), `config` (settings), `run` (lifecycle), `metrics`,
//!   `transitions` (the recent state changes `/status` shows), `logging`, `notify`
//!   (sd_notify);
//! * `testing`: test-only code (the fuzz entry points), behind the `testing` feature.

pub mod admin;
pub mod cli;
pub mod config;
pub mod control;
pub mod log_limit;
pub mod logging;
pub mod metrics;
pub mod node;
pub mod notify;
pub mod process_metrics;
pub mod proxy;
pub mod reload;
pub mod run;
pub mod server;
pub mod socket;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod transitions;
pub mod util;
