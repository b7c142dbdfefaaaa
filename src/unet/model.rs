//! The UNet forward pass on the tape, walking the layout block by block as
//! diffusers' `UNet2DModel.forward` does. Backward comes from the tape.

use std::collections::HashMap;

use anyhow::{bail, ensure, Context, Result};

use super::layout::{AttnBlock, ResBlock, UNetLayout};
use super::params::{view_of, ParamStore, ParamTable};
use super::UNetConfig;
use crate::gpu::Tensor;
use crate::ops::conv2d::Conv2dGeometry;
use crate::ops::ddpm::NoiseKey;
use crate::ops::dropout::DropoutKey;
use crate::ops::embedding::{timestep_embedding, TimestepEmbedding};
use crate::tape::{Tape, Var};

pub struct UNet {
    pub layout: UNetLayout,
    pub table: ParamTable,
}

/// The parameters as tape values, by diffusers name.
pub struct ParamVars {
    vars: HashMap<String, Var>,
}

impl ParamVars {
    /// `trainable`: record gradients for them (training) or not (sampling).
    pub fn new(tape: &mut Tape, store: &ParamStore, trainable: bool) -> Result<ParamVars> {
        let mut vars = HashMap::new();
        for e in &store.table.entries {
            let t = store.get(&e.name)?;
            vars.insert(e.name.clone(), if trainable { tape.param(t) } else { tape.input(t) });
        }
        Ok(ParamVars { vars })
    }

    /// Trainable parameters whose gradients the tape's backward writes into
    /// their views of `grads` (a tensor in `store`'s table layout: the flat
    /// gradient buffer the optimiser reads).
    pub fn with_grads_into(tape: &mut Tape, store: &ParamStore, grads: &Tensor) -> Result<ParamVars> {
        let mut vars = HashMap::new();
        for e in &store.table.entries {
            let var = tape.param_into(store.get(&e.name)?, view_of(&store.table, grads, &e.name)?)?;
            vars.insert(e.name.clone(), var);
        }
        Ok(ParamVars { vars })
    }

    pub fn get(&self, name: &str) -> Result<&Var> {
        self.vars.get(name).with_context(|| format!("no parameter named '{name}'"))
    }

    /// Every (name, var), for collecting gradients.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Var)> {
        self.vars.iter()
    }
}

impl UNet {
    pub fn new(config: &UNetConfig) -> Result<UNet> {
        config.validate()?;
        let layout = UNetLayout::new(config);
        let table = ParamTable::new(&layout.params());
        Ok(UNet { layout, table })
    }

    pub fn config(&self) -> &UNetConfig {
        &self.layout.config
    }

    /// Predict the noise in `x` (N, C, H, W) at diffusers timestep indices
    /// `timesteps` (N), as an f32 GPU tensor (the paper's t minus one), in
    /// eval mode (no dropout). A class-conditional UNet takes the (N)
    /// class-index tensor `classes` ([`crate::ops::cross_entropy::class_labels`]).
    pub fn forward(
        &self,
        tape: &mut Tape,
        p: &ParamVars,
        x: &Var,
        timesteps: &Tensor,
        classes: Option<&Tensor>,
    ) -> Result<Var> {
        self.forward_with(tape, p, x, timesteps, classes, None)
    }

    /// [`UNet::forward`] in training mode: the config's dropout, in each
    /// ResBlock after norm2 and SiLU (where diffusers has it), with masks
    /// keyed by `key` (the step's, with row 0's global sample index) and the
    /// ResBlock's position in the forward pass.
    pub fn forward_train(
        &self,
        tape: &mut Tape,
        p: &ParamVars,
        x: &Var,
        timesteps: &Tensor,
        classes: Option<&Tensor>,
        key: NoiseKey,
    ) -> Result<Var> {
        self.forward_with(tape, p, x, timesteps, classes, Some(key))
    }

    fn forward_with(
        &self,
        tape: &mut Tape,
        p: &ParamVars,
        x: &Var,
        timesteps: &Tensor,
        classes: Option<&Tensor>,
        dropout: Option<NoiseKey>,
    ) -> Result<Var> {
        let c = self.config();
        let s = x.shape();
        ensure!(s.len() == 4 && s[1] == c.in_channels, "UNet input {s:?}: expected (N, {}, H, W)", c.in_channels);
        let factor = 1 << (c.block_out_channels.len() - 1);
        ensure!(
            s[2].is_multiple_of(factor) && s[3].is_multiple_of(factor),
            "UNet input {s:?}: H and W must be multiples of {factor}"
        );
        ensure!(timesteps.shape() == [s[0]], "UNet timesteps {:?} for a batch of {}", timesteps.shape(), s[0]);
        match (c.num_class_embeds, classes) {
            (Some(_), Some(labels)) => {
                ensure!(labels.shape() == [s[0]], "UNet class labels {:?} for a batch of {}", labels.shape(), s[0])
            }
            (Some(k), None) => bail!("this UNet is class-conditional ({k} class embeddings): give class labels"),
            (None, Some(_)) => bail!("this UNet has no class embedding: class labels cannot be given"),
            (None, None) => {}
        }

        let embedding = TimestepEmbedding {
            flip_sin_to_cos: c.flip_sin_to_cos,
            downscale_freq_shift: c.freq_shift,
            ..TimestepEmbedding::new(c.block_out_channels[0])
        };
        let t_emb = tape.input(timestep_embedding(tape.gpu(), &embedding, timesteps)?);
        let emb = linear(tape, p, "time_embedding.linear_1", &t_emb)?;
        let emb = tape.silu(&emb)?;
        let emb = linear(tape, p, "time_embedding.linear_2", &emb)?;
        let emb = match classes {
            Some(labels) => {
                let class_emb = tape.class_embedding(p.get("class_embedding.weight")?, labels)?;
                tape.add(&emb, &class_emb)?
            }
            None => emb,
        };
        // Every ResBlock applies SiLU to the embedding first; once is enough.
        let emb = tape.silu(&emb)?;
        // Each ResBlock's dropout key, in forward order.
        let mut layer = 0;
        let mut next_dropout = || {
            layer += 1;
            dropout.filter(|_| c.dropout > 0.0).map(|noise| DropoutKey { noise, layer: layer - 1 })
        };

        let mut h = conv(tape, p, "conv_in", &x.clone(), 1, [1; 4])?;
        let mut skips = vec![h.clone()];
        for level in &self.layout.down {
            for (j, r) in level.resnets.iter().enumerate() {
                h = self.resblock(tape, p, r, &h, &emb, next_dropout())?;
                if let Some(a) = level.attentions.get(j) {
                    h = self.attention(tape, p, a, &h)?;
                }
                skips.push(h.clone());
            }
            if let Some(prefix) = &level.downsample {
                // diffusers' downsample_padding = 0 is the DDPM paper's TF 'SAME' padding.
                let pad = if c.downsample_padding == 1 { [1; 4] } else { [0, 1, 0, 1] };
                h = conv(tape, p, prefix, &h, 2, pad)?;
                skips.push(h.clone());
            }
        }
        if let Some(mid) = &self.layout.mid {
            h = self.resblock(tape, p, &mid.resnet_in, &h, &emb, next_dropout())?;
            if let Some(a) = &mid.attention {
                h = self.attention(tape, p, a, &h)?;
            }
            h = self.resblock(tape, p, &mid.resnet_out, &h, &emb, next_dropout())?;
        }
        for level in &self.layout.up {
            for (j, r) in level.resnets.iter().enumerate() {
                let skip = skips.pop().context("UNet skip stack ran out (layout bug)")?;
                h = tape.concat(&h, &skip)?;
                h = self.resblock(tape, p, r, &h, &emb, next_dropout())?;
                if let Some(a) = level.attentions.get(j) {
                    h = self.attention(tape, p, a, &h)?;
                }
            }
            if let Some(prefix) = &level.upsample {
                h = tape.upsample_nearest2x(&h)?;
                h = conv(tape, p, prefix, &h, 1, [1; 4])?;
            }
        }
        ensure!(skips.is_empty(), "UNet skip stack has {} left (layout bug)", skips.len());
        let h = group_norm(tape, p, "conv_norm_out", &h, c.norm_num_groups, c.norm_eps, true)?;
        conv(tape, p, "conv_out", &h, 1, [1; 4])
    }

    fn resblock(
        &self,
        tape: &mut Tape,
        p: &ParamVars,
        r: &ResBlock,
        x: &Var,
        emb_silu: &Var,
        dropout: Option<DropoutKey>,
    ) -> Result<Var> {
        let c = self.config();
        let pre = &r.prefix;
        let h = group_norm(tape, p, &format!("{pre}.norm1"), x, c.norm_num_groups, c.norm_eps, true)?;
        let h = conv(tape, p, &format!("{pre}.conv1"), &h, 1, [1; 4])?;
        let t = linear(tape, p, &format!("{pre}.time_emb_proj"), emb_silu)?;
        let h = tape.add_per_sample(&h, &t)?;
        let h = group_norm(tape, p, &format!("{pre}.norm2"), &h, c.norm_num_groups, c.norm_eps, true)?;
        let h = match dropout {
            Some(key) => tape.dropout(&h, c.dropout, key)?,
            None => h,
        };
        let h = conv(tape, p, &format!("{pre}.conv2"), &h, 1, [1; 4])?;
        let shortcut =
            if r.has_shortcut() { conv(tape, p, &format!("{pre}.conv_shortcut"), x, 1, [0; 4])? } else { x.clone() };
        tape.add(&shortcut, &h)
    }

    fn attention(&self, tape: &mut Tape, p: &ParamVars, a: &AttnBlock, x: &Var) -> Result<Var> {
        let c = self.config();
        let [b, ch, hh, ww] = x.shape().try_into().context("attention input must be NCHW")?;
        let (t, heads) = (hh * ww, a.heads);
        let d = ch / heads;
        let pre = &a.prefix;
        let h = group_norm(tape, p, &format!("{pre}.group_norm"), x, a.groups, c.norm_eps, false)?;
        // (B, C, T) -> token rows (B*T, C) for the projections.
        let tokens = tape.transpose12(&h, [b, ch, t, 1])?;
        let tokens = tape.reshape(&tokens, &[b * t, ch])?;
        let split = |tape: &mut Tape, name: &str| -> Result<Var> {
            let y = linear(tape, p, &format!("{pre}.{name}"), &tokens)?;
            // (B, T, heads, d) -> (B*heads, T, d); free when there is one head.
            let y = if heads == 1 { y } else { tape.transpose12(&y, [b, t, heads, d])? };
            tape.reshape(&y, &[b * heads, t, d])
        };
        let (q, k, v) = (split(tape, "to_q")?, split(tape, "to_k")?, split(tape, "to_v")?);
        let o = tape.attention(&q, &k, &v, 1.0 / (d as f32).sqrt())?;
        let o = if heads == 1 { o } else { tape.transpose12(&o, [b, heads, t, d])? };
        let o = tape.reshape(&o, &[b * t, ch])?;
        let o = linear(tape, p, &format!("{pre}.to_out.0"), &o)?;
        let o = tape.transpose12(&o, [b, t, ch, 1])?;
        let o = tape.reshape(&o, &[b, ch, hh, ww])?;
        tape.add(&o, x)
    }
}

fn linear(tape: &mut Tape, p: &ParamVars, prefix: &str, x: &Var) -> Result<Var> {
    tape.linear(x, p.get(&format!("{prefix}.weight"))?, p.get(&format!("{prefix}.bias"))?)
}

fn conv(tape: &mut Tape, p: &ParamVars, prefix: &str, x: &Var, stride: usize, pad: [usize; 4]) -> Result<Var> {
    let w = p.get(&format!("{prefix}.weight"))?;
    let b = p.get(&format!("{prefix}.bias"))?;
    let [n, c_in, h, width]: [usize; 4] = x.shape().try_into().context("conv input must be NCHW")?;
    let ws = w.shape();
    let geometry = Conv2dGeometry { n, c_in, h, w: width, c_out: ws[0], kh: ws[2], kw: ws[3], stride, pad };
    tape.conv2d(x, w, b, geometry).with_context(|| format!("in {prefix}"))
}

#[allow(clippy::too_many_arguments)]
fn group_norm(
    tape: &mut Tape,
    p: &ParamVars,
    prefix: &str,
    x: &Var,
    groups: usize,
    eps: f32,
    silu: bool,
) -> Result<Var> {
    let gamma = p.get(&format!("{prefix}.weight"))?;
    let beta = p.get(&format!("{prefix}.bias"))?;
    tape.group_norm(x, gamma, beta, groups, eps, silu).with_context(|| format!("in {prefix}"))
}
