//! Sum and mean over chosen axes, deterministic (no atomics). Kernel:
//! `shaders/reduce.wgsl`.

use anyhow::{ensure, Result};

use crate::gpu::{kernel_params, Access, Gpu, Kernel, Shader, Tensor};

kernel_params! {
    /// Mirrors `Params` in `shaders/reduce.wgsl`.
    struct Params {
        kept_size: [u32; 4],
        kept_stride: [u32; 4],
        red_size: [u32; 4],
        red_stride: [u32; 4],
        n_out: u32,
        n_red: u32,
        scale: f32,
        _pad: u32,
    }
}

/// Axes of `shape` split into kept and reduced groups: (size, stride) lists,
/// innermost last, with neighbouring axes of the same group merged.
#[derive(Debug, PartialEq)]
pub struct AxisSplit {
    pub kept: Vec<(usize, usize)>,
    pub reduced: Vec<(usize, usize)>,
    /// Shape of the result: `shape` without the reduced axes (`[1]` if none remain).
    pub out_shape: Vec<usize>,
}

pub fn split_axes(shape: &[usize], axes: &[usize]) -> Result<AxisSplit> {
    ensure!(shape.len() <= 4, "reduce: rank {} > 4 ({shape:?})", shape.len());
    for &a in axes {
        ensure!(a < shape.len(), "reduce: axis {a} out of range for {shape:?}");
    }
    let mut strides = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * shape[d + 1];
    }
    let (mut kept, mut reduced) = (Vec::<(usize, usize)>::new(), Vec::<(usize, usize)>::new());
    let mut last_reduced = None;
    for d in 0..shape.len() {
        let is_reduced = axes.contains(&d);
        let group = if is_reduced { &mut reduced } else { &mut kept };
        match group.last_mut() {
            // Merge with the previous axis when it is in the same group and adjacent.
            Some(prev) if last_reduced == Some(is_reduced) => *prev = (prev.0 * shape[d], strides[d]),
            _ => group.push((shape[d], strides[d])),
        }
        last_reduced = Some(is_reduced);
    }
    let mut out_shape: Vec<usize> = (0..shape.len()).filter(|d| !axes.contains(d)).map(|d| shape[d]).collect();
    if out_shape.is_empty() {
        out_shape.push(1);
    }
    Ok(AxisSplit { kept, reduced, out_shape })
}

fn pack(groups: &[(usize, usize)]) -> ([u32; 4], [u32; 4]) {
    let (mut size, mut stride) = ([1; 4], [0; 4]);
    let skip = 4 - groups.len();
    for (i, &(n, s)) in groups.iter().enumerate() {
        size[skip + i] = n as u32;
        stride[skip + i] = s as u32;
    }
    (size, stride)
}

const BINDINGS: &[Access] = &[Access::ReadWrite, Access::Read];
const WORKGROUP: usize = 64;
/// When one invocation per output is used: short sums, enough outputs to
/// keep every core busy.
const SERIAL_MAX_TERMS: usize = 256;
const SERIAL_MIN_OUTPUTS: usize = 1024;

/// The reduction of `x` over `axes` into `into` (or a new tensor).
fn reduce(gpu: &Gpu, x: &Tensor, axes: &[usize], mean: bool, into: Option<&Tensor>) -> Result<Tensor> {
    let split = split_axes(x.shape(), axes)?;
    let n_out: usize = split.out_shape.iter().product();
    let n_red: usize = split.reduced.iter().map(|g| g.0).product();
    let (kept_size, kept_stride) = pack(&split.kept);
    let (red_size, red_stride) = pack(&split.reduced);
    let params = Params {
        kept_size,
        kept_stride,
        red_size,
        red_stride,
        n_out: n_out as u32,
        n_red: n_red as u32,
        scale: if mean && n_red > 0 { 1.0 / n_red as f32 } else { 1.0 },
        _pad: 0,
    };
    let out = match into {
        Some(t) => {
            ensure!(t.len() == n_out, "reduce: {n_out} sums of {:?} into a tensor of {:?}", x.shape(), t.shape());
            t.clone()
        }
        None => gpu.uninit(&split.out_shape)?,
    };
    // A workgroup per output wastes its lanes on short sums; an invocation
    // per output leaves cores idle on few long ones.
    let serial = n_red <= SERIAL_MAX_TERMS && n_out >= SERIAL_MIN_OUTPUTS;
    let (entry, groups) = if serial { ("reduce_sum_serial", n_out.div_ceil(WORKGROUP)) } else { ("reduce_sum", n_out) };
    // vec4 loads along a contiguous innermost reduced axis when every start is 16-byte aligned.
    let aligned = |groups: &[(usize, usize)]| groups.iter().all(|&(_, stride)| stride % 4 == 0);
    let vec4 = !serial
        && split.reduced.last().is_some_and(|&(size, stride)| stride == 1 && size % 4 == 0)
        && aligned(&split.kept)
        && aligned(&split.reduced[..split.reduced.len() - 1]);
    let kernel = Kernel::new(Shader::Reduce, entry, BINDINGS).with_defines(vec![("VEC4", vec4 as i64)]);
    gpu.launch(&kernel, &params, &[&out, x], Gpu::grid_1d(groups as u32))?;
    Ok(out)
}

/// Every define set `reduce` can choose, for the cross-backend shader check.
pub fn variants() -> Vec<Vec<(&'static str, i64)>> {
    vec![vec![("VEC4", 0)], vec![("VEC4", 1)]]
}

/// Sum over `axes`; the result drops them (shape `[1]` for a full sum).
pub fn sum(gpu: &Gpu, x: &Tensor, axes: &[usize]) -> Result<Tensor> {
    reduce(gpu, x, axes, false, None)
}

/// [`sum`] written into `out` (as many elements as the sum has).
pub fn sum_into(gpu: &Gpu, x: &Tensor, axes: &[usize], out: &Tensor) -> Result<()> {
    reduce(gpu, x, axes, false, Some(out)).map(drop)
}

/// Mean over `axes`.
pub fn mean(gpu: &Gpu, x: &Tensor, axes: &[usize]) -> Result<Tensor> {
    reduce(gpu, x, axes, true, None)
}

/// CPU twin, f64 accumulation.
pub mod cpu {
    use super::split_axes;

    pub fn sum(x: &[f32], shape: &[usize], axes: &[usize]) -> Vec<f32> {
        sum_f64(x, shape, axes).into_iter().map(|v| v as f32).collect()
    }

    pub fn mean(x: &[f32], shape: &[usize], axes: &[usize]) -> Vec<f32> {
        let count: usize = axes.iter().map(|&a| shape[a]).product();
        sum_f64(x, shape, axes).into_iter().map(|v| (v / count as f64) as f32).collect()
    }

    fn sum_f64(x: &[f32], shape: &[usize], axes: &[usize]) -> Vec<f64> {
        let split = split_axes(shape, axes).expect("valid axes");
        let mut out = vec![0f64; split.out_shape.iter().product()];
        let rank = shape.len();
        let mut coord = vec![0usize; rank];
        for &v in x {
            // Index into the output: the kept coordinates in order.
            let mut o = 0;
            for d in 0..rank {
                if !axes.contains(&d) {
                    o = o * shape[d] + coord[d];
                }
            }
            out[o] += v as f64;
            for d in (0..rank).rev() {
                coord[d] += 1;
                if coord[d] < shape[d] {
                    break;
                }
                coord[d] = 0;
            }
        }
        out
    }
}
