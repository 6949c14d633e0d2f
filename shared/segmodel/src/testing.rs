//! Test helpers shared by this crate's tests and downstream crates.

/// Defines a test module named after a `fn name(device: &Device) -> candle_core::Result<()>`
/// that runs it on the CPU always (`name::cpu`) and on CUDA device 0 behind the `cuda`
/// feature (`name::cuda`), like candle's `test_device!`. On the CPU it runs once per SIMD
/// level the host supports (`simd::for_each_level`, least capable first), so every kernel
/// path is checked; a failure names the level.
///
/// ```ignore
/// fn conv_matches_reference(dev: &Device) -> Result<()> { ... }
/// segmodel::test_device!(conv_matches_reference);
/// ```
#[macro_export]
macro_rules! test_device {
    ($name:ident) => {
        mod $name {
            #[test]
            fn cpu() -> $crate::candle_core::Result<()> {
                let mut result = Ok(());
                $crate::simd::for_each_level(|level| {
                    if result.is_ok() {
                        eprintln!("{}: SIMD level {level}", stringify!($name));
                        result = super::$name(&$crate::candle_core::Device::Cpu).map_err(|e| {
                            $crate::candle_core::Error::Msg(format!("at SIMD level {level}: {e}"))
                        });
                    }
                });
                result
            }

            #[cfg(feature = "cuda")]
            #[test]
            fn cuda() -> $crate::candle_core::Result<()> {
                super::$name(&$crate::candle_core::Device::new_cuda(0)?)
            }
        }
    };
}
