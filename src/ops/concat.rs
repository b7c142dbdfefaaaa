//! Channel concatenation of two NCHW tensors (UNet skip connections) and its
//! backward, `split`. Kernel: `shaders/concat.wgsl`.

use anyhow::{ensure, Result};

use crate::gpu::{kernel_params, Access, Gpu, Kernel, Shader, Tensor};

kernel_params! {
    /// Mirrors `Params` in `shaders/concat.wgsl`.
    struct Params {
        plane: u32,
        dst_channels: u32,
        src_channels: u32,
        offset: u32,
        len: u32,
        _pad0: u32,
        _pad1: u32,
        _pad2: u32,
    }
}

const CONCAT_BINDINGS: &[Access] = &[Access::ReadWrite, Access::Read, Access::Read];
const SPLIT_BINDINGS: &[Access] = &[Access::ReadWrite, Access::Read];

/// Every define set the launchers use, for the cross-backend shader check.
pub fn variants() -> Vec<Vec<(&'static str, i64)>> {
    vec![vec![("VEC4", 0)], vec![("VEC4", 1)]]
}

fn launch(gpu: &Gpu, entry: &'static str, bindings: &'static [Access], params: Params, t: &[&Tensor]) -> Result<()> {
    let kernel = Kernel::new(Shader::Concat, entry, bindings)
        .with_defines(vec![("VEC4", params.plane.is_multiple_of(4) as i64)]);
    gpu.launch(&kernel, &params, t, Gpu::grid_1d(t[0].len().div_ceil(4 * 64) as u32))
}

/// (N, Ca, ...) and (N, Cb, ...) -> (N, Ca + Cb, ...).
pub fn concat(gpu: &Gpu, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (sa, sb) = (a.shape(), b.shape());
    ensure!(
        sa.len() >= 2 && sa.len() == sb.len() && sa[0] == sb[0] && sa[2..] == sb[2..],
        "concat: {sa:?} and {sb:?} differ outside the channel axis"
    );
    let plane: usize = sa[2..].iter().product();
    let mut shape = sa.to_vec();
    shape[1] = sa[1] + sb[1];
    let out = gpu.uninit(&shape)?;
    let params = Params {
        plane: plane as u32,
        dst_channels: shape[1] as u32,
        src_channels: sa[1] as u32,
        offset: 0,
        len: out.len() as u32,
        _pad0: 0,
        _pad1: 0,
        _pad2: 0,
    };
    launch(gpu, "concat_channels", CONCAT_BINDINGS, params, &[&out, a, b])?;
    Ok(out)
}

/// Backward of `concat`: `d_out` (N, Ca + Cb, ...) split into the first
/// `channels_a` channels and the rest.
pub fn split(gpu: &Gpu, d_out: &Tensor, channels_a: usize) -> Result<(Tensor, Tensor)> {
    let s = d_out.shape();
    ensure!(s.len() >= 2 && channels_a <= s[1], "split: {channels_a} channels out of {s:?}");
    let plane: usize = s[2..].iter().product();
    let mut parts = Vec::new();
    for (offset, channels) in [(0, channels_a), (channels_a, s[1] - channels_a)] {
        let mut shape = s.to_vec();
        shape[1] = channels;
        let part = gpu.uninit(&shape)?;
        let params = Params {
            plane: plane as u32,
            dst_channels: channels as u32,
            src_channels: s[1] as u32,
            offset: offset as u32,
            len: part.len() as u32,
            _pad0: 0,
            _pad1: 0,
            _pad2: 0,
        };
        launch(gpu, "split_channels", SPLIT_BINDINGS, params, &[&part, d_out])?;
        parts.push(part);
    }
    let b = parts.pop().unwrap();
    Ok((parts.pop().unwrap(), b))
}

/// CPU twins, in f64: tensors are (N, C, plane) flattened.
pub mod cpu {
    pub fn concat(a: &[f64], b: &[f64], batch: usize) -> Vec<f64> {
        let (la, lb) = (a.len() / batch, b.len() / batch);
        (0..batch).flat_map(|n| a[n * la..(n + 1) * la].iter().chain(&b[n * lb..(n + 1) * lb]).copied()).collect()
    }

    pub fn split(d_out: &[f64], batch: usize, channels_a: usize, plane: usize) -> (Vec<f64>, Vec<f64>) {
        let per_image = d_out.len() / batch;
        let la = channels_a * plane;
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for image in d_out.chunks(per_image) {
            a.extend_from_slice(&image[..la]);
            b.extend_from_slice(&image[la..]);
        }
        (a, b)
    }
}
