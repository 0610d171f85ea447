//! The systemd units for nodes without a kubelet-run apilb (k3s agents, bare metal):
//! `apilb.service` and, for socket activation, `apilb.socket`. Owns the units' text; must
//! not decide the plan.

use super::*;

/// An argument of a unit's command line: `%` and `$` escaped, quoted when needed.
pub(super) fn systemd_arg(a: &str) -> String {
    let escaped = a.replace('%', "%%").replace('$', "$$");
    let plain = escaped
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+[]%$".contains(c));
    if plain && !escaped.is_empty() {
        return escaped;
    }
    let mut out = String::from("\"");
    for c in escaped.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The systemd unit. `command` is the command line shown in the header.
pub fn systemd_unit(plan: &Plan, command: &str) -> String {
    let mut creds: Vec<(&'static str, &Path)> = Vec::new();
    let args = run_args(plan, |name, p| {
        creds.push((name, p));
        format!("%d/{name}")
    });
    let mut out = header(
        plan,
        &[
            "apilb: node-local load balancer for the Kubernetes API server, as a systemd service.",
            "Install: save as /etc/systemd/system/apilb.service, then",
            "  systemctl daemon-reload && systemctl enable --now apilb",
        ],
        command,
    );
    out.push_str(
        "\n[Unit]\n\
         Description=apilb: node-local load balancer for the Kubernetes API server\n\
         Wants=network-online.target\n\
         After=network-online.target\n\
         Before=kubelet.service k3s-agent.service\n\
         # Never give up restarting: this is the node's path to the API server.\n\
         StartLimitIntervalSec=0\n\
         \n\
         [Service]\n\
         Type=notify\n",
    );
    // apilb reads the credential copies; a changed file takes effect on restart. The path
    // runs to the end of the line (no quoting); only specifiers need escaping.
    for (name, p) in &creds {
        out.push_str(&format!(
            "LoadCredential={name}:{}\n",
            path_str(p).replace('%', "%%")
        ));
    }
    out.push_str(&format!(
        "ExecStart={}",
        systemd_arg(&path_str(&plan.binary))
    ));
    for a in &args {
        // %d/… (credential paths) must stay a specifier; everything else is escaped.
        let rendered = match a.split_once("=%d/") {
            Some((flag, name)) => format!("{flag}=%d/{name}"),
            None => systemd_arg(a),
        };
        out.push_str(" \\\n    ");
        out.push_str(&rendered);
    }
    out.push_str(
        "\nExecReload=/bin/kill -HUP $MAINPID\n\
         Restart=always\n\
         RestartSec=1\n\
         # Client connections: two descriptors each, up to --max-connections (10000).\n\
         LimitNOFILE=65536\n\
         # Killed last under memory pressure, like a system-node-critical pod.\n\
         OOMScoreAdjust=-900\n\
         \n\
         # Least privilege: a transient user, no capabilities (6443 is above 1024), read-only\n\
         # system, network sockets only.\n\
         DynamicUser=yes\n\
         # /var/lib/apilb, writable by that user: --state-dir (discovery) keeps its list there.\n\
         StateDirectory=apilb\n\
         CapabilityBoundingSet=\n\
         AmbientCapabilities=\n\
         NoNewPrivileges=yes\n\
         ProtectSystem=strict\n\
         ProtectHome=yes\n\
         PrivateTmp=yes\n\
         PrivateDevices=yes\n\
         ProtectClock=yes\n\
         ProtectHostname=yes\n\
         ProtectKernelTunables=yes\n\
         ProtectKernelModules=yes\n\
         ProtectKernelLogs=yes\n\
         ProtectControlGroups=yes\n\
         ProtectProc=invisible\n\
         ProcSubset=pid\n\
         RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX\n\
         RestrictNamespaces=yes\n\
         RestrictRealtime=yes\n\
         RestrictSUIDSGID=yes\n\
         LockPersonality=yes\n\
         MemoryDenyWriteExecute=yes\n\
         RemoveIPC=yes\n\
         SystemCallArchitectures=native\n\
         SystemCallFilter=@system-service\n\
         SystemCallFilter=~@privileged\n\
         UMask=0077\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target kubelet.service k3s-agent.service\n",
    );
    if plan.discovery.is_some() {
        // The kubelet's client key is root-only and rotates in place: read it as its owner
        // (uid 0) with an empty capability set, rather than a copy that would go stale.
        out = out.replace(
            "DynamicUser=yes\n",
            "# Discovery reads the kubelet's root-only, rotating key: uid 0, no capability.\n\
             User=root\n",
        );
    }
    out
}

/// The systemd socket unit for [`systemd_unit`] of the same plan: `apilb run` serves on an
/// inherited socket whose address matches a `--listen` or the `--admin-listen` address.
pub fn socket_unit(plan: &Plan, command: &str) -> String {
    let mut out = header(
        plan,
        &[
            "apilb: the listening sockets of apilb.service (systemd socket activation). systemd",
            "holds them, so `systemctl restart apilb` or a binary upgrade refuses no connection:",
            "new ones wait in the kernel's queue until the new process accepts them.",
            "Install: save as /etc/systemd/system/apilb.socket next to apilb.service (rendered",
            "from the same flags with --systemd instead of --socket), then",
            "  systemctl daemon-reload && systemctl enable --now apilb.socket apilb.service",
        ],
        command,
    );
    out.push_str(
        "\n[Unit]\n\
         Description=apilb listening sockets (node-local Kubernetes API load balancer)\n\
         Before=kubelet.service k3s-agent.service\n\
         \n\
         [Socket]\n\
         # --listen: client connections\n",
    );
    for l in &plan.listen {
        out.push_str(&format!("ListenStream={l}\n"));
    }
    out.push_str(&format!(
        "# --admin-listen: probes, metrics, apilb status\nListenStream={}\n",
        plan.admin_listen
    ));
    if plan
        .listen
        .iter()
        .chain([&plan.admin_listen])
        .any(SocketAddr::is_ipv6)
    {
        out.push_str(
            "# IPv6 sockets take IPv6 only, as apilb's own listeners do (IPV6_V6ONLY).\n\
             BindIPv6Only=ipv6-only\n",
        );
    }
    out.push_str(
        "Service=apilb.service\n\
         \n\
         [Install]\n\
         WantedBy=sockets.target\n",
    );
    out
}
