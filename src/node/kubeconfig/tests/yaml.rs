//! YAML 1.1-safe output: what is written reads back the same in client-go.

use super::*;

// --- YAML output ----------------------------------------------------------------

const TRICKY: &[&str] = &[
    "on",
    "No",
    "y",
    "N",
    "off",
    "yes",
    "true",
    "null",
    "~",
    "",
    " lead",
    "trail ",
    "1e3",
    "0x1F",
    "0o17",
    "0b101",
    "1_000",
    "012",
    "+1",
    "-2.5",
    ".5",
    ".inf",
    "-.inf",
    ".nan",
    "1:20",
    "190:20:30",
    "2024-05-14T09:21:37Z",
    "2024-05-14",
    "a: b",
    "a #b",
    "#c",
    "- x",
    "-",
    "? x",
    "[a]",
    "{a}",
    "*a",
    "&a",
    "!a",
    "|",
    ">",
    "%x",
    "@x",
    "`x",
    "'q'",
    "\"q\"",
    "back\\slash",
    "tab\there",
    "cr\rlf",
    "bell\u{7}",
    "é",
    "日本",
    "\u{2028}",
    "x:",
    "=",
    "<<",
    "10.0.0.10",
    "fd00::10",
    "2001:db8::5",
    "::1",
    "https://127.0.0.1:6443",
    "system:node:worker-1",
    "0s",
    "3f9a",
    "a\nb",
    "a\nb\n",
    "a\n\n",
    "\n",
    "\na",
    " a\nb",
    "a\n \nb",
    "a\n\tb\n",
    "--- x",
    "...",
    "a\r\nb",
];

#[test]
fn emitted_yaml_reads_back_identically() {
    let mut doc = Mapping::new();
    let mut seq = Vec::new();
    for (i, s) in TRICKY.iter().enumerate() {
        doc.insert(Value::from(*s), Value::from(*s));
        doc.insert(Value::from(format!("k{i}")), Value::from(*s));
        seq.push(Value::from(*s));
    }
    doc.insert("seq".into(), Value::Sequence(seq.clone()));
    doc.insert(
        "nested".into(),
        Value::Sequence(vec![Value::Sequence(seq), Value::Mapping(Mapping::new())]),
    );
    doc.insert(
        "numbers".into(),
        yaml("[1, -2, 2.5, 1.0e10, .inf, true, null]"),
    );
    doc.insert("tagged".into(), yaml("!custom {a: 1}"));
    doc.insert(yaml("[1, 2]"), "complex key".into());
    let doc = Value::Mapping(doc);
    let text = emit_yaml(&doc);
    assert_eq!(yaml(&text), doc, "{text}");
    for (name, input, _, _) in golden_cases() {
        assert_eq!(yaml(&emit_yaml(&yaml(input))), yaml(input), "{name}");
    }
}

#[test]
fn yaml11_ambiguous_strings_are_quoted() {
    for s in [
        "on",
        "No",
        "y",
        "OFF",
        "1_000",
        "1:20",
        "0b11",
        "2024-05-14",
        "+.inf",
        "1e3",
    ] {
        assert_eq!(scalar_string(s), format!("\"{s}\""), "{s}");
    }
    for s in [
        "10.0.0.10",
        "fd00::10",
        "kubernetes",
        "system:node:w1",
        "0s",
        "/var/lib/x.pem",
        "LS0t+/=",
    ] {
        assert_eq!(scalar_string(s), s, "{s}");
    }
}

#[test]
fn yaml11_bool_words_in_bool_fields_become_booleans() {
    let input = SIMPLE.replace(
        "    server: https://10.0.0.10:6443\n",
        "    server: https://10.0.0.10:6443\n    insecure-skip-tls-verify: yes\n",
    );
    let (text, _) = changed(rewrite(&input, "f", &RewriteOptions::default()).unwrap());
    assert_eq!(cluster0(&text)["insecure-skip-tls-verify"], true);
    assert!(text.contains("insecure-skip-tls-verify: true\n"), "{text}");
}

#[test]
fn never_panics_on_mangled_goldens() {
    let all = RewriteOptions {
        clusters: ClusterSelector::All,
        ..RewriteOptions::default()
    };
    for (_, input, expected, _) in golden_cases() {
        for doc in [input, expected] {
            let lines: Vec<&str> = doc.split_inclusive('\n').collect();
            for k in 0..lines.len() {
                let without: String = lines
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != k)
                    .map(|(_, l)| *l)
                    .collect();
                let prefix: String = lines[..k].concat();
                for text in [without, prefix] {
                    let _ = rewrite(&text, "f", &RewriteOptions::default());
                    let _ = rewrite(&text, "f", &all);
                    let _ = restore(&text, "f", &ClusterSelector::All);
                    let _ = rewrite_configmap(&text, "f", DEFAULT_CONFIGMAP_KEY, &all);
                    let _ =
                        restore_configmap(&text, "f", DEFAULT_CONFIGMAP_KEY, &ClusterSelector::All);
                }
            }
        }
    }
}
