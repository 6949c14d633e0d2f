//! The study files shipped in `studies/`: each loads, and each of `studies/paper/` holds the
//! searcher, budget, patch and split its header comment (and the README) states.

use std::path::{Path, PathBuf};

/// Every `*.toml` under `dir`, recursively, sorted.
fn study_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else if path.extension().is_some_and(|e| e == "toml") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn studies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../studies")
}

#[test]
fn the_example_study_files_load() {
    let dir = studies_dir();
    let files = study_files(&dir);
    assert!(files.len() >= 2 + PAPER.len(), "{files:?}");
    for path in &files {
        let file = path.strip_prefix(&dir).unwrap().display().to_string();
        let spec = study::load_study_file(path).unwrap_or_else(|e| panic!("{e}"));
        let protocol::DatasetRef::Source { source, .. } = &spec.dataset else {
            panic!("{file}: expected a dataset path");
        };
        let protocol::DatasetSource::Local { path } = source else {
            panic!("{file}");
        };
        assert!(Path::new(path).is_absolute(), "{file}: {path}");
        assert!(!path.contains(".."), "{file}: {path}");
    }
    for (file, searcher, max_jobs, parallel) in [
        ("demo.toml", "ppo-rnn", 12, 2),
        ("hill-discrete.toml", "hill-discrete", 40, 4),
    ] {
        let spec = study::load_study_file(dir.join(file)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (spec.searcher.as_str(), spec.max_jobs, spec.parallel),
            (searcher, max_jobs, parallel),
            "{file}"
        );
    }
}

/// One study file of `studies/paper/` (its name without `.toml`) and what its header comment
/// claims.
struct PaperStudy {
    file: &'static str,
    searcher: &'static str,
    max_jobs: u32,
    parallel: u32,
    /// Training (Table 2) or fine-tuning (Table 1) epochs per job.
    epochs: u32,
    /// Training cases of the MSD task, and the paper's split of them.
    msd_cases: usize,
    train: usize,
    validation: usize,
    /// The paper's Dice for this row.
    dice: &'static str,
    /// Sentences of the header comment that state this file's budget.
    budget: &'static [&'static str],
}

const fn row(
    file: &'static str,
    searcher: &'static str,
    (max_jobs, parallel, epochs): (u32, u32, u32),
    (msd_cases, train, validation): (usize, usize, usize),
    dice: &'static str,
    budget: &'static [&'static str],
) -> PaperStudy {
    PaperStudy {
        file,
        searcher,
        max_jobs,
        parallel,
        epochs,
        msd_cases,
        train,
        validation,
        dice,
        budget,
    }
}

const T1_PPO: &[&str] = &["400 jobs, 32 in flight, 200 fine-tuning epochs each"];
const HILL: &[&str] = &[
    "at most 400 jobs",
    "18 in flight",
    "200 fine-tuning epochs each",
];
const T2_PPO: &[&str] = &["100 jobs, 50 in flight, 800 epochs each"];
const T2_ROUTINE: &[&str] = &["5 runs of the same strategy", "800 epochs each"];
const TASK02: (usize, usize, usize) = (20, 16, 4);
const TASK06: (usize, usize, usize) = (63, 50, 13);
const TASK07: (usize, usize, usize) = (281, 224, 57);
const TASK09: (usize, usize, usize) = (41, 32, 9);

/// The paper's experiments (Table 1: fine-tuning a model pre-trained without augmentation;
/// Table 2: from scratch): file, searcher, (max_jobs, parallel, epochs), split, paper's Dice.
#[rustfmt::skip]
const PAPER: &[PaperStudy] = &[
    row("table1-task02-ppo-rnn", "ppo-rnn", (400, 32, 200), TASK02, "0.92", T1_PPO),
    row("table1-task02-hill-discrete", "hill-discrete", (400, 18, 200), TASK02, "0.90", HILL),
    row("table1-task02-hill-continuous", "hill-continuous", (400, 18, 200), TASK02, "0.90", HILL),
    row("table1-task09-ppo-rnn", "ppo-rnn", (400, 32, 200), TASK09, "0.92", T1_PPO),
    row("table1-task09-hill-discrete", "hill-discrete", (400, 18, 200), TASK09, "0.90", HILL),
    row("table1-task09-hill-continuous", "hill-continuous", (400, 18, 200), TASK09, "0.92", HILL),
    row("table2-task06-routine", "fixed", (5, 5, 800), TASK06, "0.383", T2_ROUTINE),
    row("table2-task06-ppo-rnn", "ppo-rnn", (100, 50, 800), TASK06, "0.449", T2_PPO),
    row("table2-task07-routine", "fixed", (5, 5, 800), TASK07, "0.491", T2_ROUTINE),
    row("table2-task07-ppo-rnn", "ppo-rnn", (100, 50, 800), TASK07, "0.519", T2_PPO),
    row("table2-task09-routine", "fixed", (5, 5, 800), TASK09, "0.957", T2_ROUTINE),
    row("table2-task09-ppo-rnn", "ppo-rnn", (100, 50, 800), TASK09, "0.960", T2_PPO),
];

/// The paper's study files hold what their header comments (and the README's "segtune and the
/// paper") say: searcher, budget, 96³ patches, the split, the pre-trained model of Table 1.
#[test]
fn the_paper_study_files_match_their_comments() {
    let dir = studies_dir().join("paper");
    let on_disk: Vec<String> = study_files(&dir)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let mut listed: Vec<String> = PAPER.iter().map(|s| format!("{}.toml", s.file)).collect();
    listed.sort();
    assert_eq!(
        on_disk, listed,
        "studies/paper/ and this test's table differ"
    );

    for s in PAPER {
        let file = s.file;
        let path = dir.join(format!("{file}.toml"));
        let spec = study::load_study_file(&path).unwrap_or_else(|e| panic!("{e}"));
        let text = std::fs::read_to_string(&path).unwrap();
        let header: String = text
            .lines()
            .take_while(|l| l.starts_with('#'))
            .map(|l| l.trim_start_matches('#').trim())
            .collect::<Vec<_>>()
            .join(" ");

        // The file name says the table, the task and the method; the header repeats them.
        let mut parts = file.splitn(3, '-');
        let (table, task, method) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        let table_no = table.trim_start_matches("table");
        assert!(
            header.starts_with(&format!("Paper, Table {table_no}, MSD {task} ")),
            "{file}: {header}"
        );
        assert_eq!(spec.study, file, "{file}: the study id is the file name");
        let expected_searcher = if method == "routine" { "fixed" } else { method };
        assert_eq!(spec.searcher, expected_searcher, "{file}");

        assert_eq!(
            (spec.searcher.as_str(), spec.max_jobs, spec.parallel),
            (s.searcher, s.max_jobs, s.parallel),
            "{file}"
        );
        for claim in s.budget {
            assert!(
                header.contains(claim),
                "{file}: {claim:?} not in its header"
            );
        }
        assert!(
            header.contains(&format!("Paper's validation Dice: {}", s.dice)),
            "{file}: the paper's Dice {} not in its header",
            s.dice
        );

        let t = &spec.training;
        assert_eq!(t.patch, [96, 96, 96], "{file}: the paper's 96³ patches");
        assert_eq!(t.overlap, 0.25, "{file}: the paper's 1/4 overlap");
        assert_eq!(t.epochs, s.epochs, "{file}");
        assert_eq!(
            t.patches_per_epoch as usize, s.train,
            "{file}: one patch per training volume"
        );
        assert!(!t.dice_ce, "{file}: the paper's loss is the Dice loss");
        match table {
            "table1" => assert_eq!(
                t.init_checkpoint.as_deref(),
                Some(format!("pretrained/{task}-noaug-e500.safetensors").as_str()),
                "{file}: Table 1 fine-tunes the pre-trained model"
            ),
            _ => assert_eq!(
                t.init_checkpoint, None,
                "{file}: Table 2 trains from scratch"
            ),
        }
        assert_eq!(spec.space.len(), 9, "{file}: the paper's space");

        // The split: MSD's dataset.json lists no validation cases, so the seeded split of the
        // preprocessor (round(n x fraction) validation cases) must give the paper's sizes.
        let protocol::DatasetRef::Source { params, .. } = &spec.dataset else {
            panic!("{file}: expected a dataset path");
        };
        let validation = (s.msd_cases as f64 * params.validation_fraction).round() as usize;
        assert_eq!(
            (s.msd_cases - validation, validation),
            (s.train, s.validation),
            "{file}: split"
        );
        let split = format!("{} training / {} validation", s.train, s.validation);
        assert!(
            header.contains(&split),
            "{file}: {split:?} not in its header"
        );
    }
}
