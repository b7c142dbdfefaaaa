//! 2-D convolution: forward (+bias), grad-input, grad-weight, grad-bias.
//! Kernels: `shaders/conv2d.wgsl`, plus `shaders/matmul.wgsl` for the GEMM
//! forms.
//!
//! Paths, fastest first:
//! * 1x1 stride-1 unpadded convs (grad-input, and forward without bias): one
//!   batched GEMM;
//! * forward with kernel width 1 or 3, stride 1 or 2 and left padding below
//!   the kernel width: the direct kernel `conv2d_forward` (weights packed by
//!   `conv2d_pack_weights` on the GPU, output channels innermost);
//! * grad-input of such a stride-1 conv with padding below the kernel size on
//!   every side: the same direct kernel run on dy with the weights flipped and
//!   transposed, and the padding mirrored; of such a stride-2 conv: its
//!   TRANSPOSED form (even and odd dx columns accumulated apart);
//! * grad-weight of square 1x1 or 3x3 kernels on maps whose width and output
//!   width are multiples of 4: the direct kernel `conv2d_grad_weight`;
//! * everything else: im2col/col2im around a batched GEMM, a chunk of images
//!   at a time so the column buffer stays bounded.
//!
//! grad-bias is `reduce::sum` over (N, H, W).

use anyhow::{ensure, Result};

use super::elementwise;
use super::matmul::{gemm, gemm_plan, Gemm};
use super::reduce;
use crate::gpu::{kernel_params, Access, Caps, Gpu, Kernel, Shader, Tensor};

/// Shapes of one convolution: x (n, c_in, h, w), w (c_out, c_in, kh, kw),
/// y (n, c_out, out_h, out_w); `pad` is zero padding as [top, bottom, left,
/// right] (TF 'SAME' stride 2 is [0, 1, 0, 1] on even maps, PyTorch
/// `padding=1` is [1, 1, 1, 1]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dGeometry {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: [usize; 4],
}

impl Conv2dGeometry {
    /// A square `k` x `k` kernel on square `size` x `size` maps, with the
    /// same padding on every side.
    pub fn square(n: usize, c_in: usize, size: usize, c_out: usize, k: usize, stride: usize, pad: usize) -> Self {
        Conv2dGeometry { n, c_in, h: size, w: size, c_out, kh: k, kw: k, stride, pad: [pad; 4] }
    }

    pub fn out_h(&self) -> usize {
        (self.h + self.pad[0] + self.pad[1] - self.kh) / self.stride + 1
    }

    pub fn out_w(&self) -> usize {
        (self.w + self.pad[2] + self.pad[3] - self.kw) / self.stride + 1
    }

    pub fn x_shape(&self) -> [usize; 4] {
        [self.n, self.c_in, self.h, self.w]
    }

    pub fn w_shape(&self) -> [usize; 4] {
        [self.c_out, self.c_in, self.kh, self.kw]
    }

    pub fn y_shape(&self) -> [usize; 4] {
        [self.n, self.c_out, self.out_h(), self.out_w()]
    }

    /// Useful FLOPs of the forward pass (two per multiply-add); each of
    /// grad-input and grad-weight costs the same.
    pub fn flops(&self) -> f64 {
        2.0 * (self.n * self.c_out * self.out_h() * self.out_w() * self.c_in * self.kh * self.kw) as f64
    }

    /// Checks the geometry itself (sizes, a kernel that fits the padded map).
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.n > 0 && self.c_in > 0 && self.h > 0 && self.w > 0 && self.c_out > 0,
            "conv2d: empty shape in {self:?}"
        );
        ensure!(self.kh > 0 && self.kw > 0 && self.stride > 0, "conv2d: zero kernel size or stride in {self:?}");
        ensure!(
            self.h + self.pad[0] + self.pad[1] >= self.kh && self.w + self.pad[2] + self.pad[3] >= self.kw,
            "conv2d: kernel {}x{} larger than the padded map in {self:?}",
            self.kh,
            self.kw
        );
        let biggest = [self.n * self.c_in * self.h * self.w, self.n * self.c_out * self.out_h() * self.out_w()];
        ensure!(biggest.iter().all(|&l| l < u32::MAX as usize), "conv2d: tensors too large for 32-bit indexing");
        Ok(())
    }

    fn check(&self, op: &str, what: &str, t: &Tensor, want: &[usize]) -> Result<()> {
        ensure!(t.shape() == want, "{op}: {what} has shape {:?}, expected {want:?} for {self:?}", t.shape());
        Ok(())
    }

    /// A 1x1, stride-1, unpadded conv: a plain GEMM per image.
    fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == [0; 4]
    }

    fn taps(&self) -> usize {
        self.kh * self.kw
    }

    fn pixels_out(&self) -> usize {
        self.out_h() * self.out_w()
    }

    /// The conv that maps dy to dx when stride is 1: channels swapped, the
    /// kernel rotated by 180 degrees, padding mirrored (`k - 1 - pad`).
    fn grad_input_as_conv(&self) -> Option<Conv2dGeometry> {
        let [t, b, l, r] = self.pad;
        let fits = self.stride == 1 && t < self.kh && b < self.kh && l < self.kw && r < self.kw;
        fits.then(|| Conv2dGeometry {
            n: self.n,
            c_in: self.c_out,
            h: self.out_h(),
            w: self.out_w(),
            c_out: self.c_in,
            kh: self.kh,
            kw: self.kw,
            stride: 1,
            pad: [self.kh - 1 - t, self.kh - 1 - b, self.kw - 1 - l, self.kw - 1 - r],
        })
    }
}

kernel_params! {
    /// Mirrors `Params` in `shaders/conv2d.wgsl`.
    struct Params {
        n: u32,
        c_in: u32,
        h: u32,
        w: u32,
        c_out: u32,
        kh: u32,
        kw: u32,
        stride: u32,
        pad_top: u32,
        pad_left: u32,
        out_h: u32,
        out_w: u32,
        row_groups: u32,
        q: u32,
        n0: u32,
        count: u32,
        flip: u32,
        splits: u32,
        _pad: [u32; 2],
    }
}

impl Params {
    fn new(g: &Conv2dGeometry) -> Params {
        Params {
            n: g.n as u32,
            c_in: g.c_in as u32,
            h: g.h as u32,
            w: g.w as u32,
            c_out: g.c_out as u32,
            kh: g.kh as u32,
            kw: g.kw as u32,
            stride: g.stride as u32,
            pad_top: g.pad[0] as u32,
            pad_left: g.pad[2] as u32,
            out_h: g.out_h() as u32,
            out_w: g.out_w() as u32,
            row_groups: g.out_w().div_ceil(PIXELS_PER_LANE) as u32,
            q: 0,
            n0: 0,
            count: g.n as u32,
            flip: 0,
            splits: 1,
            _pad: [0; 2],
        }
    }
}

/// Output pixels (consecutive in a row) per invocation of
/// `conv2d_grad_weight`, and the smallest tile of `conv2d_forward`.
const PIXELS_PER_LANE: usize = 4;
/// Invocations per workgroup of `conv2d_forward` and the helpers.
const WORKGROUP: usize = 64;
/// grad-weight splits its pixel sum until it has this many workgroups...
const GW_MIN_WORKGROUPS: usize = 64;
/// ...but keeps at least this many groups of 4 pixels in each slice.
const GW_MIN_SLICE: usize = 64;
/// Upper bound on one chunk's im2col buffer (and on its GEMM output).
const CHUNK_BYTES: usize = 48 << 20;

/// How `conv2d_pack_weights` reads the (c_out, c_in, kh, kw) weights.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Packing {
    /// As they are, for the forward pass.
    Plain = 0,
    /// Transposed to (c_in, c_out) and rotated by 180 degrees: the conv
    /// that maps dy to dx when the stride is 1.
    Flipped = 1,
    /// Transposed only, for the stride-2 grad-input kernel.
    Transposed = 2,
}

/// Which code of `shaders/conv2d.wgsl` a variant holds.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Entry {
    Forward,
    GradWeight,
}

/// Template defines of one `conv2d_forward` or `conv2d_grad_weight` variant.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DirectVariant {
    entry: Entry,
    /// Stride-2 grad-input form of `conv2d_forward`.
    transposed: bool,
    /// Output pixels per lane of `conv2d_forward` (dy columns when
    /// transposed, with twice as many dx pixels).
    px: usize,
    /// grad-weight: lanes split the pixel sum, not the output channels.
    lane_slices: bool,
    /// Output channels per lane (forward), or per lane times input
    /// channels per lane (grad-weight).
    q: usize,
    tci: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad_left: usize,
    vec4: bool,
    bias: bool,
    subgroups: bool,
    sg8: bool,
}

impl DirectVariant {
    /// Columns right of a lane's S vec4 core that its kernel taps still read.
    fn halo_right(&self) -> usize {
        (self.kw + 3 * self.stride).saturating_sub(self.pad_left + 4 * self.stride)
    }

    /// Halo columns (left, right) of the dy values the stride-2 grad-input
    /// kernel reads: dx column 2i + px takes dy column i + (px + pad - kx) / 2.
    fn transposed_halos(&self) -> (usize, usize) {
        let offsets = (0..2i64)
            .flat_map(|px| (0..self.kw as i64).map(move |kx| px + self.pad_left as i64 - kx))
            .filter(|d| d % 2 == 0)
            .map(|d| d / 2);
        offsets.fold((0, 0), |(l, r), o| (l.max((-o).max(0) as usize), r.max(o.max(0) as usize)))
    }

    /// (S, PL, NR) as the template reads rows: stride, halo columns left
    /// and right of a lane's core.
    fn row_reads(&self) -> (usize, usize, usize) {
        if self.transposed {
            let (left, right) = self.transposed_halos();
            (1, left, right)
        } else {
            (self.stride, self.pad_left, self.halo_right())
        }
    }

    /// Output pixel groups per output row.
    fn row_groups(&self, out_w: usize) -> usize {
        if self.transposed {
            out_w.div_ceil(2 * self.px)
        } else {
            out_w.div_ceil(self.px)
        }
    }

    fn defines(&self) -> Vec<(&'static str, i64)> {
        let (s, pl, nr) = self.row_reads();
        vec![
            ("TRANSPOSED", self.transposed as i64),
            ("PADL", self.pad_left as i64),
            ("NV", (pl + self.px * s + nr) as i64),
            ("PX", self.px as i64),
            ("FORWARD", (self.entry == Entry::Forward) as i64),
            ("GRAD_WEIGHT", (self.entry == Entry::GradWeight) as i64),
            ("Q", self.q as i64),
            ("TCO", self.q as i64),
            ("TCI", self.tci as i64),
            ("KH", self.kh as i64),
            ("KW", self.kw as i64),
            ("S", s as i64),
            ("PL", pl as i64),
            ("NR", nr as i64),
            ("HL", (pl > 0) as i64),
            ("HR", (nr > 0) as i64),
            ("LANE_SLICES", self.lane_slices as i64),
            ("SHARE_X", (self.subgroups && !self.lane_slices) as i64),
            ("VEC4", self.vec4 as i64),
            ("BIAS", self.bias as i64),
            ("SUBGROUPS", self.subgroups as i64),
            ("SG8", self.sg8 as i64),
        ]
    }
}

/// Kernel widths, strides and left paddings the direct kernels are built for.
fn direct_supports(g: &Conv2dGeometry) -> bool {
    matches!(g.kw, 1 | 3) && matches!(g.stride, 1 | 2) && g.pad[2] < g.kw
}

/// The direct grad-weight kernel also fixes the kernel height and needs
/// rows that are whole vec4s.
fn grad_weight_direct_supports(g: &Conv2dGeometry) -> bool {
    direct_supports(g) && g.kh == g.kw && g.w.is_multiple_of(4) && g.out_w().is_multiple_of(4)
}

/// (output pixels, output channels) per invocation of `conv2d_forward`.
/// Measured on lavapipe (16x16 and 32x32 maps, 32-64 channels): with
/// subgroup weight sharing 8 x 16 at stride 1 (44 GF/s, 4 x 32: 42) and
/// 4 x 32 at stride 2; without it every lane loads its own weights, so the
/// widest pixel tile wins (16 x 8: 25.6 GF/s, 8 x 16: 19.4, 4 x 16: 13).
fn forward_tile(subgroups: bool, g: &Conv2dGeometry) -> (usize, usize) {
    let px = if subgroups {
        if g.stride == 1 && g.out_w() >= 8 {
            8
        } else {
            4
        }
    } else {
        [16, 8].into_iter().find(|&px| g.out_w() >= px).unwrap_or(4)
    };
    let q = match (subgroups, px) {
        _ if g.c_out <= 8 => 8,
        (true, 4) => 32,
        (_, 16) => 8,
        _ => 16,
    };
    (px, q)
}

/// (dy columns, dx channels) per invocation of the stride-2 grad-input
/// kernel, whose lanes hold twice as many dx pixels as dy columns. Measured
/// on lavapipe (64 channels, dx 32x32): 16 x 8 gives 25 GF/s with subgroups
/// and 17.7 without, 8 x 8 and 4 x 16 about 21 and 13; on narrower maps the
/// widest tile that still fits a row.
fn transposed_tile(subgroups: bool, g: &Conv2dGeometry) -> (usize, usize) {
    let px = [16, 8].into_iter().find(|&px| g.w >= 2 * px).unwrap_or(4);
    let q = if subgroups && px == 4 && g.c_in > 8 { 16 } else { 8 };
    (px, q)
}

/// (output, input) channels per invocation of `conv2d_grad_weight`, each
/// with every tap: about 128 accumulators. Per 4 output pixels a lane loads
/// one dy vec4 per output channel and the input rows of its input channels;
/// with subgroups the input rows are shared by the 8 lanes, so few output
/// channels per lane; without, the two kinds of load are balanced, unless
/// there are too few output channels for 8 lanes of 8.
///
/// SwiftShader's compiler ([`Caps::few_loads`]) builds a lane that loads 9
/// input items in 0.3 s and one that loads 16 or more in minutes, so there
/// a lane takes one input channel of a 3x3 kernel (3 rows of 3 items), 8 of
/// a 1x1, and output channels as c_out allows 8 lanes of them.
fn grad_weight_tile(caps: Caps, k: usize, c_out: usize) -> (usize, usize) {
    if caps.few_loads {
        return match k {
            1 => (8, 8),
            _ => ([16, 8].into_iter().find(|&q| c_out >= 8 * q).unwrap_or(4), 1),
        };
    }
    match (caps.subgroups || c_out < 64, k) {
        (true, 1) => (4, 32),
        (true, _) => (4, 4),
        (false, 1) => (8, 16),
        (false, _) => (8, 2),
    }
}

fn direct_variant(caps: Caps, g: &Conv2dGeometry, bias: bool) -> DirectVariant {
    let (px, q) = forward_tile(caps.subgroups, g);
    DirectVariant {
        entry: Entry::Forward,
        transposed: false,
        lane_slices: false,
        px,
        q,
        tci: 1,
        kh: 1,
        kw: g.kw,
        stride: g.stride,
        pad_left: g.pad[2],
        vec4: g.w.is_multiple_of(4) && g.out_w().is_multiple_of(4),
        bias,
        subgroups: caps.subgroups,
        sg8: caps.sg8,
    }
}

/// The stride-2 grad-input form of the direct kernel for `g`'s dx.
fn transposed_variant(caps: Caps, g: &Conv2dGeometry) -> DirectVariant {
    let (px, q) = transposed_tile(caps.subgroups, g);
    DirectVariant {
        transposed: true,
        px,
        q,
        vec4: g.out_w().is_multiple_of(4) && g.w.is_multiple_of(8),
        ..direct_variant(caps, g, false)
    }
}

fn grad_weight_variant(caps: Caps, g: &Conv2dGeometry) -> DirectVariant {
    let (q, tci) = grad_weight_tile(caps, g.kw, g.c_out);
    DirectVariant {
        entry: Entry::GradWeight,
        transposed: false,
        // One lane's output channels are all there are: the other 7 lanes
        // would idle, so the lanes split the pixel sum instead.
        lane_slices: g.c_out <= q,
        px: PIXELS_PER_LANE,
        q,
        tci,
        kh: g.kh,
        kw: g.kw,
        stride: g.stride,
        pad_left: g.pad[2],
        vec4: true,
        bias: false,
        subgroups: caps.subgroups,
        sg8: caps.sg8,
    }
}

const DIRECT: &[Access] = &[Access::ReadWrite, Access::Read, Access::Read];
const DIRECT_BIAS: &[Access] = &[Access::ReadWrite, Access::Read, Access::Read, Access::Read];
const HELPER: &[Access] = &[Access::ReadWrite, Access::Read];

/// A helper entry point (packing, im2col, col2im, split sums): only the
/// switches that turn the kernels' code off.
fn helper_kernel(entry: &'static str) -> Kernel {
    Kernel::new(Shader::Conv2d, entry, HELPER).with_defines(vec![("FORWARD", 0), ("GRAD_WEIGHT", 0)])
}

impl DirectVariant {
    fn kernel(&self) -> Kernel {
        let (entry, bindings) = match self.entry {
            Entry::GradWeight => ("conv2d_grad_weight", DIRECT),
            _ if self.bias => ("conv2d_forward", DIRECT_BIAS),
            _ => ("conv2d_forward", DIRECT),
        };
        Kernel::new(Shader::Conv2d, entry, bindings).with_defines(self.defines())
    }
}

/// Images per im2col chunk, so `per_image_floats * chunk` stays bounded.
fn chunk_images(g: &Conv2dGeometry, per_image_floats: usize) -> usize {
    (CHUNK_BYTES / (4 * per_image_floats).max(1)).clamp(1, g.n)
}

/// How `conv2d_forward` runs one geometry on one kind of adapter: chosen
/// once by [`forward_plan`], run by the launcher, enumerated by [`variants`].
#[derive(Clone, Debug, PartialEq)]
pub enum ForwardPlan {
    /// A 1x1 conv without bias: one batched GEMM (a separate bias pass
    /// costs more than the GEMM saves, so with a bias the direct kernel wins;
    /// measured on lavapipe, 1x1 64 -> 128 on 16x16 maps).
    Pointwise(Gemm),
    /// Weights packed, then the direct kernel.
    Direct(DirectVariant),
    /// im2col and a batched GEMM per chunk of `gemm.batch` images, then the bias.
    Im2col(Gemm),
}

/// How `conv2d_grad_input` runs.
#[derive(Clone, Debug, PartialEq)]
pub enum GradInputPlan {
    /// A 1x1 conv: dx = w^T dy, one batched GEMM.
    Pointwise(Gemm),
    /// Stride 1: the direct kernel on dy, as the conv `conv` with flipped,
    /// transposed weights and mirrored padding.
    Flipped { conv: Conv2dGeometry, variant: DirectVariant },
    /// Stride 2: the direct kernel's TRANSPOSED form.
    Transposed(DirectVariant),
    /// A GEMM to columns per chunk of `gemm.batch` images, then col2im.
    Col2im(Gemm),
}

/// How `conv2d_grad_weight` runs.
#[derive(Clone, Debug, PartialEq)]
pub enum GradWeightPlan {
    /// The direct kernel on `grid`, its pixel sum cut into `splits` slices
    /// (the grid's z, times 8 when the lanes split it too) whose partial dw
    /// are summed afterwards when there is more than one.
    Direct { variant: DirectVariant, splits: usize, grid: [u32; 3] },
    /// im2col and a batched GEMM per chunk of `gemm.batch` images, then sums.
    Im2col(Gemm),
}

pub fn forward_plan(g: &Conv2dGeometry, bias: bool, caps: Caps) -> ForwardPlan {
    if !bias && g.is_pointwise() {
        // y[z] (c_out, h*w) = w (c_out, c_in) x[z] (c_in, h*w).
        ForwardPlan::Pointwise(Gemm { batch: g.n, shared_a: true, ..Gemm::new(g.c_out, g.h * g.w, g.c_in) })
    } else if direct_supports(g) {
        ForwardPlan::Direct(direct_variant(caps, g, bias))
    } else {
        let ck = g.c_in * g.taps();
        let chunk = chunk_images(g, g.pixels_out() * ck);
        // y[z] (c_out, pixels) = w (c_out, ck) cols[z]^T, cols[z] stored (pixels, ck).
        let gemm = Gemm { batch: chunk, trans_b: true, shared_a: true, ..Gemm::new(g.c_out, g.pixels_out(), ck) };
        ForwardPlan::Im2col(gemm)
    }
}

pub fn grad_input_plan(g: &Conv2dGeometry, caps: Caps) -> GradInputPlan {
    if g.is_pointwise() {
        // dx[z] (c_in, h*w) = w^T dy[z], w stored (c_out, c_in).
        let gemm = Gemm { batch: g.n, shared_a: true, trans_a: true, ..Gemm::new(g.c_in, g.h * g.w, g.c_out) };
        return GradInputPlan::Pointwise(gemm);
    }
    if let Some(conv) = g.grad_input_as_conv().filter(direct_supports) {
        return GradInputPlan::Flipped { conv, variant: direct_variant(caps, &conv, false) };
    }
    if g.stride == 2 && direct_supports(g) {
        return GradInputPlan::Transposed(transposed_variant(caps, g));
    }
    let ck = g.c_in * g.taps();
    let chunk = chunk_images(g, g.pixels_out() * ck);
    // dcols[z] (ck, pixels) = w^T dy[z]; w stored (c_out, ck).
    let gemm = Gemm { batch: chunk, trans_a: true, shared_a: true, ..Gemm::new(ck, g.pixels_out(), g.c_out) };
    GradInputPlan::Col2im(gemm)
}

pub fn grad_weight_plan(g: &Conv2dGeometry, caps: Caps) -> GradWeightPlan {
    if grad_weight_direct_supports(g) {
        let variant = grad_weight_variant(caps, g);
        // A workgroup is 8 lanes across output channels (or across slices
        // of the pixel sum); when that leaves too few workgroups to keep
        // every core busy, the pixel sum is split into more slices whose
        // partial dw are added afterwards.
        let (co_per_workgroup, lane_slices) = if variant.lane_slices { (variant.q, 8) } else { (8 * variant.q, 1) };
        let tiles = g.c_out.div_ceil(co_per_workgroup) * g.c_in.div_ceil(variant.tci);
        let pixel_groups = g.n * g.out_h() * g.out_w().div_ceil(PIXELS_PER_LANE);
        let workgroup_slices =
            GW_MIN_WORKGROUPS.div_ceil(tiles).min(pixel_groups.div_ceil(GW_MIN_SLICE * lane_slices)).max(1);
        let grid =
            [g.c_out.div_ceil(co_per_workgroup) as u32, g.c_in.div_ceil(variant.tci) as u32, workgroup_slices as u32];
        return GradWeightPlan::Direct { variant, splits: workgroup_slices * lane_slices, grid };
    }
    let ck = g.c_in * g.taps();
    let chunk = chunk_images(g, (g.pixels_out() + g.c_out) * ck);
    GradWeightPlan::Im2col(Gemm { batch: chunk, ..Gemm::new(g.c_out, ck, g.pixels_out()) })
}

impl ForwardPlan {
    /// The templated kernels this plan launches.
    pub fn kernels(&self, caps: Caps) -> Vec<Kernel> {
        match self {
            ForwardPlan::Pointwise(gemm) => vec![gemm_plan(gemm, caps, false).kernel],
            ForwardPlan::Direct(v) => vec![helper_kernel("conv2d_pack_weights"), v.kernel()],
            // The bias is an elementwise pass.
            ForwardPlan::Im2col(gemm) => {
                vec![helper_kernel("conv2d_im2col"), gemm_plan(gemm, caps, false).kernel]
            }
        }
    }
}

impl GradInputPlan {
    pub fn kernels(&self, caps: Caps) -> Vec<Kernel> {
        match self {
            GradInputPlan::Pointwise(gemm) => vec![gemm_plan(gemm, caps, false).kernel],
            GradInputPlan::Flipped { variant, .. } | GradInputPlan::Transposed(variant) => {
                vec![helper_kernel("conv2d_pack_weights"), variant.kernel()]
            }
            GradInputPlan::Col2im(gemm) => {
                vec![gemm_plan(gemm, caps, false).kernel, helper_kernel("conv2d_col2im")]
            }
        }
    }
}

impl GradWeightPlan {
    pub fn kernels(&self, caps: Caps) -> Vec<Kernel> {
        match self {
            GradWeightPlan::Direct { variant, splits, .. } => {
                let mut out = vec![variant.kernel()];
                if *splits > 1 {
                    out.push(helper_kernel("conv2d_sum_splits"));
                }
                out
            }
            GradWeightPlan::Im2col(gemm) => {
                vec![helper_kernel("conv2d_im2col"), gemm_plan(gemm, caps, false).kernel]
            }
        }
    }
}

/// Every kernel the plans of `g` launch on `caps`: forward with and
/// without bias, and both gradients.
pub fn plan_kernels(g: &Conv2dGeometry, caps: Caps) -> Vec<Kernel> {
    let mut out = Vec::new();
    for bias in [false, true] {
        out.extend(forward_plan(g, bias, caps).kernels(caps));
    }
    out.extend(grad_input_plan(g, caps).kernels(caps));
    out.extend(grad_weight_plan(g, caps).kernels(caps));
    out
}

/// Geometries that reach every decision the plans make: square and
/// one-sided kernels, strides 1 and 2, every left and right padding the
/// direct kernels tell apart, aligned and unaligned widths narrow and wide,
/// few and many channels.
pub fn plan_shape_grid() -> Vec<Conv2dGeometry> {
    let mut out = Vec::new();
    for (kh, kw) in [(1, 1), (2, 2), (3, 3), (3, 1), (1, 3)] {
        for stride in [1, 2] {
            for pad in (0..18).map(|i| [i / 9, i / 9, i % 3, i / 3 % 3]) {
                for size in [4, 5, 7, 8, 12, 16, 20, 28, 32, 37, 38] {
                    for c in [3, 8, 40, 64] {
                        let g = Conv2dGeometry { kh, kw, pad, ..Conv2dGeometry::square(2, c, size, c, 1, stride, 0) };
                        if g.validate().is_ok() {
                            out.push(g);
                        }
                    }
                }
            }
        }
    }
    out
}

/// Every define set the plans of [`plan_shape_grid`] choose on every kind
/// of adapter, for the cross-backend check (computed once).
pub fn variants() -> Vec<Vec<(&'static str, i64)>> {
    static VARIANTS: std::sync::OnceLock<Vec<Vec<(&'static str, i64)>>> = std::sync::OnceLock::new();
    VARIANTS
        .get_or_init(|| {
            let mut out: Vec<_> = plan_shape_grid()
                .iter()
                .flat_map(|g| Caps::ALL.into_iter().flat_map(move |caps| plan_kernels(g, caps)))
                .filter(|k| k.shader == Shader::Conv2d)
                .map(|k| k.defines)
                .collect();
            out.sort();
            out.dedup();
            out
        })
        .clone()
}

fn launch_helper(
    gpu: &Gpu,
    entry: &'static str,
    params: &Params,
    out: &Tensor,
    src: &Tensor,
    items: usize,
) -> Result<()> {
    gpu.launch(&helper_kernel(entry), params, &[out, src], Gpu::grid_1d(items.div_ceil(WORKGROUP) as u32))
}

/// Weights relaid for the direct kernel as (c_out/q, c_in, kh, kw, q) of
/// the conv `g` describes (for grad-input: the conv from dy to dx, whose
/// weights `w` holds as (c_in, c_out, kh, kw)).
fn pack_weights(gpu: &Gpu, g: &Conv2dGeometry, w: &Tensor, q: usize, packing: Packing) -> Result<Tensor> {
    let blocks = g.c_out.div_ceil(q);
    let packed = gpu.uninit(&[blocks, g.c_in, g.kh, g.kw, q])?;
    let params = Params { q: q as u32, flip: packing as u32, ..Params::new(g) };
    launch_helper(gpu, "conv2d_pack_weights", &params, &packed, w, packed.len())?;
    Ok(packed)
}

/// Record one `conv2d_forward` launch writing `y`; `params.row_groups`
/// pixel groups per output row.
fn launch_direct(
    gpu: &Gpu,
    v: &DirectVariant,
    params: &Params,
    y: &Tensor,
    x: &Tensor,
    packed: &Tensor,
    bias: Option<&Tensor>,
) -> Result<()> {
    // The stride-2 grad-input kernel runs even and odd dx rows as z = 0, 1.
    let (rows, parities) = if v.transposed { (params.out_h.div_ceil(2), 2) } else { (params.out_h, 1) };
    let groups = (params.n * rows * params.row_groups) as usize;
    let grid = [groups.div_ceil(WORKGROUP) as u32, (params.c_out as usize).div_ceil(v.q) as u32, parities];
    let mut tensors = vec![y, x, packed];
    tensors.extend(bias);
    gpu.launch(&v.kernel(), params, &tensors, grid)
}

/// The direct kernel: `y = conv(x, w) (+ bias)`, `w` read as `packing` says.
fn direct(
    gpu: &Gpu,
    g: &Conv2dGeometry,
    v: &DirectVariant,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    packing: Packing,
) -> Result<Tensor> {
    let packed = pack_weights(gpu, g, w, v.q, packing)?;
    let y = gpu.uninit(&g.y_shape())?;
    let params = Params { row_groups: v.row_groups(g.out_w()) as u32, ..Params::new(g) };
    launch_direct(gpu, v, &params, &y, x, &packed, bias)?;
    Ok(y)
}

/// dx of a stride-2 conv by the TRANSPOSED form of the direct kernel.
fn grad_input_transposed(gpu: &Gpu, g: &Conv2dGeometry, v: &DirectVariant, dy: &Tensor, w: &Tensor) -> Result<Tensor> {
    // Seen from the kernel: input dy (c_out channels), output dx.
    let params = Params {
        c_in: g.c_out as u32,
        h: g.out_h() as u32,
        w: g.out_w() as u32,
        c_out: g.c_in as u32,
        out_h: g.h as u32,
        out_w: g.w as u32,
        row_groups: v.row_groups(g.w) as u32,
        ..Params::new(g)
    };
    let dy_to_dx = Conv2dGeometry { c_in: g.c_out, c_out: g.c_in, ..*g };
    let packed = pack_weights(gpu, &dy_to_dx, w, v.q, Packing::Transposed)?;
    let dx = gpu.uninit(&g.x_shape())?;
    launch_direct(gpu, v, &params, &dx, dy, &packed, None)?;
    Ok(dx)
}

/// Columns (count, out_h*out_w, c_in*kh*kw) of images n0..n0+count.
fn im2col(gpu: &Gpu, g: &Conv2dGeometry, x: &Tensor, n0: usize, count: usize) -> Result<Tensor> {
    let cols = gpu.uninit(&[count, g.pixels_out(), g.c_in * g.taps()])?;
    let params = Params { n0: n0 as u32, count: count as u32, ..Params::new(g) };
    launch_helper(gpu, "conv2d_im2col", &params, &cols, x, cols.len())?;
    Ok(cols)
}

/// Forward through im2col + GEMM: any kernel size, stride and padding.
fn forward_im2col(
    gpu: &Gpu,
    g: &Conv2dGeometry,
    mm: &Gemm,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    let y = gpu.uninit(&g.y_shape())?;
    let per_image = g.c_out * g.pixels_out();
    for n0 in (0..g.n).step_by(mm.batch) {
        let count = mm.batch.min(g.n - n0);
        let cols = im2col(gpu, g, x, n0, count)?;
        let mm = Gemm { batch: count, ..*mm };
        if count == g.n {
            gemm(gpu, &mm, &y, w, &cols, None)?;
        } else {
            let part = gpu.uninit(&[count * per_image])?;
            gemm(gpu, &mm, &part, w, &cols, None)?;
            gpu.copy_region(&part, 0, &y, n0 * per_image, part.len())?;
        }
    }
    match bias {
        Some(b) => elementwise::add_channel(gpu, &y, b),
        None => Ok(y),
    }
}

/// `y = conv2d(x, w) + bias`: x (n, c_in, h, w), w (c_out, c_in, kh, kw),
/// bias (c_out).
pub fn conv2d_forward(gpu: &Gpu, g: &Conv2dGeometry, x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    g.validate()?;
    g.check("conv2d_forward", "x", x, &g.x_shape())?;
    g.check("conv2d_forward", "w", w, &g.w_shape())?;
    if let Some(b) = bias {
        g.check("conv2d_forward", "bias", b, &[g.c_out])?;
    }
    match forward_plan(g, bias.is_some(), gpu.caps()) {
        ForwardPlan::Pointwise(mm) => {
            let y = gpu.uninit(&g.y_shape())?;
            gemm(gpu, &mm, &y, w, x, None)?;
            Ok(y)
        }
        ForwardPlan::Direct(v) => direct(gpu, g, &v, x, w, bias, Packing::Plain),
        ForwardPlan::Im2col(mm) => forward_im2col(gpu, g, &mm, x, w, bias),
    }
}

/// dx (n, c_in, h, w) from dy (n, c_out, out_h, out_w).
pub fn conv2d_grad_input(gpu: &Gpu, g: &Conv2dGeometry, dy: &Tensor, w: &Tensor) -> Result<Tensor> {
    g.validate()?;
    g.check("conv2d_grad_input", "dy", dy, &g.y_shape())?;
    g.check("conv2d_grad_input", "w", w, &g.w_shape())?;
    let mm = match grad_input_plan(g, gpu.caps()) {
        GradInputPlan::Pointwise(mm) => {
            let dx = gpu.uninit(&g.x_shape())?;
            gemm(gpu, &mm, &dx, w, dy, None)?;
            return Ok(dx);
        }
        GradInputPlan::Flipped { conv, variant } => return direct(gpu, &conv, &variant, dy, w, None, Packing::Flipped),
        GradInputPlan::Transposed(variant) => return grad_input_transposed(gpu, g, &variant, dy, w),
        GradInputPlan::Col2im(mm) => mm,
    };
    let dx = gpu.uninit(&g.x_shape())?;
    for n0 in (0..g.n).step_by(mm.batch) {
        let count = mm.batch.min(g.n - n0);
        let dy_chunk = if count == g.n { dy.clone() } else { slice_images(gpu, dy, n0, count)? };
        let dcols = gpu.uninit(&[count, g.c_in * g.taps(), g.pixels_out()])?;
        gemm(gpu, &Gemm { batch: count, ..mm }, &dcols, w, &dy_chunk, None)?;
        let params = Params { n0: n0 as u32, count: count as u32, ..Params::new(g) };
        launch_helper(gpu, "conv2d_col2im", &params, &dx, &dcols, count * g.c_in * g.h * g.w)?;
    }
    Ok(dx)
}

/// Images n0..n0+count of an (n, ...) tensor, copied out.
fn slice_images(gpu: &Gpu, t: &Tensor, n0: usize, count: usize) -> Result<Tensor> {
    let mut shape = t.shape().to_vec();
    let per_image = t.len() / shape[0];
    shape[0] = count;
    let out = gpu.uninit(&shape)?;
    gpu.copy_region(t, n0 * per_image, &out, 0, count * per_image)?;
    Ok(out)
}

/// dw (c_out, c_in, kh, kw) = sum over images of dy[z] (c_out, pixels) times
/// cols[z] (pixels, c_in*kh*kw).
pub fn conv2d_grad_weight(gpu: &Gpu, g: &Conv2dGeometry, dy: &Tensor, x: &Tensor) -> Result<Tensor> {
    let dw = gpu.uninit(&g.w_shape())?;
    conv2d_grad_weight_into(gpu, g, dy, x, &dw)?;
    Ok(dw)
}

/// [`conv2d_grad_weight`] written into `dw` (a parameter's gradient view).
pub fn conv2d_grad_weight_into(gpu: &Gpu, g: &Conv2dGeometry, dy: &Tensor, x: &Tensor, dw: &Tensor) -> Result<()> {
    g.validate()?;
    g.check("conv2d_grad_weight", "dy", dy, &g.y_shape())?;
    g.check("conv2d_grad_weight", "x", x, &g.x_shape())?;
    g.check("conv2d_grad_weight", "dw", dw, &g.w_shape())?;
    let mm = match grad_weight_plan(g, gpu.caps()) {
        GradWeightPlan::Direct { variant, splits, grid } => {
            let params = Params { splits: splits as u32, ..Params::new(g) };
            let partials = if splits == 1 { dw.clone() } else { gpu.uninit(&[splits * g.c_out, g.c_in, g.kh, g.kw])? };
            gpu.launch(&variant.kernel(), &params, &[&partials, x, dy], grid)?;
            if splits > 1 {
                launch_helper(gpu, "conv2d_sum_splits", &params, dw, &partials, dw.len())?;
            }
            return Ok(());
        }
        GradWeightPlan::Im2col(mm) => mm,
    };
    for n0 in (0..g.n).step_by(mm.batch) {
        let count = mm.batch.min(g.n - n0);
        let cols = im2col(gpu, g, x, n0, count)?;
        let dy_chunk = if count == g.n { dy.clone() } else { slice_images(gpu, dy, n0, count)? };
        let partial = gpu.uninit(&[count, g.c_out, g.c_in * g.taps()])?;
        gemm(gpu, &Gemm { batch: count, ..mm }, &partial, &dy_chunk, &cols, None)?;
        if n0 == 0 {
            reduce::sum_into(gpu, &partial, &[0], dw)?;
        } else {
            elementwise::accumulate(gpu, dw, 1.0, &reduce::sum(gpu, &partial, &[0])?)?;
        }
    }
    Ok(())
}

/// db (c_out) = dy summed over images and pixels.
pub fn conv2d_grad_bias(gpu: &Gpu, g: &Conv2dGeometry, dy: &Tensor) -> Result<Tensor> {
    let db = gpu.uninit(&[g.c_out])?;
    conv2d_grad_bias_into(gpu, g, dy, &db)?;
    Ok(db)
}

/// [`conv2d_grad_bias`] written into `db`.
pub fn conv2d_grad_bias_into(gpu: &Gpu, g: &Conv2dGeometry, dy: &Tensor, db: &Tensor) -> Result<()> {
    g.check("conv2d_grad_bias", "dy", dy, &g.y_shape())?;
    g.check("conv2d_grad_bias", "db", db, &[g.c_out])?;
    reduce::sum_into(gpu, dy, &[0, 2, 3], db)
}

/// Gradients of `conv2d_forward`: (dx, dw, db), db only when `with_bias`.
pub fn conv2d_backward(
    gpu: &Gpu,
    g: &Conv2dGeometry,
    dy: &Tensor,
    x: &Tensor,
    w: &Tensor,
    with_bias: bool,
) -> Result<(Tensor, Tensor, Option<Tensor>)> {
    let dx = conv2d_grad_input(gpu, g, dy, w)?;
    let dw = conv2d_grad_weight(gpu, g, dy, x)?;
    let db = if with_bias { Some(conv2d_grad_bias(gpu, g, dy)?) } else { None };
    Ok((dx, dw, db))
}

/// CPU twin, f64 accumulation; layouts as the GPU launchers.
pub mod cpu {
    use super::Conv2dGeometry;

    /// The input pixel (iy, ix) tap (ky, kx) of output (oy, ox) reads, if inside.
    fn source(g: &Conv2dGeometry, oy: usize, ox: usize, ky: usize, kx: usize) -> Option<(usize, usize)> {
        let iy = (oy * g.stride + ky).checked_sub(g.pad[0]).filter(|&v| v < g.h)?;
        let ix = (ox * g.stride + kx).checked_sub(g.pad[2]).filter(|&v| v < g.w)?;
        Some((iy, ix))
    }

    /// Calls `f(x_index, w_index, y_index)` for every multiply-add of the conv.
    fn for_each_tap(g: &Conv2dGeometry, mut f: impl FnMut(usize, usize, usize)) {
        let (oh, ow) = (g.out_h(), g.out_w());
        for n in 0..g.n {
            for co in 0..g.c_out {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let yi = ((n * g.c_out + co) * oh + oy) * ow + ox;
                        for ci in 0..g.c_in {
                            for ky in 0..g.kh {
                                for kx in 0..g.kw {
                                    if let Some((iy, ix)) = source(g, oy, ox, ky, kx) {
                                        let xi = ((n * g.c_in + ci) * g.h + iy) * g.w + ix;
                                        let wi = ((co * g.c_in + ci) * g.kh + ky) * g.kw + kx;
                                        f(xi, wi, yi);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    fn to_f32(v: Vec<f64>) -> Vec<f32> {
        v.into_iter().map(|v| v as f32).collect()
    }

    /// y (n, c_out, out_h, out_w).
    pub fn forward(g: &Conv2dGeometry, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
        forward_f64(g, &widen(x), &widen(w), bias.map(widen).as_deref()).into_iter().map(|v| v as f32).collect()
    }

    pub fn widen(v: &[f32]) -> Vec<f64> {
        v.iter().map(|&v| v as f64).collect()
    }

    /// Forward in f64 throughout (for finite differences).
    pub fn forward_f64(g: &Conv2dGeometry, x: &[f64], w: &[f64], bias: Option<&[f64]>) -> Vec<f64> {
        let mut y = vec![0f64; g.n * g.c_out * g.out_h() * g.out_w()];
        for_each_tap(g, |xi, wi, yi| y[yi] += x[xi] * w[wi]);
        if let Some(b) = bias {
            let plane = g.out_h() * g.out_w();
            for (i, v) in y.iter_mut().enumerate() {
                *v += b[(i / plane) % g.c_out];
            }
        }
        y
    }

    /// dx (n, c_in, h, w).
    pub fn grad_input(g: &Conv2dGeometry, dy: &[f32], w: &[f32]) -> Vec<f32> {
        to_f32(grad_input_f64(g, &widen(dy), &widen(w)))
    }

    pub fn grad_input_f64(g: &Conv2dGeometry, dy: &[f64], w: &[f64]) -> Vec<f64> {
        let mut dx = vec![0f64; g.n * g.c_in * g.h * g.w];
        for_each_tap(g, |xi, wi, yi| dx[xi] += dy[yi] * w[wi]);
        dx
    }

    /// dw (c_out, c_in, kh, kw).
    pub fn grad_weight(g: &Conv2dGeometry, dy: &[f32], x: &[f32]) -> Vec<f32> {
        to_f32(grad_weight_f64(g, &widen(dy), &widen(x)))
    }

    pub fn grad_weight_f64(g: &Conv2dGeometry, dy: &[f64], x: &[f64]) -> Vec<f64> {
        let mut dw = vec![0f64; g.c_out * g.c_in * g.kh * g.kw];
        for_each_tap(g, |xi, wi, yi| dw[wi] += dy[yi] * x[xi]);
        dw
    }

    /// db (c_out).
    pub fn grad_bias(g: &Conv2dGeometry, dy: &[f32]) -> Vec<f32> {
        to_f32(grad_bias_f64(g, &widen(dy)))
    }

    pub fn grad_bias_f64(g: &Conv2dGeometry, dy: &[f64]) -> Vec<f64> {
        let plane = g.out_h() * g.out_w();
        let mut db = vec![0f64; g.c_out];
        for (i, v) in dy.iter().enumerate() {
            db[(i / plane) % g.c_out] += v;
        }
        db
    }
}
