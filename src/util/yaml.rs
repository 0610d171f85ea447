//! A YAML 1.1-safe emitter: writes a `yaml_serde::Value` in kubectl's block style.
//!
//! yaml_serde's emitter writes YAML 1.2 and leaves strings such as `on`, `no`, `y` or
//! `1_000` unquoted, which the YAML 1.1 parser of client-go (sigs.k8s.io/yaml) reads as
//! booleans or numbers. So documents are written here, and a string is left plain only
//! when both yaml_serde and a YAML 1.1 reader see a string.
//!
//! Owns the output form only; must not interpret a document (kubeconfig and manifest do).

use yaml_serde::{Mapping, Value};

/// Writes `doc` as a block-style YAML document ending in a newline. Also used by
/// `manifest` for the static pod, which client-go's YAML 1.1 reader (the kubelet's) reads.
pub fn emit_yaml(doc: &Value) -> String {
    let mut out = String::new();
    match doc {
        Value::Mapping(m) if !m.is_empty() => emit_mapping(&mut out, m, 0, false),
        Value::Sequence(s) if !s.is_empty() => emit_sequence(&mut out, s, 0, false),
        other => {
            emit_inline(&mut out, other, 0);
            out.push('\n');
        }
    }
    out
}

fn push_indent(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}

/// `inline`: the first entry continues a line already holding `- `.
fn emit_mapping(out: &mut String, map: &Mapping, indent: usize, inline: bool) {
    for (n, (key, value)) in map.iter().enumerate() {
        if n > 0 || !inline {
            push_indent(out, indent);
        }
        let key_text = match key {
            Value::String(k) => scalar_string(k),
            Value::Mapping(_) | Value::Sequence(_) | Value::Tagged(_) => flow(key),
            other => {
                let mut t = String::new();
                emit_inline(&mut t, other, indent + 2);
                t
            }
        };
        // An implicit key is one line of at most 1024 characters; a longer one takes the
        // explicit `? key` form (found by the `kubeconfig` fuzz target).
        if key_text.len() > 1000 || key_text.contains('\n') {
            out.push_str("? ");
            out.push_str(&key_text);
            if !key_text.ends_with('\n') {
                out.push('\n');
            }
            push_indent(out, indent);
        } else {
            out.push_str(&key_text);
        }
        out.push(':');
        match value {
            Value::Mapping(m) if !m.is_empty() => {
                out.push('\n');
                emit_mapping(out, m, indent + 2, false);
            }
            // kubectl style: a list inside a mapping is not indented.
            Value::Sequence(s) if !s.is_empty() => {
                out.push('\n');
                emit_sequence(out, s, indent, false);
            }
            other => {
                out.push(' ');
                emit_inline(out, other, indent + 2);
                out.push('\n');
            }
        }
    }
}

fn emit_sequence(out: &mut String, seq: &[Value], indent: usize, inline: bool) {
    for (n, item) in seq.iter().enumerate() {
        if n > 0 || !inline {
            push_indent(out, indent);
        }
        out.push_str("- ");
        match item {
            Value::Mapping(m) if !m.is_empty() => emit_mapping(out, m, indent + 2, true),
            Value::Sequence(s) if !s.is_empty() => emit_sequence(out, s, indent + 2, true),
            other => {
                emit_inline(out, other, indent + 2);
                out.push('\n');
            }
        }
    }
}

/// A scalar, an empty collection, a tagged value, or a multi-line string as a literal
/// block whose lines are indented by `indent`.
fn emit_inline(out: &mut String, value: &Value, indent: usize) {
    match value {
        Value::String(s) => {
            if let Some(header) = literal_header(s) {
                out.push_str(header);
                for line in s.split_terminator('\n') {
                    out.push('\n');
                    if !line.is_empty() {
                        push_indent(out, indent);
                        out.push_str(line);
                    }
                }
            } else {
                out.push_str(&scalar_string(s));
            }
        }
        other => out.push_str(&flow(other)),
    }
}

/// Flow style: scalars, `[...]`, `{...}`, strings always double-quoted unless plain-safe.
fn flow(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => {
            // Flow indicators end a plain scalar inside `[...]`/`{...}` (found by the
            // `kubeconfig` fuzz target).
            if s.contains(['\n', ',', '[', ']', '{', '}']) {
                double_quoted(s)
            } else {
                scalar_string(s)
            }
        }
        Value::Sequence(seq) => {
            let items: Vec<String> = seq.iter().map(flow).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Mapping(map) => {
            let items: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{}: {}", flow(k), flow(v)))
                .collect();
            format!("{{{}}}", items.join(", "))
        }
        Value::Tagged(t) => format!("{} {}", tag_text(&t.tag), flow(&t.value)),
    }
}

/// A tag as YAML source. yaml_serde prints the non-specific tag `!` as `!!`, which is not
/// a tag at all (found by the `kubeconfig` fuzz target).
fn tag_text(tag: &yaml_serde::value::Tag) -> String {
    match tag.to_string() {
        t if t == "!!" => "!".to_string(),
        t => t,
    }
}

/// The literal block header for `s`, or `None` if it is better double-quoted.
fn literal_header(s: &str) -> Option<&'static str> {
    if !s.contains('\n') {
        return None;
    }
    let unsafe_char = |c: char| {
        (c.is_control() && c != '\n' && c != '\t')
            || matches!(c, '\u{85}' | '\u{2028}' | '\u{2029}' | '\u{feff}')
    };
    if s.chars().any(unsafe_char) {
        return None;
    }
    // Indentation is detected from the first non-empty line; whitespace-only lines
    // and a leading space or tab would confuse it.
    let mut lines = s.split_terminator('\n');
    if lines.clone().any(|l| !l.is_empty() && l.trim().is_empty()) {
        return None;
    }
    match lines.find(|l| !l.is_empty()) {
        None => return None,
        Some(first) if first.starts_with([' ', '\t']) => return None,
        Some(_) => {}
    }
    Some(if !s.ends_with('\n') {
        "|-"
    } else if s.ends_with("\n\n") {
        "|+"
    } else {
        "|"
    })
}

/// A single-line string: plain when unambiguous, else double-quoted.
pub(crate) fn scalar_string(s: &str) -> String {
    if plain_is_safe(s) {
        s.to_string()
    } else {
        double_quoted(s)
    }
}

fn plain_is_safe(s: &str) -> bool {
    if s.is_empty() || s.contains(['\n', '\r', '"', '\'', '\\']) {
        return false;
    }
    if s.chars()
        .any(|c| c.is_control() || !(c.is_ascii_graphic() || c == ' '))
    {
        return false;
    }
    // What yaml_serde (YAML 1.2) reads back must be this very string...
    match yaml_serde::from_str::<Value>(s) {
        Ok(Value::String(back)) if back == s => {}
        _ => return false,
    }
    // ...and so must a YAML 1.1 reader (client-go's sigs.k8s.io/yaml).
    !yaml11_non_string(s)
}

/// True if a YAML 1.1 parser (go-yaml v2) may resolve the plain scalar `s` to
/// something other than a string. Errs on the side of quoting.
fn yaml11_non_string(s: &str) -> bool {
    const WORDS: &[&str] = &[
        "y", "n", "yes", "no", "on", "off", "true", "false", "null", "~", "<<", "=", ".inf",
        "+.inf", "-.inf", ".nan",
    ];
    let lower = s.to_ascii_lowercase();
    if WORDS.contains(&lower.as_str()) {
        return true;
    }
    let Some(first) = s.chars().next() else {
        return true;
    };
    if !(first.is_ascii_digit() || matches!(first, '-' | '+' | '.')) {
        return false;
    }
    let body = lower.trim_start_matches(['-', '+']);
    let digits: String = body.chars().filter(|c| *c != '_').collect();
    let radix = |p: &str, ok: fn(&char) -> bool| {
        digits
            .strip_prefix(p)
            .is_some_and(|r| !r.is_empty() && r.chars().all(|c| ok(&c)))
    };
    digits.parse::<f64>().is_ok()
        || radix("0x", char::is_ascii_hexdigit)
        || radix("0o", |c| c.is_digit(8))
        || radix("0b", |c| matches!(c, '0' | '1'))
        // sexagesimal (190:20:30) and timestamps (2001-12-14t21:59:43.10-05:00)
        || (body.contains(':') && body.chars().all(|c| c.is_ascii_digit() || matches!(c, ':' | '.' | '_')))
        || (body.len() >= 8
            && body.as_bytes().get(4) == Some(&b'-')
            && body.chars().take(4).all(|c| c.is_ascii_digit()))
}

fn double_quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\0' => out.push_str("\\0"),
            c if c.is_control() || matches!(c, '\u{85}' | '\u{2028}' | '\u{2029}' | '\u{feff}') => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
