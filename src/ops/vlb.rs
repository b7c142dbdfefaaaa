//! The terms of the DDPM variational bound in bits per dimension, per
//! sample: the decoder NLL `L_0` at index 0, the KL terms
//! `L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))` elsewhere, and
//! the prior term `KL(q(x_T | x_0) || N(0, I))` — the reference code's
//! `_vb_terms_bpd` and `_prior_bpd` (hojonathanho/diffusion,
//! `diffusion_utils_2.py`). Kernels: `shaders/vlb.wgsl` (one fused
//! dispatch per timestep, a fixed-order per-sample sum); the loop over
//! timesteps: [`crate::nll`].
//!
//! The model's mean comes from its `eps` through
//! `x0_hat = sqrt(1/abar_t) x_t - sqrt(1/abar_t - 1) eps`, clipped to
//! `[-clip_sample_range, clip_sample_range]` when the scheduler's
//! `clip_sample` is set (the reference's `calc_bpd_loop` clips to [-1, 1]),
//! and the posterior-mean coefficients; its log variance from the
//! scheduler's `variance_type` ([`model_log_variance`]).

use anyhow::{ensure, Result};

use crate::gpu::{kernel_params, Access, Gpu, Kernel, Shader, Tensor};
use crate::schedule::{Schedule, VarianceType};

kernel_params! {
    /// Mirrors `Params` in `shaders/vlb.wgsl`.
    #[derive(Default)]
    struct Params {
        batch: u32,
        dim: u32,
        steps: u32,
        clip: u32,
        clip_range: f32,
        inv_dim: f32,
        prior_scale: f32,
        prior_const: f32,
    }
}

/// What a kernel writes for a sample whose inputs hold a NaN or an infinity,
/// or whose term is not finite (the shader's `NOT_FINITE_MARK`). Terms are
/// never this large otherwise; [`is_not_finite`] tests for it.
pub const NOT_FINITE: f32 = f32::MAX;

/// True for a term the kernels marked as not finite (or a NaN/inf that
/// reached the host some other way).
pub fn is_not_finite(term: f32) -> bool {
    !term.is_finite() || term == NOT_FINITE
}

const TERMS: &[Access] = &[Access::ReadWrite, Access::Read, Access::Read, Access::Read, Access::Read, Access::Read];
const PRIOR: &[Access] = &[Access::ReadWrite, Access::Read];

/// The log variance of the model's `p(x_{t-1} | x_t)` at every index, as the
/// reference's `p_mean_variance` has it: `fixed_small` is
/// `posterior_log_variance_clipped`; `fixed_large` is `log(betas)` with
/// index 0 replaced by `posterior_variance[1]` (for a better decoder
/// likelihood).
pub fn model_log_variance(s: &Schedule) -> Vec<f64> {
    match s.config.variance_type {
        VarianceType::FixedSmall => s.posterior_log_variance_clipped.clone(),
        VarianceType::FixedLarge => {
            std::iter::once(s.posterior_variance[1]).chain(s.betas[1..].iter().copied()).map(f64::ln).collect()
        }
    }
}

/// Rows of the VLB table, in the order of the shader's `ROW_*` constants.
fn vlb_rows(s: &Schedule) -> Vec<Vec<f64>> {
    let model_lv = model_log_variance(s);
    let kl_variance_term = s
        .posterior_log_variance_clipped
        .iter()
        .zip(&model_lv)
        .map(|(&lv1, &lv2)| cpu::normal_kl(0.0, lv1, 0.0, lv2))
        .collect();
    vec![
        s.sqrt_recip_alphas_cumprod.clone(),
        s.sqrt_recipm1_alphas_cumprod.clone(),
        s.posterior_mean_coef1.clone(),
        s.posterior_mean_coef2.clone(),
        model_lv.iter().map(|lv| 0.5 * (-lv).exp()).collect(),
        kl_variance_term,
        model_lv.iter().map(|lv| (-0.5 * lv).exp()).collect(),
    ]
}

/// The schedule's VLB tables on the GPU (uploaded once) with the clipping
/// options of its config and the prior's two constants.
pub struct VlbTables {
    /// (7, T): see `vlb_rows`.
    pub table: Tensor,
    pub steps: usize,
    pub clip_sample: bool,
    pub clip_sample_range: f32,
    /// `0.5 abar_T`: the prior's factor of `x0²`.
    prior_scale: f32,
    /// `0.5 (-log(1 - abar_T) - abar_T)`.
    prior_const: f32,
}

impl VlbTables {
    pub fn new(gpu: &Gpu, schedule: &Schedule) -> Result<VlbTables> {
        let rows = vlb_rows(schedule);
        let flat: Vec<f32> = rows.iter().flatten().map(|&v| v as f32).collect();
        let abar_last = schedule.alphas_cumprod[schedule.len() - 1];
        Ok(VlbTables {
            table: gpu.upload(&[rows.len(), schedule.len()], &flat)?,
            steps: schedule.len(),
            clip_sample: schedule.config.clip_sample,
            clip_sample_range: schedule.config.clip_sample_range as f32,
            prior_scale: (0.5 * abar_last) as f32,
            prior_const: (0.5 * (-(-abar_last).ln_1p() - abar_last)) as f32,
        })
    }
}

/// (N, D) of a tensor shaped (N, ...), checked for the kernels' u32 indexing.
fn batch_geometry(op: &str, shape: &[usize]) -> Result<(u32, u32)> {
    ensure!(shape.len() >= 2 && shape[0] > 0, "{op}: needs a batch axis and sample axes, got {shape:?}");
    let batch = shape[0];
    let dim: usize = shape[1..].iter().product();
    ensure!(dim > 0, "{op}: empty samples in {shape:?}");
    ensure!(batch * dim.div_ceil(4) * 4 < u32::MAX as usize, "{op}: {shape:?} too large for u32 indexing");
    Ok((batch as u32, dim as u32))
}

fn check_out(op: &str, out: &Tensor, batch: u32, x0: &Tensor) -> Result<()> {
    ensure!(
        out.shape() == [batch as usize],
        "{op}: out {:?} must hold one term per sample of x0 {:?}",
        out.shape(),
        x0.shape()
    );
    Ok(())
}

/// Per-sample VLB terms in bits/dim for the timestep indices `t` (N): the
/// decoder NLL where `t == 0`, the KL term elsewhere. `x0`, `xt` (from
/// [`crate::ops::ddpm::q_sample`] at `t`) and `eps_pred` (the model's
/// output at `xt`, `t`) are (N, ...) alike. Returns (N).
pub fn vlb_terms(
    gpu: &Gpu,
    tables: &VlbTables,
    x0: &Tensor,
    xt: &Tensor,
    eps_pred: &Tensor,
    t: &Tensor,
) -> Result<Tensor> {
    let out = gpu.uninit(&[x0.shape().first().copied().unwrap_or(0)])?;
    vlb_terms_into(gpu, tables, &out, x0, xt, eps_pred, t)?;
    Ok(out)
}

/// [`vlb_terms`] written into `out` (N), which may be a view.
pub fn vlb_terms_into(
    gpu: &Gpu,
    tables: &VlbTables,
    out: &Tensor,
    x0: &Tensor,
    xt: &Tensor,
    eps_pred: &Tensor,
    t: &Tensor,
) -> Result<()> {
    const OP: &str = "vlb_terms";
    let (batch, dim) = batch_geometry(OP, x0.shape())?;
    ensure!(xt.shape() == x0.shape(), "{OP}: xt {:?} and x0 {:?} differ", xt.shape(), x0.shape());
    ensure!(eps_pred.shape() == x0.shape(), "{OP}: eps_pred {:?} and x0 {:?} differ", eps_pred.shape(), x0.shape());
    ensure!(
        t.shape() == [batch as usize],
        "{OP}: timesteps {:?} must be one per sample of {:?}",
        t.shape(),
        x0.shape()
    );
    check_out(OP, out, batch, x0)?;
    let p = Params {
        batch,
        dim,
        steps: tables.steps as u32,
        clip: tables.clip_sample as u32,
        clip_range: tables.clip_sample_range,
        inv_dim: (1.0 / dim as f64) as f32,
        ..Params::default()
    };
    let kernel = Kernel::new(Shader::Vlb, "vlb_terms", TERMS);
    gpu.launch(&kernel, &p, &[out, x0, xt, eps_pred, t, &tables.table], Gpu::grid_1d(batch))
}

/// The prior term per sample in bits/dim: the mean over each sample of `x0`
/// (N, ...) of `KL(N(sqrt(abar_T) x0, 1 - abar_T) || N(0, 1))`. Returns (N).
pub fn prior_bpd(gpu: &Gpu, tables: &VlbTables, x0: &Tensor) -> Result<Tensor> {
    let out = gpu.uninit(&[x0.shape().first().copied().unwrap_or(0)])?;
    prior_bpd_into(gpu, tables, &out, x0)?;
    Ok(out)
}

/// [`prior_bpd`] written into `out` (N), which may be a view.
pub fn prior_bpd_into(gpu: &Gpu, tables: &VlbTables, out: &Tensor, x0: &Tensor) -> Result<()> {
    const OP: &str = "prior_bpd";
    let (batch, dim) = batch_geometry(OP, x0.shape())?;
    check_out(OP, out, batch, x0)?;
    let p = Params {
        batch,
        dim,
        steps: tables.steps as u32,
        inv_dim: (1.0 / dim as f64) as f32,
        prior_scale: tables.prior_scale,
        prior_const: tables.prior_const,
        ..Params::default()
    };
    gpu.launch(&Kernel::new(Shader::Vlb, "prior_bpd", PRIOR), &p, &[out, x0], Gpu::grid_1d(batch))
}

/// CPU twins in f64, written as the reference code has them (both
/// posterior means formed, the full `normal_kl` per element, the CDF through
/// `tanh`), so they check the kernel's rearrangements too.
pub mod cpu {
    use super::model_log_variance;
    use crate::schedule::Schedule;

    const LN_2: f64 = std::f64::consts::LN_2;

    /// KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) in nats: the
    /// reference's `0.5 (-1 + logvar2 - logvar1 + exp(logvar1 - logvar2) +
    /// (mean1 - mean2)² exp(-logvar2))`, with `exp(d) - 1 - d` formed by
    /// `exp_m1` so nearly equal variances lose no digits (and equal ones
    /// give exactly 0).
    pub fn normal_kl(mean1: f64, logvar1: f64, mean2: f64, logvar2: f64) -> f64 {
        let d = logvar1 - logvar2;
        0.5 * ((d.exp_m1() - d) + (mean1 - mean2).powi(2) * (-logvar2).exp())
    }

    /// The reference's approximation of the standard normal CDF.
    pub fn approx_std_normal_cdf(x: f64) -> f64 {
        0.5 * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
    }

    /// Log of the mass a Gaussian (mean, exp(log_scale)) puts on the 8-bit
    /// bin of `x` (a value k/127.5 - 1): bins of half-width 1/255, the outer
    /// two running to -inf and +inf, masses clamped at 1e-12.
    pub fn discretized_gaussian_log_likelihood(x: f64, mean: f64, log_scale: f64) -> f64 {
        let centred = x - mean;
        let inv_stdv = (-log_scale).exp();
        let cdf_plus = approx_std_normal_cdf(inv_stdv * (centred + 1.0 / 255.0));
        let cdf_min = approx_std_normal_cdf(inv_stdv * (centred - 1.0 / 255.0));
        if x < -0.999 {
            cdf_plus.max(1e-12).ln()
        } else if x > 0.999 {
            (1.0 - cdf_min).max(1e-12).ln()
        } else {
            (cdf_plus - cdf_min).max(1e-12).ln()
        }
    }

    /// `vlb_terms`: x0, xt, eps (N, D) flattened, t (N) → (N) bits/dim.
    pub fn vlb_terms(s: &Schedule, x0: &[f32], xt: &[f32], eps: &[f32], t: &[usize]) -> Vec<f64> {
        let dim = x0.len() / t.len();
        let model_lv = model_log_variance(s);
        let range = s.config.clip_sample_range;
        t.iter()
            .enumerate()
            .map(|(n, &ti)| {
                let mut sum = 0.0;
                for e in n * dim..(n + 1) * dim {
                    let (x0, xt, eps) = (x0[e] as f64, xt[e] as f64, eps[e] as f64);
                    let mut x0_hat = s.sqrt_recip_alphas_cumprod[ti] * xt - s.sqrt_recipm1_alphas_cumprod[ti] * eps;
                    if s.config.clip_sample {
                        x0_hat = x0_hat.clamp(-range, range);
                    }
                    let model_mean = s.posterior_mean_coef1[ti] * x0_hat + s.posterior_mean_coef2[ti] * xt;
                    sum += if ti == 0 {
                        -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_lv[ti])
                    } else {
                        let true_mean = s.posterior_mean_coef1[ti] * x0 + s.posterior_mean_coef2[ti] * xt;
                        normal_kl(true_mean, s.posterior_log_variance_clipped[ti], model_mean, model_lv[ti])
                    };
                }
                sum / dim as f64 / LN_2
            })
            .collect()
    }

    /// `prior_bpd`: x0 (N, D) flattened → (N) bits/dim.
    pub fn prior_bpd(s: &Schedule, x0: &[f32], batch: usize) -> Vec<f64> {
        let dim = x0.len() / batch;
        let last = s.len() - 1;
        let mean_scale = s.sqrt_alphas_cumprod[last];
        (0..batch)
            .map(|n| {
                let sum: f64 = x0[n * dim..(n + 1) * dim]
                    .iter()
                    .map(|&x| normal_kl(mean_scale * x as f64, s.log_one_minus_alphas_cumprod[last], 0.0, 0.0))
                    .sum();
                sum / dim as f64 / LN_2
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    /// The Rust `Params` has the size naga gives the WGSL struct.
    #[test]
    fn params_match_the_shader_struct() {
        let source = include_str!("../../shaders/vlb.wgsl");
        let module = naga::front::wgsl::parse_str(source).expect("vlb.wgsl parses");
        let (_, ty) = module.types.iter().find(|(_, ty)| ty.name.as_deref() == Some("Params")).expect("Params");
        let naga::TypeInner::Struct { span, ref members } = ty.inner else { panic!("Params is a struct") };
        assert_eq!(span as usize, std::mem::size_of::<super::Params>());
        assert_eq!(members.len(), std::mem::size_of::<super::Params>() / 4);
    }
}
