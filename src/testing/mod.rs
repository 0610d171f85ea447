//! Test-only code, never part of a node install: the fuzz entry points (with the `testing`
//! feature) and the property tests (in `cargo test`). The stand-in apiserver binary
//! (`src/bin/standin.rs`) is gated by the same feature.

#[cfg(feature = "testing")]
pub mod fuzzing;
#[cfg(test)]
mod properties;
