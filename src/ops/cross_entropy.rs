//! Softmax cross-entropy over class logits (the digit classifier's loss)
//! and its gradient. Kernel: `shaders/cross_entropy.wgsl`.

use anyhow::{ensure, Result};

use crate::gpu::{kernel_params, Access, Gpu, Kernel, Shader, Tensor};

kernel_params! {
    /// Mirrors `Params` in `shaders/cross_entropy.wgsl`.
    struct Params {
        rows: u32,
        classes: u32,
        inv_rows: f32,
        _pad0: u32,
    }
}

const FORWARD_BINDINGS: &[Access] = &[Access::ReadWrite, Access::ReadWrite, Access::Read, Access::Read];
const BACKWARD_BINDINGS: &[Access] = &[Access::ReadWrite, Access::Read, Access::Read, Access::Read];

/// The two entry points bind different buffers: one variant each.
pub fn variants() -> Vec<Vec<(&'static str, i64)>> {
    vec![vec![("BACKWARD", 0)], vec![("BACKWARD", 1)]]
}

/// Class indices as the (N) f32 tensor the kernels read; each must be below `classes`.
pub fn class_labels(gpu: &Gpu, labels: &[usize], classes: usize) -> Result<Tensor> {
    ensure!(!labels.is_empty(), "class_labels: no labels");
    if let Some(bad) = labels.iter().find(|&&l| l >= classes) {
        anyhow::bail!("class_labels: label {bad} is not below the {classes} classes");
    }
    let values: Vec<f32> = labels.iter().map(|&l| l as f32).collect();
    gpu.upload(&[labels.len()], &values)
}

fn params(op: &str, logits: &Tensor, labels: &Tensor) -> Result<Params> {
    let s = logits.shape();
    ensure!(s.len() == 2 && s[0] > 0 && s[1] > 0, "{op}: logits {s:?} must be (N, K)");
    ensure!(labels.shape() == [s[0]], "{op}: labels {:?} must be one per row of {s:?}", labels.shape());
    Ok(Params { rows: s[0] as u32, classes: s[1] as u32, inv_rows: 1.0 / s[0] as f32, _pad0: 0 })
}

/// `mean_n(logsumexp(logits[n]) - logits[n, labels[n]])` as a (1) tensor,
/// and the softmax probabilities (N, K) the backward uses.
pub fn softmax_cross_entropy(gpu: &Gpu, logits: &Tensor, labels: &Tensor) -> Result<(Tensor, Tensor)> {
    let p = params("softmax_cross_entropy", logits, labels)?;
    let loss = gpu.uninit(&[1])?;
    let probs = gpu.uninit(logits.shape())?;
    let kernel = Kernel::new(Shader::CrossEntropy, "softmax_cross_entropy", FORWARD_BINDINGS)
        .with_defines(vec![("BACKWARD", 0)]);
    gpu.launch(&kernel, &p, &[&loss, &probs, logits, labels], [1, 1, 1])?;
    Ok((loss, probs))
}

/// Gradient with respect to the logits: `(probs - onehot(labels)) / N * d_loss`.
pub fn softmax_cross_entropy_backward(gpu: &Gpu, probs: &Tensor, labels: &Tensor, d_loss: &Tensor) -> Result<Tensor> {
    let p = params("softmax_cross_entropy backward", probs, labels)?;
    ensure!(d_loss.len() == 1, "softmax_cross_entropy backward: d_loss {:?} must hold one value", d_loss.shape());
    let d_logits = gpu.uninit(probs.shape())?;
    let kernel = Kernel::new(Shader::CrossEntropy, "softmax_cross_entropy_backward", BACKWARD_BINDINGS)
        .with_defines(vec![("BACKWARD", 1)]);
    let groups = probs.len().div_ceil(64) as u32;
    gpu.launch(&kernel, &p, &[&d_logits, probs, labels, d_loss], Gpu::grid_1d(groups))?;
    Ok(d_logits)
}

/// CPU twins, in f64. `logits` is (N, K) row-major.
pub mod cpu {
    /// Softmax of each row of `logits` (N, K).
    pub fn softmax(logits: &[f64], classes: usize) -> Vec<f64> {
        let mut out = Vec::with_capacity(logits.len());
        for row in logits.chunks_exact(classes) {
            let top = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let total: f64 = row.iter().map(|v| (v - top).exp()).sum();
            out.extend(row.iter().map(|v| (v - top).exp() / total));
        }
        out
    }

    /// The mean cross-entropy (as log-sum-exp minus the label's logit, which
    /// stays finite where the label's probability underflows) and the
    /// probabilities.
    pub fn softmax_cross_entropy(logits: &[f64], labels: &[usize], classes: usize) -> (f64, Vec<f64>) {
        let loss = logits
            .chunks_exact(classes)
            .zip(labels)
            .map(|(row, &l)| {
                let top = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                top + row.iter().map(|v| (v - top).exp()).sum::<f64>().ln() - row[l]
            })
            .sum::<f64>();
        (loss / labels.len() as f64, softmax(logits, classes))
    }

    pub fn softmax_cross_entropy_backward(probs: &[f64], labels: &[usize], classes: usize, d_loss: f64) -> Vec<f64> {
        let scale = d_loss / labels.len() as f64;
        probs
            .iter()
            .enumerate()
            .map(|(i, p)| (p - f64::from(u8::from(labels[i / classes] == i % classes))) * scale)
            .collect()
    }
}
