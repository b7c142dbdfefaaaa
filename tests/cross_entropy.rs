//! softmax cross-entropy: the CPU backward against finite differences, then
//! the GPU forward and backward against the CPU twin on every kernel path,
//! at row counts below, at and above the forward's 256 lanes.

mod common;
mod gradcheck;

use common::{assert_close, each_path, rng, uniform};
use ddpm_wgpu::ops::cross_entropy::{self, class_labels, cpu};
use ddpm_wgpu::tape::Tape;
use gradcheck::{assert_grad_close, numeric_grad, to_f32, to_f64};
use rand::Rng;

#[test]
fn cpu_backward_matches_finite_differences() {
    let mut r = rng();
    let (rows, classes) = (4, 5);
    let logits = to_f64(&uniform(&mut r, rows * classes)).iter().map(|v| 3.0 * v).collect::<Vec<_>>();
    let labels: Vec<usize> = (0..rows).map(|_| r.random_range(0..classes)).collect();
    let (_, probs) = cpu::softmax_cross_entropy(&logits, &labels, classes);
    let analytic = cpu::softmax_cross_entropy_backward(&probs, &labels, classes, 0.7);
    let numeric = numeric_grad(&logits, |l| 0.7 * cpu::softmax_cross_entropy(l, &labels, classes).0);
    assert_grad_close("cross-entropy d logits", &analytic, &numeric);
}

#[test]
fn cpu_twin_matches_closed_forms() {
    // Equal logits: the loss is ln K whatever the label.
    let (loss, probs) = cpu::softmax_cross_entropy(&[2.0; 30], &[0, 4, 9], 10);
    assert!((loss - 10f64.ln()).abs() < 1e-12, "uniform logits: {loss}");
    assert!(probs.iter().all(|&p| (p - 0.1).abs() < 1e-12));
    // Huge logits must not overflow: the max is subtracted first.
    let (loss, _) = cpu::softmax_cross_entropy(&[1000.0, 0.0], &[1], 2);
    assert!((loss - 1000.0).abs() < 1e-9, "large logits: {loss}");
}

#[test]
fn gpu_forward_and_backward_match_cpu() {
    let mut r = rng();
    for (rows, classes) in [(1, 1), (3, 10), (5, 7), (256, 10), (300, 10)] {
        let logits: Vec<f32> = uniform(&mut r, rows * classes).iter().map(|v| 8.0 * v).collect();
        let labels: Vec<usize> = (0..rows).map(|_| r.random_range(0..classes)).collect();
        let d_loss = r.random_range(0.5..2.0f32);
        let (want_loss, want_probs) = cpu::softmax_cross_entropy(&to_f64(&logits), &labels, classes);
        let want_grad = cpu::softmax_cross_entropy_backward(&want_probs, &labels, classes, d_loss as f64);
        each_path(|gpu, path| {
            let what = format!("cross-entropy ({rows}, {classes}) on {path:?}");
            let x = gpu.upload(&[rows, classes], &logits).unwrap();
            let y = class_labels(gpu, &labels, classes).unwrap();
            let (loss, probs) = cross_entropy::softmax_cross_entropy(gpu, &x, &y).unwrap();
            assert_close(&format!("{what} loss"), &gpu.read(&loss).unwrap(), &[want_loss as f32], 1e-5, 1e-5);
            assert_close(&format!("{what} probs"), &gpu.read(&probs).unwrap(), &to_f32(&want_probs), 1e-6, 1e-5);
            let d = gpu.upload(&[1], &[d_loss]).unwrap();
            let grad = cross_entropy::softmax_cross_entropy_backward(gpu, &probs, &y, &d).unwrap();
            assert_close(&format!("{what} grad"), &gpu.read(&grad).unwrap(), &to_f32(&want_grad), 1e-7, 1e-5);

            // Through the tape: the gradient of the loss is the backward's at d_loss = 1.
            let mut tape = Tape::new(gpu);
            let v = tape.param(x.clone());
            let loss = tape.softmax_cross_entropy(&v, &y).unwrap();
            let grads = tape.backward(&loss).unwrap();
            let want_unit = cpu::softmax_cross_entropy_backward(&want_probs, &labels, classes, 1.0);
            assert_close(
                &format!("{what} tape grad"),
                &gpu.read(grads.get(&v).unwrap()).unwrap(),
                &to_f32(&want_unit),
                1e-7,
                1e-5,
            );
        });
    }
}

#[test]
fn labels_out_of_range_are_refused() {
    let (_turn, gpu) = common::gpu();
    let err = class_labels(&gpu, &[0, 10], 10).unwrap_err().to_string();
    assert!(err.contains("label 10"), "{err}");
}
