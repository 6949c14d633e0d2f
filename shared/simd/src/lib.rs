//! The SIMD level segtune's hot loops run at, chosen once per process at run time, so one
//! generic x86-64 binary runs AVX-512 code on AVX-512 hosts and AVX2 code on AVX2 hosts (no
//! `target-cpu=native` in what ships).
//!
//! - [`detected`]: the best level the host supports (`is_x86_feature_detected!`, once).
//! - `SEGTUNE_SIMD=auto|avx512|avx2|generic` can only lower it: asking for more than the host
//!   has runs what the host has (and says so); an unknown value is an error
//!   ([`configure_from_env`], called by every service and the CLI at start) or, where nothing
//!   configured the level, a warning on stderr and the detected level.
//! - [`dispatch!`] compiles a function once per level (`#[target_feature]`) and calls the copy
//!   for [`level`]; LLVM then vectorizes the same source 16 lanes wide (AVX-512), 8 wide
//!   (AVX2) or 4 wide (baseline SSE2).
//! - [`with_level`] / [`for_each_level`] force a level inside a process, so the numerics
//!   tests run once per level the host has.
//!
//! Floating-point results do not depend on the level where the code itself fixes the order
//! of operations (Rust never contracts `a * b + c` into an FMA and LLVM never reorders a
//! float reduction): only code that picks a different algorithm per level (the GEMM
//! microkernels) rounds differently.

use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};

/// The environment variable that lowers the level.
pub const ENV: &str = "SEGTUNE_SIMD";

/// A SIMD level, ordered from least to most capable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Baseline x86-64 (SSE2), or any other architecture.
    Generic,
    /// x86-64-v3: AVX2, FMA, BMI1/2, F16C, LZCNT, MOVBE.
    Avx2,
    /// x86-64-v4: x86-64-v3 plus AVX-512 F, BW, CD, DQ and VL.
    Avx512,
}

impl Level {
    /// Every level, least capable first.
    pub const ALL: [Level; 3] = [Level::Generic, Level::Avx2, Level::Avx512];

    /// The name `SEGTUNE_SIMD` takes and logs print.
    pub fn name(self) -> &'static str {
        match self {
            Level::Generic => "generic",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
        }
    }

    /// Whether this host can run code compiled for this level.
    pub fn supported(self) -> bool {
        self <= detected()
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Level {
    type Err = SimdError;

    fn from_str(s: &str) -> Result<Self, SimdError> {
        Level::ALL
            .into_iter()
            .find(|l| l.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| SimdError::Unknown {
                value: s.to_owned(),
            })
    }
}

/// What can go wrong choosing a level.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SimdError {
    /// `SEGTUNE_SIMD` (or a level name) is not one of the names.
    Unknown { value: String },
    /// A level was forced that this host cannot run.
    Unsupported { level: Level, detected: Level },
}

impl fmt::Display for SimdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SimdError::Unknown { value } => write!(
                f,
                "{ENV}={value:?} is not a SIMD level: expected auto, avx512, avx2 or generic"
            ),
            SimdError::Unsupported { level, detected } => write!(
                f,
                "SIMD level {level} cannot run on this host (it supports up to {detected})"
            ),
        }
    }
}

impl std::error::Error for SimdError {}

/// The level in use and how it was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Selection {
    /// The level hot loops run at.
    pub level: Level,
    /// The best level the host supports.
    pub detected: Level,
    /// What `SEGTUNE_SIMD` asked for (`None`: unset, empty or `auto`).
    pub requested: Option<Level>,
}

impl Selection {
    /// Whether `SEGTUNE_SIMD` asked for more than the host has (the host's best is used).
    pub fn capped(&self) -> bool {
        self.requested.is_some_and(|r| r > self.detected)
    }
}

impl fmt::Display for Selection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SIMD level {} (host supports {}",
            self.level, self.detected
        )?;
        match self.requested {
            Some(r) if self.capped() => write!(f, "; {ENV}={r} is more than it has)"),
            Some(r) => write!(f, "; {ENV}={r})"),
            None => f.write_str(")"),
        }
    }
}

/// The best level this host supports, detected once.
pub fn detected() -> Level {
    static DETECTED: OnceLock<Level> = OnceLock::new();
    *DETECTED.get_or_init(detect)
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Level {
    use std::arch::is_x86_feature_detected as has;
    let v3 = has!("avx")
        && has!("avx2")
        && has!("bmi1")
        && has!("bmi2")
        && has!("f16c")
        && has!("fma")
        && has!("lzcnt")
        && has!("movbe")
        && has!("popcnt");
    let v4 = v3
        && has!("avx512f")
        && has!("avx512bw")
        && has!("avx512cd")
        && has!("avx512dq")
        && has!("avx512vl");
    if v4 {
        Level::Avx512
    } else if v3 {
        Level::Avx2
    } else {
        Level::Generic
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Level {
    Level::Generic
}

/// The levels this host can run, least capable first.
pub fn available() -> Vec<Level> {
    Level::ALL.into_iter().filter(|l| l.supported()).collect()
}

/// Chooses a level from a `SEGTUNE_SIMD` value (`None`: unset) on a host whose best level
/// is `detected`: unset, empty or `auto` is `detected`; a named level is used when the host
/// has it, else `detected`; anything else is an error.
pub fn select(value: Option<&str>, detected: Level) -> Result<Selection, SimdError> {
    let requested = match value.map(str::trim) {
        None | Some("") => None,
        Some(v) if v.eq_ignore_ascii_case("auto") => None,
        Some(v) => Some(v.parse::<Level>()?),
    };
    Ok(Selection {
        level: requested.map_or(detected, |r| r.min(detected)),
        detected,
        requested,
    })
}

/// 0: not chosen yet; otherwise `1 + Level as u8`.
static ACTIVE: AtomicU8 = AtomicU8::new(0);

fn encode(l: Level) -> u8 {
    1 + l as u8
}

fn decode(v: u8) -> Level {
    Level::ALL[(v - 1) as usize]
}

fn env_value() -> Option<String> {
    std::env::var_os(ENV).map(|v| v.to_string_lossy().into_owned())
}

/// Reads `SEGTUNE_SIMD` and makes its level the process's. Services and the CLI call it at
/// start and exit with a configuration error when it fails; the caller logs the returned
/// selection (it says when the request was more than the host has).
pub fn configure_from_env() -> Result<Selection, SimdError> {
    let sel = select(env_value().as_deref(), detected())?;
    ACTIVE.store(encode(sel.level), Ordering::Relaxed);
    Ok(sel)
}

/// The level hot loops run at now: forced by [`with_level`], else configured by
/// [`configure_from_env`], else chosen from `SEGTUNE_SIMD` on first use (a bad value is
/// reported on stderr once and the detected level used).
#[inline]
pub fn level() -> Level {
    match ACTIVE.load(Ordering::Relaxed) {
        0 => init_lazily(),
        v => decode(v),
    }
}

#[cold]
fn init_lazily() -> Level {
    let chosen = match select(env_value().as_deref(), detected()) {
        Ok(sel) => {
            if sel.capped() {
                eprintln!("warning: {sel}");
            }
            sel.level
        }
        Err(e) => {
            eprintln!("warning: {e}; using {}", detected());
            detected()
        }
    };
    match ACTIVE.compare_exchange(0, encode(chosen), Ordering::Relaxed, Ordering::Relaxed) {
        Ok(_) => chosen,
        Err(v) => decode(v),
    }
}

/// Serializes forced sections, so two tests never force different levels at once.
static FORCE: Mutex<()> = Mutex::new(());

/// Runs `f` with every dispatched loop in the process (every thread) at `level`, then
/// restores the previous level, also when `f` panics. Forced sections run one at a time.
/// Meant for tests and benchmarks that compare levels in one process; code running
/// concurrently outside a forced section sees the forced level too (all levels compute the
/// same results within rounding).
pub fn with_level<R>(level: Level, f: impl FnOnce() -> R) -> Result<R, SimdError> {
    if !level.supported() {
        return Err(SimdError::Unsupported {
            level,
            detected: detected(),
        });
    }
    let _serial = FORCE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    struct Restore(u8);
    impl Drop for Restore {
        fn drop(&mut self) {
            ACTIVE.store(self.0, Ordering::Relaxed);
        }
    }
    let _restore = Restore(ACTIVE.swap(encode(level), Ordering::Relaxed));
    Ok(f())
}

/// Runs `f(level)` under [`with_level`] once for every level this host supports, least
/// capable first: the numerics tests' way of covering every code path the host can run.
pub fn for_each_level(mut f: impl FnMut(Level)) {
    for l in available() {
        with_level(l, || f(l)).expect("available levels are supported");
    }
}

/// Defines a function whose body is compiled once per [`Level`] (on x86-64: with
/// `#[target_feature]` for x86-64-v4 and x86-64-v3, and for the baseline) and that runs the
/// copy for [`level()`] on each call. Arguments must be plain `name: Type` pairs; the body
/// should be a serial loop (closures handed to rayon are compiled separately, at the
/// baseline, so dispatch inside them instead).
///
/// ```
/// simd::dispatch! {
///     /// `y[i] += a · x[i]`.
///     pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
///         for (y, &x) in y.iter_mut().zip(x) {
///             *y += a * x;
///         }
///     }
/// }
/// let mut y = [1.0; 40];
/// axpy(2.0, &[0.5; 40], &mut y);
/// assert!(y.iter().all(|&v| v == 2.0));
/// ```
#[macro_export]
macro_rules! dispatch {
    ($(#[$attr:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$attr])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body($($arg: $ty),*) $(-> $ret)? $body

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx,avx2,bmi1,bmi2,f16c,fma,lzcnt,movbe,popcnt,avx512f,avx512bw,avx512cd,avx512dq,avx512vl")]
            #[allow(clippy::too_many_arguments)]
            fn avx512($($arg: $ty),*) $(-> $ret)? {
                body($($arg),*)
            }

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx,avx2,bmi1,bmi2,f16c,fma,lzcnt,movbe,popcnt")]
            #[allow(clippy::too_many_arguments)]
            fn avx2($($arg: $ty),*) $(-> $ret)? {
                body($($arg),*)
            }

            #[cfg(target_arch = "x86_64")]
            match $crate::level() {
                // SAFETY: `level()` is never above `detected()`: the host has these features.
                $crate::Level::Avx512 => unsafe { avx512($($arg),*) },
                // SAFETY: as above.
                $crate::Level::Avx2 => unsafe { avx2($($arg),*) },
                $crate::Level::Generic => body($($arg),*),
            }
            #[cfg(not(target_arch = "x86_64"))]
            body($($arg),*)
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_values_are_errors() {
        for l in Level::ALL {
            assert_eq!(l.name().parse::<Level>(), Ok(l));
            assert_eq!(l.name().to_uppercase().parse::<Level>(), Ok(l));
        }
        let e = "avx3".parse::<Level>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "SEGTUNE_SIMD=\"avx3\" is not a SIMD level: expected auto, avx512, avx2 or generic"
        );
    }

    #[test]
    fn select_can_only_lower() {
        let s = select(None, Level::Avx2).unwrap();
        assert_eq!(
            (s.level, s.requested, s.capped()),
            (Level::Avx2, None, false)
        );
        for v in ["", " ", "auto", "AUTO"] {
            assert_eq!(select(Some(v), Level::Avx512).unwrap().level, Level::Avx512);
        }
        let s = select(Some("generic"), Level::Avx512).unwrap();
        assert_eq!((s.level, s.capped()), (Level::Generic, false));
        assert_eq!(
            s.to_string(),
            "SIMD level generic (host supports avx512; SEGTUNE_SIMD=generic)"
        );
        let s = select(Some("avx512"), Level::Avx2).unwrap();
        assert_eq!((s.level, s.capped()), (Level::Avx2, true));
        assert_eq!(
            s.to_string(),
            "SIMD level avx2 (host supports avx2; SEGTUNE_SIMD=avx512 is more than it has)"
        );
        assert!(matches!(
            select(Some("sse9"), Level::Avx512),
            Err(SimdError::Unknown { .. })
        ));
    }

    dispatch! {
        /// The level the dispatched copy saw, and a sum it vectorizes.
        fn probe(x: &[f32]) -> (Level, f32) {
            let mut acc = [0f32; 16];
            for c in x.chunks_exact(16) {
                for l in 0..16 {
                    acc[l] += c[l];
                }
            }
            (level(), acc.iter().sum())
        }
    }

    // One test forces levels in this binary, so no other test moves the level under it.
    #[test]
    fn forcing_runs_every_available_level_and_restores() {
        let before = level();
        let x: Vec<f32> = (0..64).map(|i| i as f32 * 0.25).collect();
        let mut seen = Vec::new();
        for_each_level(|l| {
            assert_eq!(level(), l);
            let (got, sum) = probe(&x);
            assert_eq!(got, l);
            assert_eq!(sum, 504.0);
            seen.push(l);
        });
        assert_eq!(seen, available());
        assert_eq!(seen.first(), Some(&Level::Generic));
        assert_eq!(seen.last(), Some(&detected()));
        assert_eq!(level(), before);

        let r = std::panic::catch_unwind(|| {
            with_level(Level::Generic, || panic!("inside a forced section")).unwrap();
        });
        assert!(r.is_err());
        assert_eq!(level(), before, "a panic restores the level");

        if detected() < Level::Avx512 {
            let e = with_level(Level::Avx512, || ()).unwrap_err();
            assert!(matches!(e, SimdError::Unsupported { .. }), "{e}");
        }
    }
}
