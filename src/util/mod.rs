//! Small utilities with one job each, shared by the commands and the runtime: they know
//! nothing of apilb's servers, health or connections.

pub mod atomic_file;
pub mod diff;
pub mod out;
pub mod yaml;
