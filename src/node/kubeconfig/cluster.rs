//! Rewriting and restoring one cluster entry, and reading its server URL.
//!
//! Owns the rules of the rewrite (server, `tls-server-name`, the record); must not select
//! clusters or parse the document (that is `document`'s job).

use yaml_serde::{Mapping, Value};

use super::*;

pub(super) fn current_server(
    body: &Mapping,
    source: &str,
    field: &str,
) -> Result<String, KubeconfigError> {
    match body.get("server") {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
        _ => Err(KubeconfigError::MissingServer {
            file: source.to_string(),
            field: format!("{field}.server"),
        }),
    }
}

pub(super) fn current_tls(
    body: &Mapping,
    source: &str,
    field: &str,
) -> Result<Option<String>, KubeconfigError> {
    match body.get("tls-server-name") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(malformed(
            source,
            format!("{field}.tls-server-name"),
            &format!("is {}", describe(other)),
            "it must be a host name string; fix or remove it",
        )),
    }
}

pub(super) fn rewrite_cluster(
    body: &mut Mapping,
    source: &str,
    field: &str,
    name: &str,
    opts: &RewriteOptions,
) -> Result<Step, KubeconfigError> {
    let server = current_server(body, source, field)?;
    let tls = current_tls(body, source, field)?;
    let record = read_record(body, source, field)?;
    let proxied = body
        .get("proxy-url")
        .and_then(Value::as_str)
        .is_some_and(|p| !p.is_empty());
    if proxied && server != opts.server && is_loopback_url(&opts.server) {
        return Err(KubeconfigError::ProxyUrl {
            file: source.to_string(),
            field: format!("{field}.proxy-url"),
            server: opts.server.clone(),
        });
    }

    let Some(mut record) = record else {
        // First rewrite of this cluster.
        let host = https_host(&server).map_err(|reason| KubeconfigError::InvalidServer {
            file: source.to_string(),
            field: format!("{field}.server"),
            server: server.clone(),
            reason,
        })?;
        if server == opts.server {
            return Ok(Step::Skipped(format!(
                "cluster \"{name}\" already uses {server} (no original server to record)"
            )));
        }
        let new_tls = opts
            .tls_server_name
            .clone()
            .or_else(|| tls.clone())
            .unwrap_or(host);
        let record = Record {
            server: server.clone(),
            tls_added: tls.is_none(),
            tls_original: tls.clone().filter(|t| *t != new_tls),
        };
        body.insert("server".into(), opts.server.as_str().into());
        set_after(body, "server", "tls-server-name", new_tls.as_str().into());
        write_record(body, &record);
        return Ok(Step::Changed(Change {
            cluster: name.to_string(),
            from: server,
            to: opts.server.clone(),
            tls_server_name: Some(new_tls),
        }));
    };

    // Already rewritten: re-point the server or apply an explicit tls-server-name, but
    // keep the recorded original values.
    let mut new_tls = tls.clone();
    if let Some(wanted) = &opts.tls_server_name {
        if tls.as_deref() != Some(wanted.as_str()) {
            if !record.tls_added && record.tls_original.is_none() {
                match &tls {
                    Some(old) => record.tls_original = Some(old.clone()),
                    None => record.tls_added = true,
                }
            }
            new_tls = Some(wanted.clone());
        }
    }
    if new_tls.is_none() {
        // Someone deleted it since; the original host is what the certificate holds.
        new_tls = https_host(&record.server).ok();
        record.tls_added = true;
    }
    if server == opts.server && new_tls == tls {
        return Ok(Step::Skipped(format!(
            "cluster \"{name}\" already rewritten (server {server}, original {} recorded in extension {EXTENSION_NAME})",
            record.server
        )));
    }
    body.insert("server".into(), opts.server.as_str().into());
    if let Some(t) = &new_tls {
        set_after(body, "server", "tls-server-name", t.as_str().into());
    }
    write_record(body, &record);
    Ok(Step::Changed(Change {
        cluster: name.to_string(),
        from: server,
        to: opts.server.clone(),
        tls_server_name: new_tls,
    }))
}

pub(super) fn restore_cluster(
    body: &mut Mapping,
    source: &str,
    field: &str,
    name: &str,
) -> Result<Step, KubeconfigError> {
    let Some(record) = read_record(body, source, field)? else {
        return Ok(Step::Skipped(format!(
            "cluster \"{name}\" has no {EXTENSION_NAME} record (never rewritten by apilb)"
        )));
    };
    let from = str_field(body, "server").unwrap_or_default().to_string();
    body.insert("server".into(), record.server.as_str().into());
    if record.tls_added {
        body.shift_remove("tls-server-name");
    } else if let Some(tls) = &record.tls_original {
        set_after(body, "server", "tls-server-name", tls.as_str().into());
    }
    remove_record(body);
    Ok(Step::Changed(Change {
        cluster: name.to_string(),
        from,
        to: record.server,
        tls_server_name: str_field(body, "tls-server-name").map(str::to_string),
    }))
}

/// The host of an `https://` URL, IPv6 brackets stripped; `Err` says what is wrong.
pub(super) fn https_host(url: &str) -> Result<String, String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err("it has no scheme (https://)".into());
    };
    if !scheme.eq_ignore_ascii_case("https") {
        return Err(format!("the scheme is {scheme}, not https"));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let hostport = authority.rsplit('@').next().unwrap_or_default();
    let (host, port) = if let Some(after) = hostport.strip_prefix('[') {
        let Some((host, tail)) = after.split_once(']') else {
            return Err("the IPv6 host has no closing ]".into());
        };
        if !tail.is_empty() && !tail.starts_with(':') {
            return Err("unexpected text after the IPv6 host".into());
        }
        (host, tail.strip_prefix(':'))
    } else {
        match hostport.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err("it has no host".into());
    }
    if host.chars().any(char::is_whitespace) {
        return Err("the host contains whitespace".into());
    }
    if let Some(port) = port {
        if port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!(
                "the port \"{port}\" is not a number from 1 to 65535"
            ));
        }
    }
    Ok(host.to_string())
}

pub(super) fn is_loopback_url(url: &str) -> bool {
    https_host(url).is_ok_and(|h| {
        h.eq_ignore_ascii_case("localhost")
            || h.parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    })
}
