//! The control plane: what apilb knows about each server and how it learns it.
//!
//! * `backend`: the server set (an `ArcSwap` snapshot the data plane reads), each server's
//!   state, and the cancellation token that closes its pinned connections;
//! * `health`: the health connection per server (HTTP/2 PING, `/readyz`, GOAWAY), which
//!   reports observations;
//! * `judge`: the pure verdict machine: an observation in, a state transition out;
//! * `goaway`: seeing a GOAWAY on the health connection as it arrives;
//! * `discovery`: the cluster's own list of apiservers, merged with the configured one;
//! * `tls`: certificates and TLS settings of the health checks and discovery;
//! * `client_cert`: the health checks' client certificate, re-read as the kubelet rotates it.
//!
//! # What this part must not do
//!
//! It never touches a client connection's bytes and never imports the data plane
//! (`proxy`): it closes connections only through the tokens in `backend`.

pub mod backend;
pub mod client_cert;
pub mod discovery;
pub mod goaway;
pub mod health;
pub mod judge;
pub mod tls;
