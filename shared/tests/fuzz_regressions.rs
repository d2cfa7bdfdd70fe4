//! Replays every input under `fuzz/regressions/<target>/` through that target's checks, so a
//! crash the fuzzer once found stays fixed.

use std::path::Path;

#[test]
fn fuzz_regressions_stay_fixed() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions");
    type Check = fn(&[u8]);
    let targets: [(&str, Check); 3] = [
        ("push_frame", flotilla_shared::fuzzing::push_frame),
        ("agent_bodies", flotilla_shared::fuzzing::agent_bodies),
        ("tokens", flotilla_shared::fuzzing::tokens),
    ];
    let mut replayed = 0;
    for (name, check) in targets {
        for entry in std::fs::read_dir(root.join(name)).unwrap() {
            let input = std::fs::read(entry.unwrap().path()).unwrap();
            check(&input);
            replayed += 1;
        }
    }
    assert!(replayed >= 3, "regression inputs exist");
}
