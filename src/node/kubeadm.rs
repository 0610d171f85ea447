//! `apilb kubeadm post-join`: the step after `kubeadm join` on a worker that already runs
//! apilb (static pod in /etc/kubernetes/manifests).
//!
//! # What this module owns
//!
//! The sequence, in this order, each step only if the previous one worked:
//!
//! 1. read and check kubelet.conf (bad input fails at once, exit code 2, nothing touched);
//!    if it already points at apilb, say so and stop: no wait, no write, no restart;
//! 2. wait until the local apilb reports a ready server (its admin `/readyz`), so the
//!    kubelet is never pointed at a proxy with nothing behind it;
//! 3. keep a backup (`kubelet.conf.apilb-backup`; an older, different one is moved to
//!    `kubelet.conf.apilb-backup.UNIXTIME`, never overwritten) and rewrite kubelet.conf atomically
//!    (server → `https://127.0.0.1:6443`, `tls-server-name` → the original host, the
//!    original recorded for `apilb kubeconfig restore`);
//! 4. restart the kubelet with the configured command (`sh -c`), since the kubelet reads
//!    its kubeconfig only at start.
//!
//! With `--dry-run` it stops after step 1 and prints the change as a diff.
//!
//! It prints each thing it did on standard output, and the once-per-cluster kube-proxy
//! step as a reminder.
//!
//! # What it must not do
//!
//! It reuses the `kubeconfig` module for the rewrite and `kubeconfig::cmd` for the
//! readiness wait; it has no YAML handling of its own. It never touches the kube-proxy
//! ConfigMap (a cluster-wide object, changed once, not per node) and never runs kubeadm.
//! A failed restart is reported with what was already changed, so the operator knows
//! kubelet.conf is rewritten and only the restart is left to do.

use crate::util::out::{out, outln};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};

use crate::cli::PostJoinArgs;
use crate::node::kubeconfig::{self, ClusterSelector, Outcome, RewriteOptions};

pub async fn post_join(a: &PostJoinArgs) -> anyhow::Result<()> {
    let path = &a.kubeconfig;
    let source = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            return Err(kubeconfig::KubeconfigError::Io {
                path: path.clone(),
                op: "cannot read kubelet's kubeconfig (run `kubeadm join` first, or pass \
                     --kubeconfig)",
                err: e,
            }
            .into())
        }
    };
    let opts = RewriteOptions {
        server: a.server.clone(),
        clusters: match (&a.cluster, a.all_clusters) {
            (Some(name), _) => ClusterSelector::Named(name.clone()),
            (None, true) => ClusterSelector::All,
            (None, false) => ClusterSelector::Current,
        },
        tls_server_name: a.tls_server_name.clone(),
    };
    let outcome = kubeconfig::rewrite(&text, &source, &opts).map_err(for_post_join)?;
    let (new_text, changes) = match outcome {
        Outcome::Unchanged { reason } => {
            outln!("{reason}");
            outln!(
                "{source}: already rewritten; kubelet not restarted. (If a previous run could not \
                 restart it, run: {})",
                a.restart_command
            );
            return Ok(());
        }
        Outcome::Changed { text, changes } => (text, changes),
    };

    if a.dry_run {
        for c in &changes {
            outln!("{source}: {c}");
        }
        out!(
            "{}",
            crate::util::diff::unified_diff(&source, &text, &new_text)
        );
        outln!("dry run: {source} not written, kubelet not restarted");
        return Ok(());
    }

    let started = Instant::now();
    kubeconfig::cmd::wait_ready("post-join", &a.admin_url, a.timeout).await?;
    outln!(
        "apilb at {} has a ready server (waited {:.1}s)",
        a.admin_url,
        started.elapsed().as_secs_f64()
    );

    let backup = kubeconfig::backup(path)?;
    if let Some(older) = &backup.previous {
        outln!(
            "{source}: an older, different backup moved to {}",
            older.display()
        );
    }
    outln!("{source}: original kept as {}", backup.path.display());
    kubeconfig::write_atomic(path, new_text.as_bytes())?;
    for c in &changes {
        outln!("{source}: {c}");
    }

    if a.no_restart {
        outln!(
            "kubelet not restarted (--no-restart); it reads {source} only when it starts, so \
             restart it to take the change"
        );
    } else {
        restart(&a.restart_command, &source)?;
    }
    outln!(
        "Next, once per cluster (not per node), point kube-proxy at apilb:\n  kubectl -n \
         kube-system get cm kube-proxy -o yaml | apilb kubeconfig rewrite --configmap-key \
         kubeconfig.conf - | kubectl apply -f -\n  kubectl -n kube-system rollout restart \
         daemonset kube-proxy"
    );
    Ok(())
}

/// kubeconfig's errors name the fixes of `apilb kubeconfig rewrite`; the one post-join has no
/// flag for (a ConfigMap's `--configmap-key`) is told as the command that takes it.
fn for_post_join(e: kubeconfig::KubeconfigError) -> kubeconfig::KubeconfigError {
    match e {
        kubeconfig::KubeconfigError::NotKubeconfig { file, reason }
            if reason.contains("--configmap-key") =>
        {
            kubeconfig::KubeconfigError::NotKubeconfig {
                file,
                reason: "`kind` is ConfigMap; post-join rewrites the kubelet's own kubeconfig \
                         (--kubeconfig, default /etc/kubernetes/kubelet.conf). For a \
                         ConfigMap such as kube-proxy's, run `apilb kubeconfig rewrite \
                         --configmap-key KEY`"
                    .into(),
            }
        }
        e => e,
    }
}

fn restart(command: &str, source: &str) -> anyhow::Result<()> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(command)
        .output()
        .with_context(|| {
            format!(
                "{source} was rewritten, but the kubelet restart command `{command}` could not \
                 be started; restart kubelet yourself"
            )
        })?;
    let said = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
    if !out.status.success() {
        bail!(
            "{source} was rewritten, but the kubelet restart command `{command}` failed ({}){}; \
             restart kubelet yourself (it uses the new file only after a restart), or run \
             `apilb kubeconfig restore {source}` to undo",
            out.status,
            match said(&out.stderr) {
                s if s.is_empty() => String::new(),
                s => format!(": {s}"),
            }
        );
    }
    outln!("restarted kubelet: `{command}` succeeded");
    for line in said(&out.stdout).lines().chain(said(&out.stderr).lines()) {
        outln!("  {line}");
    }
    Ok(())
}
