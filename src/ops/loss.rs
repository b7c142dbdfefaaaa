//! Mean squared error, the DDPM training loss, and its gradient; and the
//! error of each sample (what training logs per timestep). Kernel:
//! `shaders/loss.wgsl`.

use anyhow::{ensure, Result};
use bytemuck::{Pod, Zeroable};

use crate::gpu::{Access, Gpu, Kernel, Shader, Tensor};

/// Mirrors `Params` in `shaders/loss.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    /// Elements averaged: all of them, or one row's for the per-sample loss.
    n: u32,
    inv_n: f32,
    /// Rows of the per-sample loss (1 otherwise).
    rows: u32,
    _pad0: u32,
}

const FORWARD_BINDINGS: &[Access] = &[Access::ReadWrite, Access::Read, Access::Read];
const BACKWARD_BINDINGS: &[Access] = &[Access::ReadWrite, Access::Read, Access::Read, Access::Read];

/// The per-sample loss binds its output as scalars: its own variant.
pub fn variants() -> Vec<Vec<(&'static str, i64)>> {
    vec![vec![("PER_SAMPLE", 0)], vec![("PER_SAMPLE", 1)]]
}

fn params(op: &str, a: &Tensor, b: &Tensor) -> Result<Params> {
    ensure!(a.shape() == b.shape(), "{op}: shapes differ: {:?} and {:?}", a.shape(), b.shape());
    ensure!(!a.is_empty(), "{op}: empty input {:?}", a.shape());
    Ok(Params { n: a.len() as u32, inv_n: 1.0 / a.len() as f32, rows: 1, _pad0: 0 })
}

/// `mean((a - b)^2)` as a (1) tensor, bit-reproducible.
pub fn mse_loss(gpu: &Gpu, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let p = params("mse_loss", a, b)?;
    let loss = gpu.uninit(&[1])?;
    gpu.launch(
        &Kernel::new(Shader::Loss, "mse_loss", FORWARD_BINDINGS).with_defines(vec![("PER_SAMPLE", 0)]),
        &p,
        &[&loss, a, b],
        [1, 1, 1],
    )?;
    Ok(loss)
}

/// Gradient with respect to `a`: `2 (a - b) / n * d_loss` (the gradient
/// with respect to `b` is its negation). `d_loss` is a (1) tensor.
pub fn mse_loss_backward(gpu: &Gpu, a: &Tensor, b: &Tensor, d_loss: &Tensor) -> Result<Tensor> {
    let p = params("mse_loss backward", a, b)?;
    ensure!(d_loss.len() == 1, "mse_loss backward: d_loss {:?} must hold one value", d_loss.shape());
    let da = gpu.uninit(a.shape())?;
    let kernel =
        Kernel::new(Shader::Loss, "mse_loss_backward", BACKWARD_BINDINGS).with_defines(vec![("PER_SAMPLE", 0)]);
    gpu.launch(&kernel, &p, &[&da, a, b, d_loss], Gpu::grid_1d(a.len().div_ceil(4 * 64) as u32))?;
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
    let p = Params { n: n as u32, inv_n: 1.0 / n as f32, rows: rows as u32, _pad0: 0 };
    let kernel =
        Kernel::new(Shader::Loss, "mse_loss_per_sample", FORWARD_BINDINGS).with_defines(vec![("PER_SAMPLE", 1)]);
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
}
