use segmodel::{flush_denormals_enabled, init_compute_threads};
use std::hint::black_box;

#[test]
#[cfg(target_arch = "x86_64")]
fn compute_threads_flush_denormals() {
    init_compute_threads();
    init_compute_threads(); // idempotent
    assert!(flush_denormals_enabled());
    assert_eq!(black_box(1e-30f32) * black_box(1e-10f32), 0.0);
    let workers = rayon::broadcast(|_| flush_denormals_enabled());
    assert!(workers.iter().all(|&on| on), "{workers:?}");
}
