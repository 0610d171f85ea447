//! kubespray's nginx-proxy configuration (`nginx.conf`): a small tokenizer and parser for
//! the subset kubespray writes, and the servers and listen addresses it names. Owns the
//! nginx syntax; must not decide what apilb does with the result.

use super::*;

#[derive(Debug)]
pub(super) struct Directive {
    name: String,
    args: Vec<String>,
    block: Option<Vec<Directive>>,
    line: usize,
}

#[derive(Debug, PartialEq)]
pub(super) enum Token {
    Word(String),
    Open,
    Close,
    Semi,
}

pub(super) fn nginx_tokens(text: &str, file: &Path) -> Result<Vec<(Token, usize)>, KubesprayError> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    let mut word = String::new();
    let mut word_line = 1;
    let flush = |word: &mut String, out: &mut Vec<(Token, usize)>, at: usize| {
        if !word.is_empty() {
            out.push((Token::Word(std::mem::take(word)), at));
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '\n' => {
                flush(&mut word, &mut out, word_line);
                line += 1;
            }
            c if c.is_whitespace() => flush(&mut word, &mut out, word_line),
            '#' if word.is_empty() => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        line += 1;
                        break;
                    }
                }
            }
            '{' | '}' | ';' => {
                flush(&mut word, &mut out, word_line);
                let t = match c {
                    '{' => Token::Open,
                    '}' => Token::Close,
                    _ => Token::Semi,
                };
                out.push((t, line));
            }
            '"' | '\'' if word.is_empty() => {
                let start = line;
                let mut s = String::new();
                let mut closed = false;
                while let Some(q) = chars.next() {
                    match q {
                        '\\' => {
                            if let Some(n) = chars.next() {
                                s.push(n);
                            }
                        }
                        q2 if q2 == c => {
                            closed = true;
                            break;
                        }
                        '\n' => {
                            line += 1;
                            s.push('\n');
                        }
                        other => s.push(other),
                    }
                }
                if !closed {
                    return Err(err(file, Some(start), "unterminated quoted string"));
                }
                out.push((Token::Word(s), start));
            }
            '\\' => {
                if word.is_empty() {
                    word_line = line;
                }
                if let Some(n) = chars.next() {
                    word.push(n);
                }
            }
            other => {
                if word.is_empty() {
                    word_line = line;
                }
                word.push(other);
            }
        }
    }
    flush(&mut word, &mut out, word_line);
    Ok(out)
}

pub(super) fn nginx_parse(text: &str, file: &Path) -> Result<Vec<Directive>, KubesprayError> {
    let tokens = nginx_tokens(text, file)?;
    let mut stack: Vec<Vec<Directive>> = vec![Vec::new()];
    let mut open: Vec<(String, Vec<String>, usize)> = Vec::new();
    let mut current: Option<(String, Vec<String>, usize)> = None;
    for (tok, line) in tokens {
        match tok {
            Token::Word(w) => match &mut current {
                Some((_, args, _)) => args.push(w),
                None => current = Some((w, Vec::new(), line)),
            },
            Token::Semi => {
                let (name, args, l) = current
                    .take()
                    .ok_or_else(|| err(file, Some(line), "unexpected `;`"))?;
                if let Some(level) = stack.last_mut() {
                    level.push(Directive {
                        name,
                        args,
                        block: None,
                        line: l,
                    });
                }
            }
            Token::Open => {
                let head = current
                    .take()
                    .ok_or_else(|| err(file, Some(line), "unexpected `{`"))?;
                open.push(head);
                stack.push(Vec::new());
            }
            Token::Close => {
                if let Some((name, _, _)) = current.take() {
                    return Err(err(
                        file,
                        Some(line),
                        format!("directive `{name}` is missing its `;`"),
                    ));
                }
                let (Some((name, args, l)), Some(body)) = (open.pop(), stack.pop()) else {
                    return Err(err(file, Some(line), "unexpected `}`"));
                };
                if let Some(level) = stack.last_mut() {
                    level.push(Directive {
                        name,
                        args,
                        block: Some(body),
                        line: l,
                    });
                }
            }
        }
    }
    if let Some((name, _, l)) = current {
        return Err(err(
            file,
            Some(l),
            format!("directive `{name}` is missing its `;`"),
        ));
    }
    if let Some((name, _, l)) = open.last() {
        return Err(err(
            file,
            Some(*l),
            format!("block `{name}` is not closed with `}}`"),
        ));
    }
    Ok(stack.pop().unwrap_or_default())
}

pub(super) fn nginx(text: &str, file: &Path) -> Result<Parsed, KubesprayError> {
    let top = nginx_parse(text, file)?;
    let stream: Vec<&Directive> = top
        .iter()
        .filter(|d| d.name == "stream")
        .flat_map(|d| d.block.iter().flatten())
        .collect();
    if stream.is_empty() {
        return Err(err(
            file,
            None,
            "no `stream { … }` block with an upstream: this is not kubespray's nginx-proxy \
             configuration (it forwards TCP in `stream { upstream kube_apiserver { … } }`); \
             pass --nginx-conf with the right file, or give the control planes with --server",
        ));
    }
    let upstreams: Vec<&Directive> = stream
        .iter()
        .copied()
        .filter(|d| d.name == "upstream" && d.block.is_some())
        .collect();
    let proxies: Vec<(&Directive, String)> = stream
        .iter()
        .filter(|d| d.name == "server")
        .filter_map(|d| {
            let pass = d.block.iter().flatten().find(|x| x.name == "proxy_pass")?;
            Some((*d, pass.args.first()?.clone()))
        })
        .collect();
    let used: Vec<&str> = upstreams
        .iter()
        .filter_map(|u| u.args.first().map(String::as_str))
        .filter(|name| proxies.iter().any(|(_, p)| p == name))
        .collect();
    let chosen =
        if used.contains(&"kube_apiserver") {
            "kube_apiserver"
        } else {
            match used.as_slice() {
                [one] => *one,
                [] => return Err(err(
                    file,
                    None,
                    "no `server { listen …; proxy_pass UPSTREAM; }` in the stream block passes to \
                     an `upstream` defined there; kubespray's reads `proxy_pass kube_apiserver;`. \
                     Give the control planes with --server instead",
                )),
                many => {
                    return Err(err(
                        file,
                        None,
                        format!(
                            "several stream upstreams are in use ({}) and none is kubespray's \
                         `kube_apiserver`; give the control planes with --server instead",
                            many.join(", ")
                        ),
                    ))
                }
            }
        };
    let upstream = upstreams
        .iter()
        .find(|u| u.args.first().map(String::as_str) == Some(chosen))
        .ok_or_else(|| err(file, None, format!("upstream `{chosen}` not found")))?;

    let mut notes = Vec::new();
    let mut servers = Vec::new();
    for d in upstream
        .block
        .iter()
        .flatten()
        .filter(|d| d.name == "server")
    {
        let raw = d.args.first().ok_or_else(|| {
            err(
                file,
                Some(d.line),
                "`server` without an address; write `server HOST:PORT;`",
            )
        })?;
        if raw.starts_with("unix:") {
            return Err(err(
                file,
                Some(d.line),
                format!("server `{raw}` is a unix socket; apilb forwards to TCP servers only"),
            ));
        }
        if d.args[1..].iter().any(|a| a == "down") {
            notes.push(format!(
                "{}:{}: server {raw} is marked `down` in nginx; left out",
                file.display(),
                d.line
            ));
            continue;
        }
        let spec = split_host_port(raw, false)
            .and_then(|(h, p)| server_spec(h, p, raw))
            .map_err(|m| err(file, Some(d.line), m))?;
        if !push_unique(&mut servers, spec) {
            notes.push(format!(
                "{}:{}: server {raw} is listed twice; kept once",
                file.display(),
                d.line
            ));
        }
    }
    if servers.is_empty() {
        return Err(err(
            file,
            Some(upstream.line),
            format!(
                "upstream `{chosen}` lists no servers; kubespray renders one `server ADDR:PORT;` \
                 per control plane. Re-run kubespray, or give the control planes with --server"
            ),
        ));
    }

    let listen = || -> Result<Vec<SocketAddr>, KubesprayError> {
        let mut listen = Vec::new();
        for (server, _) in proxies.iter().filter(|(_, p)| p == chosen) {
            for d in server.block.iter().flatten().filter(|d| d.name == "listen") {
                let raw = d.args.first().ok_or_else(|| {
                    err(
                        file,
                        Some(d.line),
                        "`listen` without an address; write `listen 127.0.0.1:6443;`",
                    )
                })?;
                if d.args[1..].iter().any(|a| a == "udp") {
                    continue;
                }
                let addrs = nginx_listen(raw).map_err(|m| err(file, Some(d.line), m))?;
                for a in addrs {
                    push_unique(&mut listen, a);
                }
            }
        }
        if listen.is_empty() {
            return Err(err(
                file,
                None,
                format!(
                    "no `listen` in the stream server that passes to `{chosen}`; pass --listen \
                 127.0.0.1:6443"
                ),
            ));
        }
        Ok(listen)
    };
    Ok((
        LocalProxy {
            kind: Kind::Nginx,
            file: file.to_path_buf(),
            listen: Vec::new(),
            servers,
            notes,
        },
        listen(),
    ))
}

/// nginx `listen`: `ADDR:PORT`, `[V6]:PORT`, `PORT`, `*:PORT`, `localhost:PORT`.
pub(super) fn nginx_listen(raw: &str) -> Result<Vec<SocketAddr>, String> {
    if raw.starts_with("unix:") {
        return Err(format!(
            "`listen {raw}` is a unix socket; apilb listens on TCP. Pass --listen"
        ));
    }
    if let Ok(port) = raw.parse::<u16>() {
        return listen_addrs(None, port, raw);
    }
    let (host, port) = split_host_port(raw, false)?;
    match port {
        Some(p) => listen_addrs(Some(&host), p, raw),
        // nginx: an address without a port listens on 80.
        None => listen_addrs(Some(&host), 80, raw),
    }
}
