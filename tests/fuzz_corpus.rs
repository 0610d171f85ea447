//! Every seed of the fuzz targets (fuzz/run) through its entry point in src/testing/fuzzing.rs, on
//! stable Rust, in the normal test suite: the properties the fuzzers check hold on the real
//! shapes, and the seeds stay where fuzz/run looks for them.

use std::path::Path;

fn each_seed(dirs: &[&str], target: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for dir in dirs {
        let dir = root.join(dir);
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_file() {
                let data = std::fs::read(&path).unwrap();
                // A broken property panics; name the seed.
                let result = std::panic::catch_unwind(|| target(&data));
                assert!(result.is_ok(), "seed {} broke a property", path.display());
                n += 1;
            }
        }
    }
    assert!(n > 0, "no seeds in {dirs:?}");
}

#[test]
fn config_file_seeds() {
    each_seed(
        &["fuzz/seeds/config_file", "manifests"],
        apilb::testing::fuzzing::config_file,
    );
}

#[test]
fn kubeconfig_seeds() {
    each_seed(
        &["tests/data/kubeconfig"],
        apilb::testing::fuzzing::kubeconfig,
    );
}

#[test]
fn discovery_answer_seeds() {
    each_seed(
        &["fuzz/seeds/discovery_answer"],
        apilb::testing::fuzzing::discovery_answer,
    );
}

#[test]
fn state_file_seeds() {
    each_seed(
        &["fuzz/seeds/state_file"],
        apilb::testing::fuzzing::state_file,
    );
}

#[test]
fn kubespray_conf_seeds() {
    each_seed(
        &["tests/data/kubespray"],
        apilb::testing::fuzzing::kubespray_conf,
    );
}

#[test]
fn readyz_answer_seeds() {
    each_seed(&["fuzz/seeds/readyz_answer"], |d| {
        apilb::testing::fuzzing::readyz_answer(d);
    });
}

/// The readyz harness drives the real judge: the check reads the status each seed carries,
/// and how the server then behaves decides the state — silent after its one answer: down;
/// hanging up or sending GOAWAY: draining.
#[test]
fn readyz_answers_decide_the_state() {
    use apilb::server::State;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/readyz_answer");
    for (seed, want) in [
        ("h1-200", (Some(200), State::Down)),
        ("h1-403", (Some(403), State::Down)),
        ("h1-500-chunked", (Some(500), State::Down)),
        // hyper reports the hang-up that follows the answer before the answer itself.
        ("h1-500-chunked-hangup", (None, State::Draining)),
        // The canned HTTP/2 answers come before the request they answer (the harness writes
        // once the client has spoken at all), so no status is read; the hang-up still says
        // leaving.
        ("h2-500-hangup", (None, State::Draining)),
        ("h2-goaway", (None, State::Draining)),
    ] {
        let data = std::fs::read(root.join(seed)).unwrap();
        assert_eq!(
            apilb::testing::fuzzing::readyz_answer(&data),
            Some(want),
            "{seed}"
        );
    }
}
