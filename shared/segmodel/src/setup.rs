//! Process setup for compute threads.

use std::sync::OnceLock;

/// Sets flush-to-zero and denormals-are-zero (MXCSR bits 15 and 6) on the calling thread.
/// Without them the decoder's gradients turn partly denormal after a few Adam steps and
/// conv backward gets 3–9× slower (measured, see `docs/conv3d-cpu.md`). No-op off x86_64.
pub fn enable_flush_denormals() {
    #[cfg(target_arch = "x86_64")]
    #[allow(deprecated)]
    // _mm_getcsr/_mm_setcsr: deprecated in favour of inline asm, still correct
    {
        use std::arch::x86_64::{_mm_getcsr, _mm_setcsr};
        const FTZ: u32 = 1 << 15;
        const DAZ: u32 = 1 << 6;
        // SAFETY: SSE is baseline on x86_64; only the FTZ and DAZ control bits change.
        unsafe { _mm_setcsr(_mm_getcsr() | FTZ | DAZ) };
    }
}

/// Whether flush-to-zero and denormals-are-zero are both on for the calling thread
/// (always false off x86_64).
pub fn flush_denormals_enabled() -> bool {
    #[cfg(target_arch = "x86_64")]
    #[allow(deprecated)]
    {
        // SAFETY: reading MXCSR has no side effects.
        let csr = unsafe { std::arch::x86_64::_mm_getcsr() };
        csr & (1 << 15) != 0 && csr & (1 << 6) != 0
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

static POOL: OnceLock<bool> = OnceLock::new();

/// How long mimalloc keeps freed pages before returning them to the kernel, unless
/// `MIMALLOC_PURGE_DELAY` says otherwise: longer than a training step or a sliding-window
/// batch, so the pages one step frees are reused by the next instead of being handed back
/// and faulted in (and zeroed by the kernel) again. mimalloc's own default is 1000 ms.
pub const PURGE_DELAY_MS: i64 = 10_000;

/// The environment variable mimalloc reads its purge delay from at start.
pub const PURGE_DELAY_ENV: &str = "MIMALLOC_PURGE_DELAY";

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_t` (libmimalloc-sys names no constant
/// for it; `tests/allocator.rs` checks that it reads mimalloc's documented default).
pub const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Sets mimalloc's purge delay to [`PURGE_DELAY_MS`] unless [`PURGE_DELAY_ENV`] is set. A
/// no-op for the process's allocation speed where mimalloc is not the global allocator
/// (the option belongs to the unused mimalloc). Called by [`init_compute_threads`].
pub fn keep_freed_pages() {
    if std::env::var_os(PURGE_DELAY_ENV).is_some() {
        return;
    }
    // SAFETY: sets one option value, which mimalloc reads atomically.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS as _) };
}

/// mimalloc's current purge delay in ms.
pub fn purge_delay_ms() -> i64 {
    // SAFETY: reads one option value.
    unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) as i64 }
}

/// Prepares the process for training: FTZ/DAZ on the calling thread, mimalloc's purge delay
/// ([`keep_freed_pages`]), and the rayon global
/// pool (size from `RAYON_NUM_THREADS`, else one per CPU) built with a start handler that
/// sets them on every worker. Call it early in `main`, before anything uses rayon.
///
/// Idempotent. If the global pool already exists (built elsewhere), FTZ/DAZ is set on its
/// workers with `rayon::broadcast` instead. Returns true when this call built the pool.
/// candle's own elementwise thread pool cannot be hooked; those threads keep denormals.
pub fn init_compute_threads() -> bool {
    enable_flush_denormals();
    keep_freed_pages();
    let mut built = false;
    POOL.get_or_init(|| {
        built = rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("segmodel-compute-{i}"))
            .start_handler(|_| enable_flush_denormals())
            .build_global()
            .is_ok();
        if !built {
            rayon::broadcast(|_| enable_flush_denormals());
        }
        built
    });
    built
}
