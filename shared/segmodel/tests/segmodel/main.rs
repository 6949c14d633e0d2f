//! segmodel integration tests: every op against a naive f64 reference (forward and
//! gradients), the U-Net, the loss, checkpoints, and a small learning run.

// The crate's clippy.toml routes its own host reads through a counter; tests read freely.
#![allow(clippy::disallowed_methods)]

mod act;
mod checkpoint;
mod conv;
mod generic;
mod infer;
mod learn;
mod loss;
mod norm;
mod pool;
mod reference;
mod setup;
mod unet;
mod up;
