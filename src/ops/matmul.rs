//! Batched matrix multiply, the engine's workhorse (linear layers,
//! attention, GEMMs inside convolutions). Kernel: `shaders/matmul.wgsl`.

use anyhow::{ensure, Result};

use crate::gpu::{kernel_params, Access, Caps, Gpu, Kernel, Shader, Tensor};

/// `C[z] = alpha * op(A[z]) op(B[z]) + beta * C[z]`, with contiguous row-major
/// matrices: A is (M, K), or (K, M) when `trans_a`; B is (K, N), or (N, K) when
/// `trans_b`; C is (M, N). A batch of `batch` such products; an operand marked
/// `shared_*` is one matrix used by every batch entry (a weight).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gemm {
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub shared_a: bool,
    pub shared_b: bool,
    pub alpha: f32,
    pub beta: f32,
}

impl Gemm {
    /// A plain `C = A B` of one (M, K) by (K, N) product.
    pub fn new(m: usize, n: usize, k: usize) -> Gemm {
        Gemm {
            batch: 1,
            m,
            n,
            k,
            trans_a: false,
            trans_b: false,
            shared_a: false,
            shared_b: false,
            alpha: 1.0,
            beta: 0.0,
        }
    }

    fn a_len(&self) -> usize {
        self.m * self.k * if self.shared_a { 1 } else { self.batch }
    }

    fn b_len(&self) -> usize {
        self.k * self.n * if self.shared_b { 1 } else { self.batch }
    }

    fn c_len(&self) -> usize {
        self.batch * self.m * self.n
    }

    fn lda(&self) -> usize {
        if self.trans_a {
            self.m
        } else {
            self.k
        }
    }

    fn ldb(&self) -> usize {
        if self.trans_b {
            self.k
        } else {
            self.n
        }
    }

    /// Useful FLOPs: two per multiply-add.
    pub fn flops(&self) -> f64 {
        2.0 * (self.batch * self.m * self.n * self.k) as f64
    }
}

kernel_params! {
    /// Mirrors `Params` in `shaders/matmul.wgsl`.
    struct Params {
        m: u32,
        n: u32,
        k: u32,
        lda: u32,
        ldb: u32,
        ldc: u32,
        stride_a: u32,
        stride_b: u32,
        stride_c: u32,
        alpha: f32,
        beta: f32,
        _pad: u32,
    }
}

/// Register tile of one invocation: TM rows by 4*TN4 columns.
struct Tile {
    tm: i64,
    tn4: i64,
}

/// Rows and columns covered by one 32-invocation workgroup (8 x 4 lanes).
const WG_ROW_LANES: usize = 8;
const WG_COL_LANES: usize = 4;

fn tile(subgroups: bool, n: usize) -> Tile {
    // Measured on lavapipe (../shared/perf): with subgroup sharing 4x32 tiles
    // are best, 4x16 when N is too narrow to fill 128 columns; without it
    // 8x16 with lanes on rows.
    match (subgroups, n >= 128) {
        (true, true) => Tile { tm: 4, tn4: 8 },
        (true, false) => Tile { tm: 4, tn4: 4 },
        (false, _) => Tile { tm: 8, tn4: 4 },
    }
}

fn defines(g: &Gemm, caps: Caps, vec4: bool, bias: bool) -> Vec<(&'static str, i64)> {
    let t = tile(caps.subgroups, g.n);
    vec![
        ("TM", t.tm),
        ("TN4", t.tn4),
        ("VEC4", vec4 as i64),
        ("TRANS_A", g.trans_a as i64),
        ("TRANS_B", g.trans_b as i64),
        ("BIAS", bias as i64),
        ("SUBGROUPS", caps.subgroups as i64),
        ("SG8", caps.sg8 as i64),
    ]
}

/// What `gemm` launches for one product on one kind of adapter.
#[derive(Clone, Debug, PartialEq)]
pub struct GemmPlan {
    pub kernel: Kernel,
    pub grid: [u32; 3],
}

/// The one place a GEMM's kernel variant and grid are chosen.
pub fn gemm_plan(g: &Gemm, caps: Caps, bias: bool) -> GemmPlan {
    // vec4 loads need every row and batch start on a 16-byte boundary.
    let vec4 = g.k.is_multiple_of(4) && g.n.is_multiple_of(4) && (!g.trans_a || g.m.is_multiple_of(4));
    let kernel = Kernel::new(Shader::Matmul, "matmul", if bias { BINDINGS_BIAS } else { BINDINGS })
        .with_defines(defines(g, caps, vec4, bias));
    let t = tile(caps.subgroups, g.n);
    let cols_per_wg = WG_COL_LANES * 4 * t.tn4 as usize;
    let rows_per_wg = WG_ROW_LANES * t.tm as usize;
    GemmPlan { kernel, grid: [g.n.div_ceil(cols_per_wg) as u32, g.m.div_ceil(rows_per_wg) as u32, g.batch as u32] }
}

/// Every define set a GEMM plan can choose: the plans of a grid of shapes
/// (aligned or not, narrow or wide, each transpose, with and without bias)
/// on every kind of adapter.
pub fn variants() -> Vec<Vec<(&'static str, i64)>> {
    let mut out = Vec::new();
    for caps in Caps::ALL {
        for (m, n, k) in [(3, 3, 3), (4, 4, 4), (4, 128, 4), (3, 131, 4), (4, 4, 3)] {
            for bits in 0..8 {
                let g = Gemm { trans_a: bits & 1 != 0, trans_b: bits & 2 != 0, ..Gemm::new(m, n, k) };
                out.push(gemm_plan(&g, caps, bits & 4 != 0).kernel.defines);
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

const BINDINGS: &[Access] = &[Access::ReadWrite, Access::Read, Access::Read];
const BINDINGS_BIAS: &[Access] = &[Access::ReadWrite, Access::Read, Access::Read, Access::Read];

/// Record `c = alpha * op(a) op(b) + beta * c (+ bias)` into `c`. With
/// `beta == 0` the old contents of `c` are never read.
pub fn gemm(gpu: &Gpu, g: &Gemm, c: &Tensor, a: &Tensor, b: &Tensor, bias: Option<&Tensor>) -> Result<()> {
    ensure!(a.len() == g.a_len(), "matmul: A has shape {:?}, expected {} elements for {g:?}", a.shape(), g.a_len());
    ensure!(b.len() == g.b_len(), "matmul: B has shape {:?}, expected {} elements for {g:?}", b.shape(), g.b_len());
    ensure!(c.len() == g.c_len(), "matmul: C has shape {:?}, expected {} elements for {g:?}", c.shape(), g.c_len());
    if let Some(bias) = bias {
        ensure!(bias.len() == g.n, "matmul: bias has shape {:?}, expected ({})", bias.shape(), g.n);
    }
    ensure!(!c.same_buffer(a) && !c.same_buffer(b), "matmul: output must not alias an input");
    ensure!(
        g.c_len() < u32::MAX as usize && g.a_len() < u32::MAX as usize && g.b_len() < u32::MAX as usize,
        "matmul: operands too large for 32-bit indexing"
    );
    if g.m == 0 || g.n == 0 || g.batch == 0 {
        return Ok(());
    }
    let params = Params {
        m: g.m as u32,
        n: g.n as u32,
        k: g.k as u32,
        lda: g.lda() as u32,
        ldb: g.ldb() as u32,
        ldc: g.n as u32,
        stride_a: if g.shared_a { 0 } else { (g.m * g.k) as u32 },
        stride_b: if g.shared_b { 0 } else { (g.k * g.n) as u32 },
        stride_c: (g.m * g.n) as u32,
        alpha: g.alpha,
        beta: g.beta,
        _pad: 0,
    };
    let plan = gemm_plan(g, gpu.caps(), bias.is_some());
    let mut tensors = vec![c, a, b];
    tensors.extend(bias);
    gpu.launch(&plan.kernel, &params, &tensors, plan.grid)
}

/// `op(a) op(b)` for 2-D operands, or batched 3-D ones (a 2-D operand is
/// shared across the batch).
pub fn matmul(gpu: &Gpu, a: &Tensor, b: &Tensor, trans_a: bool, trans_b: bool) -> Result<Tensor> {
    let (sa, sb) = (a.shape(), b.shape());
    ensure!(
        (2..=3).contains(&sa.len()) && (2..=3).contains(&sb.len()),
        "matmul: operands must be 2-D or 3-D, got {sa:?} and {sb:?}"
    );
    let mat = |s: &[usize]| (s[s.len() - 2], s[s.len() - 1]);
    let batch_of = |s: &[usize]| if s.len() == 3 { Some(s[0]) } else { None };
    let (ar, ac) = mat(sa);
    let (br, bc) = mat(sb);
    let (m, k) = if trans_a { (ac, ar) } else { (ar, ac) };
    let (kb, n) = if trans_b { (bc, br) } else { (br, bc) };
    ensure!(
        k == kb,
        "matmul: inner dimensions differ: {sa:?}{} x {sb:?}{}",
        if trans_a { "^T" } else { "" },
        if trans_b { "^T" } else { "" }
    );
    let batch = match (batch_of(sa), batch_of(sb)) {
        (Some(x), Some(y)) => {
            ensure!(x == y, "matmul: batch sizes differ: {sa:?} and {sb:?}");
            x
        }
        (Some(x), None) | (None, Some(x)) => x,
        (None, None) => 1,
    };
    let g = Gemm {
        batch,
        m,
        n,
        k,
        trans_a,
        trans_b,
        shared_a: sa.len() == 2,
        shared_b: sb.len() == 2,
        alpha: 1.0,
        beta: 0.0,
    };
    let shape: Vec<usize> = if sa.len() == 3 || sb.len() == 3 { vec![batch, m, n] } else { vec![m, n] };
    let c = gpu.uninit(&shape)?;
    gemm(gpu, &g, &c, a, b, None)?;
    Ok(c)
}

/// CPU twin, f64 accumulation.
pub mod cpu {
    use super::Gemm;

    /// `c` is updated in place as the GPU kernel does.
    pub fn gemm(g: &Gemm, c: &mut [f32], a: &[f32], b: &[f32], bias: Option<&[f32]>) {
        for z in 0..g.batch {
            let a0 = if g.shared_a { 0 } else { z * g.m * g.k };
            let b0 = if g.shared_b { 0 } else { z * g.k * g.n };
            for i in 0..g.m {
                for j in 0..g.n {
                    let mut sum = 0f64;
                    for l in 0..g.k {
                        let av = if g.trans_a { a[a0 + l * g.m + i] } else { a[a0 + i * g.k + l] };
                        let bv = if g.trans_b { b[b0 + j * g.k + l] } else { b[b0 + l * g.n + j] };
                        sum += av as f64 * bv as f64;
                    }
                    let out = &mut c[z * g.m * g.n + i * g.n + j];
                    let mut v = g.alpha as f64 * sum;
                    if g.beta != 0.0 {
                        v += g.beta as f64 * *out as f64;
                    }
                    if let Some(bias) = bias {
                        v += bias[j] as f64;
                    }
                    *out = v as f32;
                }
            }
        }
    }
}
