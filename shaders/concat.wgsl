// Channel concatenation of two NCHW tensors and its backward (a split).
// Launcher and CPU reference: src/ops/concat.rs.
//
// Entry points (bindings in order; outputs first):
//   concat_channels(dst, src0, src1)
//     dst: (N, C0 + C1, H, W), src0: (N, C0, H, W), src1: (N, C1, H, W)
//     dst[n, c] = src0[n, c] for c < C0, else src1[n, c - C0]
//   split_channels(dst, src0)
//     dst: (N, Cd, H, W), src0: (N, Cs, H, W); dst[n, c] = src0[n, offset + c]
//     (the backward of concat_channels: one launch per part)
// One invocation per vec4 of dst. With VEC4 (H * W % 4 == 0) every vec4
// lies in one channel plane and is copied whole; otherwise its four
// elements are gathered one by one.

struct Params {
    plane: u32,
    dst_channels: u32,
    // concat: C0 (src0's channels); split: Cs
    src_channels: u32,
    // split: first channel of src0 that goes to dst
    offset: u32,
    len: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

//@if VEC4
alias T = vec4<f32>;
const W: u32 = 4u;
//@else
alias T = f32;
const W: u32 = 1u;
//@end

@group(0) @binding(0) var<uniform> p: Params;
@group(1) @binding(0) var<storage, read_write> dst: array<vec4<f32>>;
@group(1) @binding(1) var<storage, read> src0: array<T>;
@group(1) @binding(2) var<storage, read> src1: array<T>;

fn slot(wid: vec3<u32>, nwg: vec3<u32>, li: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * 64u + li;
}

// Element (or vec4 with VEC4) at flat dst position o.
fn concat_item(o: u32) -> T {
    let per_image = p.dst_channels * p.plane;
    let n = o / per_image;
    let r = o % per_image;
    let split = p.src_channels * p.plane;
    if r < split {
        return src0[(n * split + r) / W];
    }
    let rest = per_image - split;
    return src1[(n * rest + r - split) / W];
}

fn split_item(o: u32) -> T {
    let per_image = p.dst_channels * p.plane;
    let n = o / per_image;
    let r = o % per_image;
    return src0[(n * p.src_channels * p.plane + p.offset * p.plane + r) / W];
}

@compute @workgroup_size(64)
fn concat_channels(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let s = slot(wid, nwg, li);
    if 4u * s >= p.len {
        return;
    }
//@if VEC4
    dst[s] = concat_item(4u * s);
//@else
    var v = vec4<f32>(0.0);
    for (var e = 0u; e < 4u; e++) {
        v[e] = concat_item(min(4u * s + e, p.len - 1u));
    }
    dst[s] = v;
//@end
}

@compute @workgroup_size(64)
fn split_channels(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let s = slot(wid, nwg, li);
    if 4u * s >= p.len {
        return;
    }
//@if VEC4
    dst[s] = split_item(4u * s);
//@else
    var v = vec4<f32>(0.0);
    for (var e = 0u; e < 4u; e++) {
        v[e] = split_item(min(4u * s + e, p.len - 1u));
    }
    dst[s] = v;
//@end
}
