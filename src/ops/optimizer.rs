//! Adam / AdamW with global-norm gradient clipping, and the EMA of the
//! weights, over flat parameter buffers. Kernels: `shaders/optimizer.wgsl`.
//!
//! Parameters, gradients and both Adam moments share one flat layout, so
//! each update is one dispatch per chunk of at most [`CHUNK_ELEMS`] (bindings
//! are limited to 128 MiB on many adapters) whatever the number of tensors.

use anyhow::{ensure, Result};

use crate::gpu::{kernel_params, Access, Gpu, Kernel, Shader, Tensor};

kernel_params! {
    /// Mirrors `Params` in `shaders/optimizer.wgsl`.
    #[derive(Default)]
    struct Params {
        len: u32,
        decoupled: u32,
        lr: f32,
        beta1: f32,
        beta2: f32,
        eps: f32,
        weight_decay: f32,
        bias_correction1: f32,
        bias_correction2: f32,
        max_norm: f32,
        decay: f32,
        _pad: u32,
    }
}

/// Elements per dispatch: 64 MiB, a multiple of the view alignment.
pub const CHUNK_ELEMS: usize = 16 << 20;
const WORKGROUP: usize = 64;
/// vec4s each lane of `sum_squares` reads (PER_LANE in the shader).
const SUM_SQUARES_PER_LANE: usize = 16;
const ELEMS_PER_PARTIAL: usize = WORKGROUP * SUM_SQUARES_PER_LANE * 4;

/// Adam hyper-parameters; the defaults are PyTorch's, with no clipping.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Adam {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// AdamW: weight decay applied to the weights, not added to the gradient.
    pub decoupled: bool,
    /// Clip the global gradient norm to this (0 = no clipping).
    pub max_grad_norm: f32,
}

impl Default for Adam {
    fn default() -> Adam {
        Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, decoupled: false, max_grad_norm: 0.0 }
    }
}

/// `(start, len)` of each chunk of a flat buffer of `len` elements.
fn chunks(len: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..len.div_ceil(CHUNK_ELEMS)).map(move |i| (i * CHUNK_ELEMS, CHUNK_ELEMS.min(len - i * CHUNK_ELEMS)))
}

fn grid(len: usize) -> [u32; 3] {
    Gpu::grid_1d(len.div_ceil(4).div_ceil(WORKGROUP) as u32)
}

/// `total += grads` over flat buffers, chunk by chunk (gradient
/// accumulation: a micro-batch's gradients into the step's).
pub fn accumulate_grads(gpu: &Gpu, total: &Tensor, grads: &Tensor) -> Result<()> {
    ensure!(total.len() == grads.len(), "accumulate_grads: {} gradients into {}", grads.len(), total.len());
    for (start, len) in chunks(grads.len()) {
        crate::ops::elementwise::accumulate(gpu, &total.view(start, &[len])?, 1.0, &grads.view(start, &[len])?)?;
    }
    Ok(())
}

/// Squared L2 norm of `grads` as a (1) tensor, computed deterministically
/// (fixed chunks, fixed-order sums) and left on the GPU for `adam_step`.
pub fn grad_norm_sq(gpu: &Gpu, grads: &Tensor) -> Result<Tensor> {
    let partials_per_chunk = CHUNK_ELEMS / ELEMS_PER_PARTIAL;
    let total: usize = chunks(grads.len()).map(|(_, n)| n.div_ceil(ELEMS_PER_PARTIAL)).sum();
    let partials = gpu.uninit(&[total.max(1)])?;
    if grads.is_empty() {
        gpu.clear(&partials)?;
    }
    let kernel = Kernel::new(Shader::Optimizer, "sum_squares", &[Access::ReadWrite, Access::Read]);
    for (i, (start, len)) in chunks(grads.len()).enumerate() {
        let count = len.div_ceil(ELEMS_PER_PARTIAL);
        let out = partials.view(i * partials_per_chunk, &[count])?;
        let params = Params { len: len as u32, ..Params::default() };
        gpu.launch(&kernel, &params, &[&out, &grads.view(start, &[len])?], Gpu::grid_1d(count as u32))?;
    }
    crate::ops::reduce::sum(gpu, &partials, &[0])
}

/// One Adam step (`step` counts from 1) on flat `params` with moments `m`,
/// `v`, gradients `grads` and the squared gradient norm from [`grad_norm_sq`].
#[allow(clippy::too_many_arguments)]
pub fn adam_step(
    gpu: &Gpu,
    cfg: &Adam,
    step: u64,
    lr: f32,
    params: &Tensor,
    m: &Tensor,
    v: &Tensor,
    grads: &Tensor,
    norm_sq: &Tensor,
) -> Result<()> {
    let n = params.len();
    ensure!(m.len() == n && v.len() == n && grads.len() == n, "adam_step: params, moments and grads differ in size");
    ensure!(norm_sq.len() == 1 && step >= 1, "adam_step: needs the (1) norm tensor and step >= 1");
    let kernel = Kernel::new(
        Shader::Optimizer,
        "adam_step",
        &[Access::ReadWrite, Access::ReadWrite, Access::ReadWrite, Access::Read, Access::Read],
    );
    for (start, len) in chunks(n) {
        let params_ = Params {
            len: len as u32,
            decoupled: cfg.decoupled as u32,
            lr,
            beta1: cfg.beta1,
            beta2: cfg.beta2,
            eps: cfg.eps,
            weight_decay: cfg.weight_decay,
            bias_correction1: (1.0 - (cfg.beta1 as f64).powi(step as i32)) as f32,
            bias_correction2: (1.0 - (cfg.beta2 as f64).powi(step as i32)) as f32,
            max_norm: cfg.max_grad_norm,
            decay: 0.0,
            _pad: 0,
        };
        let view = |t: &Tensor| t.view(start, &[len]);
        gpu.launch(&kernel, &params_, &[&view(params)?, &view(m)?, &view(v)?, &view(grads)?, norm_sq], grid(len))?;
    }
    Ok(())
}

/// `ema = decay * ema + (1 - decay) * params`.
pub fn ema_update(gpu: &Gpu, ema: &Tensor, params: &Tensor, decay: f32) -> Result<()> {
    ensure!(ema.len() == params.len(), "ema_update: {:?} vs {:?}", ema.shape(), params.shape());
    let kernel = Kernel::new(Shader::Optimizer, "ema_update", &[Access::ReadWrite, Access::Read]);
    for (start, len) in chunks(params.len()) {
        let p = Params { len: len as u32, decay, ..Params::default() };
        gpu.launch(&kernel, &p, &[&ema.view(start, &[len])?, &params.view(start, &[len])?], grid(len))?;
    }
    Ok(())
}

/// CPU twins, in f64.
pub mod cpu {
    use super::Adam;

    pub fn grad_norm_sq(g: &[f32]) -> f64 {
        g.iter().map(|&x| x as f64 * x as f64).sum()
    }

    /// Updates `params`, `m`, `v` in place as torch.optim.Adam/AdamW with
    /// torch.nn.utils.clip_grad_norm_ before it.
    pub fn adam_step(cfg: &Adam, step: u64, lr: f32, params: &mut [f32], m: &mut [f32], v: &mut [f32], grads: &[f32]) {
        let norm = grad_norm_sq(grads).sqrt();
        let clip = if cfg.max_grad_norm > 0.0 { (cfg.max_grad_norm as f64 / (norm + 1e-6)).min(1.0) } else { 1.0 };
        let (b1, b2, lr, wd) = (cfg.beta1 as f64, cfg.beta2 as f64, lr as f64, cfg.weight_decay as f64);
        let bc1 = 1.0 - b1.powi(step as i32);
        let bc2 = 1.0 - b2.powi(step as i32);
        for i in 0..params.len() {
            let mut w = params[i] as f64;
            let mut g = grads[i] as f64 * clip;
            if cfg.decoupled {
                w *= 1.0 - lr * wd;
            } else {
                g += wd * w;
            }
            let mi = b1 * m[i] as f64 + (1.0 - b1) * g;
            let vi = b2 * v[i] as f64 + (1.0 - b2) * g * g;
            w -= lr / bc1 * mi / (vi.sqrt() / bc2.sqrt() + cfg.eps as f64);
            params[i] = w as f32;
            m[i] = mi as f32;
            v[i] = vi as f32;
        }
    }

    pub fn ema_update(ema: &mut [f32], params: &[f32], decay: f32) {
        for (e, &p) in ema.iter_mut().zip(params) {
            *e = (decay as f64 * *e as f64 + (1.0 - decay as f64) * p as f64) as f32;
        }
    }
}
