//! Unit tests of `control::discovery`.

use super::*;

fn specs(v: &[&str]) -> Vec<ServerSpec> {
    v.iter().map(|s| ServerSpec::parse(s).unwrap()).collect()
}

#[test]
fn slice_shape_from_the_api_reference() {
    let body = br#"{
      "kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
      "metadata": {"name": "kubernetes", "namespace": "default",
                   "labels": {"kubernetes.io/service-name": "kubernetes"}},
      "addressType": "IPv4",
      "endpoints": [
        {"addresses": ["10.0.0.11"], "conditions": {"ready": true}},
        {"addresses": ["10.0.0.12"]},
        {"addresses": ["10.0.0.13"], "conditions": {"ready": false}}
      ],
      "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}]
    }"#;
    assert_eq!(
        parse_endpoint_slice(body).unwrap(),
        specs(&["10.0.0.11:6443", "10.0.0.12:6443"])
    );
    let v6 = br#"{"addressType":"IPv6","endpoints":[{"addresses":["fd00::11"]}],"ports":[{"name":"https","port":6443}]}"#;
    assert_eq!(
        parse_endpoint_slice(v6).unwrap(),
        specs(&["[fd00::11]:6443"])
    );
    assert!(parse_endpoint_slice(b"garbage").is_err());
    assert!(parse_endpoint_slice(br#"{"endpoints":[{"addresses":["10.0.0.1"]}]}"#).is_err());
    assert_eq!(
        parse_endpoint_slice(br#"{"addressType":"IPv4","endpoints":null,"ports":[{"port":6443}]}"#)
            .unwrap(),
        vec![]
    );
}

#[test]
fn endpoints_shape_from_the_api_reference() {
    let body = br#"{
      "kind": "Endpoints", "apiVersion": "v1",
      "metadata": {"name": "kubernetes", "namespace": "default"},
      "subsets": [{
        "addresses": [{"ip": "10.0.0.11"}, {"ip": "10.0.0.12"}],
        "notReadyAddresses": [{"ip": "10.0.0.13"}],
        "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}]
      }]
    }"#;
    assert_eq!(
        parse_endpoints(body).unwrap(),
        specs(&["10.0.0.11:6443", "10.0.0.12:6443"])
    );
    assert_eq!(parse_endpoints(b"{}").unwrap(), vec![]);
    assert!(parse_endpoints(b"[1,2]").is_err());
}

#[test]
fn merge_rules() {
    let mut l = ServerList {
        seeds: specs(&["10.0.0.1:6443"]),
        from_state: specs(&["10.0.0.1:6443", "10.0.0.2:6443"]),
        discovered: None,
        mode: Mode::Seed,
    };
    let e = l.effective();
    assert_eq!(e.len(), 2);
    assert_eq!(e[1].1, Source::StateFile);
    l.discovered = Some(specs(&["10.0.0.3:6443"]));
    assert_eq!(
        l.effective(),
        vec![(specs(&["10.0.0.3:6443"])[0].clone(), Source::Discovered)]
    );
    l.discovered = Some(vec![]);
    assert_eq!(l.effective().len(), 2, "an empty discovery changes nothing");
    l.mode = Mode::Pin;
    l.discovered = Some(specs(&["10.0.0.3:6443"]));
    assert_eq!(
        l.effective(),
        vec![(specs(&["10.0.0.1:6443"])[0].clone(), Source::Seed)]
    );
}

#[test]
fn state_file_round_trip_and_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("state");
    assert!(load_state(&d).is_empty());
    save_state(&d, &specs(&["10.0.0.1:6443", "[fd00::1]:6443"])).unwrap();
    assert_eq!(load_state(&d), specs(&["10.0.0.1:6443", "[fd00::1]:6443"]));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(d.join(STATE_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    std::fs::write(d.join(STATE_FILE), b"{not json").unwrap();
    assert!(load_state(&d).is_empty());
}

#[test]
fn errors_keep_their_words_and_label_the_metric() {
    let empty = DiscoveryError::Empty { api: "Endpoints" };
    assert_eq!(empty.result(), "empty");
    assert_eq!(
        empty.to_string(),
        "the Endpoints `kubernetes` lists no ready server"
    );
    let status = DiscoveryError::Status {
        api: "EndpointSlice",
        code: 500,
    };
    assert_eq!(status.result(), "error");
    assert_eq!(
        status.to_string(),
        "EndpointSlice: the apiserver answered 500"
    );
    assert_eq!(
        DiscoveryError::Unauthorized.to_string(),
        "the discovery credentials were refused (401)"
    );
    let parse = parse_endpoint_slice(b"{").unwrap_err();
    assert!(matches!(parse, DiscoveryError::Parse(_)), "{parse:?}");
    assert!(parse.to_string().starts_with("not an EndpointSlice: "));
}
