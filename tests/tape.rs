//! The autodiff tape: composite graphs against finite differences, and
//! gradient accumulation where a value is used twice.

mod common;

use common::{check_gradients, rng, uniform};
use ddpm_wgpu::tape::Tape;

#[test]
fn small_graph_matches_finite_differences() {
    let (_turn, gpu) = common::gpu();
    let mut r = rng();
    let params: Vec<(&[usize], Vec<f32>)> = vec![
        (&[4, 6], uniform(&mut r, 24)),
        (&[5, 6], uniform(&mut r, 30)),
        (&[5], uniform(&mut r, 5)),
        (&[2, 2], uniform(&mut r, 4)),
        (&[3, 2], uniform(&mut r, 6)),
        (&[3], uniform(&mut r, 3)),
        (&[10, 3], uniform(&mut r, 30)),
    ];
    check_gradients(&gpu, "linear/silu/add/per-sample/transpose/mse", &params, 12, 1e-2, (2e-3, 2e-2), |t, v| {
        let h = t.linear(&v[0], &v[1], &v[2])?;
        let h = t.silu(&h)?;
        // `h` feeds two ops: both gradient contributions must arrive.
        let h = t.add(&h, &h)?;
        let h = t.reshape(&h, &[2, 2, 5])?;
        let h = t.add_per_sample(&h, &v[3])?;
        let h = t.transpose12(&h, [2, 2, 5, 1])?;
        let h = t.reshape(&h, &[10, 2])?;
        let y = t.linear(&h, &v[4], &v[5])?;
        t.mse_loss(&y, &v[6])
    });
}

#[test]
fn value_used_twice_gets_both_contributions() {
    let (_turn, gpu) = common::gpu();
    let mut tape = Tape::new(&gpu);
    let x = tape.param(gpu.upload(&[3], &[1.0, -2.0, 0.5]).unwrap());
    let zero = tape.input(gpu.zeros(&[3]).unwrap());
    // loss = mean((x + x)^2) = 4 mean(x^2): d/dx = 8 x / 3.
    let y = tape.add(&x, &x).unwrap();
    let loss = tape.mse_loss(&y, &zero).unwrap();
    let grads = tape.backward(&loss).unwrap();
    let g = gpu.read(grads.get(&x).unwrap()).unwrap();
    common::assert_close("d/dx of mean((x+x)^2)", &g, &[8.0 / 3.0, -16.0 / 3.0, 4.0 / 3.0], 1e-6, 1e-6);
    assert!(grads.get(&zero).is_none(), "inputs get no gradient");
}

#[test]
fn forward_without_parameters_records_nothing() {
    let (_turn, gpu) = common::gpu();
    let mut tape = Tape::new(&gpu);
    let a = tape.input(gpu.upload(&[2], &[1.0, 2.0]).unwrap());
    let b = tape.silu(&a).unwrap();
    let loss = tape.mse_loss(&b, &a).unwrap();
    let grads = tape.backward(&loss).unwrap();
    assert!(grads.get(&a).is_none());
}
