//! Sinusoidal timestep embedding (diffusers' `get_timestep_embedding`).
//! Kernel: `shaders/embedding.wgsl`. No backward: timesteps are not trained.

use anyhow::{ensure, Result};

use crate::gpu::{kernel_params, Access, Gpu, Kernel, Shader, Tensor};

/// Settings of diffusers' `get_timestep_embedding` (its `scale` is 1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TimestepEmbedding {
    pub dim: usize,
    pub flip_sin_to_cos: bool,
    pub downscale_freq_shift: f32,
    pub max_period: f32,
}

impl TimestepEmbedding {
    /// diffusers' defaults for `dim` channels (UNet2DModel uses flip true, shift 0).
    pub fn new(dim: usize) -> TimestepEmbedding {
        TimestepEmbedding { dim, flip_sin_to_cos: false, downscale_freq_shift: 1.0, max_period: 10000.0 }
    }

    fn half(&self) -> usize {
        self.dim / 2
    }

    /// `freq[i] = exp(freq_coef * i)`, computed in f64 and rounded once.
    fn freq_coef(&self) -> f32 {
        (-(self.max_period as f64).ln() / (self.half() as f64 - self.downscale_freq_shift as f64)) as f32
    }
}

kernel_params! {
    /// Mirrors `Params` in `shaders/embedding.wgsl`.
    struct Params {
        batch: u32,
        dim: u32,
        half: u32,
        flip_sin_to_cos: u32,
        freq_coef: f32,
        _pad0: u32,
        _pad1: u32,
        _pad2: u32,
    }
}

const BINDINGS: &[Access] = &[Access::ReadWrite, Access::Read];

/// The (N, dim) embedding of `timesteps` (N), read from the GPU buffer.
pub fn timestep_embedding(gpu: &Gpu, e: &TimestepEmbedding, timesteps: &Tensor) -> Result<Tensor> {
    ensure!(timesteps.shape().len() == 1, "timestep_embedding: timesteps {:?} must be (N)", timesteps.shape());
    ensure!(e.dim >= 2, "timestep_embedding: dim {} must be at least 2", e.dim);
    ensure!(
        (e.half() as f32 - e.downscale_freq_shift) != 0.0,
        "timestep_embedding: dim {} with downscale_freq_shift {} divides by zero",
        e.dim,
        e.downscale_freq_shift
    );
    let batch = timesteps.len();
    let out = gpu.uninit(&[batch, e.dim])?;
    let params = Params {
        batch: batch as u32,
        dim: e.dim as u32,
        half: e.half() as u32,
        flip_sin_to_cos: e.flip_sin_to_cos as u32,
        freq_coef: e.freq_coef(),
        _pad0: 0,
        _pad1: 0,
        _pad2: 0,
    };
    let kernel = Kernel::new(Shader::Embedding, "timestep_embedding", BINDINGS);
    gpu.launch(&kernel, &params, &[&out, timesteps], Gpu::grid_1d((batch * e.dim).div_ceil(64) as u32))?;
    Ok(out)
}

/// CPU twin. The frequency and the product `t * freq` are rounded to f32
/// as the kernel (and PyTorch) computes them, the sine and cosine in f64.
pub mod cpu {
    use super::TimestepEmbedding;

    pub fn timestep_embedding(e: &TimestepEmbedding, timesteps: &[f32]) -> Vec<f32> {
        let half = e.half();
        let mut out = vec![0f32; timesteps.len() * e.dim];
        for (n, &t) in timesteps.iter().enumerate() {
            for i in 0..half {
                let freq = (e.freq_coef() as f64 * i as f64).exp() as f32;
                let arg = (t * freq) as f64;
                let (sin, cos) = (arg.sin() as f32, arg.cos() as f32);
                let (first, second) = if e.flip_sin_to_cos { (cos, sin) } else { (sin, cos) };
                out[n * e.dim + i] = first;
                out[n * e.dim + half + i] = second;
            }
        }
        out
    }
}
