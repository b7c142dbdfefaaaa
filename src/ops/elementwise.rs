//! Elementwise ops and per-channel broadcasts. Kernels:
//! `shaders/elementwise.wgsl`, one vec4 per invocation.

use anyhow::{ensure, Result};

use crate::gpu::{kernel_params, Access, Gpu, Kernel, Shader, Tensor};

kernel_params! {
    /// Mirrors `Params` in `shaders/elementwise.wgsl`.
    struct Params {
        len: u32,
        spatial: u32,
        channels: u32,
        s: f32,
    }
}

const WORKGROUP: u32 = 64;
const OUT: &[Access] = &[Access::ReadWrite];
const UNARY: &[Access] = &[Access::ReadWrite, Access::Read];
const BINARY: &[Access] = &[Access::ReadWrite, Access::Read, Access::Read];

fn run(gpu: &Gpu, entry: &'static str, bindings: &'static [Access], params: Params, tensors: &[&Tensor]) -> Result<()> {
    let groups = params.len.div_ceil(4).div_ceil(WORKGROUP);
    gpu.launch(&Kernel::new(Shader::Elementwise, entry, bindings), &params, tensors, Gpu::grid_1d(groups))
}

fn flat(len: usize, s: f32) -> Params {
    Params { len: len as u32, spatial: 1, channels: 1, s }
}

fn same_shape(op: &str, x: &Tensor, y: &Tensor) -> Result<()> {
    ensure!(x.shape() == y.shape(), "{op}: shapes differ: {:?} and {:?}", x.shape(), y.shape());
    Ok(())
}

/// Set every element of `out` to `value`.
pub fn fill_into(gpu: &Gpu, out: &Tensor, value: f32) -> Result<()> {
    run(gpu, "fill", OUT, flat(out.len(), value), &[out])
}

fn binary(gpu: &Gpu, entry: &'static str, x: &Tensor, y: &Tensor, s: f32) -> Result<Tensor> {
    same_shape(entry, x, y)?;
    let out = gpu.uninit(x.shape())?;
    run(gpu, entry, BINARY, flat(x.len(), s), &[&out, x, y])?;
    Ok(out)
}

fn unary(gpu: &Gpu, entry: &'static str, x: &Tensor, s: f32) -> Result<Tensor> {
    let out = gpu.uninit(x.shape())?;
    run(gpu, entry, UNARY, flat(x.len(), s), &[&out, x])?;
    Ok(out)
}

pub fn add(gpu: &Gpu, x: &Tensor, y: &Tensor) -> Result<Tensor> {
    binary(gpu, "add", x, y, 0.0)
}

pub fn mul(gpu: &Gpu, x: &Tensor, y: &Tensor) -> Result<Tensor> {
    binary(gpu, "mul", x, y, 0.0)
}

/// `x + s * y`
pub fn axpy(gpu: &Gpu, x: &Tensor, s: f32, y: &Tensor) -> Result<Tensor> {
    binary(gpu, "axpy", x, y, s)
}

/// `out += s * x`, in place (`out` may be a view, e.g. a parameter's gradient).
pub fn accumulate(gpu: &Gpu, out: &Tensor, s: f32, x: &Tensor) -> Result<()> {
    ensure!(out.len() == x.len(), "accumulate: {:?} into {:?}", x.shape(), out.shape());
    run(gpu, "accumulate", UNARY, flat(x.len(), s), &[out, x])
}

/// `s * x`
pub fn scale(gpu: &Gpu, x: &Tensor, s: f32) -> Result<Tensor> {
    unary(gpu, "scale", x, s)
}

pub fn silu(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    unary(gpu, "silu", x, 0.0)
}

/// Gradient of `silu` at `x` given the output gradient `dy`.
pub fn silu_backward(gpu: &Gpu, dy: &Tensor, x: &Tensor) -> Result<Tensor> {
    binary(gpu, "silu_backward", dy, x, 0.0)
}

/// `x` seen as (N, C, spatial...) with axis 1 of length `v.len()`.
fn channel_op(gpu: &Gpu, entry: &'static str, x: &Tensor, v: &Tensor) -> Result<Tensor> {
    let s = x.shape();
    ensure!(
        s.len() >= 2 && s[1] == v.len() && v.shape().len() == 1,
        "{entry}: cannot broadcast {:?} over axis 1 of {:?}",
        v.shape(),
        s
    );
    let spatial: usize = s[2..].iter().product();
    let out = gpu.uninit(s)?;
    let params = Params { len: x.len() as u32, spatial: spatial as u32, channels: s[1] as u32, s: 0.0 };
    run(gpu, entry, BINARY, params, &[&out, x, v])?;
    Ok(out)
}

/// `x[n, c, ...] + v[c]` (a bias).
pub fn add_channel(gpu: &Gpu, x: &Tensor, v: &Tensor) -> Result<Tensor> {
    channel_op(gpu, "add_channel", x, v)
}

/// CPU twins.
pub mod cpu {
    fn sigmoid(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }

    pub fn silu(x: &[f32]) -> Vec<f32> {
        x.iter().map(|&v| (v as f64 * sigmoid(v as f64)) as f32).collect()
    }

    pub fn silu_backward(dy: &[f32], x: &[f32]) -> Vec<f32> {
        dy.iter()
            .zip(x)
            .map(|(&g, &v)| {
                let (g, v) = (g as f64, v as f64);
                let s = sigmoid(v);
                (g * s * (1.0 + v * (1.0 - s))) as f32
            })
            .collect()
    }

    /// `f(x[n, c, ...], v[c])` for `x` seen as (N, channels, spatial).
    pub fn channel_op(x: &[f32], v: &[f32], spatial: usize, f: impl Fn(f64, f64) -> f64) -> Vec<f32> {
        x.iter().enumerate().map(|(i, &a)| f(a as f64, v[(i / spatial) % v.len()] as f64) as f32).collect()
    }
}
