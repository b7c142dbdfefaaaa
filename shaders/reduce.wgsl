// Deterministic sum (and mean, via `scale`) over any set of axes of a
// tensor of rank <= 4. Launcher and CPU reference: src/ops/reduce.rs.
//
// Entry points: reduce_sum(out, x), one workgroup per output (long sums),
// and reduce_sum_serial(out, x), one invocation per output (many short sums).
//   x:   the input, any shape of rank <= 4, contiguous
//   out: (n_out) the kept axes in order; out[o] = scale * sum over the
//        reduced axes of x
// The host splits the axes into kept and reduced groups, each described by
// up to four (size, stride) pairs, innermost last; unused pairs are (1, 0).
//
// One workgroup per output: each of the 64 lanes sums a fixed strided subset
// sequentially (in an order that depends only on the shape), then a
// fixed-order tree in workgroup memory adds the lanes. No atomics, so the
// same input always gives bit-identical output.
//
// Template define VEC4: the innermost reduced axis is contiguous, a multiple
// of 4 long and 16-byte aligned, so lanes read it four terms per load
// (reduce_sum only).

struct Params {
    kept_size: vec4<u32>,
    kept_stride: vec4<u32>,
    red_size: vec4<u32>,
    red_stride: vec4<u32>,
    n_out: u32,
    n_red: u32,
    scale: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(1) @binding(0) var<storage, read_write> out: array<f32>;
//@if VEC4
@group(1) @binding(1) var<storage, read> x: array<vec4<f32>>;
//@else
@group(1) @binding(1) var<storage, read> x: array<f32>;
//@end

const WG: u32 = 64u;
var<workgroup> partial: array<f32, WG>;

// Offset in x of linear index `i` over the axes described by (size, stride).
fn offset(i: u32, size: vec4<u32>, stride: vec4<u32>) -> u32 {
    var r = i;
    var off = 0u;
    for (var d = 3; d >= 0; d--) {
        off += (r % size[d]) * stride[d];
        r /= size[d];
    }
    return off;
}

@compute @workgroup_size(WG)
fn reduce_sum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    // Uniform across the workgroup, so every lane reaches the barriers.
    let o = wid.x + wid.y * nwg.x;
    let base = offset(min(o, p.n_out - 1u), p.kept_size, p.kept_stride);
    // The innermost reduced axis is walked by the lanes together; the outer
    // reduced axes, uniform across the workgroup, are decomposed once each.
    let inner = p.red_size[3];
    let inner_stride = p.red_stride[3];
    let outer_size = vec4<u32>(p.red_size.xyz, 1u);
    let outer_stride = vec4<u32>(p.red_stride.xyz, 0u);
//@if VEC4
    var sum4 = vec4<f32>(0.0);
    for (var j = 0u; j < p.n_red / inner; j++) {
        let start = (base + offset(j, outer_size, outer_stride)) / 4u;
        for (var i = li; i < inner / 4u; i += WG) {
            sum4 += x[start + i];
        }
    }
    let sum = (sum4.x + sum4.y) + (sum4.z + sum4.w);
//@else
    var sum = 0.0;
    for (var j = 0u; j < p.n_red / inner; j++) {
        let start = base + offset(j, outer_size, outer_stride);
        for (var i = li; i < inner; i += WG) {
            sum += x[start + i * inner_stride];
        }
    }
//@end
    partial[li] = sum;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s /= 2u) {
        if li < s {
            partial[li] += partial[li + s];
        }
        workgroupBarrier();
    }
    if li == 0u && o < p.n_out {
        out[o] = p.scale * partial[0];
    }
}

//@if !VEC4
// Many outputs with few terms each (e.g. summing per-image gradients):
// each invocation adds its output's terms in order.
@compute @workgroup_size(WG)
fn reduce_sum_serial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let o = (wid.x + wid.y * nwg.x) * WG + li;
    if o >= p.n_out {
        return;
    }
    let base = offset(o, p.kept_size, p.kept_stride);
    var sum = 0.0;
    for (var j = 0u; j < p.n_red; j++) {
        sum += x[base + offset(j, p.red_size, p.red_stride)];
    }
    out[o] = p.scale * sum;
}
//@end
