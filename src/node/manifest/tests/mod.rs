//! Unit tests of `apilb manifest`: the static pod (`static_pod`), the systemd units and
//! the plan's checks (`units`). Shared helpers live here.

mod static_pod;
mod units;

pub(super) use super::*;
pub(super) use yaml_serde::Value;

use clap::Parser;

pub(super) fn margs(v: &[&str]) -> ManifestArgs {
    let mut full = vec!["apilb", "manifest"];
    full.extend_from_slice(v);
    match crate::cli::Cli::try_parse_from(full) {
        Ok(crate::cli::Cli {
            command: crate::cli::Command::Manifest(a),
        }) => *a,
        Ok(_) => panic!("not manifest"),
        Err(e) => panic!("{e}"),
    }
}

pub(super) fn nowhere() -> (&'static Path, &'static Path) {
    (
        Path::new("/nonexistent/nginx.conf"),
        Path::new("/nonexistent/haproxy.cfg"),
    )
}

pub(super) fn pod_of(v: &[&str]) -> (String, Value) {
    let mut v = v.to_vec();
    if !v.contains(&"--image") {
        v.extend(["--image", EXAMPLE_IMAGE]);
    }
    let p = plan(&margs(&v), nowhere()).unwrap();
    let text = static_pod(&p, "apilb manifest");
    let doc = yaml_serde::from_str(&text).unwrap();
    (text, doc)
}
