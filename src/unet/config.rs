//! The UNet configuration, with the keys and defaults of diffusers'
//! `UNet2DModel` so its `config.json` files load unchanged.

use std::collections::BTreeMap;

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

use super::layout::UNetLayout;

/// The most parameters a config may have (4 GiB of f32 weights, 20 GiB with
/// gradients, Adam moments and EMA): a downloaded config asking for more is
/// refused before anything is allocated.
pub const MAX_PARAMETERS: usize = 1 << 30;

/// The largest `_patch_size` accepted.
pub const MAX_PATCH_SIZE: usize = 8;

fn is_one(p: &usize) -> bool {
    *p == 1
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UNetConfig {
    #[serde(rename = "_class_name")]
    pub class_name: String,
    pub sample_size: Option<usize>,
    pub in_channels: usize,
    pub out_channels: usize,
    pub center_input_sample: bool,
    pub time_embedding_type: String,
    pub time_embedding_dim: Option<usize>,
    pub freq_shift: f32,
    pub flip_sin_to_cos: bool,
    pub down_block_types: Vec<String>,
    pub mid_block_type: Option<String>,
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub mid_block_scale_factor: f32,
    pub downsample_padding: usize,
    pub downsample_type: String,
    pub upsample_type: String,
    pub dropout: f32,
    pub act_fn: String,
    pub attention_head_dim: Option<usize>,
    pub norm_num_groups: usize,
    pub attn_norm_num_groups: Option<usize>,
    pub norm_eps: f32,
    pub resnet_time_scale_shift: String,
    pub add_attention: bool,
    pub class_embed_type: Option<String>,
    pub num_class_embeds: Option<usize>,
    pub num_train_timesteps: Option<usize>,
    /// This engine's own key (diffusers skips `_` keys): the UNet sees
    /// images of `in_channels / p²` channels at `sample_size · p` pixels,
    /// each p x p block as p² channels ([`crate::patch`]). 1: no patching.
    #[serde(rename = "_patch_size", skip_serializing_if = "is_one")]
    pub patch_size: usize,
    /// This engine's own key: the class-embedding row that stands for "no
    /// class" (training's class dropout puts it in a label's place; guided
    /// sampling contrasts with it), always the last. None: every row is a class.
    #[serde(rename = "_null_class", skip_serializing_if = "Option::is_none")]
    pub null_class: Option<usize>,
    /// Metadata keys (`_diffusers_version`, `_name_or_path`), kept so a
    /// config round-trips; any other key is refused by [`UNetConfig::validate`].
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

impl Default for UNetConfig {
    /// diffusers' `UNet2DModel.__init__` defaults.
    fn default() -> UNetConfig {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect();
        UNetConfig {
            class_name: "UNet2DModel".into(),
            sample_size: None,
            in_channels: 3,
            out_channels: 3,
            center_input_sample: false,
            time_embedding_type: "positional".into(),
            time_embedding_dim: None,
            freq_shift: 0.0,
            flip_sin_to_cos: true,
            down_block_types: s(&["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"]),
            mid_block_type: Some("UNetMidBlock2D".into()),
            up_block_types: s(&["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"]),
            block_out_channels: vec![224, 448, 672, 896],
            layers_per_block: 2,
            mid_block_scale_factor: 1.0,
            downsample_padding: 1,
            downsample_type: "conv".into(),
            upsample_type: "conv".into(),
            dropout: 0.0,
            act_fn: "silu".into(),
            attention_head_dim: Some(8),
            norm_num_groups: 32,
            attn_norm_num_groups: None,
            norm_eps: 1e-5,
            resnet_time_scale_shift: "default".into(),
            add_attention: true,
            class_embed_type: None,
            num_class_embeds: None,
            num_train_timesteps: None,
            patch_size: 1,
            null_class: None,
            other: BTreeMap::new(),
        }
    }
}

impl UNetConfig {
    pub fn from_json(text: &str) -> Result<UNetConfig> {
        let config: UNetConfig = serde_json::from_str(text).context("parsing UNet config JSON")?;
        config.validate()?;
        Ok(config)
    }

    pub fn load(path: &std::path::Path) -> Result<UNetConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        UNetConfig::from_json(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("config serialises")
    }

    /// Channels of the images this UNet models (its own divided by p²).
    pub fn image_channels(&self) -> usize {
        self.in_channels / (self.patch_size * self.patch_size)
    }

    /// Side of the images this UNet models (its sample_size times p).
    pub fn image_size(&self) -> Option<usize> {
        self.sample_size.map(|s| s * self.patch_size)
    }

    /// The classes a class-conditional UNet is conditioned on: its class
    /// embeddings less the "no class" row. None: unconditional.
    pub fn classes(&self) -> Option<usize> {
        self.num_class_embeds.map(|k| k - usize::from(self.null_class.is_some()))
    }

    /// Width of the time embedding (`time_embedding.linear_1` output).
    pub fn time_embed_dim(&self) -> usize {
        self.time_embedding_dim.unwrap_or(self.block_out_channels[0] * 4)
    }

    /// What the engine implements of UNet2DModel; anything else is refused
    /// with the key that is not supported.
    pub fn validate(&self) -> Result<()> {
        let levels = self.block_out_channels.len();
        ensure!(levels > 0, "block_out_channels is empty");
        ensure!(
            self.down_block_types.len() == levels && self.up_block_types.len() == levels,
            "down_block_types ({}) and up_block_types ({}) must each have one entry per block_out_channels ({levels})",
            self.down_block_types.len(),
            self.up_block_types.len()
        );
        ensure!(self.layers_per_block >= 1, "layers_per_block must be at least 1");
        ensure!(
            self.in_channels >= 1 && self.out_channels >= 1,
            "in_channels and out_channels must be at least 1, got {} and {}",
            self.in_channels,
            self.out_channels
        );
        ensure!(
            self.block_out_channels.iter().all(|&c| c >= 1),
            "block_out_channels {:?} must all be at least 1",
            self.block_out_channels
        );
        for t in &self.down_block_types {
            ensure!(
                t == "DownBlock2D" || t == "AttnDownBlock2D",
                "unsupported down block type '{t}' (DownBlock2D, AttnDownBlock2D)"
            );
        }
        for t in &self.up_block_types {
            ensure!(
                t == "UpBlock2D" || t == "AttnUpBlock2D",
                "unsupported up block type '{t}' (UpBlock2D, AttnUpBlock2D)"
            );
        }
        let unsupported = |key: &str, value: &str, want: &str| -> Result<()> {
            if value != want {
                bail!("unsupported {key} '{value}' (only '{want}')");
            }
            Ok(())
        };
        unsupported("time_embedding_type", &self.time_embedding_type, "positional")?;
        unsupported("act_fn", &self.act_fn, "silu")?;
        unsupported("resnet_time_scale_shift", &self.resnet_time_scale_shift, "default")?;
        unsupported("downsample_type", &self.downsample_type, "conv")?;
        unsupported("upsample_type", &self.upsample_type, "conv")?;
        if let Some(m) = &self.mid_block_type {
            unsupported("mid_block_type", m, "UNetMidBlock2D")?;
        }
        if let Some(kind) = &self.class_embed_type {
            bail!("unsupported class_embed_type '{kind}' (only none: a table of num_class_embeds rows)");
        }
        ensure!(self.num_class_embeds != Some(0), "num_class_embeds must be at least 1");
        if let Some(null) = self.null_class {
            ensure!(
                null >= 1 && self.num_class_embeds == Some(null + 1),
                "_null_class {null} must be the last of at least two class embeddings (num_class_embeds {:?})",
                self.num_class_embeds
            );
        }
        // Every other UNet2DModel key is read; `_`-prefixed ones are metadata.
        if let Some((key, value)) = self.other.iter().find(|(k, _)| !k.starts_with('_')) {
            bail!("unknown UNet2DModel key '{key}' (= {value})");
        }
        ensure!(
            self.mid_block_scale_factor == 1.0,
            "mid_block_scale_factor {} is not supported (only 1)",
            self.mid_block_scale_factor
        );
        ensure!(!self.center_input_sample, "center_input_sample = true is not supported (only false)");
        ensure!((0.0..1.0).contains(&self.dropout), "dropout must be in [0, 1), got {}", self.dropout);
        ensure!(self.downsample_padding <= 1, "downsample_padding must be 0 (TF 'SAME', as the DDPM paper) or 1");
        ensure!(
            self.norm_eps.is_finite() && self.norm_eps > 0.0,
            "norm_eps must be a positive number, got {}",
            self.norm_eps
        );
        ensure!(self.norm_num_groups > 0, "norm_num_groups must be at least 1");
        let p2 = self.patch_size * self.patch_size;
        ensure!((1..=MAX_PATCH_SIZE).contains(&self.patch_size), "_patch_size must be 1 to {MAX_PATCH_SIZE}");
        ensure!(
            self.patch_size == 1 || (self.in_channels == self.out_channels && self.in_channels.is_multiple_of(p2)),
            "with _patch_size {} the UNet's in_channels and out_channels must be equal and divisible by {p2}, got {} and {}",
            self.patch_size,
            self.in_channels,
            self.out_channels
        );
        ensure!(self.attn_norm_num_groups != Some(0), "attn_norm_num_groups must be at least 1");
        ensure!(self.attention_head_dim != Some(0), "attention_head_dim must be at least 1");
        // The channel counts every block sees, as the layout derives them.
        let layout = UNetLayout::new(self);
        let parameters: usize = layout.params().iter().map(|p| p.shape.iter().product::<usize>()).sum();
        ensure!(
            parameters <= MAX_PARAMETERS,
            "this config has {:.1}G parameters; the engine takes at most {:.1}G",
            parameters as f64 / 1e9,
            MAX_PARAMETERS as f64 / 1e9
        );
        for n in layout.norms() {
            ensure!(
                n.channels.is_multiple_of(n.groups),
                "{} has {} channels, not divisible by {} = {}",
                n.name,
                n.channels,
                n.key,
                n.groups
            );
        }
        if let Some(d) = self.attention_head_dim {
            for a in layout.attentions() {
                ensure!(
                    a.channels.is_multiple_of(d),
                    "{} has {} channels, which do not split into heads of attention_head_dim = {d}",
                    a.prefix,
                    a.channels
                );
            }
        }
        if let Some(size) = self.sample_size {
            let factor = 1 << (levels - 1);
            ensure!(
                size % factor == 0,
                "sample_size {size} must be divisible by {factor} ({levels} resolution levels)"
            );
        }
        ensure!(
            self.time_embed_dim() > 0 && self.block_out_channels[0].is_multiple_of(2),
            "the sinusoidal embedding needs an even block_out_channels[0]"
        );
        Ok(())
    }
}
