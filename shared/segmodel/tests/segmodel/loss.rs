use crate::reference::{Rng, assert_close, dice_loss, finite_diff, tensor, values};
use candle_core::{DType, Device, Result, Tensor, Var};
use segmodel::loss::{DiceLossConfig, soft_dice_loss, soft_dice_scores};
use segmodel::test_device;

fn labels_tensor(labels: &[usize], shape: &[usize], dtype: DType, dev: &Device) -> Result<Tensor> {
    let v: Vec<u32> = labels.iter().map(|&l| l as u32).collect();
    Tensor::from_vec(v, shape, dev)?.to_dtype(dtype)
}

fn dice_loss_matches_reference(dev: &Device) -> Result<()> {
    let (b, k, dims) = (2, 3, [3, 4, 5]);
    let s: usize = dims.iter().product();
    let mut rng = Rng::new(21);
    let lv: Vec<f64> = rng.vec(b * k * s).iter().map(|v| 3.0 * v).collect();
    let labels: Vec<usize> = (0..b * s).map(|_| rng.below(k)).collect();
    let configs = [
        (DiceLossConfig::default(), DType::U8),
        (
            DiceLossConfig {
                include_background: true,
                smooth: 1.0,
                ce_weight: 0.0,
            },
            DType::U32,
        ),
        (
            DiceLossConfig {
                include_background: false,
                smooth: 1e-5,
                ce_weight: 0.7,
            },
            DType::I64,
        ),
    ];
    for (cfg, dtype) in configs {
        let logits = Var::from_tensor(&tensor(&lv, &[b, k, dims[0], dims[1], dims[2]], dev)?)?;
        let lab = labels_tensor(&labels, &[b, dims[0], dims[1], dims[2]], dtype, dev)?;
        let loss = soft_dice_loss(&logits, &lab, &cfg)?;
        assert_eq!(loss.dims(), [] as [usize; 0]);
        let f = |l: &[f64]| {
            dice_loss(
                l,
                &labels,
                b,
                k,
                s,
                cfg.include_background,
                cfg.smooth,
                cfg.ce_weight,
            )
        };
        assert_close(
            &values(&loss)?,
            &[f(&lv)],
            1e-6,
            &format!("dice loss {cfg:?}"),
        );
        // Scale the loss so the upstream gradient is not 1.
        let grads = (loss * 3.0)?.backward()?;
        let want: Vec<f64> = finite_diff(&lv, 1e-6, f).iter().map(|g| 3.0 * g).collect();
        assert_close(
            &values(grads.get(&logits).expect("dlogits"))?,
            &want,
            1e-5,
            &format!("dice grad {cfg:?}"),
        );
    }
    Ok(())
}
test_device!(dice_loss_matches_reference);

fn dice_loss_perfect_and_wrong_predictions(dev: &Device) -> Result<()> {
    let labels: Vec<usize> = (0..2 * 64).map(|i| usize::from(i % 3 == 0)).collect();
    let lab = labels_tensor(&labels, &[2, 4, 4, 4], DType::U8, dev)?;
    let confident = |right: bool| -> Result<Tensor> {
        let mut v = vec![0.0; 2 * 2 * 64];
        for bi in 0..2 {
            for i in 0..64 {
                let t = labels[bi * 64 + i];
                let c = if right { t } else { 1 - t };
                v[(bi * 2 + c) * 64 + i] = 30.0;
            }
        }
        tensor(&v, &[2, 2, 4, 4, 4], dev)
    };
    let cfg = DiceLossConfig::default();
    let good = soft_dice_loss(&confident(true)?, &lab, &cfg)?.to_scalar::<f32>()?;
    let bad = soft_dice_loss(&confident(false)?, &lab, &cfg)?.to_scalar::<f32>()?;
    assert!(good < 1e-5, "perfect prediction loss {good}");
    assert!(bad > 0.999, "inverted prediction loss {bad}");
    let scores = values(&soft_dice_scores(&confident(true)?, &lab, &cfg)?)?;
    assert_close(&scores, &[1.0, 1.0], 1e-5, "per-class dice");
    Ok(())
}
test_device!(dice_loss_perfect_and_wrong_predictions);

#[test]
fn dice_loss_rejects_bad_labels() -> Result<()> {
    let dev = &Device::Cpu;
    let logits = Tensor::zeros((1, 2, 2, 2, 2), DType::F32, dev)?;
    let cfg = DiceLossConfig::default();
    let out_of_range = Tensor::full(2u8, (1, 2, 2, 2), dev)?;
    let e = soft_dice_loss(&logits, &out_of_range, &cfg)
        .unwrap_err()
        .to_string();
    assert!(e.contains("out of range"), "{e}");
    let wrong_shape = Tensor::zeros((1, 2, 2), DType::U8, dev)?;
    assert!(soft_dice_loss(&logits, &wrong_shape, &cfg).is_err());
    let float_labels = Tensor::zeros((1, 2, 2, 2), DType::F32, dev)?;
    assert!(soft_dice_loss(&logits, &float_labels, &cfg).is_err());
    let one_class = Tensor::zeros((1, 1, 2, 2, 2), DType::F32, dev)?;
    let zeros = Tensor::zeros((1, 2, 2, 2), DType::U8, dev)?;
    assert!(soft_dice_loss(&one_class, &zeros, &cfg).is_err());
    Ok(())
}
