// Philox4x32-10 (Salmon et al. 2011, Random123): a counter-based generator,
// four 32-bit words per (counter, key), so any element's random numbers are
// computed where they are needed, in any order. Appended to the shaders
// that use it (src/gpu/kernel.rs, Shader::libraries); CPU twin:
// src/ops/ddpm.rs, cpu::philox4x32_10.

const PHILOX_M0: u32 = 0xD2511F53u;
const PHILOX_M1: u32 = 0xCD9E8D57u;
const PHILOX_W0: u32 = 0x9E3779B9u;
const PHILOX_W1: u32 = 0xBB67AE85u;

// (high, low) words of the 64-bit product a * b, from 16-bit halves since
// WGSL has no 64-bit integers.
fn mul_hi_lo(a: u32, b: u32) -> vec2<u32> {
    let a0 = a & 0xFFFFu;
    let a1 = a >> 16u;
    let b0 = b & 0xFFFFu;
    let b1 = b >> 16u;
    let p01 = a0 * b1;
    let p10 = a1 * b0;
    let mid = ((a0 * b0) >> 16u) + (p01 & 0xFFFFu) + (p10 & 0xFFFFu);
    let hi = a1 * b1 + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u);
    return vec2<u32>(hi, a * b);
}

fn philox4x32_10(counter: vec4<u32>, key: vec2<u32>) -> vec4<u32> {
    var c = counter;
    var k = key;
    for (var r = 0u; r < 10u; r++) {
        let m0 = mul_hi_lo(PHILOX_M0, c.x);
        let m1 = mul_hi_lo(PHILOX_M1, c.z);
        c = vec4<u32>(m1.x ^ c.y ^ k.x, m1.y, m0.x ^ c.w ^ k.y, m0.y);
        k += vec2<u32>(PHILOX_W0, PHILOX_W1);
    }
    return c;
}
