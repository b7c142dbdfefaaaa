// What this adapter can do at best, measured on the same device as every
// kernel figure: peak f32 FMA rate and storage-buffer copy bandwidth.
// Launchers: benches/ceiling.rs.
//
// Entry points:
//   peak_fma(out)   out: (invocations * 4) f32; each invocation runs
//                   `iterations` loop iterations of UNROLL rounds of 8
//                   independent vec4 FMA chains (enough independent work to
//                   fill a SIMD pipeline; unrolled so the loop's own
//                   compare and branch cost little) and writes their sum so
//                   the compiler cannot drop them. The harness runs UNROLL 4
//                   and 8: agreeing figures show the overhead is gone.
//   copy(out, x)    out = x, (len) f32 with len a multiple of 16; each
//                   invocation copies 4 vec4, one grid's width apart.

struct Params {
    iterations: u32,
    vec4_len: u32,
    seed: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(1) @binding(0) var<storage, read_write> out: array<vec4<f32>>;
@group(1) @binding(1) var<storage, read> x: array<vec4<f32>>;

const WG: u32 = 256u;

@compute @workgroup_size(WG)
fn peak_fma(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    let v = vec4<f32>(f32(i) * 1e-7 + p.seed);
    let m = vec4<f32>(0.999999);
    var a0 = v; var a1 = v + 1.0; var a2 = v + 2.0; var a3 = v + 3.0;
    var a4 = v + 4.0; var a5 = v + 5.0; var a6 = v + 6.0; var a7 = v + 7.0;
    let iterations = p.iterations;
    for (var k = 0u; k < iterations; k++) {
//@for u in 0..UNROLL
        a0 = fma(a0, m, v); a1 = fma(a1, m, v); a2 = fma(a2, m, v); a3 = fma(a3, m, v);
        a4 = fma(a4, m, v); a5 = fma(a5, m, v); a6 = fma(a6, m, v); a7 = fma(a7, m, v);
//@end
    }
    out[i] = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
}

@compute @workgroup_size(WG)
fn copy(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    // Four vec4 per invocation, a whole grid apart: neighbouring lanes touch
    // neighbouring vec4 (as the elementwise kernels do).
    let lanes = nwg.x * nwg.y * WG;
    let first = gid.x + gid.y * nwg.x * WG;
    for (var k = 0u; k < 4u; k++) {
        let i = first + k * lanes;
        if i < p.vec4_len {
            out[i] = x[i];
        }
    }
}
