//! `apilb kubeconfig rewrite|restore`: the command around the pure `kubeconfig` module —
//! reads the file (or standard input), optionally waits for the local apilb to be ready,
//! prints a diff for `--dry-run`, keeps a backup, and writes atomically. Every failure leaves
//! the file untouched.

use crate::util::out::errln;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::cli::{KubeconfigCommand, KubeconfigRestoreArgs, KubeconfigRewriteArgs};
use crate::node::kubeconfig::{self, ClusterSelector, KubeconfigError, Outcome, RewriteOptions};

fn read_input(file: &Path) -> anyhow::Result<(String, String)> {
    if file == Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read standard input")?;
        return Ok((s, "<stdin>".into()));
    }
    let text = std::fs::read_to_string(file).map_err(|err| KubeconfigError::Io {
        path: file.to_path_buf(),
        op: "cannot read the kubeconfig",
        err,
    })?;
    Ok((text, file.display().to_string()))
}

/// Waits until the local apilb's admin /readyz answers 200. `what` names the step in the
/// error (`--wait-ready`, `post-join`). Also used by `apilb kubeadm post-join`.
pub(crate) async fn wait_ready(
    what: &str,
    admin_url: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match crate::admin::client::get(admin_url, "/readyz").await {
            Ok((200, _)) => return Ok(()),
            Ok((code, body)) => format!("{code} {}", String::from_utf8_lossy(&body).trim()),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!(
                "{what}: apilb at {admin_url} reported no ready server within {} \
                 (last: {last}); the kubeconfig was not changed. Check `apilb status \
                 --admin-url {admin_url}`",
                humantime::format_duration(timeout)
            );
        }
        // The admin endpoint has no push channel: poll it.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn finish(
    file: &Path,
    source: &str,
    old: &str,
    outcome: Outcome,
    dry_run: bool,
    backup: bool,
) -> anyhow::Result<()> {
    let to_stdout = file == Path::new("-");
    match outcome {
        Outcome::Unchanged { reason } => {
            errln!("{source}: unchanged: {reason}");
            if to_stdout {
                std::io::stdout().write_all(old.as_bytes())?;
            }
        }
        Outcome::Changed { text, changes } => {
            for c in &changes {
                errln!("{source}: {c}");
            }
            if dry_run {
                std::io::stdout()
                    .write_all(crate::util::diff::unified_diff(source, old, &text).as_bytes())?;
            } else if to_stdout {
                std::io::stdout().write_all(text.as_bytes())?;
            } else {
                if backup {
                    let b = kubeconfig::backup(file)?;
                    if let Some(older) = &b.previous {
                        errln!("{source}: the older backup moved to {}", older.display());
                    }
                    errln!("{source}: original kept as {}", b.path.display());
                }
                kubeconfig::write_atomic(file, text.as_bytes())?;
                errln!("{source}: written");
            }
        }
    }
    Ok(())
}

fn selector(cluster: &Option<String>, all: bool, default: ClusterSelector) -> ClusterSelector {
    match (cluster, all) {
        (Some(n), _) => ClusterSelector::Named(n.clone()),
        (None, true) => ClusterSelector::All,
        (None, false) => default,
    }
}

async fn rewrite(a: &KubeconfigRewriteArgs) -> anyhow::Result<()> {
    let (text, source) = read_input(&a.file)?;
    let opts = RewriteOptions {
        server: a.server.clone(),
        clusters: selector(&a.cluster, a.all_clusters, ClusterSelector::Current),
        tls_server_name: a.tls_server_name.clone(),
    };
    // Validate before waiting, so a bad file fails at once.
    let outcome = match &a.configmap_key {
        Some(key) => kubeconfig::rewrite_configmap(&text, &source, key, &opts)?,
        None => kubeconfig::rewrite(&text, &source, &opts)?,
    };
    if a.wait_ready && !a.dry_run && matches!(outcome, Outcome::Changed { .. }) {
        wait_ready("--wait-ready", &a.admin_url, a.timeout).await?;
    }
    finish(&a.file, &source, &text, outcome, a.dry_run, a.backup)
}

fn restore(a: &KubeconfigRestoreArgs) -> anyhow::Result<()> {
    let (text, source) = read_input(&a.file)?;
    let sel = selector(&a.cluster, a.all_clusters, ClusterSelector::All);
    let outcome = match &a.configmap_key {
        Some(key) => kubeconfig::restore_configmap(&text, &source, key, &sel)?,
        None => kubeconfig::restore(&text, &source, &sel)?,
    };
    finish(&a.file, &source, &text, outcome, a.dry_run, false)
}

pub async fn run(cmd: KubeconfigCommand) -> anyhow::Result<()> {
    match cmd {
        KubeconfigCommand::Rewrite(a) => rewrite(&a).await,
        KubeconfigCommand::Restore(a) => restore(&a),
    }
}
