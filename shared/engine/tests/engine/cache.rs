//! `DatasetCache`: the trainer and the evaluator load each dataset from the store once.

use std::sync::Arc;

use engine::{Dataset, DatasetCache};

use crate::tiny_dataset;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataset_is_read_from_the_store_once_for_all_jobs() {
    let store = storage::open("memory://").unwrap();
    let id = tiny_dataset(&store, 0).await;
    let cache = DatasetCache::default();
    // Two jobs of the same dataset asking at once: one load, one shared dataset.
    let (a, b) = tokio::join!(cache.get(&store, &id), cache.get(&store, &id));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(Arc::ptr_eq(&a, &b), "two concurrent jobs loaded it twice");
    assert_eq!((a.train.len(), a.validation.len()), (2, 1));

    // Take the dataset out of the store: a load now fails...
    storage::delete_prefix(&store, &storage::keys::dataset_prefix(&id).unwrap())
        .await
        .unwrap();
    let err = Dataset::load(&store, &id)
        .await
        .err()
        .expect("dataset gone");
    assert!(err.to_string().contains(&id), "{err}");
    // ...but the next jobs (through the cache or a clone of it, as each job task holds) never
    // read the store again and get the very same dataset.
    for c in [&cache, &cache.clone()] {
        let again = c.get(&store, &id).await.expect("served from the cache");
        assert!(Arc::ptr_eq(&a, &again));
    }
    // A process without the cache entry has to read the store, and fails.
    assert!(DatasetCache::default().get(&store, &id).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_load_is_not_cached() {
    let store = storage::open("memory://").unwrap();
    let id = tiny_dataset(&store, 1).await;
    let prefix = storage::keys::dataset_prefix(&id).unwrap();
    storage::delete_prefix(&store, &prefix).await.unwrap();
    let cache = DatasetCache::default();
    assert!(cache.get(&store, &id).await.is_err());
    // Preprocessed (again) after the first job failed: the next job finds it.
    assert_eq!(tiny_dataset(&store, 1).await, id);
    let d = cache.get(&store, &id).await.expect("loaded after all");
    assert_eq!(d.manifest.dataset_id, id);
}
