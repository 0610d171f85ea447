//! The record of a rewrite: the apilb extension kept in a cluster's `extensions` list, from
//! which `restore` puts the original back. Owns its shape; must not decide what is rewritten.

use yaml_serde::{Mapping, Value};

use super::*;

/// The values recorded in the apilb extension of one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Record {
    pub(super) server: String,
    pub(super) tls_added: bool,
    pub(super) tls_original: Option<String>,
}

impl Record {
    fn to_value(&self) -> Value {
        let mut ext = Mapping::new();
        ext.insert("apiVersion".into(), EXTENSION_API_VERSION.into());
        ext.insert("kind".into(), EXTENSION_KIND.into());
        ext.insert("server".into(), self.server.as_str().into());
        ext.insert("tlsServerNameAdded".into(), Value::Bool(self.tls_added));
        if let Some(tls) = &self.tls_original {
            ext.insert("tlsServerName".into(), tls.as_str().into());
        }
        let mut named = Mapping::new();
        named.insert("name".into(), EXTENSION_NAME.into());
        named.insert("extension".into(), Value::Mapping(ext));
        Value::Mapping(named)
    }
}

pub(super) fn is_our_extension(entry: &Value) -> bool {
    entry.get("name").and_then(Value::as_str) == Some(EXTENSION_NAME)
}

/// Reads the apilb record of a cluster body, if any.
pub(super) fn read_record(
    body: &Mapping,
    source: &str,
    field: &str,
) -> Result<Option<Record>, KubeconfigError> {
    let seq = match body.get("extensions") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Sequence(seq)) => seq,
        Some(other) => {
            return Err(malformed(
                source,
                format!("{field}.extensions"),
                &format!("is {}", describe(other)),
                "it must be a list of {name, extension} entries",
            ))
        }
    };
    let Some((i, entry)) = seq.iter().enumerate().find(|(_, e)| is_our_extension(e)) else {
        return Ok(None);
    };
    let at = format!("{field}.extensions[{i}].extension");
    let fix = format!(
        "the apilb record is damaged: put the original server back by hand and delete the `{EXTENSION_NAME}` entry"
    );
    let ext = entry
        .get("extension")
        .and_then(Value::as_mapping)
        .ok_or_else(|| malformed(source, at.clone(), "is missing or not a mapping", &fix))?;
    let server = str_field(ext, "server")
        .filter(|s| https_host(s).is_ok())
        .ok_or_else(|| {
            malformed(
                source,
                format!("{at}.server"),
                "is missing or not an https URL",
                &fix,
            )
        })?;
    let tls_added = match ext.get("tlsServerNameAdded") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(malformed(
                source,
                format!("{at}.tlsServerNameAdded"),
                "is not a boolean",
                &fix,
            ))
        }
    };
    let tls_original = match ext.get("tlsServerName") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            return Err(malformed(
                source,
                format!("{at}.tlsServerName"),
                "is not a string",
                &fix,
            ))
        }
    };
    Ok(Some(Record {
        server: server.to_string(),
        tls_added,
        tls_original,
    }))
}

/// Replaces the apilb record of `body` (or appends one).
pub(super) fn write_record(body: &mut Mapping, record: &Record) {
    let value = record.to_value();
    match body.get_mut("extensions") {
        Some(Value::Sequence(seq)) => {
            if let Some(slot) = seq.iter_mut().find(|e| is_our_extension(e)) {
                *slot = value;
            } else {
                seq.push(value);
            }
        }
        _ => {
            body.insert("extensions".into(), Value::Sequence(vec![value]));
        }
    }
}

/// Removes every apilb record of `body`, and `extensions` if that leaves it empty.
pub(super) fn remove_record(body: &mut Mapping) {
    let now_empty = match body.get_mut("extensions") {
        Some(Value::Sequence(seq)) => {
            seq.retain(|e| !is_our_extension(e));
            seq.is_empty()
        }
        _ => false,
    };
    if now_empty {
        body.shift_remove("extensions");
    }
}

/// Sets `key` in place if present, else inserts it right after `after` (or at the end),
/// so `tls-server-name` lands next to `server` and key order is otherwise kept.
pub(super) fn set_after(map: &mut Mapping, after: &str, key: &str, value: Value) {
    if let Some(slot) = map.get_mut(key) {
        *slot = value;
        return;
    }
    if !map.contains_key(after) {
        map.insert(key.into(), value);
        return;
    }
    let old = std::mem::take(map);
    let mut value = Some(value);
    for (k, v) in old {
        let is_after = k.as_str() == Some(after);
        map.insert(k, v);
        if is_after {
            if let Some(v) = value.take() {
                map.insert(key.into(), v);
            }
        }
    }
}
