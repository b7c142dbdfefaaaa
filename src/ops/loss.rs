//! Mean squared error, the DDPM training loss, and its gradient, optionally
//! with a weight per sample (min-SNR weighting); and the error of each sample
//! (what training logs per timestep). Kernel: `shaders/loss.wgsl`.

use anyhow::{ensure, Result};

use crate::gpu::{kernel_params, Access, Gpu, Kernel, Shader, Tensor};

kernel_params! {
    /// Mirrors `Params` in `shaders/loss.wgsl`.
    struct Params {
        /// Elements averaged: all of them, or one row's for the per-sample loss.
        n: u32,
        inv_n: f32,
        /// Rows of the per-sample loss and of the weights (1 otherwise).
        rows: u32,
        /// Elements per row of the weights.
        row_len: u32,
    }
}

/// The per-sample loss binds its output as scalars, the weighted loss binds
/// its weights: each its own variant.
pub fn variants() -> Vec<Vec<(&'static str, i64)>> {
    vec![
        vec![("PER_SAMPLE", 0), ("WEIGHTED", 0)],
        vec![("PER_SAMPLE", 0), ("WEIGHTED", 1)],
        vec![("PER_SAMPLE", 1), ("WEIGHTED", 0)],
    ]
}

/// The kernel `entry` of the whole-tensor loss, weighted or not, with its
/// bindings: `extra` inputs after `out, a, b` (the weights first).
fn whole_kernel(entry: &'static str, weighted: bool, extra: usize) -> Kernel {
    const BINDINGS: &[Access] = &[Access::ReadWrite, Access::Read, Access::Read, Access::Read, Access::Read];
    Kernel::new(Shader::Loss, entry, &BINDINGS[..3 + extra + weighted as usize])
        .with_defines(vec![("PER_SAMPLE", 0), ("WEIGHTED", weighted as i64)])
}

fn params(op: &str, a: &Tensor, b: &Tensor, weights: Option<&Tensor>) -> Result<Params> {
    ensure!(a.shape() == b.shape(), "{op}: shapes differ: {:?} and {:?}", a.shape(), b.shape());
    ensure!(!a.is_empty(), "{op}: empty input {:?}", a.shape());
    ensure!(a.len() < u32::MAX as usize, "{op}: {:?} too large for u32 indexing", a.shape());
    let rows = match weights {
        Some(w) => {
            let rows = a.shape()[0];
            ensure!(w.shape() == [rows], "{op}: weights {:?} must be one per row of {:?}", w.shape(), a.shape());
            rows
        }
        None => 1,
    };
    Ok(Params { n: a.len() as u32, inv_n: 1.0 / a.len() as f32, rows: rows as u32, row_len: (a.len() / rows) as u32 })
}

/// `mean((a - b)^2)` as a (1) tensor, bit-reproducible.
pub fn mse_loss(gpu: &Gpu, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    mse_loss_with(gpu, a, b, None)
}

/// `mean(w[r] (a - b)^2)` of (N, ...) tensors with the (N) weights `w`, each
/// row's elements weighted by its weight: a weighted training loss.
pub fn weighted_mse_loss(gpu: &Gpu, a: &Tensor, b: &Tensor, w: &Tensor) -> Result<Tensor> {
    mse_loss_with(gpu, a, b, Some(w))
}

fn mse_loss_with(gpu: &Gpu, a: &Tensor, b: &Tensor, weights: Option<&Tensor>) -> Result<Tensor> {
    let p = params("mse_loss", a, b, weights)?;
    let loss = gpu.uninit(&[1])?;
    let mut inputs = vec![&loss, a, b];
    inputs.extend(weights);
    gpu.launch(&whole_kernel("mse_loss", weights.is_some(), 0), &p, &inputs, [1, 1, 1])?;
    Ok(loss)
}

/// Gradient with respect to `a` of [`mse_loss`] (`weights` None) or
/// [`weighted_mse_loss`]: `2 w[r] (a - b) / n * d_loss` (the gradient with
/// respect to `b` is its negation). `d_loss` is a (1) tensor.
pub fn mse_loss_backward(
    gpu: &Gpu,
    a: &Tensor,
    b: &Tensor,
    weights: Option<&Tensor>,
    d_loss: &Tensor,
) -> Result<Tensor> {
    let p = params("mse_loss backward", a, b, weights)?;
    ensure!(d_loss.len() == 1, "mse_loss backward: d_loss {:?} must hold one value", d_loss.shape());
    let da = gpu.uninit(a.shape())?;
    let mut inputs = vec![&da, a, b];
    inputs.extend(weights);
    inputs.push(d_loss);
    let kernel = whole_kernel("mse_loss_backward", weights.is_some(), 1);
    gpu.launch(&kernel, &p, &inputs, Gpu::grid_1d(a.len().div_ceil(4 * 64) as u32))?;
    Ok(da)
}

/// `mean((a - b)^2)` over each row of (N, ...) tensors, into the (N) tensor
/// `out` (which may be a view): every row summed in a fixed order by its own
/// workgroup, so a row's value depends on nothing else.
pub fn mse_loss_per_sample_into(gpu: &Gpu, a: &Tensor, b: &Tensor, out: &Tensor) -> Result<()> {
    let op = "mse_loss_per_sample";
    ensure!(a.shape() == b.shape(), "{op}: shapes differ: {:?} and {:?}", a.shape(), b.shape());
    ensure!(!a.shape().is_empty() && !a.is_empty(), "{op}: needs a non-empty (N, ...) input, got {:?}", a.shape());
    ensure!(a.len() < u32::MAX as usize, "{op}: {:?} too large for u32 indexing", a.shape());
    let rows = a.shape()[0];
    ensure!(out.shape() == [rows], "{op}: output {:?} must be one value per row of {:?}", out.shape(), a.shape());
    let n = a.len() / rows;
    let p = Params { n: n as u32, inv_n: 1.0 / n as f32, rows: rows as u32, row_len: n as u32 };
    const BINDINGS: &[Access] = &[Access::ReadWrite, Access::Read, Access::Read];
    let kernel = Kernel::new(Shader::Loss, "mse_loss_per_sample", BINDINGS)
        .with_defines(vec![("PER_SAMPLE", 1), ("WEIGHTED", 0)]);
    gpu.launch(&kernel, &p, &[out, a, b], Gpu::grid_1d(rows as u32))
}

/// `mean((a - b)^2)` of each row of (N, ...) tensors, as an (N) tensor.
pub fn mse_loss_per_sample(gpu: &Gpu, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    ensure!(!a.shape().is_empty(), "mse_loss_per_sample: needs an (N, ...) input, got {:?}", a.shape());
    let out = gpu.uninit(&[a.shape()[0]])?;
    mse_loss_per_sample_into(gpu, a, b, &out)?;
    Ok(out)
}

/// CPU twins, in f64.
pub mod cpu {
    pub fn mse_loss(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>() / a.len() as f64
    }

    /// a, b: (rows, D) flattened; the (rows) means.
    pub fn mse_loss_per_sample(a: &[f64], b: &[f64], rows: usize) -> Vec<f64> {
        let dim = a.len() / rows;
        a.chunks(dim).zip(b.chunks(dim)).map(|(a, b)| mse_loss(a, b)).collect()
    }

    pub fn mse_loss_backward(a: &[f64], b: &[f64], d_loss: f64) -> Vec<f64> {
        a.iter().zip(b).map(|(x, y)| 2.0 * (x - y) / a.len() as f64 * d_loss).collect()
    }

    /// a, b: (rows, D) flattened, w: (rows); `mean(w[r] (a - b)^2)`.
    pub fn weighted_mse_loss(a: &[f64], b: &[f64], w: &[f64]) -> f64 {
        let dim = a.len() / w.len();
        let sum: f64 = a.iter().zip(b).enumerate().map(|(i, (x, y))| w[i / dim] * (x - y) * (x - y)).sum();
        sum / a.len() as f64
    }

    pub fn weighted_mse_loss_backward(a: &[f64], b: &[f64], w: &[f64], d_loss: f64) -> Vec<f64> {
        let dim = a.len() / w.len();
        a.iter().zip(b).enumerate().map(|(i, (x, y))| 2.0 * w[i / dim] * (x - y) / a.len() as f64 * d_loss).collect()
    }
}
