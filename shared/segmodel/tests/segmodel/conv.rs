use crate::reference::{Conv, Rng, assert_close, dot, finite_diff, tensor, values};
use candle_core::{Device, Result, Tensor, Var};
use segmodel::ops::conv3d;
use segmodel::test_device;

fn cases() -> Vec<(Conv, bool)> {
    let odd = |k, pad, stride| Conv {
        n: 2,
        cin: 3,
        cout: 4,
        k,
        dims: [5, 6, 7],
        pad,
        stride,
    };
    vec![
        (odd(3, 1, 1), true),
        (odd(3, 0, 1), false),
        (odd(3, 1, 2), true),
        (odd(3, 0, 2), true),
        (odd(1, 0, 1), true),
        (odd(1, 0, 2), false),
        (odd(3, 2, 1), true),
        // Several vol2col tiles per sample (K = 432 -> 595-column tiles, cut mid-row).
        (
            Conv {
                n: 1,
                cin: 16,
                cout: 3,
                k: 3,
                dims: [12, 13, 17],
                pad: 1,
                stride: 1,
            },
            true,
        ),
        // W-rows longer than a tile (K = 1728 -> 256-column tiles).
        (
            Conv {
                n: 1,
                cin: 64,
                cout: 2,
                k: 3,
                dims: [2, 2, 300],
                pad: 1,
                stride: 1,
            },
            false,
        ),
        // 3x3x3 stride-1 convolutions (the direct kernels on AVX2/AVX-512 hosts): output
        // channels not a multiple of the register block, one input channel, rows shorter
        // and longer than a vector step, a single voxel and a one-voxel-wide volume.
        (
            Conv {
                n: 2,
                cin: 1,
                cout: 5,
                k: 3,
                dims: [4, 5, 3],
                pad: 1,
                stride: 1,
            },
            true,
        ),
        (
            Conv {
                n: 1,
                cin: 6,
                cout: 4,
                k: 3,
                dims: [3, 7, 33],
                pad: 1,
                stride: 1,
            },
            true,
        ),
        (
            Conv {
                n: 2,
                cin: 8,
                cout: 9,
                k: 3,
                dims: [6, 9, 20],
                pad: 1,
                stride: 1,
            },
            true,
        ),
        (
            Conv {
                n: 1,
                cin: 3,
                cout: 16,
                k: 3,
                dims: [1, 1, 1],
                pad: 1,
                stride: 1,
            },
            false,
        ),
        (
            Conv {
                n: 1,
                cin: 2,
                cout: 3,
                k: 3,
                dims: [5, 4, 1],
                pad: 1,
                stride: 1,
            },
            true,
        ),
        // Pointwise path over several tiles.
        (
            Conv {
                n: 2,
                cin: 5,
                cout: 3,
                k: 1,
                dims: [9, 10, 11],
                pad: 0,
                stride: 1,
            },
            true,
        ),
    ]
}

struct Inputs {
    x: Vec<f64>,
    w: Vec<f64>,
    b: Vec<f64>,
    g: Vec<f64>,
}

fn inputs(c: &Conv, seed: u64) -> Inputs {
    let mut rng = Rng::new(seed);
    let [d, h, w] = c.dims;
    let [od, oh, ow] = c.out_dims();
    Inputs {
        x: rng.vec(c.n * c.cin * d * h * w),
        w: rng.vec(c.cout * c.cin * c.k.pow(3)),
        b: rng.vec(c.cout),
        g: rng.vec(c.n * c.cout * od * oh * ow),
    }
}

fn shapes(c: &Conv) -> (Vec<usize>, Vec<usize>) {
    let [d, h, w] = c.dims;
    (
        vec![c.n, c.cin, d, h, w],
        vec![c.cout, c.cin, c.k, c.k, c.k],
    )
}

fn conv3d_forward_matches_reference(dev: &Device) -> Result<()> {
    for (i, (c, bias)) in cases().into_iter().enumerate() {
        let v = inputs(&c, i as u64);
        let (xs, ws) = shapes(&c);
        let x = tensor(&v.x, &xs, dev)?;
        let w = tensor(&v.w, &ws, dev)?;
        let b = tensor(&v.b, &[c.cout], dev)?;
        let y = conv3d(&x, &w, bias.then_some(&b), c.pad, c.stride)?;
        let [od, oh, ow] = c.out_dims();
        assert_eq!(y.dims(), [c.n, c.cout, od, oh, ow], "{c:?}");
        let want = c.forward(&v.x, &v.w, bias.then_some(v.b.as_slice()));
        assert_close(
            &values(&y)?,
            &want,
            1e-5,
            &format!("conv3d fwd {c:?} bias={bias}"),
        );
    }
    Ok(())
}
test_device!(conv3d_forward_matches_reference);

fn conv3d_gradients_match_reference(dev: &Device) -> Result<()> {
    for (i, (c, bias)) in cases().into_iter().enumerate() {
        let v = inputs(&c, 100 + i as u64);
        let (xs, ws) = shapes(&c);
        let x = Var::from_tensor(&tensor(&v.x, &xs, dev)?)?;
        let w = Var::from_tensor(&tensor(&v.w, &ws, dev)?)?;
        let b = Var::from_tensor(&tensor(&v.b, &[c.cout], dev)?)?;
        let y = conv3d(&x, &w, bias.then_some(b.as_tensor()), c.pad, c.stride)?;
        let g = tensor(&v.g, y.dims(), dev)?;
        let grads = (y * g)?.sum_all()?.backward()?;
        let (dx, dw, db) = c.backward(&v.x, &v.w, &v.g);
        let what = format!("{c:?} bias={bias}");
        assert_close(
            &values(grads.get(&x).expect("dx"))?,
            &dx,
            1e-5,
            &format!("dx {what}"),
        );
        assert_close(
            &values(grads.get(&w).expect("dw"))?,
            &dw,
            1e-5,
            &format!("dw {what}"),
        );
        match bias {
            true => assert_close(
                &values(grads.get(&b).expect("db"))?,
                &db,
                1e-5,
                &format!("db {what}"),
            ),
            false => assert!(grads.get(&b).is_none()),
        }
    }
    Ok(())
}
test_device!(conv3d_gradients_match_reference);

/// The direct 3x3x3 kernels give the same bits on AVX2 and AVX-512 (each output value is the
/// same chain of fused multiply-adds whatever the vector width and channel block), forward
/// and input gradient, for output channel counts that take each AVX-512 block size.
#[test]
fn direct_conv_is_bit_identical_across_vector_levels() -> Result<()> {
    use simd::Level;
    if !Level::Avx512.supported() {
        eprintln!("skipped: this host has no AVX-512 to compare AVX2 with");
        return Ok(());
    }
    let dev = &Device::Cpu;
    for (i, cout) in [3, 4, 9, 16].into_iter().enumerate() {
        let c = Conv {
            n: 2,
            cin: 5,
            cout,
            k: 3,
            dims: [6, 7, 19],
            pad: 1,
            stride: 1,
        };
        let v = inputs(&c, 300 + i as u64);
        let (xs, ws) = shapes(&c);
        let run = |level| -> Result<(Vec<f64>, Vec<f64>)> {
            simd::with_level(level, || -> Result<(Vec<f64>, Vec<f64>)> {
                let x = Var::from_tensor(&tensor(&v.x, &xs, dev)?)?;
                let w = tensor(&v.w, &ws, dev)?;
                let b = tensor(&v.b, &[c.cout], dev)?;
                let y = conv3d(&x, &w, Some(&b), c.pad, c.stride)?;
                let g = tensor(&v.g, y.dims(), dev)?;
                let grads = (&y * g)?.sum_all()?.backward()?;
                Ok((values(&y)?, values(grads.get(&x).expect("dx"))?))
            })
            .expect("level supported")
        };
        let (a, b) = (run(Level::Avx2)?, run(Level::Avx512)?);
        assert!(
            a.0 == b.0,
            "forward differs between avx2 and avx512, cout {cout}"
        );
        assert!(a.1 == b.1, "input gradient differs, cout {cout}");
    }
    Ok(())
}

/// The analytic reference gradients themselves agree with finite differences of the
/// reference forward pass.
#[test]
fn reference_conv_gradients_match_finite_differences() {
    for c in [
        Conv {
            n: 2,
            cin: 2,
            cout: 3,
            k: 3,
            dims: [3, 4, 5],
            pad: 1,
            stride: 2,
        },
        Conv {
            n: 1,
            cin: 2,
            cout: 2,
            k: 3,
            dims: [4, 3, 5],
            pad: 0,
            stride: 1,
        },
    ] {
        let v = inputs(&c, 7);
        let (dx, dw, db) = c.backward(&v.x, &v.w, &v.g);
        let loss_x = |x: &[f64]| dot(&c.forward(x, &v.w, Some(&v.b)), &v.g);
        let loss_w = |w: &[f64]| dot(&c.forward(&v.x, w, Some(&v.b)), &v.g);
        let loss_b = |b: &[f64]| dot(&c.forward(&v.x, &v.w, Some(b)), &v.g);
        assert_close(&dx, &finite_diff(&v.x, 1e-6, loss_x), 1e-7, "ref dx");
        assert_close(&dw, &finite_diff(&v.w, 1e-6, loss_w), 1e-7, "ref dw");
        assert_close(&db, &finite_diff(&v.b, 1e-6, loss_b), 1e-7, "ref db");
    }
}

fn conv3d_skips_untracked_input_gradient(dev: &Device) -> Result<()> {
    let c = Conv {
        n: 1,
        cin: 2,
        cout: 3,
        k: 3,
        dims: [4, 4, 4],
        pad: 1,
        stride: 1,
    };
    let v = inputs(&c, 3);
    let (xs, ws) = shapes(&c);
    let x = tensor(&v.x, &xs, dev)?;
    let w = Var::from_tensor(&tensor(&v.w, &ws, dev)?)?;
    let grads = conv3d(&x, &w, None, 1, 1)?.sum_all()?.backward()?;
    assert!(grads.get(&x).is_none());
    assert!(grads.get(&w).is_some());
    Ok(())
}
test_device!(conv3d_skips_untracked_input_gradient);

fn conv3d_accepts_strided_views(dev: &Device) -> Result<()> {
    let c = Conv {
        n: 2,
        cin: 3,
        cout: 2,
        k: 3,
        dims: [4, 5, 6],
        pad: 1,
        stride: 1,
    };
    let v = inputs(&c, 4);
    let (xs, ws) = shapes(&c);
    let x = tensor(&v.x, &xs, dev)?;
    let w = tensor(&v.w, &ws, dev)?;
    // A transposed-and-back view is non-contiguous but equal to x.
    let xt = x.transpose(2, 4)?.contiguous()?.transpose(2, 4)?;
    assert!(!xt.is_contiguous());
    let a = values(&conv3d(&x, &w, None, 1, 1)?)?;
    let b = values(&conv3d(&xt, &w, None, 1, 1)?)?;
    assert_eq!(a, b);
    Ok(())
}
test_device!(conv3d_accepts_strided_views);

#[test]
fn conv3d_rejects_bad_arguments() -> Result<()> {
    let dev = &Device::Cpu;
    let x = Tensor::zeros((1, 2, 4, 4, 4), candle_core::DType::F32, dev)?;
    let w = Tensor::zeros((3, 2, 3, 3, 3), candle_core::DType::F32, dev)?;
    let err = |r: Result<Tensor>| r.expect_err("should fail").to_string();
    assert!(err(conv3d(&x.squeeze(0)?, &w, None, 1, 1)).contains("[N, C, D, H, W]"));
    assert!(err(conv3d(&x, &w.narrow(1, 0, 1)?, None, 1, 1)).contains("input channels"));
    assert!(err(conv3d(&x, &w.narrow(4, 0, 2)?, None, 1, 1)).contains("cubic"));
    assert!(err(conv3d(&x, &w, None, 3, 1)).contains("padding"));
    assert!(err(conv3d(&x, &w, None, 1, 0)).contains("stride"));
    let b = Tensor::zeros(2, candle_core::DType::F32, dev)?;
    assert!(err(conv3d(&x, &w, Some(&b), 1, 1)).contains("bias"));
    let small = Tensor::zeros((1, 2, 2, 4, 4), candle_core::DType::F32, dev)?;
    assert!(err(conv3d(&small, &w, None, 0, 1)).contains("smaller than the kernel"));
    assert!(
        err(conv3d(
            &x.to_dtype(candle_core::DType::F64)?,
            &w,
            None,
            1,
            1
        ))
        .contains("f32")
    );
    Ok(())
}
