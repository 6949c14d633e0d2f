//! The runner shared by the byte-mutation fuzz tests (`protocol`, `volume`): a proptest loop
//! that runs a fixed number of cases or keeps going for `SEGTUNE_FUZZ_SECS`, and an
//! allocator that records the largest single allocation, so a test can prove that a decoder
//! never reserves what a lying length field claims.
//!
//! A fuzz test binary installs the allocator itself:
//! `#[global_allocator] static ALLOC: LargestAlloc = LargestAlloc;` (a library cannot choose
//! the allocator of every binary that links it), then measures each decode with [`measure`].

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};

/// The system allocator, recording the largest single allocation since [`measure`] began.
pub struct LargestAlloc;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

/// Held while measuring, so that a measurement running alongside cannot raise `LARGEST`.
static MEASURING: Mutex<()> = Mutex::new(());

unsafe impl GlobalAlloc for LargestAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// What [`measure`] saw of one call.
pub struct Measured<T> {
    pub value: T,
    pub elapsed: Duration,
    /// Bytes of the largest single allocation (or reallocation) during the call; 0 unless
    /// the binary installed [`LargestAlloc`].
    pub largest_alloc: usize,
}

/// Runs `f` alone among measurements and reports its time and largest allocation.
pub fn measure<T>(f: impl FnOnce() -> T) -> Measured<T> {
    let _measuring = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
    LARGEST.store(0, Ordering::Relaxed);
    let start = Instant::now();
    let value = f();
    let elapsed = start.elapsed();
    let largest_alloc = LARGEST.load(Ordering::Relaxed);
    Measured {
        value,
        elapsed,
        largest_alloc,
    }
}

/// Runs `PROPTEST_CASES` cases (default `default_cases`), or batches of them until
/// `SEGTUNE_FUZZ_SECS` have passed; panics with the minimal failing case, and returns the
/// number of cases run.
pub fn run<S: Strategy>(
    what: &str,
    default_cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) -> u64 {
    let secs: Option<u64> = std::env::var("SEGTUNE_FUZZ_SECS")
        .ok()
        .map(|s| s.parse().expect("SEGTUNE_FUZZ_SECS is a number of seconds"));
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .map(|s| s.parse().expect("PROPTEST_CASES is a number"))
        .unwrap_or(default_cases);
    let deadline = secs.map(|s| Instant::now() + Duration::from_secs(s));
    let start = Instant::now();
    let mut total = 0u64;
    loop {
        let mut runner = TestRunner::new(Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        });
        match runner.run(&strategy, &test) {
            Ok(()) => total += cases as u64,
            Err(TestError::Fail(why, _)) => panic!("{what}: {why}"),
            Err(TestError::Abort(why)) => panic!("{what}: aborted: {why}"),
        }
        if deadline.is_none_or(|d| Instant::now() >= d) {
            break;
        }
    }
    println!(
        "{what}: {total} cases in {:.1} s, no failure",
        start.elapsed().as_secs_f64()
    );
    total
}

/// Lower-case hex, the form a failing input is printed in (and pasted back as a regression).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The inverse of [`hex`].
pub fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex digits"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[global_allocator]
    static ALLOCATOR: LargestAlloc = LargestAlloc;

    #[test]
    fn measure_sees_the_largest_single_allocation() {
        let m = measure(|| Vec::<u8>::with_capacity(10 << 20).capacity());
        assert_eq!(m.value, 10 << 20);
        assert!(m.largest_alloc >= 10 << 20, "{}", m.largest_alloc);
    }

    #[test]
    fn hex_round_trips() {
        let bytes = [0x00, 0x1f, 0x8b, 0xff];
        assert_eq!(hex(&bytes), "001f8bff");
        assert_eq!(unhex(&hex(&bytes)), bytes);
    }
}
