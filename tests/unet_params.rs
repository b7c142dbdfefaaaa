//! The UNet's config, parameter names and shapes against a checkpoint saved
//! by diffusers (tests/fixtures/tiny_unet, made by make_tiny_unet.py), and
//! checkpoint round trips and errors. No GPU needed.

use std::path::PathBuf;

use ddpm_wgpu::unet::params::{write_atomically, ParamTable};
use ddpm_wgpu::unet::{UNetConfig, UNetLayout};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_unet").join(name)
}

fn tiny() -> (UNetConfig, ParamTable) {
    let config = UNetConfig::load(&fixture("config.json")).unwrap();
    let table = ParamTable::new(&UNetLayout::new(&config).params());
    (config, table)
}

#[test]
fn names_and_shapes_match_diffusers() {
    let (config, table) = tiny();
    assert_eq!(config.block_out_channels, vec![16, 32]);
    let bytes = std::fs::read(fixture("diffusion_pytorch_model.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut theirs: Vec<(String, Vec<usize>)> =
        file.tensors().into_iter().map(|(n, t)| (n, t.shape().to_vec())).collect();
    let mut ours: Vec<(String, Vec<usize>)> = table.entries.iter().map(|e| (e.name.clone(), e.shape.clone())).collect();
    theirs.sort();
    ours.sort();
    assert_eq!(ours, theirs);
    assert_eq!(table.count(), 177_427, "diffusers reported 177427 parameters");
}

#[test]
fn checkpoint_round_trip_is_bit_identical() {
    let (_, table) = tiny();
    let loaded = table.load(&fixture("diffusion_pytorch_model.safetensors")).unwrap();
    let dir = std::env::temp_dir().join(format!("ddpm-roundtrip-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("weights.safetensors");
    write_atomically(&path, &table.to_safetensors(&loaded, None).unwrap()).unwrap();
    let again = table.load(&path).unwrap();
    assert!(loaded.iter().zip(&again).all(|(a, b)| a.to_bits() == b.to_bits()));
    assert!(!path.with_extension("tmp").exists(), "the temporary file must be renamed away");
    // Padding between parameters stays zero.
    let e = &table.entries[0];
    assert!(loaded[e.offset + e.len()..table.entries[1].offset].iter().all(|&v| v == 0.0));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_checkpoints_get_clear_errors() {
    let (config, table) = tiny();
    let bytes = std::fs::read(fixture("diffusion_pytorch_model.safetensors")).unwrap();
    let err = format!("{:#}", table.load_bytes(&bytes[..bytes.len() / 2]).unwrap_err());
    assert!(err.contains("truncated or corrupt"), "{err}");
    let other = UNetConfig { block_out_channels: vec![16, 48], ..config.clone() };
    let other_table = ParamTable::new(&UNetLayout::new(&other).params());
    let err = format!("{:#}", other_table.load_bytes(&bytes).unwrap_err());
    assert!(err.contains("another config"), "{err}");
    let fewer = UNetConfig { layers_per_block: 2, ..config };
    let err = format!("{:#}", ParamTable::new(&UNetLayout::new(&fewer).params()).load_bytes(&bytes).unwrap_err());
    assert!(err.contains("another config"), "{err}");
    // Headers that lie: an unsupported type, bytes past the end, a size that does not fit the shape.
    let file = |header: &str, data: usize| {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.resize(bytes.len() + data, 0);
        bytes
    };
    for (header, data, want) in [
        (r#"{"a": {"dtype": "I8", "shape": [4], "data_offsets": [0, 4]}}"#, 4, "type I8 are not supported"),
        (r#"{"a": {"dtype": "F16", "shape": [4], "data_offsets": [0, 8]}}"#, 4, "do not hold [4] F16 in 4 bytes"),
        (r#"{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}"#, 8, "do not hold"),
        (r#"{"a": {"dtype": "BF16", "shape": [4294967296, 4294967296], "data_offsets": [0, 8]}}"#, 8, "do not hold"),
        (r#"{"a": {"dtype": "F32", "shape": [2]}}"#, 8, "has no data_offsets"),
    ] {
        let err = format!("{:#}", table.load_bytes(&file(header, data)).unwrap_err());
        assert!(err.contains(want), "{header}: {err}");
    }
}

#[test]
fn configs_that_cannot_work_are_refused() {
    let bad_groups = r#"{"block_out_channels": [24, 48], "norm_num_groups": 32, "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"]}"#;
    let err = UNetConfig::from_json(bad_groups).unwrap_err().to_string();
    assert!(err.contains("not divisible by norm_num_groups"), "{err}");
    let bad_block = r#"{"block_out_channels": [32], "down_block_types": ["CrossAttnDownBlock2D"], "up_block_types": ["UpBlock2D"]}"#;
    assert!(UNetConfig::from_json(bad_block).unwrap_err().to_string().contains("CrossAttnDownBlock2D"));
    assert!(UNetConfig::from_json("{ not json").is_err());
    // Zeros that would divide by zero, and channel counts the layout derives.
    let base = r#""block_out_channels": [16, 32], "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"]"#;
    for (extra, expected) in [
        (r#""attn_norm_num_groups": 0"#, "attn_norm_num_groups must be at least 1"),
        (r#""attention_head_dim": 0"#, "attention_head_dim must be at least 1"),
        (r#""in_channels": 0"#, "in_channels and out_channels must be at least 1"),
        (r#""norm_num_groups": 0"#, "norm_num_groups must be at least 1"),
        // Only the attention blocks (at 32 channels) use attn_norm_num_groups.
        (
            r#""attn_norm_num_groups": 12"#,
            "down_blocks.1.attentions.0.group_norm has 32 channels, not divisible by attn_norm_num_groups = 12",
        ),
        (r#""attention_head_dim": 12"#, "down_blocks.1.attentions.0 has 32 channels"),
        // Keys the engine does not implement, by name and value.
        (r#""resnet_num_groups": 8"#, "unknown UNet2DModel key 'resnet_num_groups' (= 8)"),
        (r#""mid_block_scale_factor": 1.5"#, "mid_block_scale_factor 1.5 is not supported"),
        (r#""center_input_sample": true"#, "center_input_sample = true is not supported"),
        (r#""time_embedding_type": "fourier""#, "unsupported time_embedding_type 'fourier'"),
        (r#""resnet_time_scale_shift": "scale_shift""#, "unsupported resnet_time_scale_shift 'scale_shift'"),
        (r#""class_embed_type": "timestep""#, "unsupported class_embed_type 'timestep'"),
        (r#""num_class_embeds": 0"#, "num_class_embeds must be at least 1"),
    ] {
        let groups = if extra.contains("norm_num_groups\": ") && !extra.contains("attn") {
            ""
        } else {
            r#", "norm_num_groups": 8"#
        };
        let json = format!("{{{base}, {extra}{groups}}}");
        let err = UNetConfig::from_json(&json).map(|_| ()).expect_err(extra).to_string();
        assert!(err.contains(expected), "{extra}: {err}");
    }
    assert!(UNetConfig::from_json(&format!(r#"{{{base}, "norm_num_groups": 8}}"#)).is_ok());
    // Metadata and keys at their implemented values load.
    let fine = r#", "norm_num_groups": 8, "_diffusers_version": "0.42.1", "_name_or_path": "x", "mid_block_scale_factor": 1, "center_input_sample": false, "num_train_timesteps": null"#;
    UNetConfig::from_json(&format!("{{{base}{fine}}}")).unwrap();
}

#[test]
fn config_round_trips_with_its_metadata_keys() {
    let (config, _) = tiny();
    let again = UNetConfig::from_json(&config.to_json()).unwrap();
    assert_eq!(config, again);
    assert!(config.other.contains_key("_diffusers_version"));
}

/// The DDPM paper's CIFAR-10 model: 35.7M parameters.
#[test]
fn ddpm_cifar10_parameter_count() {
    let json = r#"{"sample_size": 32, "block_out_channels": [128, 256, 256, 256], "layers_per_block": 2,
        "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"], "attention_head_dim": null}"#;
    let config = UNetConfig::from_json(json).unwrap();
    let count = ParamTable::new(&UNetLayout::new(&config).params()).count();
    assert!((35_700_000..35_800_000).contains(&count), "{count}");
}

#[test]
fn oversized_configs_and_files_are_refused_before_reading_them() {
    let huge = r#"{"block_out_channels": [8192, 8192], "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"]}"#;
    let err = UNetConfig::from_json(huge).map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("G parameters; the engine takes at most"), "{err}");
    // A weights file far larger than the config's tensors is refused by its size.
    let (config, _) = tiny();
    let table = ParamTable::new(&UNetLayout::new(&config).params());
    let path = std::env::temp_dir().join(format!("ddpm-oversized-{}.safetensors", std::process::id()));
    let file = std::fs::File::create(&path).unwrap();
    file.set_len((table.flat_len * 4 + (32 << 20)) as u64).unwrap();
    let err = format!("{:#}", table.load(&path).unwrap_err());
    assert!(err.contains("MiB but this config's weights take"), "{err}");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn half_floats_convert_exactly() {
    use ddpm_wgpu::unet::params::f16_to_f32;
    let cases: [(u16, f32); 9] = [
        (0x3C00, 1.0),
        (0xC000, -2.0),
        (0x3555, 0.333_251_95),
        (0x7BFF, 65504.0),
        (0x0400, 2f32.powi(-14)),
        (0x0001, 2f32.powi(-24)),
        (0x03FF, 1023.0 * 2f32.powi(-24)),
        (0x7C00, f32::INFINITY),
        (0xFC00, f32::NEG_INFINITY),
    ];
    for (bits, want) in cases {
        assert_eq!(f16_to_f32(bits), want, "{bits:#06x}");
    }
    assert!(f16_to_f32(0x7E00).is_nan());
    assert!(f16_to_f32(0x8000) == 0.0 && f16_to_f32(0x8000).is_sign_negative());
    // Every finite f16 is an f32 that rounds back to itself: the f32 nearest
    // to it has its 13 low mantissa bits zero (normal range).
    for bits in (0x0400u16..0x7C00).step_by(7) {
        let v = f16_to_f32(bits);
        assert_eq!(v.to_bits() & 0x1FFF, 0, "{bits:#06x} -> {v}");
        assert!(f16_to_f32(bits + 1) > v, "not increasing at {bits:#06x}");
    }
}

#[test]
fn the_init_schemes_differ_only_at_the_ends_of_residual_branches() {
    use ddpm_wgpu::unet::layout::InitScheme;
    let (_, table) = tiny();
    let (ddpm, pytorch) = (table.init(3, InitScheme::Ddpm), table.init(3, InitScheme::PyTorch));
    let branch_end =
        |name: &str| name.contains(".conv2.") || name.contains("to_out.0") || name.starts_with("conv_out.");
    let mut ends = 0;
    for e in &table.entries {
        let (a, b) = (&ddpm[e.offset..e.offset + e.len()], &pytorch[e.offset..e.offset + e.len()]);
        if branch_end(&e.name) {
            ends += 1;
            assert!(a.iter().all(|&v| v == 0.0), "{}: not zero under the DDPM scheme", e.name);
            // PyTorch's default: uniform within ±1/sqrt(fan_in), fan_in = in channels x kernel area.
            let fan_in: usize = if e.shape.len() == 1 {
                table.get(&e.name.replace(".bias", ".weight")).unwrap().shape[1..].iter().product()
            } else {
                e.shape[1..].iter().product()
            };
            let bound = 1.0 / (fan_in as f32).sqrt();
            assert!(b.iter().all(|v| v.abs() <= bound) && b.iter().any(|&v| v != 0.0), "{}: {b:?}", e.name);
        } else if e.name.ends_with("norm1.weight") || e.name.ends_with("norm.weight") {
            assert!(a.iter().chain(b).all(|&v| v == 1.0), "{}", e.name);
        }
    }
    assert!(ends >= 6, "only {ends} branch ends in the tiny UNet");
}
