//! The adapter's own ceilings, measured by the benchmarks on the same device
//! as every kernel: peak FP32 FMA rate and storage-buffer copy bandwidth.
//! Kernels: `shaders/ceiling.wgsl` (registered with the others, so the naga
//! check translates it; launched only from here).

use anyhow::{ensure, Result};
use bytemuck::{Pod, Zeroable};

use ddpm_wgpu::gpu::{Access, Gpu, Kernel, Shader, Tensor};

/// Mirrors `Params` in `shaders/ceiling.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    iterations: u32,
    vec4_len: u32,
    seed: f32,
    _pad: u32,
}

const WORKGROUP: usize = 256;
/// Independent vec4 FMA chains per invocation of `peak_fma`.
const CHAINS: usize = 8;

/// Record the peak-FMA kernel over `out` (one vec4 per invocation), its
/// loop body unrolled `unroll` times; returns the FLOPs it performs.
pub fn peak_fma(gpu: &Gpu, out: &Tensor, iterations: u32, unroll: i64) -> Result<f64> {
    ensure!(out.len().is_multiple_of(4 * WORKGROUP), "peak_fma: output length must be a multiple of {}", 4 * WORKGROUP);
    let invocations = out.len() / 4;
    let params = Params { iterations, vec4_len: 0, seed: 0.5, _pad: 0 };
    let kernel = Kernel::new(Shader::Ceiling, "peak_fma", &[Access::ReadWrite]).with_defines(vec![("UNROLL", unroll)]);
    gpu.launch(&kernel, &params, &[out], Gpu::grid_1d((invocations / WORKGROUP) as u32))?;
    Ok((invocations * iterations as usize * unroll as usize * CHAINS * 4 * 2) as f64)
}

/// Record `out = x` with the copy kernel; returns the bytes moved (read + written).
pub fn copy(gpu: &Gpu, out: &Tensor, x: &Tensor) -> Result<f64> {
    ensure!(
        out.len() == x.len() && x.len().is_multiple_of(16),
        "copy: equal lengths that are multiples of 16 required"
    );
    let vec4_len = x.len() / 4;
    let params = Params { iterations: 0, vec4_len: vec4_len as u32, seed: 0.0, _pad: 0 };
    let kernel =
        Kernel::new(Shader::Ceiling, "copy", &[Access::ReadWrite, Access::Read]).with_defines(vec![("UNROLL", 1)]);
    gpu.launch(&kernel, &params, &[out, x], Gpu::grid_1d((vec4_len / 4).div_ceil(WORKGROUP) as u32))?;
    Ok((x.len() * 8) as f64)
}
