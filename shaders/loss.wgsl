// Mean squared error, its gradient, and the per-sample error. Launcher and
// CPU reference: src/ops/loss.rs.
//
// Entry points (bindings in order; outputs first):
//   mse_loss(out, a, b)                    out: (1) = sum((a - b)^2) / n
//   mse_loss_backward(out, a, b, d_loss)   out: (n) = 2 (a - b) / n * d_loss[0]
//   with WEIGHTED, each row r of row_len elements is weighted by w[r]:
//   mse_loss(out, a, b, w)                 out: (1) = sum(w[row] (a - b)^2) / n
//   mse_loss_backward(out, a, b, w, d_loss) out: (n) = 2 w[row] (a - b) / n * d_loss[0]
//   mse_loss_per_sample(out, a, b)         out: (rows) with out[r] = sum_e((a[r, e] - b[r, e])^2) / n
//   a, b: (n) f32 for the first two, (rows, n) for mse_loss_per_sample; read as
//   vec4; elements past the end (buffer padding) are masked.
//
// mse_loss is one 256-lane workgroup: each lane sums a fixed strided set of
// vec4 in order, then a fixed tree in workgroup memory adds the lanes, so
// the loss is bit-reproducible. mse_loss_per_sample is the same with one
// workgroup per row (rows start on vec4 boundaries only when n % 4 == 0;
// otherwise lanes read scalars), so a row's value does not depend on the
// other rows; it is its own variant (define PER_SAMPLE) since it binds its
// output as scalars. mse_loss_backward: one vec4 per invocation.

struct Params {
    // Elements averaged: all of a for mse_loss(_backward), one row's for
    // mse_loss_per_sample.
    n: u32,
    inv_n: f32,
    // Rows of mse_loss_per_sample and of the weights (1 otherwise).
    rows: u32,
    // Elements per row of the weights (WEIGHTED only).
    row_len: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
//@if PER_SAMPLE
// One f32 per row: each row's workgroup writes only its own element (a
// vec4 component store may be lowered as a read-modify-write of the vector).
@group(1) @binding(0) var<storage, read_write> out_rows: array<f32>;
//@else
@group(1) @binding(0) var<storage, read_write> out: array<vec4<f32>>;
//@end
@group(1) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(1) @binding(2) var<storage, read> b: array<vec4<f32>>;
//@if WEIGHTED
@group(1) @binding(3) var<storage, read> w: array<f32>;
@group(1) @binding(4) var<storage, read> d_loss: array<f32>;
//@else
@group(1) @binding(3) var<storage, read> d_loss: array<f32>;
//@end

const WG: u32 = 256u;
var<workgroup> partial: array<f32, WG>;

// Sum of the lanes' partial[] by a fixed tree; the result is in partial[0].
fn reduce_partials(li: u32) {
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s /= 2u) {
        if li < s {
            partial[li] += partial[li + s];
        }
        workgroupBarrier();
    }
}

//@if !PER_SAMPLE
// The weights of the four elements of vec4 item i (masked elements past the
// end take the last row's); 1 when unweighted.
fn row_weights(i: u32) -> vec4<f32> {
//@if WEIGHTED
    let last = p.rows - 1u;
    let e = vec4<u32>(4u * i) + vec4<u32>(0u, 1u, 2u, 3u);
    let r = min(e / vec4<u32>(p.row_len), vec4<u32>(last));
    return vec4<f32>(w[r.x], w[r.y], w[r.z], w[r.w]);
//@else
    return vec4<f32>(1.0);
//@end
}

@compute @workgroup_size(256)
fn mse_loss(@builtin(local_invocation_index) li: u32) {
    let items = (p.n + 3u) / 4u;
    var acc = vec4<f32>(0.0);
    for (var i = li; i < items; i += WG) {
        let live = vec4<u32>(4u * i) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(p.n);
        let d = select(vec4<f32>(0.0), a[i] - b[i], live);
        acc = fma(row_weights(i) * d, d, acc);
    }
    partial[li] = (acc.x + acc.y) + (acc.z + acc.w);
    reduce_partials(li);
    if li == 0u {
        out[0] = vec4<f32>(partial[0] * p.inv_n, 0.0, 0.0, 0.0);
    }
}

@compute @workgroup_size(64)
fn mse_loss_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = (wid.x + wid.y * nwg.x) * 64u + li;
    if 4u * i >= p.n {
        return;
    }
    out[i] = (2.0 * p.inv_n * d_loss[0]) * row_weights(i) * (a[i] - b[i]);
}
//@else
@compute @workgroup_size(256)
fn mse_loss_per_sample(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    // Uniform per workgroup, so every lane reaches the barriers or none does.
    let row = wid.x + wid.y * nwg.x;
    if row >= p.rows {
        return;
    }
    var total = 0.0;
    if p.n % 4u == 0u {
        let items = p.n / 4u;
        let base = row * items;
        var acc = vec4<f32>(0.0);
        for (var i = li; i < items; i += WG) {
            let d = a[base + i] - b[base + i];
            acc = fma(d, d, acc);
        }
        total = (acc.x + acc.y) + (acc.z + acc.w);
    } else {
        let base = row * p.n;
        for (var e = li; e < p.n; e += WG) {
            let i = base + e;
            let d = a[i / 4u][i % 4u] - b[i / 4u][i % 4u];
            total = fma(d, d, total);
        }
    }
    partial[li] = total;
    reduce_partials(li);
    if li == 0u {
        out_rows[row] = partial[0] * p.inv_n;
    }
}
//@end
