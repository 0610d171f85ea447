//! kubespray's HAProxy configuration (`haproxy.cfg`): sections, words, and the servers and
//! bind addresses of the apiserver frontend. Owns the HAProxy syntax; must not decide what
//! apilb does with the result.

use super::*;

pub(super) const HAPROXY_SECTIONS: &[&str] = &[
    "global",
    "defaults",
    "frontend",
    "backend",
    "listen",
    "userlist",
    "peers",
    "resolvers",
    "mailers",
    "program",
    "http-errors",
    "ring",
    "cache",
    "crt-store",
    "traces",
];

pub(super) struct Section {
    kind: String,
    name: String,
    line: usize,
    /// (line, words) of every keyword line in the section.
    lines: Vec<(usize, Vec<String>)>,
}

/// Splits a HAProxy config line into words: whitespace separates, `#` starts a comment,
/// quotes and backslashes escape.
pub(super) fn haproxy_words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"') | None, '\\') => {
                if let Some(n) = chars.next() {
                    word.push(n);
                    in_word = true;
                }
            }
            (Some(_), c) => word.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (None, '#') => break,
            (None, c) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(word);
    }
    out
}

pub(super) fn haproxy_sections(text: &str) -> Vec<Section> {
    let mut sections: Vec<Section> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let words = haproxy_words(raw);
        let Some(first) = words.first() else { continue };
        if HAPROXY_SECTIONS.contains(&first.as_str()) {
            sections.push(Section {
                kind: first.clone(),
                name: words.get(1).cloned().unwrap_or_default(),
                line: i + 1,
                lines: Vec::new(),
            });
        } else if let Some(s) = sections.last_mut() {
            s.lines.push((i + 1, words));
        }
    }
    sections
}

pub(super) fn words_after<'a>(
    s: &'a Section,
    keyword: &str,
) -> impl Iterator<Item = &'a (usize, Vec<String>)> {
    let keyword = keyword.to_string();
    s.lines
        .iter()
        .filter(move |(_, w)| w.first().map(String::as_str) == Some(keyword.as_str()))
}

/// HAProxy address: strips `ipv4@`/`ipv6@`/`tcp@`-style prefixes; refuses sockets.
pub(super) fn haproxy_address(raw: &str) -> Result<&str, String> {
    let (prefix, rest) = match raw.split_once('@') {
        Some((p, r)) => (Some(p), r),
        None => (None, raw),
    };
    match prefix {
        None | Some("ipv4" | "ipv6" | "tcp" | "tcp4" | "tcp6") => {}
        Some(p) => {
            return Err(format!(
                "`{raw}`: `{p}@` addresses are not TCP; apilb uses TCP addresses"
            ))
        }
    }
    if rest.starts_with('/') {
        return Err(format!(
            "`{raw}` is a unix socket; apilb uses TCP addresses"
        ));
    }
    Ok(rest)
}

pub(super) fn haproxy(text: &str, file: &Path) -> Result<Parsed, KubesprayError> {
    let sections = haproxy_sections(text);
    let backends: Vec<&Section> = sections
        .iter()
        .filter(|s| s.kind == "backend" || s.kind == "listen")
        .filter(|s| words_after(s, "server").next().is_some())
        .collect();
    let backend = match backends.iter().find(|s| s.name == "kube_api_backend") {
        Some(b) => *b,
        None => match backends.as_slice() {
            [one] => *one,
            [] => {
                return Err(err(
                    file,
                    None,
                    "no backend with `server` lines: this is not kubespray's HAProxy \
                     configuration (its `backend kube_api_backend` lists one `server NAME \
                     ADDR:PORT check …` per control plane); pass --haproxy-cfg with the right \
                     file, or give the control planes with --server",
                ))
            }
            many => {
                return Err(err(
                    file,
                    None,
                    format!(
                        "several backends have servers ({}) and none is kubespray's \
                         `kube_api_backend`; give the control planes with --server instead",
                        many.iter()
                            .map(|s| s.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ))
            }
        },
    };

    let mut notes = Vec::new();
    let mut servers = Vec::new();
    for (line, words) in words_after(backend, "server") {
        let (Some(name), Some(raw)) = (words.get(1), words.get(2)) else {
            return Err(err(
                file,
                Some(*line),
                "`server` needs a name and an address: `server NAME ADDR:PORT …`",
            ));
        };
        if words[3..].iter().any(|w| w == "disabled") {
            notes.push(format!(
                "{}:{line}: server {name} ({raw}) is `disabled` in HAProxy; left out",
                file.display()
            ));
            continue;
        }
        let spec = haproxy_address(raw)
            .and_then(|a| split_host_port(a, true))
            .and_then(|(h, p)| server_spec(h, p, raw))
            .map_err(|m| err(file, Some(*line), format!("server {name}: {m}")))?;
        if !push_unique(&mut servers, spec) {
            notes.push(format!(
                "{}:{line}: server {name} ({raw}) is listed twice; kept once",
                file.display()
            ));
        }
    }
    if servers.is_empty() {
        return Err(err(
            file,
            Some(backend.line),
            format!(
                "{} `{}` has no usable servers; re-run kubespray, or give the control planes \
                 with --server",
                backend.kind, backend.name
            ),
        ));
    }

    // Frontends that send their traffic to the backend, or the listen section itself.
    let fronts: Vec<&Section> = sections
        .iter()
        .filter(|s| {
            (s.kind == "listen" && s.name == backend.name)
                || (s.kind == "frontend"
                    && words_after(s, "default_backend")
                        .chain(words_after(s, "use_backend"))
                        .any(|(_, w)| w.get(1) == Some(&backend.name)))
        })
        .collect();
    let listen = || -> Result<Vec<SocketAddr>, KubesprayError> {
        let mut listen = Vec::new();
        for s in &fronts {
            for (line, words) in words_after(s, "bind") {
                let Some(list) = words.get(1) else {
                    return Err(err(
                        file,
                        Some(*line),
                        "`bind` without an address; write `bind 127.0.0.1:6443`",
                    ));
                };
                for raw in list.split(',') {
                    let addrs = haproxy_address(raw)
                        .and_then(|a| {
                            let (h, p) = split_host_port(a, true)?;
                            let p = p.ok_or_else(|| format!("`bind {raw}` has no port"))?;
                            listen_addrs(Some(&h), p, raw)
                        })
                        .map_err(|m| err(file, Some(*line), m))?;
                    for a in addrs {
                        push_unique(&mut listen, a);
                    }
                }
            }
        }
        if listen.is_empty() {
            return Err(err(
                file,
                None,
                format!(
                    "no frontend with a `bind` sends traffic to `{}` (kubespray's \
                 `frontend kube_api_frontend` has `bind 127.0.0.1:6443` and `default_backend \
                 kube_api_backend`); pass --listen 127.0.0.1:6443",
                    backend.name
                ),
            ));
        }
        Ok(listen)
    };
    Ok((
        LocalProxy {
            kind: Kind::Haproxy,
            file: file.to_path_buf(),
            listen: Vec::new(),
            servers,
            notes,
        },
        listen(),
    ))
}
