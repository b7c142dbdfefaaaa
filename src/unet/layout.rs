//! The UNet's architecture as data: every block with its diffusers name
//! prefix and channel counts, built once from the config. The parameter
//! table and the forward pass both walk this, so names, shapes and the
//! order of operations cannot drift apart.

use super::config::UNetConfig;

/// How a parameter starts before training.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// PyTorch's default for conv and linear layers (weights and biases):
    /// uniform in ±1/sqrt(fan_in).
    Uniform {
        fan_in: usize,
    },
    /// The last layer of a residual branch (each ResBlock's conv2,
    /// attention's output projection) and conv_out: zero under
    /// [`InitScheme::Ddpm`], so every branch starts as the identity;
    /// [`Init::Uniform`] under [`InitScheme::PyTorch`].
    ZeroedBranch {
        fan_in: usize,
    },
    Zeros,
    Ones,
    /// Standard normal, PyTorch's default for `nn.Embedding`.
    Normal,
}

/// Where a fresh model's weights start: the DDPM reference code's (residual
/// branches and the output zeroed) or PyTorch's defaults everywhere, as a
/// diffusers `UNet2DModel` is built. NOTES.md has the measurement: PyTorch's
/// trains faster in a short run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InitScheme {
    #[default]
    Ddpm,
    #[serde(rename = "pytorch")]
    PyTorch,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
}

/// GroupNorm, SiLU, conv3x3, + projected time embedding, GroupNorm, SiLU,
/// dropout, conv3x3, plus the input (through a 1x1 conv if channels change).
#[derive(Clone, Debug, PartialEq)]
pub struct ResBlock {
    pub prefix: String,
    pub c_in: usize,
    pub c_out: usize,
}

impl ResBlock {
    pub fn has_shortcut(&self) -> bool {
        self.c_in != self.c_out
    }
}

/// GroupNorm, q/k/v projections, multi-head attention over the H*W
/// positions, output projection, plus the input.
#[derive(Clone, Debug, PartialEq)]
pub struct AttnBlock {
    pub prefix: String,
    pub channels: usize,
    pub heads: usize,
    pub groups: usize,
}

/// One GroupNorm of the network, for validation.
#[derive(Clone, Debug, PartialEq)]
pub struct NormSpec {
    pub name: String,
    pub channels: usize,
    pub groups: usize,
    /// The config key `groups` comes from, for messages.
    pub key: &'static str,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DownLevel {
    pub resnets: Vec<ResBlock>,
    /// One per resnet, or none.
    pub attentions: Vec<AttnBlock>,
    /// Stride-2 conv prefix (`down_blocks.i.downsamplers.0.conv`), except at the last level.
    pub downsample: Option<String>,
    pub channels: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct UpLevel {
    pub resnets: Vec<ResBlock>,
    pub attentions: Vec<AttnBlock>,
    /// Nearest x2 then conv prefix (`up_blocks.i.upsamplers.0.conv`), except at the last level.
    pub upsample: Option<String>,
    pub channels: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct MidBlock {
    pub resnet_in: ResBlock,
    pub attention: Option<AttnBlock>,
    pub resnet_out: ResBlock,
}

#[derive(Clone, Debug, PartialEq)]
pub struct UNetLayout {
    pub config: UNetConfig,
    pub down: Vec<DownLevel>,
    pub mid: Option<MidBlock>,
    pub up: Vec<UpLevel>,
}

impl UNetLayout {
    /// Mirrors the channel bookkeeping of diffusers' `UNet2DModel.__init__`:
    /// the one place the network's shapes are derived (config validation,
    /// the parameter table and the forward pass all read it). Needs a
    /// config that passes [`UNetConfig::validate`]'s structural checks.
    pub fn new(config: &UNetConfig) -> UNetLayout {
        let ch = &config.block_out_channels;
        let levels = ch.len();
        let groups = config.norm_num_groups;
        let attn_groups = config.attn_norm_num_groups.unwrap_or(groups);
        let heads = |c: usize| config.attention_head_dim.map_or(1, |d| c / d);
        let attn = |prefix: String, c: usize| AttnBlock { prefix, channels: c, heads: heads(c), groups: attn_groups };

        let mut down = Vec::new();
        let mut output = ch[0];
        for (i, &c) in ch.iter().enumerate() {
            let input = output;
            output = c;
            let with_attention = config.down_block_types[i] == "AttnDownBlock2D";
            let resnets: Vec<ResBlock> = (0..config.layers_per_block)
                .map(|j| ResBlock {
                    prefix: format!("down_blocks.{i}.resnets.{j}"),
                    c_in: if j == 0 { input } else { output },
                    c_out: output,
                })
                .collect();
            let attentions = if with_attention {
                (0..config.layers_per_block).map(|j| attn(format!("down_blocks.{i}.attentions.{j}"), output)).collect()
            } else {
                Vec::new()
            };
            let downsample = (i + 1 < levels).then(|| format!("down_blocks.{i}.downsamplers.0.conv"));
            down.push(DownLevel { resnets, attentions, downsample, channels: output });
        }

        let last = ch[levels - 1];
        let mid = config.mid_block_type.as_ref().map(|_| {
            // diffusers: heads = channels / (attention_head_dim or channels).
            let head_dim = config.attention_head_dim.unwrap_or(last);
            MidBlock {
                resnet_in: ResBlock { prefix: "mid_block.resnets.0".into(), c_in: last, c_out: last },
                attention: config.add_attention.then(|| AttnBlock {
                    prefix: "mid_block.attentions.0".into(),
                    channels: last,
                    heads: last / head_dim,
                    groups: attn_groups,
                }),
                resnet_out: ResBlock { prefix: "mid_block.resnets.1".into(), c_in: last, c_out: last },
            }
        });

        let rev: Vec<usize> = ch.iter().rev().copied().collect();
        let mut up = Vec::new();
        let mut output = rev[0];
        for i in 0..levels {
            let prev = output;
            output = rev[i];
            let input = rev[(i + 1).min(levels - 1)];
            let with_attention = config.up_block_types[i] == "AttnUpBlock2D";
            let n = config.layers_per_block + 1;
            let resnets: Vec<ResBlock> = (0..n)
                .map(|j| {
                    let skip = if j == n - 1 { input } else { output };
                    let resnet_in = if j == 0 { prev } else { output };
                    ResBlock { prefix: format!("up_blocks.{i}.resnets.{j}"), c_in: resnet_in + skip, c_out: output }
                })
                .collect();
            let attentions = if with_attention {
                (0..n).map(|j| attn(format!("up_blocks.{i}.attentions.{j}"), output)).collect()
            } else {
                Vec::new()
            };
            let upsample = (i + 1 < levels).then(|| format!("up_blocks.{i}.upsamplers.0.conv"));
            up.push(UpLevel { resnets, attentions, upsample, channels: output });
        }
        UNetLayout { config: config.clone(), down, mid, up }
    }

    /// Every residual block, in forward order.
    pub fn resnets(&self) -> impl Iterator<Item = &ResBlock> {
        let mid = self.mid.iter().flat_map(|m| [&m.resnet_in, &m.resnet_out]);
        self.down.iter().flat_map(|l| &l.resnets).chain(mid).chain(self.up.iter().flat_map(|l| &l.resnets))
    }

    /// Every attention block, in forward order.
    pub fn attentions(&self) -> impl Iterator<Item = &AttnBlock> {
        let mid = self.mid.iter().flat_map(|m| &m.attention);
        self.down.iter().flat_map(|l| &l.attentions).chain(mid).chain(self.up.iter().flat_map(|l| &l.attentions))
    }

    /// Every GroupNorm: its diffusers name, channels, groups, and the config
    /// key the groups come from.
    pub fn norms(&self) -> Vec<NormSpec> {
        let groups = self.config.norm_num_groups;
        let norm = |name: String, channels: usize| NormSpec { name, channels, groups, key: "norm_num_groups" };
        let mut out = Vec::new();
        for r in self.resnets() {
            out.push(norm(format!("{}.norm1", r.prefix), r.c_in));
            out.push(norm(format!("{}.norm2", r.prefix), r.c_out));
        }
        for a in self.attentions() {
            let name = format!("{}.group_norm", a.prefix);
            out.push(NormSpec { name, channels: a.channels, groups: a.groups, key: "attn_norm_num_groups" });
        }
        out.push(norm("conv_norm_out".into(), self.config.block_out_channels[0]));
        out
    }

    /// Every parameter with its diffusers name, PyTorch shape and initial
    /// values, in a fixed order (the forward pass's).
    pub fn params(&self) -> Vec<ParamSpec> {
        let c = &self.config;
        let mut out = Vec::new();
        let c0 = c.block_out_channels[0];
        let temb = c.time_embed_dim();
        conv(&mut out, "conv_in", c.in_channels, c0, 3, Init::Uniform { fan_in: c.in_channels * 9 });
        linear(&mut out, "time_embedding.linear_1", c0, temb, false);
        linear(&mut out, "time_embedding.linear_2", temb, temb, false);
        if let Some(classes) = c.num_class_embeds {
            param(&mut out, "class_embedding.weight".into(), vec![classes, temb], Init::Normal);
        }
        for level in &self.down {
            for (j, r) in level.resnets.iter().enumerate() {
                resblock(&mut out, r, temb);
                if let Some(a) = level.attentions.get(j) {
                    attention(&mut out, a);
                }
            }
            if let Some(prefix) = &level.downsample {
                conv(&mut out, prefix, level.channels, level.channels, 3, Init::Uniform { fan_in: level.channels * 9 });
            }
        }
        if let Some(mid) = &self.mid {
            resblock(&mut out, &mid.resnet_in, temb);
            if let Some(a) = &mid.attention {
                attention(&mut out, a);
            }
            resblock(&mut out, &mid.resnet_out, temb);
        }
        for level in &self.up {
            for (j, r) in level.resnets.iter().enumerate() {
                resblock(&mut out, r, temb);
                if let Some(a) = level.attentions.get(j) {
                    attention(&mut out, a);
                }
            }
            if let Some(prefix) = &level.upsample {
                conv(&mut out, prefix, level.channels, level.channels, 3, Init::Uniform { fan_in: level.channels * 9 });
            }
        }
        norm(&mut out, "conv_norm_out", c0);
        // The DDPM reference code zero-initialises the output convolution.
        conv(&mut out, "conv_out", c0, c.out_channels, 3, Init::ZeroedBranch { fan_in: c0 * 9 });
        out
    }
}

fn param(out: &mut Vec<ParamSpec>, name: String, shape: Vec<usize>, init: Init) {
    out.push(ParamSpec { name, shape, init });
}

fn conv(out: &mut Vec<ParamSpec>, prefix: &str, c_in: usize, c_out: usize, k: usize, init: Init) {
    param(out, format!("{prefix}.weight"), vec![c_out, c_in, k, k], init);
    let bias_init = match init {
        Init::Zeros => Init::Zeros,
        Init::ZeroedBranch { .. } => Init::ZeroedBranch { fan_in: c_in * k * k },
        _ => Init::Uniform { fan_in: c_in * k * k },
    };
    param(out, format!("{prefix}.bias"), vec![c_out], bias_init);
}

fn linear(out: &mut Vec<ParamSpec>, prefix: &str, c_in: usize, c_out: usize, branch_end: bool) {
    let init = if branch_end { Init::ZeroedBranch { fan_in: c_in } } else { Init::Uniform { fan_in: c_in } };
    param(out, format!("{prefix}.weight"), vec![c_out, c_in], init);
    param(out, format!("{prefix}.bias"), vec![c_out], init);
}

fn norm(out: &mut Vec<ParamSpec>, prefix: &str, c: usize) {
    param(out, format!("{prefix}.weight"), vec![c], Init::Ones);
    param(out, format!("{prefix}.bias"), vec![c], Init::Zeros);
}

fn resblock(out: &mut Vec<ParamSpec>, r: &ResBlock, temb: usize) {
    let p = &r.prefix;
    norm(out, &format!("{p}.norm1"), r.c_in);
    conv(out, &format!("{p}.conv1"), r.c_in, r.c_out, 3, Init::Uniform { fan_in: r.c_in * 9 });
    linear(out, &format!("{p}.time_emb_proj"), temb, r.c_out, false);
    norm(out, &format!("{p}.norm2"), r.c_out);
    conv(out, &format!("{p}.conv2"), r.c_out, r.c_out, 3, Init::ZeroedBranch { fan_in: r.c_out * 9 });
    if r.has_shortcut() {
        conv(out, &format!("{p}.conv_shortcut"), r.c_in, r.c_out, 1, Init::Uniform { fan_in: r.c_in });
    }
}

fn attention(out: &mut Vec<ParamSpec>, a: &AttnBlock) {
    let p = &a.prefix;
    norm(out, &format!("{p}.group_norm"), a.channels);
    for proj in ["to_q", "to_k", "to_v"] {
        linear(out, &format!("{p}.{proj}"), a.channels, a.channels, false);
    }
    linear(out, &format!("{p}.to_out.0"), a.channels, a.channels, true);
}
