//! linear, timestep_embedding, class_embedding, upsample_nearest2x,
//! concat/split, mse_loss and mse_loss_per_sample: CPU backward against finite differences, then every GPU
//! forward and backward against the CPU twin at odd and aligned shapes.

mod common;
mod gradcheck;

use common::{assert_close, each_path, rng, uniform};
use ddpm_wgpu::ops::cross_entropy::class_labels;
use ddpm_wgpu::ops::{class_embedding, concat, embedding, linear, loss, upsample};
use gradcheck::{assert_grad_close, numeric_grad, to_f32, to_f64, weighted_sum};
use rand::Rng;

#[test]
fn cpu_backwards_match_finite_differences() {
    let mut r = rng();
    let mut rand64 = |n| to_f64(&uniform(&mut r, n));

    // linear: x (3, 4), w (2, 4), b (2)
    let (x, w, b, g) = (rand64(12), rand64(8), rand64(2), rand64(6));
    let (dx, dw, db) = linear::cpu::backward(&g, &x, &w, 4, 2);
    let loss = |x: &[f64], w: &[f64], b: &[f64]| weighted_sum(&g, &linear::cpu::forward(x, w, Some(b), 4, 2));
    assert_grad_close("linear dx", &dx, &numeric_grad(&x, |x| loss(x, &w, &b)));
    assert_grad_close("linear dw", &dw, &numeric_grad(&w, |w| loss(&x, w, &b)));
    assert_grad_close("linear db", &db, &numeric_grad(&b, |b| loss(&x, &w, b)));

    // class_embedding: 3 classes of dim 4, labels repeating one and skipping one
    let (table, g, labels) = (rand64(12), rand64(16), [2, 0, 2, 2]);
    let dtable = class_embedding::cpu::class_embedding_backward(&g, 4, &labels, 3);
    let numeric = numeric_grad(&table, |t| weighted_sum(&g, &class_embedding::cpu::class_embedding(t, 4, &labels)));
    assert_grad_close("class_embedding dtable", &dtable, &numeric);

    // upsample: 2 planes of 2x3
    let (x, g) = (rand64(12), rand64(48));
    let dx = upsample::cpu::upsample_nearest2x_backward(&g, 2, 3);
    let numeric = numeric_grad(&x, |x| weighted_sum(&g, &upsample::cpu::upsample_nearest2x(x, 2, 3)));
    assert_grad_close("upsample dx", &dx, &numeric);

    // concat: (2, 1, 3) and (2, 2, 3)
    let (a, b, g) = (rand64(6), rand64(12), rand64(18));
    let (da, db) = concat::cpu::split(&g, 2, 1, 3);
    assert_grad_close("concat da", &da, &numeric_grad(&a, |a| weighted_sum(&g, &concat::cpu::concat(a, &b, 2))));
    assert_grad_close("concat db", &db, &numeric_grad(&b, |b| weighted_sum(&g, &concat::cpu::concat(&a, b, 2))));

    // mse_loss with upstream gradient 0.7
    let (a, b) = (rand64(5), rand64(5));
    let da = loss::cpu::mse_loss_backward(&a, &b, 0.7);
    assert_grad_close("mse da", &da, &numeric_grad(&a, |a| 0.7 * loss::cpu::mse_loss(a, &b)));

    // weighted mse_loss: 3 rows of 4
    let (a, b, w) = (rand64(12), rand64(12), rand64(3));
    let da = loss::cpu::weighted_mse_loss_backward(&a, &b, &w, 0.7);
    let numeric = numeric_grad(&a, |a| 0.7 * loss::cpu::weighted_mse_loss(a, &b, &w));
    assert_grad_close("weighted mse da", &da, &numeric);
}

#[test]
fn linear_forward_and_backward() {
    let mut r = rng();
    for (shape, out, bias) in
        [(vec![1, 1], 1, true), (vec![3, 7], 5, true), (vec![2, 3, 16], 32, false), (vec![32, 64], 256, true)]
    {
        let inp = *shape.last().unwrap();
        let rows = shape.iter().product::<usize>() / inp;
        let (x, w, b, dy) = (
            uniform(&mut r, rows * inp),
            uniform(&mut r, out * inp),
            uniform(&mut r, out),
            uniform(&mut r, rows * out),
        );
        let want = linear::cpu::forward(&to_f64(&x), &to_f64(&w), bias.then_some(&to_f64(&b)[..]), inp, out);
        let (dx, dw, db) = linear::cpu::backward(&to_f64(&dy), &to_f64(&x), &to_f64(&w), inp, out);
        let atol = 1e-5 * (inp.max(out).max(rows) as f64).sqrt();
        each_path(|gpu, path| {
            let what = format!("linear {shape:?} -> {out} bias {bias} on {path:?}");
            let tx = gpu.upload(&shape, &x).unwrap();
            let tw = gpu.upload(&[out, inp], &w).unwrap();
            let tb = gpu.upload(&[out], &b).unwrap();
            let mut out_shape = shape.clone();
            *out_shape.last_mut().unwrap() = out;
            let tdy = gpu.upload(&out_shape, &dy).unwrap();
            let y = linear::linear_forward(gpu, &tx, &tw, bias.then_some(&tb)).unwrap();
            assert_eq!(y.shape(), &out_shape[..]);
            assert_close(&format!("{what}: y"), &gpu.read(&y).unwrap(), &to_f32(&want), atol, 1e-4);
            let g = linear::linear_backward(gpu, &tdy, &tx, &tw, bias).unwrap();
            assert_close(&format!("{what}: dx"), &gpu.read(&g.dx).unwrap(), &to_f32(&dx), atol, 1e-4);
            assert_close(&format!("{what}: dw"), &gpu.read(&g.dw).unwrap(), &to_f32(&dw), atol, 1e-4);
            assert_eq!(g.db.is_some(), bias);
            if let Some(tdb) = g.db {
                assert_close(&format!("{what}: db"), &gpu.read(&tdb).unwrap(), &to_f32(&db), atol, 1e-4);
            }
        });
    }
}

/// Timesteps up to 1000 make `t * freq` large, and the f32 `exp` that
/// forms `freq` is only good to a few ulp, so the phase carries an
/// absolute error of about 1000 * 4 * f32 epsilon; sin and cos inherit it.
/// (PyTorch in f32 has the same error.) Measured errors are about 3e-5; atol 2e-4 here.
#[test]
fn timestep_embedding_matches_diffusers_formula() {
    let mut r = rng();
    let cases = [
        embedding::TimestepEmbedding::new(32),
        embedding::TimestepEmbedding {
            flip_sin_to_cos: true,
            downscale_freq_shift: 0.0,
            ..embedding::TimestepEmbedding::new(64)
        },
        embedding::TimestepEmbedding {
            flip_sin_to_cos: true,
            downscale_freq_shift: 0.0,
            ..embedding::TimestepEmbedding::new(7)
        },
        embedding::TimestepEmbedding { max_period: 100.0, ..embedding::TimestepEmbedding::new(10) },
    ];
    for e in cases {
        for batch in [1, 3, 33] {
            let t: Vec<f32> = uniform(&mut r, batch).iter().map(|v| ((v + 1.0) * 500.0).floor()).collect();
            let want = embedding::cpu::timestep_embedding(&e, &t);
            each_path(|gpu, path| {
                let tt = gpu.upload(&[batch], &t).unwrap();
                let got = embedding::timestep_embedding(gpu, &e, &tt).unwrap();
                assert_eq!(got.shape(), &[batch, e.dim]);
                assert_close(&format!("{e:?} batch {batch} on {path:?}"), &gpu.read(&got).unwrap(), &want, 2e-4, 0.0);
            });
        }
    }
}

#[test]
fn timestep_embedding_known_values() {
    // dim 4, flip, shift 0: freqs 1 and 1/100; t = 1 gives [cos 1, cos .01, sin 1, sin .01].
    let (_turn, gpu) = common::gpu();
    let e =
        embedding::TimestepEmbedding { dim: 4, flip_sin_to_cos: true, downscale_freq_shift: 0.0, max_period: 10000.0 };
    let t = gpu.upload(&[2], &[0.0, 1.0]).unwrap();
    let got = gpu.read(&embedding::timestep_embedding(&gpu, &e, &t).unwrap()).unwrap();
    let want = [1.0, 1.0, 0.0, 0.0, 1f32.cos(), 0.01f32.cos(), 1f32.sin(), 0.01f32.sin()];
    assert_close("known embedding", &got, &want, 1e-6, 1e-5);
}

#[test]
fn upsample_forward_and_backward() {
    let mut r = rng();
    for shape in [[1, 1, 1, 1], [2, 3, 5, 7], [3, 2, 4, 4], [1, 6, 3, 2], [2, 3, 6, 8], [1, 2, 1, 12]] {
        let [n, c, h, w] = shape;
        let x = uniform(&mut r, n * c * h * w);
        let dy = uniform(&mut r, 4 * x.len());
        let want = upsample::cpu::upsample_nearest2x(&to_f64(&x), h, w);
        let dx = upsample::cpu::upsample_nearest2x_backward(&to_f64(&dy), h, w);
        each_path(|gpu, path| {
            let what = format!("upsample {shape:?} on {path:?}");
            let y = upsample::upsample_nearest2x(gpu, &gpu.upload(&shape, &x).unwrap()).unwrap();
            assert_eq!(y.shape(), &[n, c, 2 * h, 2 * w]);
            assert_close(&format!("{what}: y"), &gpu.read(&y).unwrap(), &to_f32(&want), 0.0, 0.0);
            let tdy = gpu.upload(&[n, c, 2 * h, 2 * w], &dy).unwrap();
            let got = upsample::upsample_nearest2x_backward(gpu, &tdy).unwrap();
            assert_eq!(got.shape(), &shape);
            assert_close(&format!("{what}: dx"), &gpu.read(&got).unwrap(), &to_f32(&dx), 1e-6, 1e-6);
        });
    }
}

/// Rows gathered exactly; the table's gradient sums each class's rows (a
/// class no label names gets zeros, written over the poisoned output).
#[test]
fn class_embedding_forward_and_backward() {
    let mut r = rng();
    for (rows, classes, dim) in [(1, 1, 1), (5, 3, 7), (70, 11, 64), (3, 6, 130), (128, 2, 33)] {
        let table = uniform(&mut r, classes * dim);
        let dy = uniform(&mut r, rows * dim);
        let labels: Vec<usize> = (0..rows).map(|_| r.random_range(0..classes)).collect();
        let want = class_embedding::cpu::class_embedding(&to_f64(&table), dim, &labels);
        let dtable = class_embedding::cpu::class_embedding_backward(&to_f64(&dy), dim, &labels, classes);
        each_path(|gpu, path| {
            let what = format!("class_embedding ({rows} of {classes} x {dim}) on {path:?}");
            let tlabels = class_labels(gpu, &labels, classes).unwrap();
            let ttable = gpu.upload(&[classes, dim], &table).unwrap();
            let out = class_embedding::class_embedding(gpu, &ttable, &tlabels).unwrap();
            assert_eq!(out.shape(), &[rows, dim]);
            assert_close(&format!("{what}: out"), &gpu.read(&out).unwrap(), &to_f32(&want), 0.0, 0.0);
            let got = gpu.uninit(&[classes, dim]).unwrap();
            let tdy = gpu.upload(&[rows, dim], &dy).unwrap();
            class_embedding::class_embedding_backward_into(gpu, &tdy, &tlabels, &got).unwrap();
            // A sum of `rows` f32 terms in [-1, 1] in order: each addition rounds by at most half
            // an ulp of a partial sum below `rows`.
            let atol = rows as f64 * rows as f64 * f32::EPSILON as f64 / 2.0;
            assert_close(&format!("{what}: dtable"), &gpu.read(&got).unwrap(), &to_f32(&dtable), atol, 1e-6);
        });
    }
    let (_turn, gpu) = common::gpu();
    let err = class_labels(&gpu, &[0, 3], 3).err().unwrap().to_string();
    assert!(err.contains("label 3 is not below the 3 classes"), "{err}");
}

#[test]
fn concat_and_split() {
    let mut r = rng();
    for (batch, ca, cb, plane) in [(1, 1, 1, 1), (2, 3, 5, 35), (3, 2, 6, 16), (2, 64, 32, 64), (1, 1, 2, 6)] {
        let a = uniform(&mut r, batch * ca * plane);
        let b = uniform(&mut r, batch * cb * plane);
        let want = concat::cpu::concat(&to_f64(&a), &to_f64(&b), batch);
        each_path(|gpu, path| {
            let what = format!("concat ({batch}, {ca}|{cb}, {plane}) on {path:?}");
            let ta = gpu.upload(&[batch, ca, plane], &a).unwrap();
            let tb = gpu.upload(&[batch, cb, plane], &b).unwrap();
            let out = concat::concat(gpu, &ta, &tb).unwrap();
            assert_eq!(out.shape(), &[batch, ca + cb, plane]);
            let got = gpu.read(&out).unwrap();
            assert_close(&format!("{what}: out"), &got, &to_f32(&want), 0.0, 0.0);
            let (da, db) = concat::split(gpu, &out, ca).unwrap();
            assert_close(&format!("{what}: split a"), &gpu.read(&da).unwrap(), &a, 0.0, 0.0);
            assert_close(&format!("{what}: split b"), &gpu.read(&db).unwrap(), &b, 0.0, 0.0);
        });
    }
}

#[test]
fn mse_loss_forward_and_backward() {
    let mut r = rng();
    for n in [1, 5, 8, 1023, 32 * 3 * 32 * 32] {
        let (a, b) = (uniform(&mut r, n), uniform(&mut r, n));
        let d_loss = 0.37f32;
        let want = loss::cpu::mse_loss(&to_f64(&a), &to_f64(&b));
        let da = loss::cpu::mse_loss_backward(&to_f64(&a), &to_f64(&b), d_loss as f64);
        each_path(|gpu, path| {
            let what = format!("mse_loss n {n} on {path:?}");
            let (ta, tb) = (gpu.upload(&[n], &a).unwrap(), gpu.upload(&[n], &b).unwrap());
            let l = loss::mse_loss(gpu, &ta, &tb).unwrap();
            let got = gpu.read(&l).unwrap();
            assert_close(&format!("{what}: loss"), &got, &[want as f32], 0.0, 1e-5);
            // Deterministic: the same inputs give the same bits.
            assert_eq!(gpu.read(&loss::mse_loss(gpu, &ta, &tb).unwrap()).unwrap(), got, "{what}: not reproducible");
            let g = loss::mse_loss_backward(gpu, &ta, &tb, None, &gpu.upload(&[1], &[d_loss]).unwrap()).unwrap();
            assert_close(&format!("{what}: da"), &gpu.read(&g).unwrap(), &to_f32(&da), 1e-9, 1e-5);
        });
    }
}

/// Rows of odd lengths (a vec4 straddles two rows), row lengths past the
/// 256 lanes, weights of mixed sign and size; outputs poisoned (NaN).
#[test]
fn weighted_mse_loss_matches_cpu() {
    let mut r = rng();
    for (rows, dim) in [(1, 1), (3, 5), (5, 8), (7, 1023), (16, 784), (33, 3)] {
        let (a, b, w) = (uniform(&mut r, rows * dim), uniform(&mut r, rows * dim), uniform(&mut r, rows));
        let d_loss = 0.37f32;
        let (a64, b64, w64) = (to_f64(&a), to_f64(&b), to_f64(&w));
        let want = loss::cpu::weighted_mse_loss(&a64, &b64, &w64);
        let da = loss::cpu::weighted_mse_loss_backward(&a64, &b64, &w64, d_loss as f64);
        each_path(|gpu, path| {
            let what = format!("weighted_mse_loss ({rows}, {dim}) on {path:?}");
            let shape = [rows, 1, dim];
            let (ta, tb) = (gpu.upload(&shape, &a).unwrap(), gpu.upload(&shape, &b).unwrap());
            let tw = gpu.upload(&[rows], &w).unwrap();
            let got = gpu.read(&loss::weighted_mse_loss(gpu, &ta, &tb, &tw).unwrap()).unwrap();
            assert_close(&format!("{what}: loss"), &got, &[want as f32], 1e-7, 1e-5);
            let d = gpu.upload(&[1], &[d_loss]).unwrap();
            let g = loss::mse_loss_backward(gpu, &ta, &tb, Some(&tw), &d).unwrap();
            assert_close(&format!("{what}: da"), &gpu.read(&g).unwrap(), &to_f32(&da), 1e-9, 1e-5);
        });
    }
    let (_turn, gpu) = common::gpu();
    let x = gpu.zeros(&[2, 3]).unwrap();
    let err = loss::weighted_mse_loss(&gpu, &x, &x, &gpu.zeros(&[3]).unwrap()).err().unwrap().to_string();
    assert!(err.contains("weights") && err.contains("[3]"), "{err}");
}

/// Per-row means at odd and aligned row lengths (the scalar and vec4
/// paths), row counts that are not multiples of 4 (component writes) and
/// rows longer than a workgroup's 256 lanes; outputs start poisoned (NaN),
/// a write into a view leaves its neighbours alone, and a row's value does
/// not depend on the other rows.
#[test]
fn mse_loss_per_sample_matches_cpu() {
    let mut r = rng();
    for (rows, dim) in [(1, 1), (3, 5), (5, 8), (7, 1023), (2, 3 * 32 * 32), (16, 784), (33, 3)] {
        let (a, b) = (uniform(&mut r, rows * dim), uniform(&mut r, rows * dim));
        let want = loss::cpu::mse_loss_per_sample(&to_f64(&a), &to_f64(&b), rows);
        each_path(|gpu, path| {
            let what = format!("mse_loss_per_sample ({rows}, {dim}) on {path:?}");
            let shape = [rows, 1, dim];
            let (ta, tb) = (gpu.upload(&shape, &a).unwrap(), gpu.upload(&shape, &b).unwrap());
            let out = loss::mse_loss_per_sample(gpu, &ta, &tb).unwrap();
            assert_eq!(out.shape(), &[rows]);
            let got = gpu.read(&out).unwrap();
            assert_close(&what, &got, &to_f32(&want), 0.0, 1e-5);
            let again = gpu.read(&loss::mse_loss_per_sample(gpu, &ta, &tb).unwrap()).unwrap();
            assert_eq!(again, got, "{what}: not reproducible");
            // Into the second slot of a poisoned log: the first slot stays NaN.
            let log = gpu.uninit(&[2 * 64]).unwrap();
            loss::mse_loss_per_sample_into(gpu, &ta, &tb, &log.view(64, &[rows]).unwrap()).unwrap();
            let log = gpu.read(&log).unwrap();
            assert_eq!(log[64..64 + rows], got[..], "{what}: into a view");
            assert!(log[..64].iter().chain(&log[64 + rows..]).all(|v| v.is_nan()), "{what}: wrote outside its view");
            // One row alone gives the same bits as in the batch.
            let first = loss::mse_loss_per_sample(
                gpu,
                &gpu.upload(&[1, dim], &a[..dim]).unwrap(),
                &gpu.upload(&[1, dim], &b[..dim]).unwrap(),
            )
            .unwrap();
            assert_eq!(gpu.read(&first).unwrap()[0].to_bits(), got[0].to_bits(), "{what}: row 0 alone");
        });
    }
    let (_turn, gpu) = common::gpu();
    let x = gpu.zeros(&[2, 3]).unwrap();
    let err = loss::mse_loss_per_sample_into(&gpu, &x, &x, &gpu.zeros(&[3]).unwrap()).err().unwrap().to_string();
    assert!(err.contains("mse_loss_per_sample") && err.contains("[3]"), "{err}");
}
