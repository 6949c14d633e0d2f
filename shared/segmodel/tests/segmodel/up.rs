use crate::reference::{Rng, assert_close, dot, finite_diff, tensor, up2, up2_backward, values};
use candle_core::{Device, Result, Var};
use segmodel::ops::conv_transpose3d_2x;
use segmodel::test_device;

fn transposed_conv_matches_reference(dev: &Device) -> Result<()> {
    // (n, cin, cout, dims, bias); the last two span several tiles (Q = cout·8 rows ->
    // 814 and 256 columns per tile), the last one with W-rows longer than a tile.
    let cases = [
        (2, 3, 4, [3, 4, 5], true),
        (1, 2, 3, [1, 1, 1], false),
        (2, 3, 40, [9, 10, 11], true),
        (1, 4, 128, [3, 5, 300], true),
    ];
    for (i, &(n, cin, cout, dims, bias)) in cases.iter().enumerate() {
        let mut rng = Rng::new(40 + i as u64);
        let s: usize = dims.iter().product();
        let (xv, wv, bv) = (rng.vec(n * cin * s), rng.vec(cin * cout * 8), rng.vec(cout));
        let x = Var::from_tensor(&tensor(&xv, &[n, cin, dims[0], dims[1], dims[2]], dev)?)?;
        let w = Var::from_tensor(&tensor(&wv, &[cin, cout, 2, 2, 2], dev)?)?;
        let b = Var::from_tensor(&tensor(&bv, &[cout], dev)?)?;
        let y = conv_transpose3d_2x(&x, &w, bias.then_some(b.as_tensor()))?;
        assert_eq!(y.dims(), [n, cout, 2 * dims[0], 2 * dims[1], 2 * dims[2]]);
        let bref = bias.then_some(bv.as_slice());
        let want = up2(&xv, &wv, bref, n, cin, cout, dims);
        assert_close(&values(&y)?, &want, 1e-5, &format!("up fwd case {i}"));
        let gv = rng.vec(y.elem_count());
        let grads = (y * tensor(&gv, &want_dims(n, cout, dims), dev)?)?
            .sum_all()?
            .backward()?;
        if s * n * cin > 2000 {
            continue; // finite differences only on the small cases
        }
        let fx = finite_diff(&xv, 1e-6, |x| {
            dot(&up2(x, &wv, bref, n, cin, cout, dims), &gv)
        });
        let fw = finite_diff(&wv, 1e-6, |w| {
            dot(&up2(&xv, w, bref, n, cin, cout, dims), &gv)
        });
        let fb = finite_diff(&bv, 1e-6, |b| {
            dot(&up2(&xv, &wv, Some(b), n, cin, cout, dims), &gv)
        });
        assert_close(
            &values(grads.get(&x).expect("dx"))?,
            &fx,
            1e-5,
            &format!("up dx {i}"),
        );
        assert_close(
            &values(grads.get(&w).expect("dw"))?,
            &fw,
            1e-5,
            &format!("up dw {i}"),
        );
        match bias {
            true => assert_close(&values(grads.get(&b).expect("db"))?, &fb, 1e-5, "up db"),
            false => assert!(grads.get(&b).is_none()),
        }
    }
    Ok(())
}
test_device!(transposed_conv_matches_reference);

fn want_dims(n: usize, c: usize, d: [usize; 3]) -> Vec<usize> {
    vec![n, c, 2 * d[0], 2 * d[1], 2 * d[2]]
}

/// Gradients on cases too large for finite differences, against the reference adjoint
/// (itself checked against finite differences below).
fn transposed_conv_large_gradients(dev: &Device) -> Result<()> {
    for (i, (n, cin, cout, dims)) in [(2, 3, 40, [9, 10, 11]), (1, 4, 128, [3, 5, 300])]
        .into_iter()
        .enumerate()
    {
        let s: usize = dims.iter().product();
        let mut rng = Rng::new(99 + i as u64);
        let (xv, wv, bv) = (rng.vec(n * cin * s), rng.vec(cin * cout * 8), rng.vec(cout));
        let gv = rng.vec(n * cout * 8 * s);
        let x = Var::from_tensor(&tensor(&xv, &[n, cin, dims[0], dims[1], dims[2]], dev)?)?;
        let w = Var::from_tensor(&tensor(&wv, &[cin, cout, 2, 2, 2], dev)?)?;
        let b = Var::from_tensor(&tensor(&bv, &[cout], dev)?)?;
        let y = conv_transpose3d_2x(&x, &w, Some(b.as_tensor()))?;
        let grads = (y * tensor(&gv, &want_dims(n, cout, dims), dev)?)?
            .sum_all()?
            .backward()?;
        let (dx, dw, db) = up2_backward(&xv, &wv, &gv, n, cin, cout, dims);
        assert_close(
            &values(grads.get(&x).expect("dx"))?,
            &dx,
            1e-5,
            "up dx large",
        );
        assert_close(
            &values(grads.get(&w).expect("dw"))?,
            &dw,
            1e-5,
            "up dw large",
        );
        assert_close(
            &values(grads.get(&b).expect("db"))?,
            &db,
            1e-5,
            "up db large",
        );
    }
    Ok(())
}
test_device!(transposed_conv_large_gradients);

#[test]
fn reference_up2_adjoint_matches_finite_differences() {
    let (n, cin, cout, dims) = (2, 2, 3, [2, 3, 2]);
    let s: usize = dims.iter().product();
    let mut rng = Rng::new(5);
    let (xv, wv, bv) = (rng.vec(n * cin * s), rng.vec(cin * cout * 8), rng.vec(cout));
    let gv = rng.vec(n * cout * 8 * s);
    let (dx, dw, db) = up2_backward(&xv, &wv, &gv, n, cin, cout, dims);
    let f = |x: &[f64], w: &[f64], b: &[f64]| dot(&up2(x, w, Some(b), n, cin, cout, dims), &gv);
    assert_close(
        &dx,
        &finite_diff(&xv, 1e-6, |x| f(x, &wv, &bv)),
        1e-7,
        "ref up dx",
    );
    assert_close(
        &dw,
        &finite_diff(&wv, 1e-6, |w| f(&xv, w, &bv)),
        1e-7,
        "ref up dw",
    );
    assert_close(
        &db,
        &finite_diff(&bv, 1e-6, |b| f(&xv, &wv, b)),
        1e-7,
        "ref up db",
    );
}
