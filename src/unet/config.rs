//! The UNet configuration, with the keys and defaults of diffusers'
//! `UNet2DModel` so its `config.json` files load unchanged.

use std::collections::BTreeMap;

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

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
    /// Keys we do not interpret (e.g. `_diffusers_version`), kept so a
    /// config round-trips.
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
        ensure!(
            self.class_embed_type.is_none() && self.num_class_embeds.is_none(),
            "class-conditional UNets are not supported"
        );
        ensure!(self.downsample_padding <= 1, "downsample_padding must be 0 (TF 'SAME', as the DDPM paper) or 1");
        let groups = self.norm_num_groups;
        let attn_groups = self.attn_norm_num_groups.unwrap_or(groups);
        for (what, c) in self.norm_channel_counts() {
            ensure!(
                groups > 0 && c % groups == 0,
                "{what} has {c} channels, not divisible by norm_num_groups = {groups}"
            );
        }
        for &c in &self.block_out_channels {
            ensure!(
                c % attn_groups == 0,
                "attention over {c} channels is not divisible by attn_norm_num_groups = {attn_groups}"
            );
            if let Some(d) = self.attention_head_dim {
                ensure!(d > 0 && c % d == 0, "{c} channels do not split into heads of attention_head_dim = {d}");
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

    /// Every channel count a GroupNorm sees, named for error messages.
    fn norm_channel_counts(&self) -> Vec<(String, usize)> {
        let ch = &self.block_out_channels;
        let levels = ch.len();
        let mut out = Vec::new();
        let mut output = ch[0];
        for (i, &c) in ch.iter().enumerate() {
            let input = output;
            output = c;
            for j in 0..self.layers_per_block {
                out.push((format!("down_blocks.{i}.resnets.{j}.norm1"), if j == 0 { input } else { output }));
                out.push((format!("down_blocks.{i}.resnets.{j}.norm2"), output));
            }
        }
        let rev: Vec<usize> = ch.iter().rev().copied().collect();
        let mut output = rev[0];
        for i in 0..levels {
            let prev = output;
            output = rev[i];
            let input = rev[(i + 1).min(levels - 1)];
            for j in 0..=self.layers_per_block {
                let skip = if j == self.layers_per_block { input } else { output };
                let resnet_in = if j == 0 { prev } else { output };
                out.push((format!("up_blocks.{i}.resnets.{j}.norm1"), resnet_in + skip));
            }
        }
        out
    }
}
