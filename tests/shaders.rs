//! Every shader in `shaders/`, in every variant the engine launches, must
//! parse, validate and translate to SPIR-V (Vulkan), MSL (Metal), HLSL
//! (DX12) and GLSL (GL). Needs no GPU: this is how we know Metal and DX12
//! accept our kernels.

use std::collections::BTreeSet;

use ddpm_wgpu::gpu::ALL_SHADERS;
use ddpm_wgpu::ops;
use naga::back::{glsl, hlsl, msl, spv};
use naga::valid::{Capabilities, ValidationFlags, Validator};

fn uses_subgroups(defines: &[(&str, i64)]) -> bool {
    defines.iter().any(|&(k, v)| k == "SUBGROUPS" && v != 0)
}

fn translate(source: &str, subgroups: bool) -> Result<(), String> {
    let module = naga::front::wgsl::parse_str(source).map_err(|e| e.emit_to_string(source))?;
    let caps = if subgroups { Capabilities::SUBGROUP | Capabilities::SUBGROUP_BARRIER } else { Capabilities::empty() };
    let info = Validator::new(ValidationFlags::all(), caps)
        .validate(&module)
        .map_err(|e| format!("validation: {}", e.emit_to_string(source)))?;

    spv::write_vec(&module, &info, &spv::Options { lang_version: (1, 3), ..Default::default() }, None)
        .map_err(|e| format!("SPIR-V: {e}"))?;

    let msl_options = msl::Options { lang_version: (2, 4), ..Default::default() };
    msl::write_string(&module, &info, &msl_options, &msl::PipelineOptions::default())
        .map_err(|e| format!("MSL: {e}"))?;

    let hlsl_options = hlsl::Options { shader_model: hlsl::ShaderModel::V6_0, ..Default::default() };
    let mut hlsl_out = String::new();
    hlsl::Writer::new(&mut hlsl_out, &hlsl_options, &hlsl::PipelineOptions::default())
        .write(&module, &info, None)
        .map_err(|e| format!("HLSL: {e}"))?;

    // GL has no subgroup path in the engine (the adapter gates it), so only
    // the portable variants must translate to GLSL.
    if !subgroups {
        for ep in &module.entry_points {
            let options = glsl::Options { version: glsl::Version::new_gles(310), ..Default::default() };
            let pipeline = glsl::PipelineOptions {
                shader_stage: naga::ShaderStage::Compute,
                entry_point: ep.name.clone(),
                multiview: None,
            };
            let mut out = String::new();
            glsl::Writer::new(
                &mut out,
                &module,
                &info,
                &options,
                &pipeline,
                naga::proc::BoundsCheckPolicies::default(),
            )
            .and_then(|mut w| w.write())
            .map_err(|e| format!("GLSL ({}): {e}", ep.name))?;
        }
    }
    Ok(())
}

#[test]
fn every_shader_file_is_registered() {
    let on_disk: BTreeSet<String> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".wgsl"))
        .collect();
    let registered: BTreeSet<String> = ALL_SHADERS.iter().map(|s| s.file_name().to_string()).collect();
    assert_eq!(on_disk, registered, "shaders/ and the registry (src/gpu/kernel.rs) must list the same files");
}

#[test]
fn every_variant_translates_for_every_backend() {
    let mut checked = 0;
    let mut failures = Vec::new();
    for &shader in ALL_SHADERS {
        // The embedded source must be the file on disk.
        let path = format!("{}/shaders/{}", env!("CARGO_MANIFEST_DIR"), shader.file_name());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), shader.source(), "{path} is stale in the build");
        let variants = ops::variants(shader);
        assert!(!variants.is_empty(), "{} has no variant to check", shader.file_name());
        for defines in variants {
            let source = shader.expand(&defines).unwrap();
            if let Err(e) = translate(&source, uses_subgroups(&defines)) {
                failures.push(format!("{} {defines:?}: {e}", shader.file_name()));
            }
            checked += 1;
        }
    }
    assert!(failures.is_empty(), "{} of {checked} variants failed:\n{}", failures.len(), failures.join("\n"));
    eprintln!("{checked} shader variants translated to SPIR-V, MSL, HLSL and GLSL");
}

#[test]
fn every_kernel_a_plan_names_is_translated() {
    use ddpm_wgpu::gpu::{Caps, Shader};
    use ddpm_wgpu::ops::conv2d::{plan_kernels, Conv2dGeometry};
    use ddpm_wgpu::ops::matmul::{gemm_plan, Gemm};
    use rand::{rngs::StdRng, Rng, SeedableRng};
    // Shapes the plans' own grid does not list: random convs and GEMMs.
    let mut rng = StdRng::seed_from_u64(0xC0DE);
    let (conv, matmul) = (ops::variants(Shader::Conv2d), ops::variants(Shader::Matmul));
    let mut named = 0;
    for _ in 0..10000 {
        let (kh, kw) = (rng.random_range(1..=3), rng.random_range(1..=3));
        let g = Conv2dGeometry {
            n: rng.random_range(1..=3),
            c_in: rng.random_range(1..=80),
            h: rng.random_range(kh..=40),
            w: rng.random_range(kw..=40),
            c_out: rng.random_range(1..=80),
            kh,
            kw,
            stride: rng.random_range(1..=2),
            pad: std::array::from_fn(|_| rng.random_range(0..=2)),
        };
        if g.validate().is_err() {
            continue;
        }
        for caps in Caps::ALL {
            for k in plan_kernels(&g, caps) {
                let variants = if k.shader == Shader::Conv2d { &conv } else { &matmul };
                assert!(
                    variants.contains(&k.defines),
                    "{g:?} on {caps:?}: {} {:?} is not translated",
                    k.entry,
                    k.defines
                );
                named += 1;
            }
        }
        let (m, n, k) = (rng.random_range(1..=300), rng.random_range(1..=300), rng.random_range(1..=300));
        let gemm = Gemm { trans_a: rng.random(), trans_b: rng.random(), ..Gemm::new(m, n, k) };
        for caps in Caps::ALL {
            let defines = gemm_plan(&gemm, caps, rng.random()).kernel.defines;
            assert!(matmul.contains(&defines), "{gemm:?} on {caps:?}: {defines:?} is not translated");
        }
    }
    assert!(named > 50_000, "only {named} kernels named");
}

/// Each `Params` struct the Rust launchers upload, against the shader's own
/// `Params` as naga lays it out: the same size, and every named field at the
/// same offset with the same width (padding fields, `_`-prefixed, may be
/// split differently).
#[test]
fn every_params_struct_matches_its_shader() {
    use ddpm_wgpu::gpu::Shader;
    let layouts = ops::params_layouts();
    for &shader in ALL_SHADERS {
        let Some((_, rust)) = layouts.iter().find(|(s, _)| *s == shader) else {
            // The ceiling kernels are launched only by the benchmarks.
            assert_eq!(shader, Shader::Ceiling, "{} has no Params layout in ops::params_layouts", shader.file_name());
            continue;
        };
        let source = shader.expand(&ops::variants(shader)[0]).unwrap();
        let module = naga::front::wgsl::parse_str(&source).unwrap();
        let mut layouter = naga::proc::Layouter::default();
        layouter.update(module.to_ctx()).unwrap();
        let (members, span) = module
            .types
            .iter()
            .find_map(|(_, ty)| match &ty.inner {
                naga::TypeInner::Struct { members, span } if ty.name.as_deref() == Some("Params") => {
                    Some((members.clone(), *span))
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("{} declares no struct Params", shader.file_name()));
        let name = shader.file_name();
        assert_eq!(rust.size, span as usize, "{name}: Params is {} bytes in Rust, {span} in WGSL", rust.size);
        let named = |n: &str| !n.starts_with('_');
        let wgsl: Vec<(String, usize, usize)> = members
            .iter()
            .map(|m| (m.name.clone().unwrap(), m.offset as usize, layouter[m.ty].size as usize))
            .filter(|(n, _, _)| named(n))
            .collect();
        let rust: Vec<(String, usize, usize)> =
            rust.fields.iter().filter(|f| named(f.0)).map(|&(n, o, s)| (n.to_string(), o, s)).collect();
        assert_eq!(rust, wgsl, "{name}: Params fields (name, offset, bytes) differ between Rust and WGSL");
    }
}
