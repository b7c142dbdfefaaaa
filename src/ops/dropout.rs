//! Dropout whose mask is drawn inside the kernel from Philox4x32-10 keyed
//! by (seed, step, sample, layer, element), never stored: the backward pass
//! is the same launch on the incoming gradient, a sample's mask does not
//! depend on the batch it is in, and a resumed run redraws the same masks.
//! Kernel: `shaders/dropout.wgsl`.

use anyhow::{ensure, Result};

use crate::gpu::{kernel_params, Access, Gpu, Kernel, Shader, Tensor};
use crate::ops::ddpm::NoiseKey;

kernel_params! {
    /// Mirrors `Params` in `shaders/dropout.wgsl`.
    #[derive(Default)]
    struct Params {
        batch: u32,
        dim: u32,
        seed_lo: u32,
        seed_hi: u32,
        step: u32,
        first_sample: u32,
        layer: u32,
        threshold: u32,
        scale: f32,
        _pad: [u32; 3],
    }
}

const WORKGROUP: u32 = 64;
const BINDINGS: &[Access] = &[Access::ReadWrite, Access::Read];

/// Which masks: the run's seed, the training step and the first sample's
/// global index (as [`NoiseKey`]), and the layer, so each dropout of one
/// forward pass draws its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropoutKey {
    pub noise: NoiseKey,
    pub layer: u32,
}

/// The u32 threshold below which a Philox word drops its element:
/// `round(rate · 2^32)`, so an element is dropped with probability `rate`
/// up to 2^-33.
fn threshold(rate: f32) -> u32 {
    (rate as f64 * 4_294_967_296.0).round().min(u32::MAX as f64) as u32
}

/// `x` (N, ...) with each element zeroed with probability `rate` and the
/// rest scaled by `1 / (1 - rate)`; the backward of this is the same call on
/// the gradient.
pub fn dropout(gpu: &Gpu, x: &Tensor, rate: f32, key: DropoutKey) -> Result<Tensor> {
    ensure!((0.0..1.0).contains(&rate), "dropout: rate must be in [0, 1), got {rate}");
    let shape = x.shape();
    ensure!(!shape.is_empty() && shape[0] > 0, "dropout: needs a leading batch axis, got {shape:?}");
    let batch = shape[0];
    let dim = x.len() / batch;
    ensure!(dim > 0 && batch * dim.div_ceil(4) < u32::MAX as usize, "dropout: {shape:?} out of range");
    let out = gpu.uninit(shape)?;
    let n = key.noise;
    let p = Params {
        batch: batch as u32,
        dim: dim as u32,
        seed_lo: n.seed as u32,
        seed_hi: (n.seed >> 32) as u32,
        step: n.step,
        first_sample: n.first_sample,
        layer: key.layer,
        threshold: threshold(rate),
        scale: 1.0 / (1.0 - rate),
        ..Params::default()
    };
    let invocations = (batch * dim.div_ceil(4)) as u32;
    let kernel = Kernel::new(Shader::Dropout, "dropout", BINDINGS);
    gpu.launch(&kernel, &p, &[&out, x], Gpu::grid_1d(invocations.div_ceil(WORKGROUP)))?;
    Ok(out)
}

pub mod cpu {
    use super::{threshold, DropoutKey};
    use crate::ops::ddpm::cpu::philox4x32_10;

    /// Whether element `e` of row `n` is kept (the shader's mask).
    pub fn keeps(key: DropoutKey, rate: f32, n: usize, e: usize) -> bool {
        let k = key.noise;
        let counter = [(e / 4) as u32, k.first_sample.wrapping_add(n as u32), k.step, 1 + key.layer];
        philox4x32_10(counter, [k.seed as u32, (k.seed >> 32) as u32])[e % 4] >= threshold(rate)
    }

    /// The shader's dropout of `x` as (batch, dim): kept elements times
    /// `1 / (1 - rate)` in f32, as the kernel rounds.
    pub fn dropout(x: &[f32], batch: usize, rate: f32, key: DropoutKey) -> Vec<f32> {
        let dim = x.len() / batch;
        let scale = 1.0 / (1.0 - rate);
        (0..x.len()).map(|i| if keeps(key, rate, i / dim, i % dim) { x[i] * scale } else { 0.0 }).collect()
    }
}
