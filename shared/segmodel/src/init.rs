//! Seeded parameter initialization.
//!
//! candle's CPU device has no seedable RNG, so `VarBuilder::from_varmap` gives different
//! weights on every run. [`seeded_var_builder`] draws every parameter from its own ChaCha8
//! stream keyed by (seed, parameter name): the same seed gives the same network whatever the
//! order in which layers are built.

use candle_core::{DType, Device, Result, Shape, Tensor, Var, bail};
use candle_nn::init::NormalOrUniform;
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

struct Seeded {
    varmap: VarMap,
    seed: u64,
}

fn stream_seed(seed: u64, name: &str) -> u64 {
    // FNV-1a over the name, then a SplitMix64 finalizer over (seed, name hash).
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in name.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    let mut z = seed ^ h.rotate_left(17);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Values of `init` for `shape`, from the stream of (seed, name).
pub fn init_values(shape: &Shape, init: Init, seed: u64, name: &str) -> Vec<f32> {
    let n = shape.elem_count();
    let mut rng = ChaCha8Rng::seed_from_u64(stream_seed(seed, name));
    let mut normal = |mean: f64, std: f64| -> Vec<f32> {
        (0..n)
            .map(|_| (mean + std * rng.sample::<f64, _>(StandardNormal)) as f32)
            .collect()
    };
    match init {
        Init::Const(v) => vec![v as f32; n],
        Init::Randn { mean, stdev } => normal(mean, stdev),
        Init::Uniform { lo, up } => (0..n).map(|_| rng.random_range(lo..up) as f32).collect(),
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let std = non_linearity.gain() / (fan.for_shape(shape) as f64).sqrt();
            match dist {
                NormalOrUniform::Normal => normal(0.0, std),
                NormalOrUniform::Uniform => {
                    let b = 3f64.sqrt() * std;
                    (0..n).map(|_| rng.random_range(-b..b) as f32).collect()
                }
            }
        }
    }
}

impl SimpleBackend for Seeded {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut data = self.varmap.data().lock().expect("VarMap lock poisoned");
        if let Some(v) = data.get(name) {
            if v.shape() != &s {
                bail!("shape mismatch on {name}: {s:?} <> {:?}", v.shape())
            }
            return Ok(v.as_tensor().clone());
        }
        let values = init_values(&s, h, self.seed, name);
        let t = Tensor::from_vec(values, s, dev)?.to_dtype(dtype)?;
        let var = Var::from_tensor(&t)?;
        let out = var.as_tensor().clone();
        data.insert(name.to_string(), var);
        Ok(out)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        let data = self.varmap.data().lock().expect("VarMap lock poisoned");
        match data.get(name) {
            Some(v) => Ok(v.as_tensor().clone()),
            None => bail!("segmodel: no variable {name} in the VarMap"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.varmap
            .data()
            .lock()
            .expect("VarMap lock poisoned")
            .contains_key(name)
    }
}

/// A `VarBuilder` that creates missing variables in `varmap` with deterministic values
/// derived from `seed` and each variable's full name; existing ones are returned as is.
pub fn seeded_var_builder(
    varmap: &VarMap,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> VarBuilder<'static> {
    VarBuilder::from_backend(
        Box::new(Seeded {
            varmap: varmap.clone(),
            seed,
        }),
        dtype,
        device.clone(),
    )
}
