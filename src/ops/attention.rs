//! The core of multi-head self-attention, `out = softmax(scale * q k^T) v`,
//! and its backward. The (B*heads, T, T) probability matrix is materialised:
//! four batched GEMMs (`ops::matmul::gemm`) around an in-place row softmax
//! and its backward (`shaders/attention.wgsl`), all recorded into the same
//! command stream with no host round trip.
//!
//! Size limit: the probabilities are one storage binding of
//! `B*heads * T * T * 4` bytes, at most 128 MiB on most adapters, so
//! `B*heads * T^2 <= 2^25`: T <= 1024 at B*heads = 32, T <= 4096 at 2.
//! (At 16x16 = 256 tokens and batch 32 the matrix is 8 MiB.)

use anyhow::{ensure, Result};

use crate::gpu::{kernel_params, Access, Gpu, Kernel, Shader, Tensor};
use crate::ops::matmul::{gemm, Gemm};

/// The most bytes the (B*heads, T, T) probabilities may take: one storage
/// binding on adapters with WebGPU's default limit.
pub const MAX_PROBS_BYTES: u64 = 128 << 20;

kernel_params! {
    /// Mirrors `Params` in `shaders/attention.wgsl`.
    struct Params {
        rows: u32,
        cols: u32,
        _pad0: u32,
        _pad1: u32,
    }
}

/// Items (vec4 or floats) per lane kept in registers: 8 lanes x 8 vec4
/// cover a 256-token row.
const REGISTER_ITEMS: i64 = 8;
const ROWS_PER_WORKGROUP: usize = 8;

const SOFTMAX_BINDINGS: &[Access] = &[Access::ReadWrite];
const SOFTMAX_BACKWARD_BINDINGS: &[Access] = &[Access::ReadWrite, Access::Read];

fn defines(vec4: bool, subgroups: bool) -> Vec<(&'static str, i64)> {
    vec![("VEC4", vec4 as i64), ("R", REGISTER_ITEMS), ("SUBGROUPS", subgroups as i64)]
}

/// Every define set the launchers use, for the cross-backend shader check.
pub fn variants() -> Vec<Vec<(&'static str, i64)>> {
    (0..4).map(|bits| defines(bits & 1 != 0, bits & 2 != 0)).collect()
}

fn softmax_launch(gpu: &Gpu, entry: &'static str, bindings: &'static [Access], tensors: &[&Tensor]) -> Result<()> {
    let s = tensors[0].shape();
    let cols = s[s.len() - 1];
    let rows = tensors[0].len() / cols;
    let kernel = Kernel::new(Shader::Attention, entry, bindings)
        .with_defines(defines(cols.is_multiple_of(4), gpu.info().subgroups));
    let params = Params { rows: rows as u32, cols: cols as u32, _pad0: 0, _pad1: 0 };
    gpu.launch(&kernel, &params, tensors, Gpu::grid_1d(rows.div_ceil(ROWS_PER_WORKGROUP) as u32))
}

/// Replace each row of `scores` (last axis) by its softmax, in place.
pub fn softmax_rows_in_place(gpu: &Gpu, scores: &Tensor) -> Result<()> {
    ensure!(!scores.is_empty(), "softmax_rows: empty tensor {:?}", scores.shape());
    softmax_launch(gpu, "softmax_rows", SOFTMAX_BINDINGS, &[scores])
}

/// Turn `dp` (gradient of the probabilities) into the gradient of the
/// scores, in place: `dS = P * (dP - rowsum(dP * P))`.
pub fn softmax_rows_backward_in_place(gpu: &Gpu, dp: &Tensor, probs: &Tensor) -> Result<()> {
    ensure!(
        dp.shape() == probs.shape() && !dp.is_empty(),
        "softmax_rows backward: dP {:?} and P {:?} differ",
        dp.shape(),
        probs.shape()
    );
    softmax_launch(gpu, "softmax_rows_backward", SOFTMAX_BACKWARD_BINDINGS, &[dp, probs])
}

/// (B*heads, T, d) of q, k, v, which share one shape (..., T, d).
fn geometry(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<(usize, usize, usize)> {
    let s = q.shape();
    ensure!(
        s.len() >= 3 && k.shape() == s && v.shape() == s,
        "attention: q {:?}, k {:?}, v {:?} must share one shape (batch.., tokens, head_dim)",
        s,
        k.shape(),
        v.shape()
    );
    let (t, d) = (s[s.len() - 2], s[s.len() - 1]);
    let bh: usize = s[..s.len() - 2].iter().product();
    ensure!(bh > 0 && t > 0 && d > 0, "attention: empty shape {s:?}");
    ensure!(
        (bh * t * t * 4) as u64 <= MAX_PROBS_BYTES,
        "attention: {bh} x {t} x {t} probabilities exceed a {} MiB binding",
        MAX_PROBS_BYTES >> 20
    );
    Ok((bh, t, d))
}

/// `softmax(scale * q k^T) v` for q, k, v of shape (batch.., T, d); returns
/// the output (same shape) and the (batch, T, T) probabilities for backward.
pub fn attention_forward(gpu: &Gpu, q: &Tensor, k: &Tensor, v: &Tensor, scale: f32) -> Result<(Tensor, Tensor)> {
    let (bh, t, d) = geometry(q, k, v)?;
    let probs = gpu.uninit(&[bh, t, t])?;
    let scores = Gemm { batch: bh, trans_b: true, alpha: scale, ..Gemm::new(t, t, d) };
    gemm(gpu, &scores, &probs, q, k, None)?;
    softmax_rows_in_place(gpu, &probs)?;
    let out = gpu.uninit(q.shape())?;
    gemm(gpu, &Gemm { batch: bh, ..Gemm::new(t, d, t) }, &out, &probs, v, None)?;
    Ok((out, probs))
}

pub struct AttentionGrads {
    pub dq: Tensor,
    pub dk: Tensor,
    pub dv: Tensor,
}

/// Gradients of `attention_forward` given the output gradient `d_out`.
pub fn attention_backward(
    gpu: &Gpu,
    d_out: &Tensor,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    probs: &Tensor,
    scale: f32,
) -> Result<AttentionGrads> {
    let (bh, t, d) = geometry(q, k, v)?;
    ensure!(d_out.shape() == q.shape(), "attention backward: d_out {:?} vs q {:?}", d_out.shape(), q.shape());
    ensure!(probs.shape() == [bh, t, t], "attention backward: probs {:?}, expected [{bh}, {t}, {t}]", probs.shape());
    // dV = P^T dO
    let dv = gpu.uninit(q.shape())?;
    gemm(gpu, &Gemm { batch: bh, trans_a: true, ..Gemm::new(t, d, t) }, &dv, probs, d_out, None)?;
    // dP = dO V^T, then dS in place.
    let ds = gpu.uninit(&[bh, t, t])?;
    gemm(gpu, &Gemm { batch: bh, trans_b: true, ..Gemm::new(t, t, d) }, &ds, d_out, v, None)?;
    softmax_rows_backward_in_place(gpu, &ds, probs)?;
    // dQ = scale dS K, dK = scale dS^T Q
    let dq = gpu.uninit(q.shape())?;
    gemm(gpu, &Gemm { batch: bh, alpha: scale, ..Gemm::new(t, d, t) }, &dq, &ds, k, None)?;
    let dk = gpu.uninit(q.shape())?;
    gemm(gpu, &Gemm { batch: bh, trans_a: true, alpha: scale, ..Gemm::new(t, d, t) }, &dk, &ds, q, None)?;
    Ok(AttentionGrads { dq, dk, dv })
}

/// Useful FLOPs of forward plus backward: six (T x T x d) products.
pub fn flops_forward_backward(bh: usize, t: usize, d: usize) -> f64 {
    6.0 * 2.0 * (bh * t * t * d) as f64
}

/// CPU twin, all in f64. q, k, v, d_out: (bh, t, d) flattened.
pub mod cpu {
    pub fn softmax_rows(scores: &[f64], cols: usize) -> Vec<f64> {
        scores
            .chunks(cols)
            .flat_map(|row| {
                let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = row.iter().map(|s| (s - m).exp()).collect();
                let sum: f64 = e.iter().sum();
                e.into_iter().map(move |v| v / sum)
            })
            .collect()
    }

    pub fn softmax_rows_backward(dp: &[f64], probs: &[f64], cols: usize) -> Vec<f64> {
        dp.chunks(cols)
            .zip(probs.chunks(cols))
            .flat_map(|(dp, p)| {
                let dot: f64 = dp.iter().zip(p).map(|(a, b)| a * b).sum();
                dp.iter().zip(p).map(move |(a, b)| b * (a - dot)).collect::<Vec<_>>()
            })
            .collect()
    }

    /// (out, probs)
    pub fn forward(q: &[f64], k: &[f64], v: &[f64], bh: usize, t: usize, d: usize, scale: f64) -> (Vec<f64>, Vec<f64>) {
        let mut scores = vec![0.0; bh * t * t];
        for z in 0..bh {
            for i in 0..t {
                for j in 0..t {
                    let dot: f64 = (0..d).map(|c| q[(z * t + i) * d + c] * k[(z * t + j) * d + c]).sum();
                    scores[(z * t + i) * t + j] = scale * dot;
                }
            }
        }
        let probs = softmax_rows(&scores, t);
        let mut out = vec![0.0; bh * t * d];
        for z in 0..bh {
            for i in 0..t {
                for c in 0..d {
                    out[(z * t + i) * d + c] =
                        (0..t).map(|j| probs[(z * t + i) * t + j] * v[(z * t + j) * d + c]).sum();
                }
            }
        }
        (out, probs)
    }

    /// (dq, dk, dv)
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        d_out: &[f64],
        q: &[f64],
        k: &[f64],
        v: &[f64],
        bh: usize,
        t: usize,
        d: usize,
        scale: f64,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let (_, probs) = forward(q, k, v, bh, t, d, scale);
        let at = |z: usize, i: usize, c: usize| (z * t + i) * d + c;
        let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; q.len()], vec![0.0; q.len()]);
        let mut dp = vec![0.0; bh * t * t];
        for z in 0..bh {
            for i in 0..t {
                for j in 0..t {
                    let pij = probs[(z * t + i) * t + j];
                    for c in 0..d {
                        dv[at(z, j, c)] += pij * d_out[at(z, i, c)];
                    }
                    dp[(z * t + i) * t + j] = (0..d).map(|c| d_out[at(z, i, c)] * v[at(z, j, c)]).sum();
                }
            }
        }
        let ds = softmax_rows_backward(&dp, &probs, t);
        for z in 0..bh {
            for i in 0..t {
                for j in 0..t {
                    let g = scale * ds[(z * t + i) * t + j];
                    for c in 0..d {
                        dq[at(z, i, c)] += g * k[at(z, j, c)];
                        dk[at(z, j, c)] += g * q[at(z, i, c)];
                    }
                }
            }
        }
        (dq, dk, dv)
    }
}
