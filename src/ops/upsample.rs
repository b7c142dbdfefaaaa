//! Nearest-neighbour 2x upsampling and its backward. Kernel:
//! `shaders/upsample.wgsl`.

use anyhow::{ensure, Result};

use crate::gpu::{kernel_params, Access, Gpu, Kernel, Shader, Tensor};

kernel_params! {
    /// Mirrors `Params` in `shaders/upsample.wgsl`.
    struct Params {
        h: u32,
        w: u32,
        len: u32,
        _pad: u32,
    }
}

const BINDINGS: &[Access] = &[Access::ReadWrite, Access::Read];

/// Every define set the launchers use, for the cross-backend shader check.
pub fn variants() -> Vec<Vec<(&'static str, i64)>> {
    vec![vec![("VEC4", 0)], vec![("VEC4", 1)]]
}

fn launch(gpu: &Gpu, entry: &'static str, dst: &Tensor, src: &Tensor, h: usize, w: usize) -> Result<()> {
    let params = Params { h: h as u32, w: w as u32, len: dst.len() as u32, _pad: 0 };
    let kernel =
        Kernel::new(Shader::Upsample, entry, BINDINGS).with_defines(vec![("VEC4", w.is_multiple_of(4) as i64)]);
    gpu.launch(&kernel, &params, &[dst, src], Gpu::grid_1d(dst.len().div_ceil(4 * 64) as u32))
}

/// (N, C, H, W) -> (N, C, 2H, 2W), each pixel repeated in a 2x2 block.
pub fn upsample_nearest2x(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    let s = x.shape();
    ensure!(s.len() == 4, "upsample_nearest2x: input {s:?} must be (N, C, H, W)");
    let y = gpu.uninit(&[s[0], s[1], 2 * s[2], 2 * s[3]])?;
    launch(gpu, "upsample_nearest2x", &y, x, s[2], s[3])?;
    Ok(y)
}

/// Gradient of `upsample_nearest2x`: each input pixel's 2x2 block of `dy` summed.
pub fn upsample_nearest2x_backward(gpu: &Gpu, dy: &Tensor) -> Result<Tensor> {
    let s = dy.shape();
    ensure!(
        s.len() == 4 && s[2].is_multiple_of(2) && s[3].is_multiple_of(2),
        "upsample_nearest2x backward: dy {s:?} must be (N, C, 2H, 2W)"
    );
    let (h, w) = (s[2] / 2, s[3] / 2);
    let dx = gpu.uninit(&[s[0], s[1], h, w])?;
    launch(gpu, "upsample_nearest2x_backward", &dx, dy, h, w)?;
    Ok(dx)
}

/// CPU twins, in f64. Maps are (planes, H, W) flattened.
pub mod cpu {
    pub fn upsample_nearest2x(x: &[f64], h: usize, w: usize) -> Vec<f64> {
        let planes = x.len() / (h * w);
        let mut y = vec![0.0; 4 * x.len()];
        for p in 0..planes {
            for oy in 0..2 * h {
                for ox in 0..2 * w {
                    y[(p * 2 * h + oy) * 2 * w + ox] = x[(p * h + oy / 2) * w + ox / 2];
                }
            }
        }
        y
    }

    pub fn upsample_nearest2x_backward(dy: &[f64], h: usize, w: usize) -> Vec<f64> {
        let mut dx = vec![0.0; dy.len() / 4];
        let planes = dx.len() / (h * w);
        for p in 0..planes {
            for oy in 0..2 * h {
                for ox in 0..2 * w {
                    dx[(p * h + oy / 2) * w + ox / 2] += dy[(p * 2 * h + oy) * 2 * w + ox];
                }
            }
        }
        dx
    }
}
