use crate::reference::values;
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarMap;
use segmodel::loss::{DiceLossConfig, soft_dice_loss};
use segmodel::test_device;
use segmodel::{SegTrainer, TrainConfig, UNetConfig, seeded_var_builder, unet3d};

fn small() -> UNetConfig {
    UNetConfig {
        in_channels: 2,
        num_classes: 3,
        channels: vec![4, 8, 16],
        ..Default::default()
    }
}

fn unet_shapes_and_parameter_names(dev: &Device) -> Result<()> {
    let varmap = VarMap::new();
    let net = unet3d(&small(), seeded_var_builder(&varmap, 0, DType::F32, dev))?;
    let x = Tensor::randn(0f32, 1.0, (2, 2, 8, 12, 16), dev)?;
    assert_eq!(net.forward(&x)?.dims(), [2, 3, 8, 12, 16]);

    let mut names: Vec<(String, Vec<usize>)> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.dims().to_vec()))
        .collect();
    names.sort();
    let mut want: Vec<(String, Vec<usize>)> = Vec::new();
    let mut block = |p: &str, cin: usize, c: usize| {
        want.push((format!("{p}.conv1.weight"), vec![c, cin, 3, 3, 3]));
        want.push((format!("{p}.conv2.weight"), vec![c, c, 3, 3, 3]));
        for n in ["norm1", "norm2"] {
            want.push((format!("{p}.{n}.weight"), vec![c]));
            want.push((format!("{p}.{n}.bias"), vec![c]));
        }
    };
    block("enc.0", 2, 4);
    block("enc.1", 4, 8);
    block("enc.2", 8, 16);
    block("dec.0", 8, 4);
    block("dec.1", 16, 8);
    want.push(("up.0.weight".into(), vec![8, 4, 2, 2, 2]));
    want.push(("up.0.bias".into(), vec![4]));
    want.push(("up.1.weight".into(), vec![16, 8, 2, 2, 2]));
    want.push(("up.1.bias".into(), vec![8]));
    want.push(("head.weight".into(), vec![3, 4, 1, 1, 1]));
    want.push(("head.bias".into(), vec![3]));
    want.sort();
    assert_eq!(names, want);
    Ok(())
}
test_device!(unet_shapes_and_parameter_names);

#[test]
fn unet_rejects_bad_inputs_and_configs() -> Result<()> {
    let dev = &Device::Cpu;
    let net = unet3d(
        &small(),
        seeded_var_builder(&VarMap::new(), 0, DType::F32, dev),
    )?;
    let e = net
        .forward(&Tensor::zeros((1, 2, 8, 8, 6), DType::F32, dev)?)
        .unwrap_err();
    assert!(e.to_string().contains("multiples of 4"), "{e}");
    let e = net
        .forward(&Tensor::zeros((1, 1, 8, 8, 8), DType::F32, dev)?)
        .unwrap_err();
    assert!(e.to_string().contains("[B, 2, D, H, W]"), "{e}");
    let bad = UNetConfig {
        channels: vec![],
        ..small()
    };
    assert!(unet3d(&bad, seeded_var_builder(&VarMap::new(), 0, DType::F32, dev)).is_err());
    // One level: no pooling, any size.
    let one = UNetConfig {
        channels: vec![4],
        ..small()
    };
    let net = unet3d(&one, seeded_var_builder(&VarMap::new(), 0, DType::F32, dev))?;
    assert_eq!(
        net.forward(&Tensor::zeros((1, 2, 3, 5, 7), DType::F32, dev)?)?
            .dims(),
        [1, 3, 3, 5, 7]
    );
    Ok(())
}

fn unet_gradients_reach_every_parameter(dev: &Device) -> Result<()> {
    let varmap = VarMap::new();
    let net = unet3d(&small(), seeded_var_builder(&varmap, 1, DType::F32, dev))?;
    let x = Tensor::randn(0f32, 1.0, (2, 2, 8, 8, 8), dev)?;
    let labels = Tensor::rand(0f32, 3.0, (2, 8, 8, 8), dev)?
        .floor()?
        .clamp(0f32, 2f32)?
        .to_dtype(DType::U32)?;
    let cfg = DiceLossConfig {
        ce_weight: 1.0,
        ..Default::default()
    };
    let grads = soft_dice_loss(&net.forward(&x)?, &labels, &cfg)?.backward()?;
    for (name, var) in varmap.data().lock().unwrap().iter() {
        let g = grads
            .get(var)
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let norm = values(&g.sqr()?.sum_all()?)?[0];
        assert!(
            norm.is_finite() && norm > 0.0,
            "{name}: gradient norm {norm}"
        );
    }
    Ok(())
}
test_device!(unet_gradients_reach_every_parameter);

#[test]
fn seeded_initialization_is_deterministic() -> Result<()> {
    let dev = &Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (1, 2, 8, 8, 8), dev)?;
    let out = |seed| -> Result<Vec<f64>> {
        values(&SegTrainer::new(&small(), TrainConfig::default(), seed, dev)?.predict(&x)?)
    };
    assert_eq!(out(7)?, out(7)?);
    assert_ne!(out(7)?, out(8)?);
    Ok(())
}

/// `forward_tapped` is the forward pass (same logits) and shows every layer once, in order,
/// with its output's shape.
#[test]
fn forward_tapped_names_every_layer_in_order() -> Result<()> {
    // Compares two runs bit for bit: pinned to one SIMD level, which another test forcing
    // levels cannot change in between.
    simd::with_level(simd::detected(), || -> Result<()> {
        let dev = &Device::Cpu;
        let varmap = VarMap::new();
        let net = unet3d(&small(), seeded_var_builder(&varmap, 3, DType::F32, dev))?;
        let x = Tensor::randn(0f32, 1.0, (1, 2, 8, 8, 8), dev)?;
        let mut seen: Vec<(String, Vec<usize>)> = Vec::new();
        let y = net.forward_tapped(&x, &mut |name, t| {
            seen.push((name.to_string(), t.dims().to_vec()));
            Ok(())
        })?;
        assert_eq!(values(&y)?, values(&net.forward(&x)?)?);
        let block = |p: &str, c: usize, s: usize| {
            ["conv1", "norm1", "conv2", "norm2"].map(|l| (format!("{p}.{l}"), vec![1, c, s, s, s]))
        };
        let mut want = Vec::new();
        want.extend(block("enc.0", 4, 8));
        want.push(("pool.1".to_string(), vec![1, 4, 4, 4, 4]));
        want.extend(block("enc.1", 8, 4));
        want.push(("pool.2".to_string(), vec![1, 8, 2, 2, 2]));
        want.extend(block("enc.2", 16, 2));
        want.push(("up.1".to_string(), vec![1, 8, 4, 4, 4]));
        want.push(("cat.1".to_string(), vec![1, 16, 4, 4, 4]));
        want.extend(block("dec.1", 8, 4));
        want.push(("up.0".to_string(), vec![1, 4, 8, 8, 8]));
        want.push(("cat.0".to_string(), vec![1, 8, 8, 8, 8]));
        want.extend(block("dec.0", 4, 8));
        want.push(("head".to_string(), vec![1, 3, 8, 8, 8]));
        assert_eq!(seen, want);

        // An error from the tap stops the pass.
        let e = net
            .forward_tapped(&x, &mut |name, _| {
                if name == "pool.1" {
                    candle_core::bail!("stop at {name}")
                }
                Ok(())
            })
            .unwrap_err();
        assert!(e.to_string().contains("stop at pool.1"), "{e}");
        Ok(())
    })
    .expect("the host's own level")
}
