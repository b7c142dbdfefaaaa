// Elementwise ops over flat f32 tensors, four elements (one vec4) per
// invocation. Launchers and CPU references: src/ops/elementwise.rs.
//
// Entry points (bindings in order; outputs first):
//   fill(out)                       out = s
//   add(out, x, y)                  out = x + y
//   mul(out, x, y)                  out = x * y
//   scale(out, x)                   out = s * x
//   axpy(out, x, y)                 out = x + s * y
//   accumulate(out, x)              out = out + s * x   (gradient accumulation)
//   silu(out, x)                    out = x * sigmoid(x)
//   silu_backward(out, dy, x)       out = dy * sigmoid(x) * (1 + x * (1 - sigmoid(x)))
//   add_channel(out, x, v)          out[n,c,h,w] = x[n,c,h,w] + v[c]
//   out, x, y: (len) f32, read as vec4 (bindings are padded to 16 bytes);
//   only the `len` elements of `out` are written, never its padding, so an
//   output may be a view inside a larger buffer (parameter gradients).
//   v: (channels) f32, for tensors seen as (.., channels, spatial).

struct Params {
    len: u32,
    spatial: u32,
    channels: u32,
    s: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(1) @binding(0) var<storage, read_write> out: array<vec4<f32>>;
@group(1) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(1) @binding(2) var<storage, read> y: array<vec4<f32>>;

const WG: u32 = 64u;

// Index of this invocation's vec4, or a value >= the vec4 count.
fn slot(wid: vec3<u32>, nwg: vec3<u32>, li: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + li;
}

fn vec4_count() -> u32 {
    return (p.len + 3u) / 4u;
}

// out[i] = v, writing only the components that are inside `len`.
fn store(i: u32, v: vec4<f32>) {
    if 4u * i + 4u <= p.len {
        out[i] = v;
    } else {
        for (var e = 0u; 4u * i + e < p.len; e++) {
            out[i][e] = v[e];
        }
    }
}

@compute @workgroup_size(WG)
fn fill(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = slot(wid, nwg, li);
    if i < vec4_count() {
        store(i, vec4<f32>(p.s));
    }
}

@compute @workgroup_size(WG)
fn add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = slot(wid, nwg, li);
    if i < vec4_count() {
        store(i, x[i] + y[i]);
    }
}

@compute @workgroup_size(WG)
fn mul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = slot(wid, nwg, li);
    if i < vec4_count() {
        store(i, x[i] * y[i]);
    }
}

@compute @workgroup_size(WG)
fn scale(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = slot(wid, nwg, li);
    if i < vec4_count() {
        store(i, p.s * x[i]);
    }
}

@compute @workgroup_size(WG)
fn axpy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = slot(wid, nwg, li);
    if i < vec4_count() {
        store(i, fma(vec4<f32>(p.s), y[i], x[i]));
    }
}

@compute @workgroup_size(WG)
fn accumulate(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = slot(wid, nwg, li);
    if i < vec4_count() {
        store(i, fma(vec4<f32>(p.s), x[i], out[i]));
    }
}

fn sigmoid(v: vec4<f32>) -> vec4<f32> {
    return 1.0 / (1.0 + exp(-v));
}

@compute @workgroup_size(WG)
fn silu(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = slot(wid, nwg, li);
    if i < vec4_count() {
        let v = x[i];
        store(i, v * sigmoid(v));
    }
}

@compute @workgroup_size(WG)
fn silu_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = slot(wid, nwg, li);
    if i < vec4_count() {
        let v = y[i];
        let s = sigmoid(v);
        store(i, x[i] * s * (1.0 + v * (1.0 - s)));
    }
}

// v[channel] for each of the four elements of vec4 number i; v is bound as
// `y` and read per component.
fn channel_values(i: u32) -> vec4<f32> {
    var r: vec4<f32>;
    for (var e = 0u; e < 4u; e++) {
        let c = min(((4u * i + e) / p.spatial) % p.channels, p.channels - 1u);
        r[e] = y[c / 4u][c % 4u];
    }
    return r;
}

@compute @workgroup_size(WG)
fn add_channel(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = slot(wid, nwg, li);
    if i < vec4_count() {
        store(i, x[i] + channel_values(i));
    }
}

