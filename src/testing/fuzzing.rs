//! Entry points of the fuzz targets under `fuzz/`, one per parser of outside input. They
//! live in the library so that `tests/fuzz_corpus.rs` runs every seed of `fuzz/seeds/`
//! through the same code on stable Rust, in the normal test suite.
//!
//! Each function panics only when a property apilb relies on is broken — that is what a
//! fuzzer reports. A parse error is a fine answer, as long as it names its origin.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::config::{self, HealthSettings, ServerSpec};
use crate::control::backend::{Backend, State};
use crate::control::discovery;
use crate::metrics::Metrics;
use crate::node::kubeconfig::{self, ClusterSelector, Outcome, RewriteOptions};
use crate::node::kubespray;

/// The config file: parsed and validated as `apilb run --config` would, or an error that
/// names the file.
pub fn config_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = match config::parse_file(text, "fuzz.yaml".into()) {
        Ok(f) => f,
        Err(e) => {
            assert!(e.origin.contains("fuzz.yaml"), "error without origin: {e}");
            return;
        }
    };
    let args = Settings {
        config: Some("fuzz.yaml".into()),
        ..Settings::default()
    };
    if let Err(e) = config::resolve(&args, file) {
        assert!(
            !e.origin.is_empty() && !e.message.is_empty(),
            "vague error: {e:?}"
        );
    }
}

/// A kubeconfig: rewriting gives a document or a clear error; a rewritten document is not
/// rewritten again; restoring it gives what restoring the input gives (the input itself
/// when nothing in it was rewritten before), as data.
pub fn kubeconfig(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ =
        kubeconfig::rewrite_configmap(text, "fuzz.yaml", "kubeconfig", &RewriteOptions::default());
    let restore_all = |t: &str| kubeconfig::restore(t, "fuzz.conf", &ClusterSelector::All);
    let baseline = match restore_all(text) {
        Ok(Outcome::Changed { text, .. }) => Some(text),
        Ok(Outcome::Unchanged { .. }) => Some(text.to_string()),
        Err(_) => None,
    };
    for clusters in [ClusterSelector::Current, ClusterSelector::All] {
        let opts = RewriteOptions {
            clusters: clusters.clone(),
            ..RewriteOptions::default()
        };
        let rewritten = match kubeconfig::rewrite(text, "fuzz.conf", &opts) {
            Ok(Outcome::Changed { text, .. }) => text,
            Ok(Outcome::Unchanged { .. }) => continue,
            Err(e) => {
                assert!(
                    e.to_string().contains("fuzz.conf"),
                    "error without file: {e}"
                );
                continue;
            }
        };
        match kubeconfig::rewrite(&rewritten, "fuzz.conf", &opts) {
            Ok(Outcome::Unchanged { .. }) => {}
            other => panic!("a second rewrite did something: {other:?}\n{rewritten}"),
        }
        let restored = match restore_all(&rewritten) {
            Ok(Outcome::Changed { text, .. }) => text,
            // A damaged apilb record already in the input: restore says so, before and after.
            Err(_) if baseline.is_none() => continue,
            other => panic!("the rewrite cannot be restored: {other:?}\n{rewritten}"),
        };
        let after: yaml_serde::Value = match yaml_serde::from_str(&restored) {
            Ok(v) => v,
            Err(e) => panic!("restore wrote invalid YAML: {e}\n{restored}"),
        };
        // apilb's reader may accept what yaml_serde does not; compare where both read it.
        if let Some(Ok(before)) = baseline
            .as_deref()
            .map(yaml_serde::from_str::<yaml_serde::Value>)
        {
            assert_eq!(
                without_empty_fields(before),
                without_empty_fields(after),
                "restore is not the original\n{restored}"
            );
        }
    }
}

/// Restore drops an `extensions` list its record leaves empty, and a `tls-server-name` the
/// input did not set, so an input's null or empty one is not told apart from none
/// (client-go reads them alike); and both sides get the YAML 1.1 booleans rewrite writes.
fn without_empty_fields(mut doc: yaml_serde::Value) -> yaml_serde::Value {
    kubeconfig::normalize_yaml11_bools(&mut doc);
    if let Some(clusters) = doc.get_mut("clusters").and_then(|c| c.as_sequence_mut()) {
        for c in clusters {
            if let Some(cluster) = c.get_mut("cluster").and_then(|c| c.as_mapping_mut()) {
                for key in ["extensions", "tls-server-name"] {
                    let empty = match cluster.get(key) {
                        Some(yaml_serde::Value::Null) => true,
                        Some(yaml_serde::Value::Sequence(s)) => s.is_empty(),
                        _ => false,
                    };
                    if empty {
                        cluster.remove(key);
                    }
                }
            }
        }
    }
    doc
}

/// An EndpointSlice or Endpoints answer: servers or an error; servers print and parse back.
pub fn discovery_answer(data: &[u8]) {
    let parsed = [
        discovery::parse_endpoint_slice(data),
        discovery::parse_endpoints(data),
    ];
    for s in parsed.into_iter().flatten().flatten() {
        assert_eq!(ServerSpec::parse(&s.to_string()).as_ref(), Ok(&s));
    }
}

/// The discovery state file: servers or an error.
pub fn state_file(data: &[u8]) {
    if let Ok(servers) = discovery::parse_state(data) {
        for s in servers {
            assert_eq!(ServerSpec::parse(&s.to_string()).as_ref(), Ok(&s));
        }
    }
}

/// kubespray's nginx.conf and haproxy.cfg (`apilb manifest --from-kubespray`): what they
/// listened on and forwarded to, or an error that names the file.
pub fn kubespray_conf(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new("fuzz.conf");
    for parsed in [
        kubespray::parse_nginx(text, file),
        kubespray::parse_haproxy(text, file),
    ] {
        if let Err(e) = parsed {
            assert!(
                e.to_string().contains("fuzz.conf"),
                "error without file: {e}"
            );
        }
    }
}

/// What a server answers on the health check connection. The first byte chooses the
/// protocol (even: HTTP/2, odd: HTTP/1.1) and whether the server then hangs up (bit 1);
/// the rest is the server's bytes. The check must end with a reason, never panic, never
/// spin. Intervals and timeouts are milliseconds here, so one input takes about ten.
/// Returns the /readyz status the check read, if any, and the server's state when the check
/// ended (tests/fuzz_corpus.rs looks at both).
pub fn readyz_answer(data: &[u8]) -> Option<(Option<u16>, State)> {
    let (&mode, answer) = data.split_first()?;
    let h2 = mode & 1 == 0;
    let hang_up = mode & 2 != 0;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    let answer = answer.to_vec();
    rt.block_on(async move {
        let root = CancellationToken::new();
        let spec = ServerSpec {
            host: "127.0.0.2".into(),
            port: 6443,
        };
        let b = Arc::new(Backend::new(
            spec,
            &root,
            Arc::new(Metrics::new()),
            State::Unknown,
        ));
        let settings = HealthSettings {
            ping_interval: Duration::from_millis(2),
            ping_timeout: Duration::from_millis(2),
            readyz_interval: Duration::from_millis(2),
            timeout: Duration::from_millis(5),
            fall: 2,
            rise: 2,
        };
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            // Answer once the client has spoken (its request, or the HTTP/2 preface).
            let mut sink = [0u8; 4096];
            if !matches!(server.read(&mut sink).await, Ok(n) if n > 0) {
                return;
            }
            let _ = server.write_all(&answer).await;
            if hang_up {
                return;
            }
            while matches!(server.read(&mut sink).await, Ok(n) if n > 0) {}
        });
        let ended = tokio::time::timeout(
            Duration::from_secs(10),
            crate::control::health::check_once(client, h2, &b, settings),
        )
        .await;
        let ending = ended.unwrap_or_else(|_| panic!("the check never ended (h2: {h2})"));
        if let crate::control::health::Ending::Cause(_, why) = ending {
            assert!(!why.is_empty());
        }
        Some((b.observed().readyz_status, b.state()))
    })
}
