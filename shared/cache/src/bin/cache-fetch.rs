//! One process asking the host's case cache for cases, as a trainer does: the cross-process
//! tests and `scripts/bench-cache` run several at once.
//!
//! Usage: cache-fetch STORE CACHE_DIR MAX_BYTES DATASET_ID [CASE_ID ...] (no case ids: all)
//! Prints one line per case, `case <id> <BLAKE3 of its image and label voxels>`, then
//! `gets <objects this process read from the store>`.

use std::{error::Error, process::ExitCode};

use augment::TrainingCase;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cache-fetch: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        return Err("usage: cache-fetch STORE CACHE_DIR MAX_BYTES DATASET_ID [CASE_ID ...]".into());
    }
    let store = storage::open(&args[1])?;
    let cache = cache::CaseCache::new(&args[2], args[3].parse()?);
    let dataset = &args[4];
    let wanted = &args[5..];
    let rt = tokio::runtime::Runtime::new()?;
    let key = storage::keys::manifest(dataset)?;
    let manifest: protocol::Manifest = protocol::decode(&rt.block_on(storage::get(&store, &key))?)?;
    for case in &manifest.cases {
        if !wanted.is_empty() && !wanted.contains(&case.id) {
            continue;
        }
        let m = cache.get_blocking(rt.handle(), &store, dataset, case)?;
        let mut h = blake3::Hasher::new();
        for c in 0..m.channels() {
            for v in m.image_channel(c) {
                h.update(&v.to_le_bytes());
            }
        }
        h.update(m.label());
        println!("case {} {}", case.id, h.finalize().to_hex());
    }
    println!(
        "gets {}",
        cache
            .stats()
            .gets
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    Ok(())
}
