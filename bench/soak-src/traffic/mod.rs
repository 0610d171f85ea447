//! The client load through apilb and its byte checks: connections (`client`), the requests
//! and their verification (`requests`), the workers that make the mix (`workers`), how a send failed
//! (`send_error`), and what they saw (`record`). It records what happened; `analyse` judges it.

pub(crate) mod client;
pub(crate) mod record;
pub(crate) mod requests;
pub(crate) mod send_error;
pub(crate) mod workers;
