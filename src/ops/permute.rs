//! Axis swaps between layouts. Kernel: `shaders/permute.wgsl`.

use anyhow::{ensure, Result};

use crate::gpu::{kernel_params, Access, Gpu, Kernel, Shader, Tensor};

kernel_params! {
    /// Mirrors `Params` in `shaders/permute.wgsl`.
    struct Params {
        a: u32,
        b: u32,
        c: u32,
        d: u32,
    }
}

const WORKGROUP: usize = 64;
const PER_INVOCATION: usize = 4;

/// `x` seen as (a, b, c, d) -> (a, c, b, d). The result has shape
/// `[a, c, b, d]`; reshape it as needed.
pub fn transpose12(gpu: &Gpu, x: &Tensor, dims: [usize; 4]) -> Result<Tensor> {
    let [a, b, c, d] = dims;
    ensure!(a * b * c * d == x.len(), "transpose12: {dims:?} does not cover {:?}", x.shape());
    let out = gpu.uninit(&[a, c, b, d])?;
    let params = Params { a: a as u32, b: b as u32, c: c as u32, d: d as u32 };
    let kernel = Kernel::new(Shader::Permute, "transpose12", &[Access::ReadWrite, Access::Read]);
    let groups = x.len().div_ceil(WORKGROUP * PER_INVOCATION) as u32;
    gpu.launch(&kernel, &params, &[&out, x], Gpu::grid_1d(groups))?;
    Ok(out)
}

/// CPU twin.
pub mod cpu {
    pub fn transpose12(x: &[f32], [a, b, c, d]: [usize; 4]) -> Vec<f32> {
        let mut out = vec![0.0; x.len()];
        for i in 0..a {
            for j in 0..b {
                for k in 0..c {
                    for l in 0..d {
                        out[((i * c + k) * b + j) * d + l] = x[((i * b + j) * c + k) * d + l];
                    }
                }
            }
        }
        out
    }
}
