// Axis swaps that move data between layouts: NCHW feature maps <-> token
// rows for attention, and (batch, tokens, heads, d) <-> (batch, heads,
// tokens, d). Launcher and CPU reference: src/ops/permute.rs.
//
// Entry point: transpose12(out, x)
//   x:   (a, b, c, d) f32
//   out: (a, c, b, d) f32, out[i, k, j, l] = x[i, j, k, l]
// Its own backward: transpose12 of the gradient with b and c exchanged.

struct Params {
    a: u32,
    b: u32,
    c: u32,
    d: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(1) @binding(0) var<storage, read_write> out: array<f32>;
@group(1) @binding(1) var<storage, read> x: array<f32>;

const WG: u32 = 64u;
// Output elements per invocation, walked along d (contiguous in both).
const PER_INVOCATION: u32 = 4u;

@compute @workgroup_size(WG)
fn transpose12(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let first = ((wid.x + wid.y * nwg.x) * WG + li) * PER_INVOCATION;
    let total = p.a * p.b * p.c * p.d;
    for (var e = 0u; e < PER_INVOCATION; e++) {
        let o = first + e;
        if o >= total {
            return;
        }
        // o indexes (a, c, b, d).
        let l = o % p.d;
        let j = (o / p.d) % p.b;
        let k = (o / (p.d * p.b)) % p.c;
        let i = o / (p.d * p.b * p.c);
        out[o] = x[((i * p.b + j) * p.c + k) * p.d + l];
    }
}
