// sin and cos of x in [-pi, pi], the same on every GPU. Appended to the
// shaders that use it (src/gpu/kernel.rs, Shader::libraries): x is reduced by
// quadrants of pi/2 (split in two parts, so the reduction is exact to f32)
// to r in [-pi/4, pi/4], then their series to r^13 and r^12 (truncation
// under 1e-12). WGSL lets the built-in sin and cos be off by 2^-11, and
// some drivers are off by 1e-5 (SwiftShader), which DDIM's first steps
// amplify a hundredfold.
const PIO2_HI: f32 = 1.5703125;
const PIO2_LO: f32 = 4.8382679e-4;
fn sin_cos(x: f32) -> vec2<f32> {
    let q = round(x * 0.63661977);
    let r = (x - q * PIO2_HI) - q * PIO2_LO;
    let r2 = r * r;
    let s = r * (1.0 + r2 * (-1.6666667e-1 + r2 * (8.3333333e-3 + r2 * (-1.9841270e-4 + r2 * (2.7557319e-6
        + r2 * (-2.5052108e-8 + r2 * 1.6059044e-10))))));
    let c = 1.0 + r2 * (-0.5 + r2 * (4.1666667e-2 + r2 * (-1.3888889e-3 + r2 * (2.4801587e-5
        + r2 * (-2.7557319e-7 + r2 * 2.0876757e-9)))));
    // x = q pi/2 + r, q in -2..2: rotate (sin r, cos r) by q quarter turns.
    switch u32(i32(q) & 3) {
        case 0u: { return vec2<f32>(s, c); }
        case 1u: { return vec2<f32>(c, -s); }
        case 2u: { return vec2<f32>(-s, -c); }
        default: { return vec2<f32>(-c, s); }
    }
}
