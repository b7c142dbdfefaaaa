//! Fully connected layer in PyTorch's layout, built on `ops::matmul::gemm`
//! (bias fused into the forward GEMM) and `ops::reduce` (bias gradient).

use anyhow::{ensure, Result};

use crate::gpu::{Gpu, Tensor};
use crate::ops::matmul::{gemm, Gemm};
use crate::ops::reduce;

/// (rows, in, out) of `x` (.., in) against `w` (out, in).
fn geometry(x: &Tensor, w: &Tensor) -> Result<(usize, usize, usize)> {
    let (sx, sw) = (x.shape(), w.shape());
    ensure!(
        !sx.is_empty() && sw.len() == 2 && sx[sx.len() - 1] == sw[1],
        "linear: input {sx:?} does not match weight {sw:?} (out, in)"
    );
    Ok((x.len() / sw[1], sw[1], sw[0]))
}

/// `y = x w^T + b` for `x` (.., in), `w` (out, in), `b` (out); `y` is (.., out).
pub fn linear_forward(gpu: &Gpu, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let (rows, inp, out) = geometry(x, w)?;
    if let Some(b) = b {
        ensure!(b.shape() == [out], "linear: bias {:?} must be ({out})", b.shape());
    }
    let mut shape = x.shape().to_vec();
    *shape.last_mut().unwrap() = out;
    let y = gpu.uninit(&shape)?;
    gemm(gpu, &Gemm { trans_b: true, ..Gemm::new(rows, out, inp) }, &y, x, w, b)?;
    Ok(y)
}

pub struct LinearGrads {
    /// (.., in)
    pub dx: Tensor,
    /// (out, in)
    pub dw: Tensor,
    /// (out), when the layer has a bias
    pub db: Option<Tensor>,
}

/// Gradients of `linear_forward` given `dy` (.., out).
pub fn linear_backward(gpu: &Gpu, dy: &Tensor, x: &Tensor, w: &Tensor, has_bias: bool) -> Result<LinearGrads> {
    let dx = linear_grad_input(gpu, dy, x, w)?;
    let dw = gpu.uninit(w.shape())?;
    linear_grad_weight_into(gpu, dy, x, w, &dw)?;
    let db = match has_bias {
        true => {
            let db = gpu.uninit(&[w.shape()[0]])?;
            linear_grad_bias_into(gpu, dy, &db)?;
            Some(db)
        }
        false => None,
    };
    Ok(LinearGrads { dx, dw, db })
}

/// dx = dy w: (rows, out) x (out, in).
pub fn linear_grad_input(gpu: &Gpu, dy: &Tensor, x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (rows, inp, out) = geometry(x, w)?;
    ensure!(dy.len() == rows * out, "linear backward: dy {:?} vs {rows} rows of {out}", dy.shape());
    let dx = gpu.uninit(x.shape())?;
    gemm(gpu, &Gemm::new(rows, inp, out), &dx, dy, w, None)?;
    Ok(dx)
}

/// dw = dy^T x: (out, rows) x (rows, in), written into `dw` (out, in).
pub fn linear_grad_weight_into(gpu: &Gpu, dy: &Tensor, x: &Tensor, w: &Tensor, dw: &Tensor) -> Result<()> {
    let (rows, inp, out) = geometry(x, w)?;
    ensure!(dy.len() == rows * out, "linear backward: dy {:?} vs {rows} rows of {out}", dy.shape());
    gemm(gpu, &Gemm { trans_a: true, ..Gemm::new(out, inp, rows) }, dw, dy, x, None)
}

/// db = dy summed over rows, written into `db` (out).
pub fn linear_grad_bias_into(gpu: &Gpu, dy: &Tensor, db: &Tensor) -> Result<()> {
    let out = db.len();
    ensure!(out > 0 && dy.len().is_multiple_of(out), "linear backward: dy {:?} vs bias {:?}", dy.shape(), db.shape());
    reduce::sum_into(gpu, &dy.reshape(&[dy.len() / out, out])?, &[0], db)
}

/// CPU twin, all in f64. x: (rows, in), w: (out, in).
pub mod cpu {
    pub fn forward(x: &[f64], w: &[f64], b: Option<&[f64]>, inp: usize, out: usize) -> Vec<f64> {
        x.chunks(inp)
            .flat_map(|row| {
                (0..out).map(move |o| {
                    let dot: f64 = row.iter().zip(&w[o * inp..(o + 1) * inp]).map(|(a, b)| a * b).sum();
                    dot + b.map_or(0.0, |b| b[o])
                })
            })
            .collect()
    }

    /// (dx, dw, db)
    pub fn backward(dy: &[f64], x: &[f64], w: &[f64], inp: usize, out: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let rows = x.len() / inp;
        let (mut dx, mut dw, mut db) = (vec![0.0; x.len()], vec![0.0; w.len()], vec![0.0; out]);
        for r in 0..rows {
            for o in 0..out {
                let g = dy[r * out + o];
                db[o] += g;
                for i in 0..inp {
                    dx[r * inp + i] += g * w[o * inp + i];
                    dw[o * inp + i] += g * x[r * inp + i];
                }
            }
        }
        (dx, dw, db)
    }
}
