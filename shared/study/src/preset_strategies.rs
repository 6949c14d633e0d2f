//! An old study file with `preset = "paper"` must ask every searcher for the same strategies,
//! bit for bit, as before the space grew magnitude dimensions: saved searcher states, warm
//! starts and reruns of old studies depend on it.
//!
//! The expected bits were recorded from the code before the `paper+magnitudes` preset existed
//! (`SEGTUNE_RECORD_STRATEGIES=1 cargo test -p study preset_strategies -- --nocapture` prints
//! the table for the code at hand).

use std::path::Path;

use crate::{parse_study_file, validate_spec};

const PAPER_FILE: &str = "[dataset]\nid = \"d\"\n[search]\nseed = 7\nparallel = 2\n\
                          [space]\npreset = \"paper\"\n";

/// Per searcher: two proposals, both observed (reward = mean of the unit coordinates), two
/// more proposals; each strategy's real values in dimension order, as `f64::to_bits`.
fn asked(kind: &str) -> Vec<Vec<u64>> {
    let mut spec = parse_study_file(PAPER_FILE, Path::new("paper.toml")).expect("paper file");
    spec.searcher = kind.to_string();
    let space = validate_spec(&spec).expect("valid spec");
    let mut searcher =
        search::build(kind, &space, &spec.searcher_settings, spec.seed).expect("searcher");
    let mut out = Vec::new();
    let mut record = |p: &search::Proposal| {
        let values = space.from_unit(&p.unit).expect("in space");
        out.push(values.iter().map(|v| v.to_bits()).collect::<Vec<u64>>());
    };
    let first: Vec<_> = (0..2).map(|_| searcher.propose()).collect();
    for p in &first {
        record(p);
    }
    for p in &first {
        let reward = p.unit.iter().sum::<f64>() / p.unit.len() as f64;
        searcher.observe(p, reward).expect("observe");
    }
    for _ in 0..2 {
        let p = searcher.propose();
        record(&p);
    }
    out
}

#[test]
fn a_paper_study_asks_every_searcher_for_the_recorded_strategies() {
    if std::env::var_os("SEGTUNE_RECORD_STRATEGIES").is_some() {
        println!("const RECORDED: &[(&str, [[u64; 9]; 4])] = &[");
        for kind in search::KINDS {
            println!("    (\"{kind}\", [");
            for s in asked(kind) {
                let hex: Vec<String> = s.iter().map(|b| format!("{b:#018x}")).collect();
                println!("        [{}],", hex.join(", "));
            }
            println!("    ]),");
        }
        println!("];");
        return;
    }
    assert_eq!(
        RECORDED.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
        search::KINDS,
        "one record per searcher"
    );
    for (kind, want) in RECORDED {
        let got = asked(kind);
        assert_eq!(got, want.map(|s| s.to_vec()).to_vec(), "{kind}");
    }
}

const RECORDED: &[(&str, [[u64; 9]; 4])] = &[
    (
        "ppo-rnn",
        [
            [
                0x3fe43025724c7bd0,
                0x3fe3df3b84546d37,
                0x3fe583eed9551658,
                0x3fe0a346c2a023a0,
                0x3fd510a36bbfa4ca,
                0x3fe286f33d47b536,
                0x3fdb166c318cfa20,
                0x3fde239ba1b422a4,
                0x3f4859197513e3e6,
            ],
            [
                0x3fdd213965e33909,
                0x3fd25c53192d40f1,
                0x3fdb21b17aafc858,
                0x3fd8f12cc056e8c3,
                0x3fdc16b76dbab07a,
                0x3fe08e6139a3c00b,
                0x3fd735daaf17970b,
                0x3fdb8fbd922a687b,
                0x3f4a20412a37c631,
            ],
            [
                0x3fe3b3f2a95a3ab1,
                0x3fdc8cc8a8409fc8,
                0x3fde2b8ac655d450,
                0x3fe486b3c00450b3,
                0x3fd3fac26bad6eab,
                0x3fe31c6ffe88d810,
                0x3fdcb39369942322,
                0x3fd9903904b1147f,
                0x3f60342f61c3080a,
            ],
            [
                0x3fe0067ca3fac1a3,
                0x3fe14796d8133f1d,
                0x3fe04674bd4f957a,
                0x3fe56a03bfc7b1d1,
                0x3fda318bd01030e2,
                0x3fe0cfa3043cab38,
                0x3fde5d9960cacd02,
                0x3fdc8fb8338b0154,
                0x3f540f8d6eee5441,
            ],
        ],
    ),
    (
        "tpe",
        [
            [
                0x3fac583400555d20,
                0x3fc607e46efd274c,
                0x3fe6f66236761a8b,
                0x3fdb5767da98c600,
                0x3feed64c7e5eaf20,
                0x3fddce16d89f08b0,
                0x3fe72a3f366c43d4,
                0x3fd51c16d6b70078,
                0x3f82e0fb83442334,
            ],
            [
                0x3fb2c2b9fdd9c110,
                0x3fbd3ee9ebb95710,
                0x3fc6030d520cb4d4,
                0x3fe77b7be0c5c218,
                0x3fbcf3305d746a18,
                0x3fdfa81a3c707220,
                0x3fb8e718927f54e0,
                0x3fc4d715c36609b0,
                0x3f2ea53ce55d5fa0,
            ],
            [
                0x3fbc2503d28c43d0,
                0x3fe9472b3ed478d6,
                0x3fe59ead63f7dbb7,
                0x3fdaaa679ad7957c,
                0x3fe95c9c27403c41,
                0x3fe0fcdac4de4468,
                0x3feaf8ff8babb55f,
                0x3f77b70beb6f8180,
                0x3f1ae0728c6d8e52,
            ],
            [
                0x3fbedc5ff1a2b088,
                0x3fd8a04bf49b1c1a,
                0x3fd24b4c1fb600b2,
                0x3fe9b3221bcd4fa3,
                0x3fb5442e144b8d20,
                0x3fe03e2263b6ec85,
                0x3feaa84f5b4fabf9,
                0x3fd5d3ecf7584bec,
                0x3f5c230886e7e81b,
            ],
        ],
    ),
    (
        "cmaes",
        [
            [
                0x3fe0d89a175d1237,
                0x3fd0c8032f5e0306,
                0x3fb4aeaa173c82cc,
                0x3fd7c54c5bd62b48,
                0x3fed92d9d4cd29be,
                0x3fe13cacd1cf4cdb,
                0x3fe693dce7fb46a3,
                0x3fe51a5892f1fa13,
                0x3f53adc1af60f5d2,
            ],
            [
                0x3fe0a39fdb000730,
                0x3fd223a4b3d65410,
                0x3fcadf2f1d3beb08,
                0x3fea412198d6b546,
                0x3fe067699845880f,
                0x3fdda6e74e67bc3e,
                0x3fe855bdfddc23bc,
                0x3fe32a0c3041c10d,
                0x3f438192278d3143,
            ],
            [
                0x3fd90b38ef1e7d5a,
                0x3fdec09b1fc77088,
                0x3fc56617add32df0,
                0x3fdcf5b3b3df5ef0,
                0x3fdad3baad3bcfd9,
                0x3fe3e390d830d1aa,
                0x3fe2959d251029c0,
                0x3fdc7df67664fce0,
                0x3f5b3c41b25cada4,
            ],
            [
                0x3fe2d22d5b285e82,
                0x3fde5e64516ecf32,
                0x3fc8fcd0b87f7814,
                0x3fdeb3bc2323765a,
                0x3fe189de6e20a1e9,
                0x3fdbb8889f6c421d,
                0x3fe07ba5532f9813,
                0x3fe880ac93479cb0,
                0x3f421542588bffc4,
            ],
        ],
    ),
    (
        "hill-discrete",
        [
            [
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3f50624dd2f1a9fd,
            ],
            [
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe051eb851eb852,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3f50624dd2f1a9fd,
            ],
            [
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe0a3d70a3d70a4,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3f50624dd2f1a9fd,
            ],
            [
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe051eb851eb852,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3f4f4b0ef6629dd1,
            ],
        ],
    ),
    (
        "hill-continuous",
        [
            [
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3f50624dd2f1a9fd,
            ],
            [
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe199999999999a,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3f50624dd2f1a9fd,
            ],
            [
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe35c28f5c28f5d,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3f50624dd2f1a9fd,
            ],
            [
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe199999999999a,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3f54a050de314ddd,
            ],
        ],
    ),
    (
        "random",
        [
            [
                0x3fac583400555d20,
                0x3fc607e46efd274c,
                0x3fe6f66236761a8b,
                0x3fdb5767da98c600,
                0x3feed64c7e5eaf20,
                0x3fddce16d89f08b0,
                0x3fe72a3f366c43d4,
                0x3fd51c16d6b70078,
                0x3f82e0fb83442334,
            ],
            [
                0x3fb2c2b9fdd9c110,
                0x3fbd3ee9ebb95710,
                0x3fc6030d520cb4d4,
                0x3fe77b7be0c5c218,
                0x3fbcf3305d746a18,
                0x3fdfa81a3c707220,
                0x3fb8e718927f54e0,
                0x3fc4d715c36609b0,
                0x3f2ea53ce55d5fa0,
            ],
            [
                0x3fbc2503d28c43d0,
                0x3fe9472b3ed478d6,
                0x3fe59ead63f7dbb7,
                0x3fdaaa679ad7957c,
                0x3fe95c9c27403c41,
                0x3fe0fcdac4de4468,
                0x3feaf8ff8babb55f,
                0x3f77b70beb6f8180,
                0x3f1ae0728c6d8e52,
            ],
            [
                0x3fbedc5ff1a2b088,
                0x3fd8a04bf49b1c1a,
                0x3fd24b4c1fb600b2,
                0x3fe9b3221bcd4fa3,
                0x3fb5442e144b8d20,
                0x3fe03e2263b6ec85,
                0x3feaa84f5b4fabf9,
                0x3fd5d3ecf7584bec,
                0x3f5c230886e7e81b,
            ],
        ],
    ),
    (
        "fixed",
        [
            [
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3f1a36e2eb1c432d,
            ],
            [
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3f1a36e2eb1c432d,
            ],
            [
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3f1a36e2eb1c432d,
            ],
            [
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3fe0000000000000,
                0x3f1a36e2eb1c432d,
            ],
        ],
    ),
];

const MAGNITUDES_FILE: &str = "[dataset]\nid = \"d\"\n[search]\nseed = 7\nparallel = 3\n\
                               [space]\npreset = \"paper+magnitudes\"\n";

/// Every searcher runs over the `paper+magnitudes` space: proposals have every dimension,
/// map inside each dimension's range, and the searcher learns from rewards over several
/// rounds; the `fixed` searcher trains the routine strategy at the default magnitudes.
#[test]
fn every_searcher_searches_the_magnitudes_space() {
    use protocol::strategy::{MAGNITUDES, paper_magnitudes_space};
    let spec = parse_study_file(MAGNITUDES_FILE, Path::new("wide.toml")).expect("file");
    assert_eq!(spec.space, paper_magnitudes_space());
    for kind in search::KINDS {
        let mut spec = spec.clone();
        spec.searcher = kind.to_string();
        let space = validate_spec(&spec).expect("valid spec");
        assert_eq!(space.len(), 15);
        let mut s = search::build(kind, &space, &spec.searcher_settings, spec.seed).unwrap();
        let mut pending: Vec<search::Proposal> = (0..3).map(|_| s.propose()).collect();
        for round in 0..30 {
            let p = pending.remove(0);
            assert_eq!(p.unit.len(), 15, "{kind}");
            let strategy = space.strategy(&p.unit).unwrap();
            for d in space.dimensions() {
                let v = strategy.values[&d.name];
                assert!(
                    v >= d.min * (1.0 - 1e-12) && v <= d.max * (1.0 + 1e-12),
                    "{kind} round {round}: {} = {v} outside [{}, {}]",
                    d.name,
                    d.min,
                    d.max
                );
            }
            // An analytic reward that prefers large noise magnitudes.
            let reward = p.unit[11] - (p.unit[0] - 0.3).powi(2);
            s.observe(&p, reward)
                .unwrap_or_else(|e| panic!("{kind}: {e}"));
            pending.push(s.propose());
        }
        assert!(s.best().is_some(), "{kind}");
        if kind == "fixed" {
            let routine = space.strategy(&pending[0].unit).unwrap();
            for m in &MAGNITUDES {
                let v = routine.values[m.name];
                assert!((v - m.default).abs() < 1e-9 * m.default, "{}: {v}", m.name);
            }
        }
    }
}
