//! Group normalisation of NCHW tensors with a per-channel affine, optionally
//! fused with the SiLU that follows it in every UNet ResBlock (one dispatch
//! instead of two each way). Kernel: `shaders/group_norm.wgsl`.

use anyhow::{ensure, Result};

use crate::gpu::{kernel_params, Access, Gpu, Kernel, Shader, Tensor};

/// `y = gamma * (x - mean) / sqrt(var + eps) + beta` over `groups` groups of
/// channels per image (then `silu(y)` when `fuse_silu`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GroupNorm {
    pub groups: usize,
    pub eps: f32,
    pub fuse_silu: bool,
}

/// Gradients of one group norm.
pub struct GroupNormGrads {
    /// (N, C, H, W)
    pub dx: Tensor,
    /// (C)
    pub dgamma: Tensor,
    /// (C)
    pub dbeta: Tensor,
}

kernel_params! {
    /// Mirrors `Params` in `shaders/group_norm.wgsl`.
    struct Params {
        hw: u32,
        channels: u32,
        groups: u32,
        cpg: u32,
        group_len: u32,
        n_groups_total: u32,
        batch: u32,
        eps: f32,
    }
}

const WORKGROUP: u32 = 64;
/// Groups per workgroup: one team of 8 lanes each.
const GROUPS_PER_WORKGROUP: u32 = 8;

const FORWARD_BINDINGS: &[Access] = &[Access::ReadWrite, Access::ReadWrite, Access::Read, Access::Read, Access::Read];
const BACKWARD_BINDINGS: &[Access] =
    &[Access::ReadWrite, Access::ReadWrite, Access::Read, Access::Read, Access::Read, Access::Read, Access::Read];
const PARAM_GRAD_BINDINGS: &[Access] = &[Access::ReadWrite, Access::ReadWrite, Access::Read];

fn defines(vec4: bool, subgroups: bool, silu: bool) -> Vec<(&'static str, i64)> {
    vec![("VEC4", vec4 as i64), ("SUBGROUPS", subgroups as i64), ("SILU", silu as i64)]
}

/// Every define set the launchers use, for the cross-backend shader check.
pub fn variants() -> Vec<Vec<(&'static str, i64)>> {
    (0..8).map(|bits| defines(bits & 1 != 0, bits & 2 != 0, bits & 4 != 0)).collect()
}

/// Checked geometry of one launch.
struct Geometry {
    batch: usize,
    channels: usize,
    hw: usize,
}

impl GroupNorm {
    pub fn new(groups: usize, eps: f32) -> GroupNorm {
        GroupNorm { groups, eps, fuse_silu: false }
    }

    fn op_name(&self) -> &'static str {
        if self.fuse_silu {
            "group_norm_silu"
        } else {
            "group_norm"
        }
    }

    fn check(&self, x: &Tensor, gamma: &Tensor, beta: &Tensor) -> Result<Geometry> {
        let name = self.op_name();
        let s = x.shape();
        ensure!(s.len() >= 2, "{name}: input must be (N, C, ...), got {s:?}");
        let (batch, channels) = (s[0], s[1]);
        let hw: usize = s[2..].iter().product();
        ensure!(
            self.groups > 0 && channels % self.groups == 0,
            "{name}: {} groups do not divide the {channels} channels of {s:?}",
            self.groups
        );
        ensure!(
            gamma.shape() == [channels] && beta.shape() == [channels],
            "{name}: gamma {:?} and beta {:?} must both be ({channels}) for input {s:?}",
            gamma.shape(),
            beta.shape()
        );
        ensure!(x.len() < u32::MAX as usize, "{name}: {s:?} too large for 32-bit indexing");
        Ok(Geometry { batch, channels, hw })
    }

    fn params(&self, g: &Geometry) -> Params {
        let cpg = g.channels / self.groups;
        Params {
            hw: g.hw as u32,
            channels: g.channels as u32,
            groups: self.groups as u32,
            cpg: cpg as u32,
            group_len: (cpg * g.hw) as u32,
            n_groups_total: (g.batch * self.groups) as u32,
            batch: g.batch as u32,
            eps: self.eps,
        }
    }

    fn kernel(&self, gpu: &Gpu, entry: &'static str, bindings: &'static [Access], g: &Geometry) -> Kernel {
        let vec4 = g.hw.is_multiple_of(4);
        Kernel::new(Shader::GroupNorm, entry, bindings).with_defines(defines(
            vec4,
            gpu.info().subgroups,
            self.fuse_silu,
        ))
    }

    /// Returns `y` (shape of `x`) and the (N * groups, 2) mean and rstd per
    /// group that `backward` needs.
    pub fn forward(&self, gpu: &Gpu, x: &Tensor, gamma: &Tensor, beta: &Tensor) -> Result<(Tensor, Tensor)> {
        let g = self.check(x, gamma, beta)?;
        let params = self.params(&g);
        let y = gpu.uninit(x.shape())?;
        let stats = gpu.uninit(&[g.batch * self.groups, 2])?;
        let kernel = self.kernel(gpu, "group_norm_forward", FORWARD_BINDINGS, &g);
        gpu.launch(
            &kernel,
            &params,
            &[&y, &stats, gamma, beta, x],
            Gpu::grid_1d(params.n_groups_total.div_ceil(GROUPS_PER_WORKGROUP)),
        )?;
        Ok((y, stats))
    }

    /// Gradients given `dy` (the gradient of `y`, after the SiLU when fused)
    /// and the forward's inputs and stats.
    pub fn backward(
        &self,
        gpu: &Gpu,
        dy: &Tensor,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        stats: &Tensor,
    ) -> Result<GroupNormGrads> {
        let channels = gamma.len();
        let (dgamma, dbeta) = (gpu.uninit(&[channels])?, gpu.uninit(&[channels])?);
        let dx = self.backward_into(gpu, dy, x, gamma, beta, stats, [&dgamma, &dbeta])?;
        Ok(GroupNormGrads { dx, dgamma, dbeta })
    }

    /// [`GroupNorm::backward`] with dgamma and dbeta written into `param_grads`; returns dx.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_into(
        &self,
        gpu: &Gpu,
        dy: &Tensor,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        stats: &Tensor,
        [dgamma, dbeta]: [&Tensor; 2],
    ) -> Result<Tensor> {
        let g = self.check(x, gamma, beta)?;
        let name = self.op_name();
        ensure!(dy.shape() == x.shape(), "{name} backward: dy {:?} differs from x {:?}", dy.shape(), x.shape());
        ensure!(
            stats.shape() == [g.batch * self.groups, 2],
            "{name} backward: stats {:?} must be ({}, 2)",
            stats.shape(),
            g.batch * self.groups
        );
        let params = self.params(&g);
        let dx = gpu.uninit(x.shape())?;
        let partials = gpu.uninit(&[g.batch, 2, g.channels])?;
        let kernel = self.kernel(gpu, "group_norm_backward", BACKWARD_BINDINGS, &g);
        gpu.launch(
            &kernel,
            &params,
            &[&dx, &partials, gamma, beta, x, dy, stats],
            Gpu::grid_1d(params.n_groups_total.div_ceil(GROUPS_PER_WORKGROUP)),
        )?;
        ensure!(
            dgamma.len() == g.channels && dbeta.len() == g.channels,
            "{name} backward: parameter gradients {:?} and {:?} must be ({})",
            dgamma.shape(),
            dbeta.shape(),
            g.channels
        );
        let sums = Kernel::new(Shader::GroupNorm, "group_norm_param_grads", PARAM_GRAD_BINDINGS)
            .with_defines(defines(false, false, false));
        let groups = (g.channels as u32).div_ceil(WORKGROUP);
        gpu.launch(&sums, &params, &[dgamma, dbeta, &partials], [groups, 1, 1])?;
        Ok(dx)
    }
}

/// CPU twin, all in f64 so the tests can check its backward against finite
/// differences. `x` is (batch, channels, hw) flattened.
pub mod cpu {
    use super::GroupNorm;

    pub struct Forward {
        pub y: Vec<f64>,
        /// (batch * groups)
        pub mean: Vec<f64>,
        pub rstd: Vec<f64>,
    }

    fn sigmoid(v: f64) -> f64 {
        1.0 / (1.0 + (-v).exp())
    }

    pub fn forward(gn: &GroupNorm, x: &[f64], gamma: &[f64], beta: &[f64], batch: usize, hw: usize) -> Forward {
        let channels = gamma.len();
        let cpg = channels / gn.groups;
        let len = cpg * hw;
        let mut y = vec![0.0; x.len()];
        let (mut means, mut rstds) = (Vec::new(), Vec::new());
        for grp in 0..batch * gn.groups {
            let xs = &x[grp * len..(grp + 1) * len];
            let mean = xs.iter().sum::<f64>() / len as f64;
            let var = xs.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / len as f64;
            let rstd = 1.0 / (var + gn.eps as f64).sqrt();
            for (i, v) in xs.iter().enumerate() {
                let c = (grp % gn.groups) * cpg + i / hw;
                let z = (v - mean) * rstd * gamma[c] + beta[c];
                y[grp * len + i] = if gn.fuse_silu { z * sigmoid(z) } else { z };
            }
            means.push(mean);
            rstds.push(rstd);
        }
        Forward { y, mean: means, rstd: rstds }
    }

    pub struct Grads {
        pub dx: Vec<f64>,
        pub dgamma: Vec<f64>,
        pub dbeta: Vec<f64>,
    }

    pub fn backward(
        gn: &GroupNorm,
        dy: &[f64],
        x: &[f64],
        gamma: &[f64],
        beta: &[f64],
        batch: usize,
        hw: usize,
    ) -> Grads {
        let channels = gamma.len();
        let cpg = channels / gn.groups;
        let len = cpg * hw;
        let f = forward(gn, x, gamma, beta, batch, hw);
        let mut dx = vec![0.0; x.len()];
        let mut dgamma = vec![0.0; channels];
        let mut dbeta = vec![0.0; channels];
        for grp in 0..batch * gn.groups {
            let (mean, rstd) = (f.mean[grp], f.rstd[grp]);
            let at = |i: usize| grp * len + i;
            let chan = |i: usize| (grp % gn.groups) * cpg + i / hw;
            let xhat: Vec<f64> = (0..len).map(|i| (x[at(i)] - mean) * rstd).collect();
            // Gradient with respect to the affine output z.
            let dz: Vec<f64> = (0..len)
                .map(|i| {
                    if gn.fuse_silu {
                        let z = xhat[i] * gamma[chan(i)] + beta[chan(i)];
                        let s = sigmoid(z);
                        dy[at(i)] * s * (1.0 + z * (1.0 - s))
                    } else {
                        dy[at(i)]
                    }
                })
                .collect();
            let (mut mean_g, mut mean_g_xhat) = (0.0, 0.0);
            for i in 0..len {
                dgamma[chan(i)] += dz[i] * xhat[i];
                dbeta[chan(i)] += dz[i];
                mean_g += gamma[chan(i)] * dz[i] / len as f64;
                mean_g_xhat += gamma[chan(i)] * dz[i] * xhat[i] / len as f64;
            }
            for i in 0..len {
                dx[at(i)] = rstd * (gamma[chan(i)] * dz[i] - mean_g - xhat[i] * mean_g_xhat);
            }
        }
        Grads { dx, dgamma, dbeta }
    }
}
