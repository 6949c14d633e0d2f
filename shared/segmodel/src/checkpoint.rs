//! Model checkpoints as safetensors bytes (the trainer stores them in object storage).
//!
//! Only the parameters are saved (not the Adam moments: candle-nn keeps them private);
//! resuming restarts the optimizer, which is what fine-tuning from a checkpoint wants anyway.

use candle_core::safetensors::Load;
use candle_nn::VarMap;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint is not valid safetensors: {0}")]
    Format(String),
    #[error("checkpoint lacks tensor(s) the model needs: {}", .0.join(", "))]
    MissingTensors(Vec<String>),
    #[error("checkpoint tensor {name} has shape {found:?}, the model expects {expected:?}")]
    ShapeMismatch {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("checkpoint has tensor(s) the model does not know: {}", .0.join(", "))]
    UnexpectedTensors(Vec<String>),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Serializes every variable of `varmap` (sorted by name) to safetensors bytes.
pub fn save_checkpoint(varmap: &VarMap) -> Result<Vec<u8>, CheckpointError> {
    let data = varmap.data().lock().expect("VarMap lock poisoned");
    let tensors: BTreeMap<&str, &candle_core::Tensor> = data
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_tensor()))
        .collect();
    safetensors::serialize(tensors, None).map_err(|e| CheckpointError::Format(e.to_string()))
}

/// Loads safetensors bytes into the existing variables of `varmap`, strictly: every
/// variable must be present with its exact shape and no extra tensor may be present
/// (dtypes are converted). Everything is checked before anything is written, so on error
/// the model is unchanged.
pub fn load_checkpoint(varmap: &VarMap, bytes: &[u8]) -> Result<(), CheckpointError> {
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| CheckpointError::Format(e.to_string()))?;
    let data = varmap.data().lock().expect("VarMap lock poisoned");
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut missing = Vec::new();
    let mut loaded = Vec::with_capacity(names.len());
    for name in names {
        let var = &data[name];
        let Ok(view) = st.tensor(name) else {
            missing.push(name.clone());
            continue;
        };
        if view.shape() != var.dims() {
            return Err(CheckpointError::ShapeMismatch {
                name: name.clone(),
                expected: var.dims().to_vec(),
                found: view.shape().to_vec(),
            });
        }
        loaded.push((var, view));
    }
    if !missing.is_empty() {
        return Err(CheckpointError::MissingTensors(missing));
    }
    let known: BTreeSet<&str> = data.keys().map(String::as_str).collect();
    let extra: BTreeSet<String> = st
        .names()
        .into_iter()
        .filter(|n| !known.contains(n))
        .map(str::to_string)
        .collect();
    if !extra.is_empty() {
        return Err(CheckpointError::UnexpectedTensors(
            extra.into_iter().collect(),
        ));
    }
    let values = loaded
        .iter()
        .map(|(var, view)| view.load(var.device())?.to_dtype(var.dtype()))
        .collect::<candle_core::Result<Vec<_>>>()?;
    for ((var, _), value) in loaded.iter().zip(values) {
        var.set(&value)?;
    }
    Ok(())
}

/// A U-Net for inference from checkpoint bytes, checked as strictly as [`load_checkpoint`].
///
/// Its weights are plain tensors, not variables, so no forward pass records an autograd
/// graph: each intermediate activation is freed as soon as the next layer has used it. (A
/// model built on a `VarMap` keeps every activation of a window alive until its output is
/// dropped, which made sliding-window inference use ~1.7x PyTorch's memory.)
pub fn inference_unet(
    cfg: &crate::UNetConfig,
    bytes: &[u8],
    device: &candle_core::Device,
) -> Result<crate::UNet3d, CheckpointError> {
    let varmap = VarMap::new();
    crate::unet3d(
        cfg,
        crate::seeded_var_builder(&varmap, 0, candle_core::DType::F32, device),
    )?;
    load_checkpoint(&varmap, bytes)?;
    let frozen: std::collections::HashMap<String, candle_core::Tensor> = varmap
        .data()
        .lock()
        .expect("VarMap lock poisoned")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
        .collect();
    let vb = candle_nn::VarBuilder::from_tensors(frozen, candle_core::DType::F32, device);
    Ok(crate::unet3d(cfg, vb)?)
}
