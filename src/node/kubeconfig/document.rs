//! Reading a kubeconfig document: parsing, finding its root, its named lists and the
//! clusters a selector means, and writing the result back (YAML 1.1-safe).
//!
//! Owns the parse-side checks; must not change a cluster (that is `cluster`'s job).

use yaml_serde::{Mapping, Value};

use super::*;
use crate::util::yaml::emit_yaml;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    Rewrite,
    Restore,
}

pub(super) enum Step {
    Changed(Change),
    Skipped(String),
}

pub(super) fn check_options(opts: &RewriteOptions) -> Result<(), KubeconfigError> {
    if let Err(reason) = https_host(&opts.server) {
        return Err(KubeconfigError::InvalidOption {
            option: "--server",
            value: opts.server.clone(),
            reason: format!("{reason}; give an https URL such as {DEFAULT_SERVER}"),
        });
    }
    if let Some(name) = &opts.tls_server_name {
        if name.trim().is_empty() || name.chars().any(|c| c.is_whitespace() || c == '/') {
            return Err(KubeconfigError::InvalidOption {
                option: "--tls-server-name",
                value: name.clone(),
                reason: "must be a host name or IP address, without scheme, port or spaces"
                    .to_string(),
            });
        }
    }
    Ok(())
}

pub(super) fn parse_yaml(text: &str, source: &str) -> Result<Value, KubeconfigError> {
    yaml_serde::from_str::<Value>(text).map_err(|e| {
        let mut message = e.to_string();
        if let Some(at) = e.location().filter(|_| !message.contains(" line ")) {
            message.push_str(&format!(" at line {} column {}", at.line(), at.column()));
        }
        KubeconfigError::NotYaml {
            file: source.to_string(),
            message,
        }
    })
}

pub(super) fn finish(
    doc: Value,
    source: &str,
    changes: Vec<Change>,
    skipped: Vec<String>,
    nothing: &str,
) -> Result<Outcome, KubeconfigError> {
    if changes.is_empty() {
        let reason = if skipped.is_empty() {
            format!("{source}: {nothing}")
        } else {
            format!("{source}: {nothing}: {}", skipped.join("; "))
        };
        return Ok(Outcome::Unchanged { reason });
    }
    let mut doc = doc;
    normalize_yaml11_bools(&mut doc);
    Ok(Outcome::Changed {
        text: emit_yaml(&doc),
        changes,
    })
}

/// client-go reads `insecure-skip-tls-verify: yes` (YAML 1.1) as `true`, yaml_serde as
/// the string "yes". A string in these boolean fields is invalid for client-go anyway,
/// so turning the YAML 1.1 words into booleans keeps the meaning when written back.
pub(crate) fn normalize_yaml11_bools(doc: &mut Value) {
    let Some(clusters) = doc.get_mut("clusters").and_then(Value::as_sequence_mut) else {
        return;
    };
    for entry in clusters {
        let Some(body) = entry.get_mut("cluster").and_then(Value::as_mapping_mut) else {
            continue;
        };
        for key in ["insecure-skip-tls-verify", "disable-compression"] {
            if let Some(slot) = body.get_mut(key) {
                // Exactly go-yaml v2's words: `tRue` stays a string there (the fuzz target
                // `kubeconfig` found it turned into a boolean).
                match slot.as_str() {
                    Some(
                        "y" | "Y" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" | "true" | "True"
                        | "TRUE",
                    ) => *slot = Value::Bool(true),
                    Some(
                        "n" | "N" | "no" | "No" | "NO" | "off" | "Off" | "OFF" | "false" | "False"
                        | "FALSE",
                    ) => *slot = Value::Bool(false),
                    _ => {}
                }
            }
        }
    }
}

pub(super) fn str_field<'a>(map: &'a Mapping, key: &str) -> Option<&'a str> {
    map.get(key).and_then(Value::as_str)
}

pub(super) fn malformed(source: &str, field: String, problem: &str, fix: &str) -> KubeconfigError {
    KubeconfigError::Malformed {
        file: source.to_string(),
        field,
        problem: problem.to_string(),
        fix: fix.to_string(),
    }
}

/// The top-level mapping of a kubeconfig, after checking its shape.
pub(super) fn kubeconfig_root<'a>(
    doc: &'a Value,
    source: &str,
) -> Result<&'a Mapping, KubeconfigError> {
    let not = |reason: String| KubeconfigError::NotKubeconfig {
        file: source.to_string(),
        reason,
    };
    let root = doc
        .as_mapping()
        .ok_or_else(|| not("the document is not a YAML mapping (is the file empty?)".into()))?;
    if let Some(kind) = root.get("kind") {
        match kind.as_str() {
            Some("Config") => {}
            Some("ConfigMap") => {
                return Err(not(format!(
                    "`kind` is ConfigMap; pass --configmap-key KEY to rewrite the kubeconfig it holds (kubeadm's kube-proxy ConfigMap uses {DEFAULT_CONFIGMAP_KEY})"
                )))
            }
            _ => {
                return Err(not(format!(
                    "`kind` is {}, expected Config",
                    describe(kind)
                )))
            }
        }
    }
    match root.get("clusters") {
        None | Some(Value::Null) => Err(not(
            "it has no `clusters` list; give the path of a kubeconfig such as /etc/kubernetes/kubelet.conf".into(),
        )),
        Some(Value::Sequence(seq)) if seq.is_empty() => {
            Err(not("its `clusters` list is empty; there is nothing to rewrite".into()))
        }
        Some(Value::Sequence(_)) => Ok(root),
        Some(other) => Err(not(format!(
            "`clusters` is {}, expected a list of {{name, cluster}} entries",
            describe(other)
        ))),
    }
}

pub(super) fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("\"{s}\""),
        Value::Sequence(_) => "a list".into(),
        Value::Mapping(_) => "a mapping".into(),
        Value::Tagged(_) => "a tagged value".into(),
    }
}

pub(super) fn cluster_names(root: &Mapping, source: &str) -> Result<Vec<String>, KubeconfigError> {
    named_entries(root, "clusters", "cluster", source)
}

/// The `name`s of the entries of a top-level list (`clusters`, `contexts`); every
/// entry must be a mapping with a non-empty string `name`, and names must be unique
/// (client-go rejects duplicates too).
pub(super) fn named_entries(
    root: &Mapping,
    list: &str,
    body: &str,
    source: &str,
) -> Result<Vec<String>, KubeconfigError> {
    let seq = match root.get(list) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Sequence(seq)) => seq,
        Some(other) => {
            return Err(malformed(
                source,
                format!("`{list}`"),
                &format!("is {}", describe(other)),
                &format!("it must be a list of {{name, {body}}} entries"),
            ))
        }
    };
    let mut names: Vec<String> = Vec::with_capacity(seq.len());
    for (i, entry) in seq.iter().enumerate() {
        let name = entry
            .as_mapping()
            .and_then(|m| str_field(m, "name"))
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                malformed(
                    source,
                    format!("{list}[{i}].name"),
                    "is missing or not a string",
                    &format!("every entry of `{list}` needs a name and a `{body}` mapping"),
                )
            })?;
        if names.iter().any(|n| n == name) {
            return Err(malformed(
                source,
                format!("{list}[{i}].name"),
                &format!("repeats the name \"{name}\""),
                "names must be unique (client-go refuses the file otherwise); rename or remove one",
            ));
        }
        names.push(name.to_string());
    }
    Ok(names)
}

/// Indices into `clusters` selected by `selector`.
pub(super) fn select_clusters(
    doc: &Value,
    source: &str,
    selector: &ClusterSelector,
    action: Action,
) -> Result<Vec<usize>, KubeconfigError> {
    let root = kubeconfig_root(doc, source)?;
    let names = cluster_names(root, source)?;
    let find = |wanted: &str, hint: String| {
        names
            .iter()
            .position(|n| n == wanted)
            .map(|i| vec![i])
            .ok_or_else(|| KubeconfigError::ClusterNotFound {
                file: source.to_string(),
                cluster: wanted.to_string(),
                clusters: names.clone(),
                hint,
            })
    };
    match selector {
        ClusterSelector::All => Ok((0..names.len()).collect()),
        ClusterSelector::Named(name) => find(name, "pass --cluster with one of them".into()),
        ClusterSelector::Current => {
            let current = str_field(root, "current-context").filter(|c| !c.is_empty());
            let Some(current) = current else {
                if action == Action::Restore {
                    // Restoring needs no choice: only clusters with a record change.
                    return Ok((0..names.len()).collect());
                }
                return Err(KubeconfigError::NoCurrentContext {
                    file: source.to_string(),
                    clusters: names.clone(),
                });
            };
            let contexts = named_entries(root, "contexts", "context", source)?;
            let pos = contexts.iter().position(|c| c == current).ok_or_else(|| {
                KubeconfigError::ContextNotFound {
                    file: source.to_string(),
                    context: current.to_string(),
                    contexts: contexts.clone(),
                }
            })?;
            let field = format!("contexts[{pos}] (\"{current}\").context.cluster");
            let cluster = root
                .get("contexts")
                .and_then(Value::as_sequence)
                .and_then(|s| s.get(pos))
                .and_then(|e| e.get("context"))
                .and_then(|c| c.get("cluster"))
                .and_then(Value::as_str)
                .filter(|c| !c.is_empty())
                .ok_or_else(|| {
                    malformed(
                        source,
                        field.clone(),
                        "is missing or not a string",
                        "set it to the name of an entry of `clusters`, or pass --cluster NAME",
                    )
                })?;
            find(
                cluster,
                format!("{field} names it; fix the context or pass --cluster NAME"),
            )
        }
    }
}

/// The `name` and the `cluster` mapping of `clusters[idx]`.
pub(super) fn cluster_body_mut<'a>(
    doc: &'a mut Value,
    source: &str,
    idx: usize,
) -> Result<(String, &'a mut Mapping), KubeconfigError> {
    let entry = doc
        .get_mut("clusters")
        .and_then(Value::as_sequence_mut)
        .and_then(|s| s.get_mut(idx))
        .and_then(Value::as_mapping_mut)
        .ok_or_else(|| {
            malformed(
                source,
                format!("clusters[{idx}]"),
                "is not a mapping",
                "each entry needs `name` and `cluster`",
            )
        })?;
    let name = str_field(entry, "name").unwrap_or_default().to_string();
    match entry.get_mut("cluster") {
        Some(Value::Mapping(body)) => Ok((name, body)),
        _ => Err(malformed(
            source,
            format!("clusters[{idx}] (\"{name}\").cluster"),
            "is missing or not a mapping",
            "it must hold at least `server`",
        )),
    }
}
