//! `segtune train` and `segtune eval` as the README documents them ("Training one
//! strategy"): a phantom task synthesized and preprocessed by the binary, one tiny epoch,
//! the Dice as the last line; bad strategy files and missing inputs refused in one line.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use segmodel::candle_core::{Device, safetensors};

use crate::{assert_one_line_error, segtune};

/// The smallest network and budget the CLI takes: U-Net 4-8, 16³ patches, one epoch of 2.
const TINY: [&str; 10] = [
    "--epochs",
    "1",
    "--patches-per-epoch",
    "2",
    "--batch",
    "2",
    "--channels",
    "4,8",
    "--patch",
    "16",
];

#[track_caller]
pub(crate) fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({})\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub(crate) fn last_line(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout.lines().last().unwrap_or_default().trim().to_string()
}

/// `segtune data synth` (3 cases of 24 voxels in-plane: 2 train, 1 validation) and
/// `segtune data preprocess` into `store`; returns the dataset id.
pub(crate) fn tiny_dataset(dir: &Path, store: &Path) -> String {
    let task = dir.join("task");
    run_ok(
        segtune()
            .args(["data", "synth", "--cases", "3", "--size", "24", "--out"])
            .arg(&task),
    );
    let out = run_ok(
        segtune()
            .args(["data", "preprocess"])
            .arg(&task)
            .arg("--store")
            .arg(store),
    );
    last_line(&out)
}

/// The example strategy file of the README's "Training one strategy" section.
fn readme_strategy() -> String {
    let readme =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let section = readme
        .split("## Training one strategy")
        .nth(1)
        .expect("README section \"Training one strategy\"");
    let block = section
        .split("```toml\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a toml block in that section");
    block.to_string()
}

/// `name` of every `name = value` line of a strategy file.
fn dimension_names(toml: &str) -> Vec<String> {
    toml.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, _)| k.trim().to_string())
        .collect()
}

fn params(path: &Path) -> HashMap<String, Vec<f32>> {
    safetensors::load(path, &Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(k, t)| (k, t.flatten_all().unwrap().to_vec1().unwrap()))
        .collect()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn train_then_eval_prints_the_dice_last() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let id = tiny_dataset(dir.path(), &store);
    assert!(!id.is_empty() && !id.contains(' '), "dataset id {id:?}");

    // No --strategy: the default strategy (learning rate 3e-3; mirroring, intensity shift
    // and scale, smoothing at 0.5) with Dice + CE, and the patch and budget derived from the
    // dataset (16³ for these cases of about 17 voxels at 1 mm; 30 epochs).
    let out = run_ok(
        segtune()
            .args([
                "train",
                "--dataset",
                &id,
                "--channels",
                "4,8",
                "--epochs",
                "1",
            ])
            .arg("--out")
            .arg(dir.path().join("default.safetensors"))
            .env("SEGTUNE_STORE", &store),
    );
    let log = stderr(&out);
    for needle in [
        "\"learning_rate\": 0.003",
        "\"p_flip\": 0.5",
        "\"p_smooth\": 0.5",
        "budget: 1 epochs x 16 patches of [16, 16, 16] in batches of 2, U-Net [4, 8], loss Dice + CE",
    ] {
        assert!(log.contains(needle), "{needle} not in:\n{log}");
    }
    assert!(!log.contains("p_noise"), "{log}");

    // The store from SEGTUNE_STORE, --strategy routine: the routine strategy, every documented
    // probability 0.5 and learning rate 1e-4.
    let ckpt = dir.path().join("routine.safetensors");
    let out = run_ok(
        segtune()
            .args(["train", "--dataset", &id, "--strategy", "routine"])
            .args(TINY)
            .arg("--out")
            .arg(&ckpt)
            .env("SEGTUNE_STORE", &store),
    );
    assert_eq!(last_line(&out), ckpt.display().to_string());
    let log = stderr(&out);
    let used = log
        .lines()
        .find(|l| l.starts_with("training on") && l.contains("strategy {"))
        .unwrap_or_else(|| panic!("no strategy line in:\n{log}"));
    let documented = dimension_names(&readme_strategy());
    let probabilities: Vec<&String> = documented.iter().filter(|n| n.starts_with("p_")).collect();
    assert_eq!(probabilities.len(), 8, "{documented:?}");
    for p in probabilities {
        assert!(used.contains(&format!("\"{p}\": 0.5")), "{p}: {used}");
    }
    assert!(used.contains("\"learning_rate\": 0.0001"), "{used}");
    assert!(log.contains("epoch 1/1"), "{log}");
    assert!(ckpt.exists(), "no checkpoint");
    let sidecar: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("routine.safetensors.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(sidecar["channels"], serde_json::json!([4, 8]));
    assert_eq!(sidecar["patch"], serde_json::json!([16, 16, 16]));

    // The store from --store (SEGTUNE_STORE unset), with the README's example strategy file:
    // accepted as documented, and what the run used.
    let strategy = dir.path().join("readme.toml");
    std::fs::write(&strategy, readme_strategy()).unwrap();
    let readme_ckpt = dir.path().join("readme.safetensors");
    let out = run_ok(
        segtune()
            .args(["train", "--dataset", &id])
            .args(TINY)
            .arg("--strategy")
            .arg(&strategy)
            .arg("--out")
            .arg(&readme_ckpt)
            .arg("--store")
            .arg(&store),
    );
    assert_eq!(last_line(&out), readme_ckpt.display().to_string());
    let log = stderr(&out);
    for needle in [
        "\"learning_rate\": 0.001",
        "\"p_noise\": 0.3",
        "\"p_rotate90\": 0.0",
    ] {
        assert!(log.contains(needle), "{needle} not in:\n{log}");
    }

    // --init: one epoch at a learning rate too small to move a weight keeps the checkpoint's
    // weights (with another seed, so a fresh init would differ).
    let still = dir.path().join("still.toml");
    std::fs::write(&still, "learning_rate = 1e-12\n").unwrap();
    let tuned = dir.path().join("tuned.safetensors");
    run_ok(
        segtune()
            .args(["train", "--dataset", &id, "--seed", "5"])
            .args(TINY)
            .arg("--strategy")
            .arg(&still)
            .arg("--init")
            .arg(&ckpt)
            .arg("--out")
            .arg(&tuned)
            .env("SEGTUNE_STORE", &store),
    );
    let (a, b) = (params(&ckpt), params(&tuned));
    assert_eq!(a.len(), b.len());
    for (name, va) in &a {
        let moved = va
            .iter()
            .zip(&b[name])
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(
            moved < 1e-6,
            "{name} moved {moved} from the --init checkpoint"
        );
    }

    // eval: the mean validation Dice as the last stdout line.
    let out = run_ok(
        segtune()
            .args(["eval", "--dataset", &id, "--checkpoint"])
            .arg(&ckpt)
            .env("SEGTUNE_STORE", &store),
    );
    let dice: f64 = last_line(&out)
        .parse()
        .unwrap_or_else(|e| panic!("last line {:?}: {e}", last_line(&out)));
    assert!((0.0..=1.0).contains(&dice), "{dice}");

    // A dataset id the store does not have, for train and for eval.
    let never = dir.path().join("never.safetensors");
    let out = segtune()
        .args(["train", "--dataset", "no-such-dataset"])
        .args(TINY)
        .arg("--out")
        .arg(&never)
        .arg("--store")
        .arg(&store)
        .output()
        .unwrap();
    assert_one_line_error(&out, &["no-such-dataset", "not found", "preprocess"]);
    let out = segtune()
        .args(["eval", "--dataset", "no-such-dataset", "--checkpoint"])
        .arg(&ckpt)
        .arg("--store")
        .arg(&store)
        .output()
        .unwrap();
    assert_one_line_error(&out, &["no-such-dataset", "not found", "preprocess"]);
    assert!(!never.exists());
}

#[test]
fn bad_strategy_files_and_missing_inputs_are_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let train_with = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let out = segtune()
            .args(["train", "--dataset", "any", "--strategy"])
            .arg(&path)
            .arg("--store")
            .arg(&store)
            .output()
            .unwrap();
        (path.display().to_string(), out)
    };
    for (file, text, needles) in [
        (
            "high.toml",
            "p_noise = 1.5\n",
            &["p_noise", "1.5", "[0, 1]"][..],
        ),
        ("negative.toml", "p_flip = -0.1\n", &["p_flip", "-0.1"][..]),
        (
            "elastic.toml",
            "p_elastic = 0.5\n",
            &["p_elastic", "unknown"][..],
        ),
        (
            "momentum.toml",
            "momentum = 0.9\n",
            &["momentum", "unknown"][..],
        ),
        (
            "lr.toml",
            "learning_rate = 2.0\n",
            &["learning_rate", "2"][..],
        ),
        (
            "text.toml",
            "p_flip = 0.5\np_noise = \"high\"\n",
            &["line 2", "p_noise", "name = number"][..],
        ),
        (
            "syntax.toml",
            "p_noise 0.3\n",
            &["line 1", "name = number"][..],
        ),
    ] {
        let (path, out) = train_with(file, text);
        let mut all = needles.to_vec();
        all.push(&path);
        assert_one_line_error(&out, &all);
    }

    let missing = dir.path().join("no-such-strategy.toml");
    let out = segtune()
        .args(["train", "--dataset", "any", "--strategy"])
        .arg(&missing)
        .output()
        .unwrap();
    assert_one_line_error(&out, &["strategy file", &missing.display().to_string()]);

    let missing = dir.path().join("no-such.safetensors");
    let out = segtune()
        .args(["eval", "--dataset", "any", "--checkpoint"])
        .arg(&missing)
        .arg("--store")
        .arg(&store)
        .output()
        .unwrap();
    assert_one_line_error(&out, &["checkpoint", &missing.display().to_string()]);

    let out = segtune()
        .args(["train", "--dataset", "any", "--init"])
        .arg(&missing)
        .arg("--store")
        .arg(&store)
        .output()
        .unwrap();
    assert_one_line_error(&out, &["checkpoint", &missing.display().to_string()]);
}

/// What the README's "Defaults" promise: `segtune train` with no options but the dataset
/// trains the 8-case CT phantom (6 training cases, 2 validation cases from "another
/// scanner", one of them with a lesion) to a mean validation Dice of at least 0.7. Measured
/// over seeds 0-9 at 0.85-0.90 (`scripts/bench-defaults`); this is the default seed.
#[test]
fn no_options_train_the_ct_phantom_to_a_dice_of_0_7() {
    let dir = tempfile::tempdir().unwrap();
    let task = dir.path().join("task");
    let store = dir.path().join("store");
    run_ok(
        segtune()
            .args([
                "data", "synth", "--kind", "ct-organ", "--cases", "8", "--size", "32",
            ])
            .args(["--seed", "11", "--out"])
            .arg(&task),
    );
    let id = last_line(&run_ok(
        segtune()
            .args(["data", "preprocess"])
            .arg(&task)
            .arg("--store")
            .arg(&store),
    ));
    let bundle = dir.path().join("bundle");
    let out = run_ok(
        segtune()
            .args(["train", "--dataset", &id, "--out"])
            .arg(dir.path().join("m.safetensors"))
            .arg("--bundle")
            .arg(&bundle)
            .arg("--store")
            .arg(&store),
    );
    let err = stderr(&out);
    assert!(
        err.contains(
            "U-Net [16, 32, 64], loss Dice + CE, learning-rate schedule poly, validation mirrored"
        ),
        "{err}"
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("bundle.json")).unwrap()).unwrap();
    let dice = manifest["provenance"]["validation_dice"].as_f64().unwrap();
    assert!(dice >= 0.7, "validation Dice {dice} with no options\n{err}");
}
