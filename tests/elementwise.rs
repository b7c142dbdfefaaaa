//! Elementwise ops and per-channel broadcasts against their CPU twins, at
//! lengths that are and are not multiples of 4 and of the workgroup.

mod common;

use common::{assert_close, each_path, rng, uniform};
use ddpm_wgpu::ops::elementwise::{self as ew, cpu};

const SHAPES: &[&[usize]] = &[&[1], &[7], &[3, 5, 7], &[2, 6, 16, 16], &[1, 3, 5, 7], &[3, 64, 9, 9]];

fn zip(x: &[f32], y: &[f32], f: impl Fn(f64, f64) -> f64) -> Vec<f32> {
    x.iter().zip(y).map(|(&a, &b)| f(a as f64, b as f64) as f32).collect()
}

#[test]
fn binary_and_unary_ops() {
    let mut r = rng();
    for shape in SHAPES {
        let n: usize = shape.iter().product();
        let (x, y) = (uniform(&mut r, n), uniform(&mut r, n));
        // Wide inputs exercise SiLU's tails.
        let wide: Vec<f32> = x.iter().map(|v| v * 12.0).collect();
        each_path(|gpu, path| {
            let what = |op: &str| format!("{op} {shape:?} on {path:?}");
            let (tx, ty, tw) =
                (gpu.upload(shape, &x).unwrap(), gpu.upload(shape, &y).unwrap(), gpu.upload(shape, &wide).unwrap());
            let cases = [
                ("add", ew::add(gpu, &tx, &ty).unwrap(), zip(&x, &y, |a, b| a + b)),
                ("mul", ew::mul(gpu, &tx, &ty).unwrap(), zip(&x, &y, |a, b| a * b)),
                ("axpy", ew::axpy(gpu, &tx, -0.75, &ty).unwrap(), zip(&x, &y, |a, b| a - 0.75 * b)),
                ("scale", ew::scale(gpu, &tx, 3.5).unwrap(), zip(&x, &x, |a, _| 3.5 * a)),
                ("silu", ew::silu(gpu, &tw).unwrap(), cpu::silu(&wide)),
                ("silu_backward", ew::silu_backward(gpu, &ty, &tw).unwrap(), cpu::silu_backward(&y, &wide)),
            ];
            for (op, got, want) in cases {
                assert_eq!(got.shape(), *shape);
                assert_close(&what(op), &gpu.read(&got).unwrap(), &want, 1e-6, 1e-5);
            }
        });
    }
}

#[test]
fn per_channel_broadcast() {
    let mut r = rng();
    for shape in SHAPES.iter().filter(|s| s.len() >= 2) {
        let n: usize = shape.iter().product();
        let spatial: usize = shape[2..].iter().product();
        let x = uniform(&mut r, n);
        let v = uniform(&mut r, shape[1]);
        each_path(|gpu, path| {
            let (tx, tv) = (gpu.upload(shape, &x).unwrap(), gpu.upload(&[shape[1]], &v).unwrap());
            let got = gpu.read(&ew::add_channel(gpu, &tx, &tv).unwrap()).unwrap();
            assert_close(
                &format!("add_channel {shape:?} {path:?}"),
                &got,
                &cpu::channel_op(&x, &v, spatial, |a, b| a + b),
                1e-6,
                1e-6,
            );
        });
    }
}

#[test]
fn silu_backward_matches_finite_differences() {
    let x: Vec<f32> = (-40..=40).map(|i| i as f32 * 0.25).collect();
    let ones = vec![1.0; x.len()];
    let analytic = cpu::silu_backward(&ones, &x);
    let silu = |v: f64| v / (1.0 + (-v).exp());
    let h = 1e-6;
    let numeric: Vec<f32> = x.iter().map(|&v| ((silu(v as f64 + h) - silu(v as f64 - h)) / (2.0 * h)) as f32).collect();
    assert_close("silu' vs central differences", &analytic, &numeric, 1e-7, 1e-6);
}

#[test]
fn shape_mismatch_is_an_error() {
    let (_turn, gpu) = common::gpu();
    let a = gpu.zeros(&[2, 3]).unwrap();
    let b = gpu.zeros(&[3, 2]).unwrap();
    let err = ew::add(&gpu, &a, &b).unwrap_err().to_string();
    assert!(err.contains("add") && err.contains("[2, 3]") && err.contains("[3, 2]"), "{err}");
    let v = gpu.zeros(&[4]).unwrap();
    assert!(ew::add_channel(&gpu, &a, &v).is_err());
}

#[test]
fn views_and_in_place_accumulation_write_only_their_elements() {
    let mut r = rng();
    each_path(|gpu, path| {
        // Two 5-element views inside one flat buffer, as parameters' gradients sit.
        let flat = gpu.zeros(&[200]).unwrap();
        let first = flat.view(0, &[5]).unwrap();
        let second = flat.view(64, &[5]).unwrap();
        let x = uniform(&mut r, 5);
        let tx = gpu.upload(&[5], &x).unwrap();
        ew::accumulate(gpu, &second, 2.0, &tx).unwrap();
        ew::accumulate(gpu, &second, -0.5, &tx).unwrap();
        ew::fill_into(gpu, &first, 7.0).unwrap();
        let all = gpu.read(&flat).unwrap();
        let mut want = vec![0.0; 200];
        want[..5].fill(7.0);
        for i in 0..5 {
            want[64 + i] = (1.5 * x[i] as f64) as f32;
        }
        assert_close(&format!("views in a flat buffer on {path:?}"), &all, &want, 1e-6, 1e-6);
        assert_eq!(gpu.read(&second).unwrap().len(), 5);
    });
}
