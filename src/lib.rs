//! apilb as a library: the modules behind the `apilb` binary (src/main.rs), exposed so that
//! the fuzz targets under `fuzz/` and the corpus test can call the parsers directly. Not a
//! stable API: the binary is the product.

pub mod admin;
pub mod backend;
pub mod balance;
pub mod cli;
pub mod config;
pub mod connect;
pub mod copy;
pub mod discovery;
#[cfg(feature = "testing")]
pub mod fuzzing;
pub mod goaway;
pub mod health;
pub mod hello;
pub mod judge;
pub mod log_limit;
pub mod logging;
pub mod metrics;
pub mod node;
pub mod notify;
pub mod process_metrics;
#[cfg(test)]
mod properties;
pub mod proxy;
pub mod reload;
pub mod run;
pub mod socket;
pub mod splice;
pub mod status;
pub mod tls;
pub mod util;
pub mod workers;
