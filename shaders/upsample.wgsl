// Nearest-neighbour 2x upsampling of NCHW maps and its backward.
// Launcher and CPU reference: src/ops/upsample.rs.
//
// Entry points (bindings in order; outputs first):
//   upsample_nearest2x(dst, src)            dst: (N, C, 2H, 2W), src: (N, C, H, W)
//     dst[n, c, y, x] = src[n, c, y / 2, x / 2]
//   upsample_nearest2x_backward(dst, src)   dst = dx: (N, C, H, W), src = dy: (N, C, 2H, 2W)
//     dx[n, c, y, x] = sum of the 2x2 block dy[n, c, 2y..2y+2, 2x..2x+2]
// One invocation per vec4 of dst (buffers are padded to 16 bytes, so the
// last vec4 may run into padding, which is never read back). With VEC4
// (W % 4 == 0) a dst vec4 is 4 pixels of one row: the forward reads the 2
// source pixels with one vec4 load, the backward the two 8-pixel dy rows
// with four; otherwise every element is gathered with scalar loads.
//
// Template define: VEC4.

struct Params {
    h: u32,
    w: u32,
    len: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(1) @binding(0) var<storage, read_write> dst: array<vec4<f32>>;
//@if VEC4
@group(1) @binding(1) var<storage, read> src: array<vec4<f32>>;
//@else
@group(1) @binding(1) var<storage, read> src: array<f32>;
//@end

fn slot(wid: vec3<u32>, nwg: vec3<u32>, li: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * 64u + li;
}

@compute @workgroup_size(64)
fn upsample_nearest2x(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let s = slot(wid, nwg, li);
    if 4u * s >= p.len {
        return;
    }
//@if VEC4
    let o = 4u * s;
    let x = o % (2u * p.w);
    let y = (o / (2u * p.w)) % (2u * p.h);
    let plane = o / (4u * p.h * p.w);
    // Source pixels x / 2 and x / 2 + 1: components 0, 1 or 2, 3 of a vec4.
    let v = src[((plane * p.h + y / 2u) * p.w + x / 2u) / 4u];
    dst[s] = select(v.xxyy, v.zzww, (x / 2u) % 4u == 2u);
//@else
    var v = vec4<f32>(0.0);
    for (var e = 0u; e < 4u; e++) {
        let o = min(4u * s + e, p.len - 1u);
        let x = o % (2u * p.w);
        let y = (o / (2u * p.w)) % (2u * p.h);
        let plane = o / (4u * p.h * p.w);
        v[e] = src[(plane * p.h + y / 2u) * p.w + x / 2u];
    }
    dst[s] = v;
//@end
}

@compute @workgroup_size(64)
fn upsample_nearest2x_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let s = slot(wid, nwg, li);
    if 4u * s >= p.len {
        return;
    }
//@if VEC4
    let i = 4u * s;
    let x = i % p.w;
    let y = (i / p.w) % p.h;
    let plane = i / (p.h * p.w);
    let top = ((plane * 2u * p.h + 2u * y) * 2u * p.w + 2u * x) / 4u;
    let bottom = top + p.w / 2u;
    let left = src[top] + src[bottom];
    let right = src[top + 1u] + src[bottom + 1u];
    dst[s] = vec4<f32>(left.x + left.y, left.z + left.w, right.x + right.y, right.z + right.w);
//@else
    var v = vec4<f32>(0.0);
    for (var e = 0u; e < 4u; e++) {
        let i = min(4u * s + e, p.len - 1u);
        let x = i % p.w;
        let y = (i / p.w) % p.h;
        let plane = i / (p.h * p.w);
        let top = (plane * 2u * p.h + 2u * y) * 2u * p.w + 2u * x;
        let bottom = top + 2u * p.w;
        v[e] = (src[top] + src[top + 1u]) + (src[bottom] + src[bottom + 1u]);
    }
    dst[s] = v;
//@end
}
