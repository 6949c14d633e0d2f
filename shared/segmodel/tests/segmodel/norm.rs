use crate::reference::{Rng, assert_close, dot, finite_diff, instance_norm, tensor, values};
use candle_core::{Device, Result, Var};
use segmodel::ops::{Activation, instance_norm3d};
use segmodel::test_device;

fn instance_norm_matches_reference(dev: &Device) -> Result<()> {
    let (n, c, dims) = (2, 3, [4, 5, 6]);
    let s: usize = dims.iter().product();
    let shape = [n, c, dims[0], dims[1], dims[2]];
    for (i, (act, slope)) in [
        (Activation::Identity, None),
        (Activation::Relu, Some(0.0)),
        (Activation::LeakyRelu(0.01), Some(0.01)),
    ]
    .into_iter()
    .enumerate()
    {
        let mut rng = Rng::new(10 + i as u64);
        // Per-channel offsets and scales so the statistics matter.
        let xv: Vec<f64> = rng
            .vec(n * c * s)
            .iter()
            .enumerate()
            .map(|(j, v)| {
                let ch = (j / s) % c;
                ((ch as f64 + 1.0) * 2.0 * v + ch as f64 - 1.0) as f32 as f64
            })
            .collect();
        let gam: Vec<f64> = rng.vec(c).iter().map(|v| v + 1.5).collect();
        let bet = rng.vec(c);
        let eps = 1e-5;
        let x = Var::from_tensor(&tensor(&xv, &shape, dev)?)?;
        let g = Var::from_tensor(&tensor(&gam, &[c], dev)?)?;
        let b = Var::from_tensor(&tensor(&bet, &[c], dev)?)?;
        let y = instance_norm3d(&x, &g, &b, eps, act)?;
        let want = instance_norm(&xv, &gam, &bet, n, c, s, eps, slope);
        assert_close(
            &values(&y)?,
            &want,
            1e-5,
            &format!("instance norm fwd {act:?}"),
        );

        let gv = rng.vec(y.elem_count());
        let grads = (y * tensor(&gv, &shape, dev)?)?.sum_all()?.backward()?;
        let f = |x: &[f64], ga: &[f64], be: &[f64]| {
            dot(&instance_norm(x, ga, be, n, c, s, eps, slope), &gv)
        };
        let fx = finite_diff(&xv, 1e-6, |x| f(x, &gam, &bet));
        let fg = finite_diff(&gam, 1e-6, |ga| f(&xv, ga, &bet));
        let fb = finite_diff(&bet, 1e-6, |be| f(&xv, &gam, be));
        assert_close(
            &values(grads.get(&x).expect("dx"))?,
            &fx,
            1e-5,
            &format!("dx {act:?}"),
        );
        assert_close(
            &values(grads.get(&g).expect("dgamma"))?,
            &fg,
            1e-5,
            &format!("dgamma {act:?}"),
        );
        assert_close(
            &values(grads.get(&b).expect("dbeta"))?,
            &fb,
            1e-5,
            &format!("dbeta {act:?}"),
        );
    }
    Ok(())
}
test_device!(instance_norm_matches_reference);

/// Large planes (several 4096-blocks, a tail) keep the statistics exact enough.
fn instance_norm_large_planes(dev: &Device) -> Result<()> {
    let (n, c, dims) = (1, 2, [17, 19, 23]);
    let s: usize = dims.iter().product();
    let mut rng = Rng::new(77);
    let xv: Vec<f64> = rng
        .vec(n * c * s)
        .iter()
        .map(|v| (100.0 + 3.0 * v) as f32 as f64)
        .collect();
    let (gam, bet) = (vec![1.0, 2.0], vec![0.5, -0.5]);
    let x = tensor(&xv, &[n, c, dims[0], dims[1], dims[2]], dev)?;
    let y = instance_norm3d(
        &x,
        &tensor(&gam, &[c], dev)?,
        &tensor(&bet, &[c], dev)?,
        1e-5,
        Activation::Identity,
    )?;
    let want = instance_norm(&xv, &gam, &bet, n, c, s, 1e-5, None);
    assert_close(&values(&y)?, &want, 2e-5, "instance norm large planes");
    Ok(())
}
test_device!(instance_norm_large_planes);
