//! Property tests (proptest) for everything that parses outside input: the config file,
//! server addresses, kubeconfigs, the discovery answers and the state file. Each property
//! says either "any input gives a value or a clear error, never a panic", or a round trip.
//! Test-only module.

use proptest::prelude::*;

use crate::control::discovery;
use crate::node::kubeconfig::{self, ClusterSelector, Outcome, RewriteOptions};
use crate::server::ServerSpec;

fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|o| std::net::Ipv4Addr::from(o).to_string()),
        any::<[u16; 8]>().prop_map(|o| std::net::Ipv6Addr::from(o).to_string()),
        "[a-z][a-z0-9-]{0,20}(\\.[a-z][a-z0-9-]{0,10}){0,3}",
    ]
}

fn kubeconfig_doc(clusters: &[(String, String)], current: usize) -> String {
    let mut out = String::from("apiVersion: v1\nkind: Config\nclusters:\n");
    for (name, server) in clusters {
        out.push_str(&format!(
            "- cluster:\n    certificate-authority-data: LS0tLS1CRUdJTg==\n    server: {server}\n  name: {name}\n"
        ));
    }
    out.push_str("contexts:\n");
    for (name, _) in clusters {
        out.push_str(&format!(
            "- context:\n    cluster: {name}\n    user: u\n  name: ctx-{name}\n"
        ));
    }
    out.push_str(&format!(
        "current-context: ctx-{}\nusers:\n- name: u\n  user:\n    client-certificate: /var/lib/kubelet/pki/kubelet-client-current.pem\n",
        clusters[current].0
    ));
    out
}

fn server_url(h: &str, port: u16) -> String {
    if h.contains(':') {
        format!("https://[{h}]:{port}")
    } else {
        format!("https://{h}:{port}")
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn server_spec_never_panics(s in ".{0,40}") {
        let _ = ServerSpec::parse(&s);
    }

    #[test]
    fn server_spec_round_trips(h in host(), port in 1u16..) {
        let spec = ServerSpec { host: h, port };
        prop_assert_eq!(ServerSpec::parse(&spec.to_string()), Ok(spec));
    }

    #[test]
    fn config_file_gives_a_value_or_an_error(text in "(listen|server|ca-file|health-fall|drain-grace|bogus)?: ?[\\[\\]a-z0-9:.\"{} ,-]{0,40}\n?.{0,20}") {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.yaml");
        std::fs::write(&p, &text).unwrap();
        if let Err(e) = crate::config::read_file(&p) {
            prop_assert!(e.origin.contains("c.yaml"));
        }
    }

    #[test]
    fn discovery_answers_never_panic(body in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = discovery::parse_endpoint_slice(&body);
        let _ = discovery::parse_endpoints(&body);
    }

    #[test]
    fn endpoint_slices_round_trip(ips in proptest::collection::vec(any::<[u8; 4]>(), 1..6), port in 1u16..) {
        let eps: Vec<String> = ips
            .iter()
            .map(|o| format!("{{\"addresses\":[\"{}\"],\"conditions\":{{\"ready\":true}}}}", std::net::Ipv4Addr::from(*o)))
            .collect();
        let body = format!(
            "{{\"addressType\":\"IPv4\",\"endpoints\":[{}],\"ports\":[{{\"name\":\"https\",\"port\":{port}}}]}}",
            eps.join(",")
        );
        let got = discovery::parse_endpoint_slice(body.as_bytes()).unwrap();
        let mut want: Vec<ServerSpec> = Vec::new();
        for o in &ips {
            let s = ServerSpec { host: std::net::Ipv4Addr::from(*o).to_string(), port };
            if !want.contains(&s) {
                want.push(s);
            }
        }
        prop_assert_eq!(got, want);
    }

    #[test]
    fn state_file_never_crashes(body in proptest::collection::vec(any::<u8>(), 0..120)) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(discovery::STATE_FILE), &body).unwrap();
        let _ = discovery::load_state(dir.path());
    }

    #[test]
    fn kubeconfig_rewrite_never_panics(text in ".{0,200}") {
        let _ = kubeconfig::rewrite(&text, "f", &RewriteOptions::default());
        let _ = kubeconfig::restore(&text, "f", &ClusterSelector::All);
    }

    #[test]
    fn kubeconfig_rewrite_restore_round_trip(
        hosts in proptest::collection::vec((host(), 1u16..), 1..4),
        current in 0usize..4,
        all in any::<bool>(),
    ) {
        let clusters: Vec<(String, String)> = hosts
            .iter()
            .enumerate()
            .map(|(i, (h, p))| (format!("c{i}"), server_url(h, *p)))
            .collect();
        let current = current % clusters.len();
        let original = kubeconfig_doc(&clusters, current);
        let opts = RewriteOptions {
            clusters: if all { ClusterSelector::All } else { ClusterSelector::Current },
            ..RewriteOptions::default()
        };
        let rewritten = match kubeconfig::rewrite(&original, "f", &opts).unwrap() {
            Outcome::Changed { text, .. } => text,
            Outcome::Unchanged { reason } => return Err(TestCaseError::fail(reason)),
        };
        prop_assert!(rewritten.contains("server: https://127.0.0.1:6443"));
        // Twice changes nothing.
        let again = kubeconfig::rewrite(&rewritten, "f", &opts).unwrap();
        prop_assert!(matches!(again, Outcome::Unchanged { .. }), "second rewrite changed it");
        // Restore gives the same document back (as data).
        let restored = match kubeconfig::restore(&rewritten, "f", &ClusterSelector::All).unwrap() {
            Outcome::Changed { text, .. } => text,
            Outcome::Unchanged { reason } => return Err(TestCaseError::fail(reason)),
        };
        let a: yaml_serde::Value = yaml_serde::from_str(&original).unwrap();
        let b: yaml_serde::Value = yaml_serde::from_str(&restored).unwrap();
        prop_assert_eq!(a, b);
    }
}
