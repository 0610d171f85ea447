//! Printing that never panics. `println!` and `eprintln!` panic when their stream fails —
//! stdout piped into `head`, stderr closed or on a full disk — and a panic aborts apilb
//! (panic = "abort"): a command cut short between two of its steps (a backup made, the
//! kubeconfig not yet written). These macros print the same text and drop it if the stream
//! cannot take it; the command's work and exit code do not depend on being watched.
//!
//! Owns printing for the commands. Must not: log (that is `tracing`, through `logging`).

/// `println!` that drops what stdout cannot take.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `print!` that drops what stdout cannot take.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}

/// `eprintln!` that drops what stderr cannot take.
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

pub(crate) use {errln, out, outln};
