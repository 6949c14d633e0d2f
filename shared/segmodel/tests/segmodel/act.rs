use crate::reference::{Rng, assert_close, tensor, values};
use candle_core::{Device, Result, Var};
use segmodel::ops::{leaky_relu, relu};
use segmodel::test_device;

fn leaky_relu_forward_and_backward(dev: &Device) -> Result<()> {
    let mut rng = Rng::new(3);
    let mut xv = rng.vec(2 * 3 * 5 * 6 * 7);
    xv[0] = 0.0; // the kink: derivative `slope`, as PyTorch
    for slope in [0.0, 0.1] {
        let x = Var::from_tensor(&tensor(&xv, &[2, 3, 5, 6, 7], dev)?)?;
        let y = if slope == 0.0 {
            relu(&x)?
        } else {
            leaky_relu(&x, slope)?
        };
        let want: Vec<f64> = xv
            .iter()
            .map(|&v| if v > 0.0 { v } else { slope * v })
            .collect();
        assert_close(&values(&y)?, &want, 1e-7, "leaky relu fwd");
        let gv = rng.vec(xv.len());
        let grads = (y * tensor(&gv, &[2, 3, 5, 6, 7], dev)?)?
            .sum_all()?
            .backward()?;
        let want: Vec<f64> = xv
            .iter()
            .zip(&gv)
            .map(|(&v, &g)| if v > 0.0 { g } else { slope * g })
            .collect();
        assert_close(
            &values(grads.get(&x).expect("dx"))?,
            &want,
            1e-7,
            "leaky relu dx",
        );
    }
    assert!(leaky_relu(&tensor(&xv, &[xv.len()], dev)?, -1.0).is_err());
    Ok(())
}
test_device!(leaky_relu_forward_and_backward);
