// Row softmax and its backward for attention probabilities, both in place.
// The matrix products around them are ops::matmul::gemm calls; launcher and
// CPU reference: src/ops/attention.rs.
//
// Entry points (bindings in order; outputs first):
//   softmax_rows(rows_buf)
//     rows_buf: (rows, cols) read_write: scores in, probabilities out
//     P[r, c] = exp(S[r, c] - max_c S[r, c]) / sum_c exp(S[r, c] - max_c S[r, c])
//   softmax_rows_backward(rows_buf, probs)
//     rows_buf: (rows, cols) read_write: dP in, dS out
//     probs:    (rows, cols) P from softmax_rows
//     dS[r, c] = P[r, c] * (dP[r, c] - sum_c' dP[r, c'] P[r, c'])
//
// Eight lanes per row, eight rows per 64-lane workgroup. Items are vec4
// (VEC4: cols % 4 == 0) or floats; lane s of a row takes items s, s + 8, ...,
// the first R of them kept in registers between the passes. The 8 lanes
// combine their partial max / sum with an xor butterfly inside their aligned
// group of 8 (subgroup shuffles, valid for any subgroup size >= 8), or via
// workgroup memory on the portable path, where each lane adds its group's 8
// values in lane order. Both give every lane the same bits, every run.
//
// Template defines: VEC4, R, SUBGROUPS.

struct Params {
    rows: u32,
    cols: u32,
    _pad0: u32,
    _pad1: u32,
}

//@if VEC4
alias T = vec4<f32>;
const W: u32 = 4u;
fn hsum(v: vec4<f32>) -> f32 {
    return (v.x + v.y) + (v.z + v.w);
}
fn hmax(v: vec4<f32>) -> f32 {
    return max(max(v.x, v.y), max(v.z, v.w));
}
//@else
alias T = f32;
const W: u32 = 1u;
fn hsum(v: f32) -> f32 {
    return v;
}
fn hmax(v: f32) -> f32 {
    return v;
}
//@end

@group(0) @binding(0) var<uniform> p: Params;
@group(1) @binding(0) var<storage, read_write> rows_buf: array<T>;
@group(1) @binding(1) var<storage, read> probs: array<T>;

const WG: u32 = 64u;
const LANES_PER_ROW: u32 = 8u;
const LOWEST: f32 = -0x1.fffffep+127f;

//@if SUBGROUPS
fn row_max(v: f32, li: u32) -> f32 {
    var m = max(v, subgroupShuffleXor(v, 1u));
    m = max(m, subgroupShuffleXor(m, 2u));
    return max(m, subgroupShuffleXor(m, 4u));
}
// Float addition is commutative, so each butterfly step gives both partners
// the same sum and all 8 lanes end with identical totals.
fn row_sum(v: f32, li: u32) -> f32 {
    var s = v + subgroupShuffleXor(v, 1u);
    s += subgroupShuffleXor(s, 2u);
    return s + subgroupShuffleXor(s, 4u);
}
//@else
var<workgroup> red: array<f32, WG>;

fn row_max(v: f32, li: u32) -> f32 {
    red[li] = v;
    workgroupBarrier();
    let first = li - li % LANES_PER_ROW;
    var m = red[first];
    for (var i = 1u; i < LANES_PER_ROW; i++) {
        m = max(m, red[first + i]);
    }
    workgroupBarrier();
    return m;
}
fn row_sum(v: f32, li: u32) -> f32 {
    red[li] = v;
    workgroupBarrier();
    let first = li - li % LANES_PER_ROW;
    var s = 0.0;
    for (var i = 0u; i < LANES_PER_ROW; i++) {
        s += red[first + i];
    }
    workgroupBarrier();
    return s;
}
//@end

@compute @workgroup_size(64)
fn softmax_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    // Lanes of rows past the end still run (clamped) so every lane reaches
    // the shuffles and barriers; only their stores are skipped.
    let r = (wid.x + wid.y * nwg.x) * (WG / LANES_PER_ROW) + li / LANES_PER_ROW;
    let live = r < p.rows;
    let items = p.cols / W;
    let base = min(r, p.rows - 1u) * items;
    let lane = li % LANES_PER_ROW;

//@for j in 0..R
    let i{j} = lane + {8*j}u;
    let s{j} = select(T(LOWEST), rows_buf[base + min(i{j}, items - 1u)], i{j} < items);
//@end
    var m = T(LOWEST);
//@for j in 0..R
    m = max(m, s{j});
//@end
    for (var i = lane + {8*R}u; i < items; i += LANES_PER_ROW) {
        m = max(m, rows_buf[base + i]);
    }
    let mx = row_max(hmax(m), li);

    var sum = T(0.0);
//@for j in 0..R
    let e{j} = select(T(0.0), exp(s{j} - mx), i{j} < items);
    sum += e{j};
//@end
    for (var i = lane + {8*R}u; i < items; i += LANES_PER_ROW) {
        sum += exp(rows_buf[base + i] - mx);
    }
    let inv = 1.0 / row_sum(hsum(sum), li);

    if live {
//@for j in 0..R
        if i{j} < items {
            rows_buf[base + i{j}] = e{j} * inv;
        }
//@end
        for (var i = lane + {8*R}u; i < items; i += LANES_PER_ROW) {
            rows_buf[base + i] = exp(rows_buf[base + i] - mx) * inv;
        }
    }
}

@compute @workgroup_size(64)
fn softmax_rows_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let r = (wid.x + wid.y * nwg.x) * (WG / LANES_PER_ROW) + li / LANES_PER_ROW;
    let live = r < p.rows;
    let items = p.cols / W;
    let base = min(r, p.rows - 1u) * items;
    let lane = li % LANES_PER_ROW;

//@for j in 0..R
    let i{j} = lane + {8*j}u;
    let dp{j} = select(T(0.0), rows_buf[base + min(i{j}, items - 1u)], i{j} < items);
    let p{j} = select(T(0.0), probs[base + min(i{j}, items - 1u)], i{j} < items);
//@end
    var dot_part = T(0.0);
//@for j in 0..R
    dot_part += dp{j} * p{j};
//@end
    for (var i = lane + {8*R}u; i < items; i += LANES_PER_ROW) {
        dot_part += rows_buf[base + i] * probs[base + i];
    }
    let dot_total = row_sum(hsum(dot_part), li);

    if live {
//@for j in 0..R
        if i{j} < items {
            rows_buf[base + i{j}] = p{j} * (dp{j} - dot_total);
        }
//@end
        for (var i = lane + {8*R}u; i < items; i += LANES_PER_ROW) {
            rows_buf[base + i] = probs[base + i] * (rows_buf[base + i] - dot_total);
        }
    }
}
