// Mean squared error and its gradient. Launcher and CPU reference:
// src/ops/loss.rs.
//
// Entry points (bindings in order; outputs first):
//   mse_loss(out, a, b)                    out: (1) = sum((a - b)^2) / n
//   mse_loss_backward(out, a, b, d_loss)   out: (n) = 2 (a - b) / n * d_loss[0]
//   a, b: (n) f32, read as vec4; elements past n (buffer padding) are masked.
//
// mse_loss is one 256-lane workgroup: each lane sums a fixed strided set of
// vec4 in order, then a fixed tree in workgroup memory adds the lanes, so
// the loss is bit-reproducible. mse_loss_backward: one vec4 per invocation.

struct Params {
    n: u32,
    inv_n: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(1) @binding(0) var<storage, read_write> out: array<vec4<f32>>;
@group(1) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(1) @binding(2) var<storage, read> b: array<vec4<f32>>;
@group(1) @binding(3) var<storage, read> d_loss: array<f32>;

const WG: u32 = 256u;
var<workgroup> partial: array<f32, WG>;

@compute @workgroup_size(256)
fn mse_loss(@builtin(local_invocation_index) li: u32) {
    let items = (p.n + 3u) / 4u;
    var acc = vec4<f32>(0.0);
    for (var i = li; i < items; i += WG) {
        let live = vec4<u32>(4u * i) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(p.n);
        let d = select(vec4<f32>(0.0), a[i] - b[i], live);
        acc = fma(d, d, acc);
    }
    partial[li] = (acc.x + acc.y) + (acc.z + acc.w);
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s /= 2u) {
        if li < s {
            partial[li] += partial[li + s];
        }
        workgroupBarrier();
    }
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
    out[i] = (2.0 * p.inv_n * d_loss[0]) * (a[i] - b[i]);
}
