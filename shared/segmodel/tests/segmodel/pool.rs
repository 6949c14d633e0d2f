use crate::reference::{Rng, assert_close, dot, finite_diff, max_pool, tensor, values};
use candle_core::{DType, Device, Result, Tensor, Var};
use segmodel::ops::max_pool3d_2x;
use segmodel::test_device;

fn max_pool_matches_reference(dev: &Device) -> Result<()> {
    for (n, c, dims) in [(2, 3, [5, 6, 7]), (1, 2, [4, 4, 4]), (2, 1, [2, 9, 3])] {
        let planes = n * c;
        let mut rng = Rng::new(dims[2] as u64);
        let xv = rng.vec(planes * dims.iter().product::<usize>());
        let x = Var::from_tensor(&tensor(&xv, &[n, c, dims[0], dims[1], dims[2]], dev)?)?;
        let y = max_pool3d_2x(&x)?;
        assert_eq!(y.dims(), [n, c, dims[0] / 2, dims[1] / 2, dims[2] / 2]);
        assert_close(
            &values(&y)?,
            &max_pool(&xv, planes, dims),
            0.0,
            "max-pool fwd",
        );
        let gv = rng.vec(y.elem_count());
        let g = tensor(&gv, y.dims(), dev)?;
        let grads = (y * g)?.sum_all()?.backward()?;
        let want = finite_diff(&xv, 1e-6, |x| dot(&max_pool(x, planes, dims), &gv));
        assert_close(
            &values(grads.get(&x).expect("dx"))?,
            &want,
            1e-6,
            "max-pool dx",
        );
    }
    Ok(())
}
test_device!(max_pool_matches_reference);

/// On ties the whole gradient goes to the first element of the window (PyTorch's argmax),
/// not split as candle's `max` backward does.
fn max_pool_tie_goes_to_first(dev: &Device) -> Result<()> {
    let x = Var::from_tensor(&Tensor::ones((1, 1, 2, 2, 2), DType::F32, dev)?)?;
    let grads = max_pool3d_2x(&x)?.sum_all()?.backward()?;
    let dx = values(grads.get(&x).expect("dx"))?;
    assert_eq!(dx, [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
    Ok(())
}
test_device!(max_pool_tie_goes_to_first);
