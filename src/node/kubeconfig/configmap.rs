//! A kubeconfig held as a string in a ConfigMap (kubeadm's `kube-system/kube-proxy`):
//! rewriting `data[key]` and emitting the ConfigMap as a manifest to apply.

use yaml_serde::Value;

use super::*;
use crate::util::yaml::emit_yaml;

/// [`rewrite`] for the kubeconfig held as a string in `data[key]` of a ConfigMap
/// manifest; emits the whole ConfigMap (see the module docs for the metadata dropped).
pub fn rewrite_configmap(
    text: &str,
    source: &str,
    key: &str,
    opts: &RewriteOptions,
) -> Result<Outcome, KubeconfigError> {
    check_options(opts)?;
    in_configmap(text, source, key, |inner, inner_source| {
        rewrite(inner, inner_source, opts)
    })
}

/// [`restore`] for the kubeconfig held as a string in `data[key]` of a ConfigMap.
pub fn restore_configmap(
    text: &str,
    source: &str,
    key: &str,
    clusters: &ClusterSelector,
) -> Result<Outcome, KubeconfigError> {
    in_configmap(text, source, key, |inner, inner_source| {
        restore(inner, inner_source, clusters)
    })
}

pub(super) fn in_configmap(
    text: &str,
    source: &str,
    key: &str,
    apply: impl FnOnce(&str, &str) -> Result<Outcome, KubeconfigError>,
) -> Result<Outcome, KubeconfigError> {
    let mut doc = parse_yaml(text, source)?;
    let not = |reason: String| KubeconfigError::NotConfigMap {
        file: source.to_string(),
        reason,
    };
    let root = doc
        .as_mapping_mut()
        .ok_or_else(|| not("the document is not a YAML mapping".into()))?;
    match str_field(root, "kind") {
        Some("ConfigMap") => {}
        Some("Config") => {
            return Err(not(
                "`kind` is Config, i.e. a plain kubeconfig; drop --configmap-key".into(),
            ))
        }
        Some(other) => return Err(not(format!("`kind` is {other}, expected ConfigMap"))),
        None => {
            return Err(not(
                "it has no `kind: ConfigMap`; give the output of `kubectl -n kube-system get cm kube-proxy -o yaml`".into(),
            ))
        }
    }
    let missing = |keys: Vec<String>| KubeconfigError::MissingConfigMapKey {
        file: source.to_string(),
        key: key.to_string(),
        keys,
    };
    let data = match root.get_mut("data") {
        Some(Value::Mapping(data)) => data,
        _ => return Err(missing(Vec::new())),
    };
    let keys: Vec<String> = data
        .keys()
        .filter_map(|k| k.as_str().map(str::to_string))
        .collect();
    let inner = match data.get(key) {
        None => return Err(missing(keys)),
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(malformed(
                source,
                format!("data.{key}"),
                &format!("is {}", describe(other)),
                "ConfigMap data values are strings holding the kubeconfig",
            ))
        }
    };
    let inner_source = format!("{source} (data.{key})");
    match apply(&inner, &inner_source)? {
        Outcome::Unchanged { reason } => Ok(Outcome::Unchanged { reason }),
        Outcome::Changed { text, changes } => {
            // Keep the string's trailing-newline style (kubeadm writes `|-`).
            let text = if inner.ends_with('\n') {
                text
            } else {
                text.trim_end_matches('\n').to_string()
            };
            data.insert(key.into(), Value::String(text));
            if let Some(Value::Mapping(meta)) = root.get_mut("metadata") {
                for field in SERVER_POPULATED_METADATA {
                    meta.shift_remove(*field);
                }
            }
            Ok(Outcome::Changed {
                text: emit_yaml(&doc),
                changes,
            })
        }
    }
}
