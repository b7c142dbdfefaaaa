//! Mean squared error, the DDPM training loss, and its gradient. Kernel:
//! `shaders/loss.wgsl`.

use anyhow::{ensure, Result};
use bytemuck::{Pod, Zeroable};

use crate::gpu::{Access, Gpu, Kernel, Shader, Tensor};

/// Mirrors `Params` in `shaders/loss.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    inv_n: f32,
    _pad0: u32,
    _pad1: u32,
}

const FORWARD_BINDINGS: &[Access] = &[Access::ReadWrite, Access::Read, Access::Read];
const BACKWARD_BINDINGS: &[Access] = &[Access::ReadWrite, Access::Read, Access::Read, Access::Read];

fn params(op: &str, a: &Tensor, b: &Tensor) -> Result<Params> {
    ensure!(a.shape() == b.shape(), "{op}: shapes differ: {:?} and {:?}", a.shape(), b.shape());
    ensure!(!a.is_empty(), "{op}: empty input {:?}", a.shape());
    Ok(Params { n: a.len() as u32, inv_n: 1.0 / a.len() as f32, _pad0: 0, _pad1: 0 })
}

/// `mean((a - b)^2)` as a (1) tensor, bit-reproducible.
pub fn mse_loss(gpu: &Gpu, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let p = params("mse_loss", a, b)?;
    let loss = gpu.uninit(&[1])?;
    gpu.launch(&Kernel::new(Shader::Loss, "mse_loss", FORWARD_BINDINGS), &p, &[&loss, a, b], [1, 1, 1])?;
    Ok(loss)
}

/// Gradient with respect to `a`: `2 (a - b) / n * d_loss` (the gradient
/// with respect to `b` is its negation). `d_loss` is a (1) tensor.
pub fn mse_loss_backward(gpu: &Gpu, a: &Tensor, b: &Tensor, d_loss: &Tensor) -> Result<Tensor> {
    let p = params("mse_loss backward", a, b)?;
    ensure!(d_loss.len() == 1, "mse_loss backward: d_loss {:?} must hold one value", d_loss.shape());
    let da = gpu.uninit(a.shape())?;
    let kernel = Kernel::new(Shader::Loss, "mse_loss_backward", BACKWARD_BINDINGS);
    gpu.launch(&kernel, &p, &[&da, a, b, d_loss], Gpu::grid_1d(a.len().div_ceil(4 * 64) as u32))?;
    Ok(da)
}

/// CPU twins, in f64.
pub mod cpu {
    pub fn mse_loss(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>() / a.len() as f64
    }

    pub fn mse_loss_backward(a: &[f64], b: &[f64], d_loss: f64) -> Vec<f64> {
        a.iter().zip(b).map(|(x, y)| 2.0 * (x - y) / a.len() as f64 * d_loss).collect()
    }
}
