// Batched matrix multiply with register tiles.
//
//   C[z] = alpha * op(A[z]) op(B[z]) + beta * C[z] (+ bias[n] broadcast over rows)
//
// Entry point: matmul. Launcher, variant choice and CPU reference: src/ops/matmul.rs.
//   c:    (batch, M, N), row stride ldc, batch stride stride_c         read_write
//   a:    (batch, M, K), or (batch, K, M) stored when TRANS_A; row stride lda
//   b:    (batch, K, N), or (batch, N, K) stored when TRANS_B; row stride ldb
//   bias: (N)                                                          when BIAS
//
// Each invocation owns a TM x (4*TN4) register tile of C. A workgroup is 32
// invocations: 8 lanes down the rows ("lanes on rows", so the 8 lanes of a
// subgroup need the same B values) times 4 lanes across the columns. Per step
// of 4 along K an invocation loads TM vec4 of A and 4*TN4 vec4 of B; with
// SUBGROUPS the 8 lanes sharing a column block split the B loads between
// them and pass the values round with subgroupBroadcast (SG8: subgroup size
// is exactly 8) or subgroupShuffle within each aligned group of 8 lanes
// (subgroups of 16/32/64; relies on lanes being numbered contiguously in a
// 1-D workgroup, as every known driver does).
//
// Template defines (src/gpu/template.rs): TM (multiple of 4), TN4 (even),
// VEC4 (all of M%4 when TRANS_A, N, K, lda, ldb, ldc and batch strides are
// multiples of 4: vec4 loads/stores; else guarded scalar loads), TRANS_A,
// TRANS_B, BIAS, SUBGROUPS, SG8.

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

@group(0) @binding(0) var<uniform> p: Params;
//@if VEC4
@group(1) @binding(0) var<storage, read_write> c: array<vec4<f32>>;
@group(1) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(1) @binding(2) var<storage, read> b: array<vec4<f32>>;
//@else
@group(1) @binding(0) var<storage, read_write> c: array<f32>;
@group(1) @binding(1) var<storage, read> a: array<f32>;
@group(1) @binding(2) var<storage, read> b: array<f32>;
//@end
//@if BIAS
@group(1) @binding(3) var<storage, read> bias: array<f32>;
//@end

//@if VEC4
// op(A)[row][k..k+4] (TRANS_A: rows row..row+4 of op(A) at column k)
fn load_a(base: u32, row: u32, k: u32) -> vec4<f32> {
    return a[(base + row * p.lda + k) / 4u];
}
fn load_b(base: u32, row: u32, col: u32) -> vec4<f32> {
    return b[(base + row * p.ldb + col) / 4u];
}
//@else
// Scalar path: four guarded loads; A values past K read as zero so the
// last partial step of 4 adds nothing, B indices are clamped in range.
fn a_at(base: u32, r: u32, k: u32) -> f32 {
//@if TRANS_A
    return select(0.0, a[base + min(k, p.k - 1u) * p.lda + min(r, p.m - 1u)], k < p.k);
//@else
    return select(0.0, a[base + min(r, p.m - 1u) * p.lda + min(k, p.k - 1u)], k < p.k);
//@end
}
fn b_at(base: u32, k: u32, n: u32) -> f32 {
//@if TRANS_B
    return b[base + min(n, p.n - 1u) * p.ldb + min(k, p.k - 1u)];
//@else
    return b[base + min(k, p.k - 1u) * p.ldb + min(n, p.n - 1u)];
//@end
}
//@end

@compute @workgroup_size(32)
fn matmul(
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
//@if SUBGROUPS
    @builtin(subgroup_invocation_id) sg_lane: u32,
//@end
) {
    let row0 = wid.y * {8*TM}u + (li % 8u) * {TM}u;
    let col0 = wid.x * {16*TN4}u + (li / 8u) * {4*TN4}u;
    let base_a = wid.z * p.stride_a;
    let base_b = wid.z * p.stride_b;
    let base_c = wid.z * p.stride_c;
//@if SUBGROUPS
    // This lane's slot in its group of 8, and the group's first lane.
    let slot = sg_lane % 8u;
    let group = sg_lane - slot;
//@end
//@if VEC4
//@if TRANS_A
    // Rows are read in aligned runs of 4; M % 4 == 0 here.
//@for g in 0..TM/4
    let ra{g} = min(row0 + {4*g}u, p.m - 4u);
//@end
//@else
//@for i in 0..TM
    let ra{i} = min(row0 + {i}u, p.m - 1u);
//@end
//@end
//@if !SUBGROUPS
//@if TRANS_B
//@for q in 0..4*TN4
    let cb{q} = min(col0 + {q}u, p.n - 1u);
//@end
//@else
//@for j in 0..TN4
    let cb{j} = min(col0 + {4*j}u, p.n - 4u);
//@end
//@end
//@end
//@end
//@for i in 0..TM
//@for j in 0..TN4
    var acc{i}_{j} = vec4<f32>(0.0);
//@end
//@end

    for (var k = 0u; k < p.k; k += 4u) {
        // a_i = op(A)[row0 + i][k..k+4]
//@if VEC4
//@if TRANS_A
//@for kk in 0..4
//@for g in 0..TM/4
        let at{kk}_{g} = load_a(base_a, k + {kk}u, ra{g});
//@end
//@end
//@for i in 0..TM
        let a{i} = vec4<f32>(at0_{i/4}[{i%4}], at1_{i/4}[{i%4}], at2_{i/4}[{i%4}], at3_{i/4}[{i%4}]);
//@end
//@else
//@for i in 0..TM
        let a{i} = load_a(base_a, ra{i}, k);
//@end
//@end
//@else
//@for i in 0..TM
        let a{i} = vec4<f32>(a_at(base_a, row0 + {i}u, k), a_at(base_a, row0 + {i}u, k + 1u), a_at(base_a, row0 + {i}u, k + 2u), a_at(base_a, row0 + {i}u, k + 3u));
//@end
//@end

        // b_kk_j = op(B)[k + kk][col0 + 4j .. col0 + 4j + 4]
//@if TRANS_B
        // Stored B is (N, K): fetch a vec4 along K per column, then transpose.
//@if SUBGROUPS
//@for t in 0..TN4/2
        let ld{t} = load_col(base_b, k, col0 + {8*t}u + slot);
//@end
//@for q in 0..4*TN4
//@if SG8
        let bc{q} = subgroupBroadcast(ld{q/8}, {q%8}u);
//@else
        let bc{q} = subgroupShuffle(ld{q/8}, group + {q%8}u);
//@end
//@end
//@else
//@for q in 0..4*TN4
        let bc{q} = load_col(base_b, k, col0 + {q}u);
//@end
//@end
//@for kk in 0..4
//@for j in 0..TN4
        let b{kk}_{j} = vec4<f32>(bc{4*j}[{kk}], bc{4*j+1}[{kk}], bc{4*j+2}[{kk}], bc{4*j+3}[{kk}]);
//@end
//@end
//@else
//@if SUBGROUPS
        // 4*TN4 vec4 per step, split over the 8 lanes of the group: item
        // q = kk*TN4 + j is loaded by lane q % 8 as its load number q / 8.
//@for t in 0..TN4/2
        let ld{t} = load_row(base_b, k, col0, {8*t}u + slot);
//@end
//@for kk in 0..4
//@for j in 0..TN4
//@if SG8
        let b{kk}_{j} = subgroupBroadcast(ld{(kk*TN4+j)/8}, {(kk*TN4+j)%8}u);
//@else
        let b{kk}_{j} = subgroupShuffle(ld{(kk*TN4+j)/8}, group + {(kk*TN4+j)%8}u);
//@end
//@end
//@end
//@else
//@for kk in 0..4
//@for j in 0..TN4
//@if VEC4
        let b{kk}_{j} = load_b(base_b, k + {kk}u, cb{j});
//@else
        let b{kk}_{j} = vec4<f32>(b_at(base_b, k + {kk}u, col0 + {4*j}u), b_at(base_b, k + {kk}u, col0 + {4*j+1}u), b_at(base_b, k + {kk}u, col0 + {4*j+2}u), b_at(base_b, k + {kk}u, col0 + {4*j+3}u));
//@end
//@end
//@end
//@end
//@end

//@for kk in 0..4
//@for i in 0..TM
//@for j in 0..TN4
        acc{i}_{j} = fma(vec4<f32>(a{i}[{kk}]), b{kk}_{j}, acc{i}_{j});
//@end
//@end
//@end
    }

//@for i in 0..TM
//@for j in 0..TN4
    store(base_c, row0 + {i}u, col0 + {4*j}u, acc{i}_{j});
//@end
//@end
}

//@if TRANS_B
// op(B)[k..k+4][col] as a vec4 along K (stored B is (N, K)).
fn load_col(base: u32, k: u32, col: u32) -> vec4<f32> {
//@if VEC4
    return b[(base + min(col, p.n - 1u) * p.ldb + k) / 4u];
//@else
    return vec4<f32>(b_at(base, k, col), b_at(base, k + 1u, col), b_at(base, k + 2u, col), b_at(base, k + 3u, col));
//@end
}
//@else
// Item q of a step: op(B)[k + q / TN4][col0 + 4 * (q % TN4) ..+4].
fn load_row(base: u32, k: u32, col0: u32, q: u32) -> vec4<f32> {
    let col = col0 + 4u * (q % {TN4}u);
//@if VEC4
    return load_b(base, k + q / {TN4}u, min(col, p.n - 4u));
//@else
    let kr = k + q / {TN4}u;
    return vec4<f32>(b_at(base, kr, col), b_at(base, kr, col + 1u), b_at(base, kr, col + 2u), b_at(base, kr, col + 3u));
//@end
}
//@end

fn store(base: u32, row: u32, col: u32, acc: vec4<f32>) {
    if row >= p.m || col >= p.n {
        return;
    }
    var v = p.alpha * acc;
//@if VEC4
    let at = (base + row * p.ldc + col) / 4u;
    if p.beta != 0.0 {
        v += p.beta * c[at];
    }
//@if BIAS
    v += vec4<f32>(bias[col], bias[col + 1u], bias[col + 2u], bias[col + 3u]);
//@end
    c[at] = v;
//@else
    let at = base + row * p.ldc + col;
    for (var e = 0u; e < 4u && col + e < p.n; e++) {
        var x = v[e];
        if p.beta != 0.0 {
            x += p.beta * c[at + e];
        }
//@if BIAS
        x += bias[col + e];
//@end
        c[at + e] = x;
    }
//@end
}
