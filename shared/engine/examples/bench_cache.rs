//! Driver of `scripts/bench-cache`: a synthetic preprocessed dataset of any size written
//! straight into a store, and one trainer-like process reading it in memory or mapped from
//! the case cache.
//!
//!   bench_cache gen STORE CASES SIZE
//!       writes CASES cases of SIZE³ voxels (f32 image, u8 label with two spheres) and their
//!       manifest under STORE; prints `dataset <id> <decoded bytes>`.
//!   bench_cache run STORE DATASET memory|cache CACHE_DIR PATCH STEPS data|train
//!       loads the dataset (memory: every case decoded in memory, today's path; cache:
//!       mapped from CACHE_DIR), then draws STEPS batches of 2 PATCH³ patches with every
//!       augmentation at p = 0.5 (`data`: the sampler + augmentation producer alone; `train`:
//!       the demo's network, channels 8-16-32, trains on them) and prints one line:
//!       `mode patch load_s patches_per_s peak_rss_mib rss_anon_mib rss_file_mib gets`
//!       (`load_s`: the dataset read and, on the data path, the cases made ready to sample:
//!       the in-memory path indexes every label's foreground then, as `engine::train` does at
//!       the start of each job; on the training path that happens inside the timed run).

use std::{collections::BTreeMap, sync::atomic::AtomicBool, time::Instant};

use engine::{DataOptions, Dataset, JobSpec, TrainInput};
use protocol::{
    CaseEntry, ChannelNormalization, DatasetSource, Manifest, Modality, PreprocessParams, Split,
    Strategy, TrainingConfig,
};
use segmodel::candle_core::Device;
use volume::{Geometry, Volume};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let r = match args.get(1).map(String::as_str) {
        Some("gen") if args.len() == 5 => rt.block_on(generate(&args[2], &args[3], &args[4])),
        Some("run") if args.len() == 9 => run(&rt, &args[2..]),
        _ => Err(
            "usage: bench_cache gen STORE CASES SIZE | run STORE DATASET memory|cache \
                  CACHE_DIR PATCH STEPS data|train"
                .into(),
        ),
    };
    if let Err(e) = r {
        eprintln!("bench_cache: {e}");
        std::process::exit(1);
    }
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

async fn generate(store: &str, cases: &str, size: &str) -> Res<()> {
    let store = storage::open(store)?;
    let (cases, size): (usize, usize) = (cases.parse()?, size.parse()?);
    let dataset_id = format!("bench-{cases}x{size}");
    let dims = [size; 3];
    let n = size * size * size;
    let g = Geometry::identity([1.0; 3]);
    let mut entries = Vec::new();
    for i in 0..cases {
        let id = format!("case_{i:03}");
        // A smooth field with a bright sphere (class 1) and a small one (class 2) placed per case.
        let c1 = [size / 3 + i % 7, size / 2, size / 2 - i % 5].map(|v| v as f32);
        let c2 = [2 * size / 3, size / 3 + i % 3, size / 3].map(|v| v as f32);
        let (r1, r2) = ((size / 8) as f32, (size / 20).max(2) as f32);
        let mut image = Vec::with_capacity(n);
        let mut label = Vec::with_capacity(n);
        for z in 0..size {
            for y in 0..size {
                for x in 0..size {
                    let p = [x as f32, y as f32, z as f32];
                    let d = |c: [f32; 3]| {
                        ((p[0] - c[0]).powi(2) + (p[1] - c[1]).powi(2) + (p[2] - c[2]).powi(2))
                            .sqrt()
                    };
                    let l: u8 = if d(c2) < r2 {
                        2
                    } else if d(c1) < r1 {
                        1
                    } else {
                        0
                    };
                    let base = 0.3 + 0.1 * ((x as f32 / 7.0).sin() * (y as f32 / 11.0).cos());
                    image.push(base + 0.4 * l as f32);
                    label.push(l);
                }
            }
        }
        let mut counts = vec![0u64; 3];
        for &l in &label {
            counts[l as usize] += 1;
        }
        let image_nii = volume::write_nifti_bytes(&Volume::new(image, dims, 1, g), false);
        let label_nii = volume::write_nifti_bytes(&Volume::new(label, dims, 1, g), false);
        let image_key = storage::keys::case_image(&dataset_id, &id)?;
        let label_key = storage::keys::case_label(&dataset_id, &id)?;
        let image_blake3 = Some(blake3_hex(&image_nii));
        let label_blake3 = Some(blake3_hex(&label_nii));
        storage::put(&store, &image_key, image_nii).await?;
        storage::put(&store, &label_key, label_nii).await?;
        entries.push(CaseEntry {
            id,
            split: if i % 5 == 4 {
                Split::Validation
            } else {
                Split::Train
            },
            image_key,
            label_key,
            shape: dims,
            channels: 1,
            source_spacing: [1.0; 3],
            source_shape: dims,
            label_counts: counts,
            windows: vec![[-1000.0, 1000.0]],
            image_blake3,
            label_blake3,
        });
    }
    let manifest = Manifest {
        schema: protocol::SCHEMA_VERSION,
        dataset_id: dataset_id.clone(),
        name: "bench".into(),
        source: DatasetSource::Local {
            path: "generated".into(),
        },
        params: PreprocessParams::default(),
        modalities: vec![Modality::Ct],
        labels: vec!["background".into(), "large".into(), "small".into()],
        normalization: vec![ChannelNormalization {
            channel: 0,
            modality: Modality::Ct,
            low: Some(-1000.0),
            high: Some(1000.0),
        }],
        split_origin: "seeded".into(),
        cases: entries,
        created_unix: 0,
        segtune_version: env!("CARGO_PKG_VERSION").into(),
    };
    let bytes = Dataset::decoded_bytes(&manifest);
    storage::put(
        &store,
        &storage::keys::manifest(&dataset_id)?,
        protocol::encode(&manifest)?,
    )
    .await?;
    println!("dataset {dataset_id} {bytes}");
    Ok(())
}

fn blake3_hex(b: &[u8]) -> String {
    blake3::hash(b).to_hex().to_string()
}

fn run(rt: &tokio::runtime::Runtime, a: &[String]) -> Res<()> {
    let (store, dataset, mode, cache_dir) = (&a[0], &a[1], &a[2], &a[3]);
    let patch: usize = a[4].parse()?;
    let steps: usize = a[5].parse()?;
    let train = match a[6].as_str() {
        "data" => false,
        "train" => true,
        m => return Err(format!("{m:?}: expected data or train").into()),
    };
    let store = storage::open(store)?;
    let opts = match mode.as_str() {
        "memory" => DataOptions::default(),
        // Budget 0: always mapped.
        "cache" => DataOptions::with_cache(cache_dir, u64::MAX, 0),
        m => return Err(format!("{m:?}: expected memory or cache").into()),
    };
    segmodel::init_compute_threads();
    let t = Instant::now();
    let data = rt.block_on(Dataset::load_with(&store, dataset, &opts))?;
    // What sampling needs, as `engine::train` builds it at the start of a job: the
    // in-memory path indexes each label's foreground here, a mapped case carries its index.
    let cases = (!train).then(|| data.training_cases(false));
    let load_s = t.elapsed().as_secs_f64();
    let mut values: BTreeMap<String, f64> = augment::DIMENSIONS
        .iter()
        .map(|d| (d.to_string(), 0.5))
        .collect();
    values.insert("learning_rate".into(), 1e-3);
    let job = JobSpec::from_strategy(&Strategy {
        values,
        unit: BTreeMap::new(),
    })?;
    let batch = 2;
    let started = Instant::now();
    if train {
        let training = TrainingConfig {
            channels: vec![8, 16, 32],
            epochs: 1,
            patches_per_epoch: (steps * batch) as u32,
            batch_size: batch as u32,
            patch: [patch; 3],
            overlap: 0.25,
            init_checkpoint: None,
            dice_ce: true,
            lr_schedule: Default::default(),
            tta: false,
        };
        let input = TrainInput {
            data: &data,
            job: &job,
            training: &training,
            seed: 1,
            init_checkpoint: None,
            augment_workers: None,
            all_cases: false,
        };
        engine::train(&input, &Device::Cpu, &AtomicBool::new(false), |_| {})?;
    } else {
        let sampler = augment::PatchSampler::new([patch; 3], augment::DEFAULT_FG_FRACTION)?;
        let rx = augment::spawn_producer(
            std::sync::Arc::new(cases.expect("built for the data path")),
            sampler,
            job.pipeline.clone(),
            batch,
            steps,
            1,
        )?;
        let mut got = 0;
        for b in rx {
            got += b.batch;
        }
        assert_eq!(got, steps * batch, "the producer stopped early");
    }
    let secs = started.elapsed().as_secs_f64();
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kib = |field: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(f64::NAN)
            / 1024.0
    };
    let gets = opts.cache.as_ref().map_or(0, |c| {
        c.stats().gets.load(std::sync::atomic::Ordering::Relaxed)
    });
    println!(
        "{mode} {patch} {load_s:.2} {:.1} {:.0} {:.0} {:.0} {gets}",
        (steps * batch) as f64 / secs,
        kib("VmHWM:"),
        kib("RssAnon:"),
        kib("RssFile:"),
    );
    Ok(())
}
