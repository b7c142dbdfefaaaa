//! Parameters in one flat buffer with a name table. Gradients, Adam moments
//! and the EMA copy use the same layout, so the optimiser and the EMA are
//! single dispatches; each named parameter is a view into it.
//!
//! Files are safetensors with diffusers' names and PyTorch's shapes
//! (`diffusion_pytorch_model.safetensors`), written atomically.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{bail, Context, Result};
use rand::{rngs::StdRng, Rng, SeedableRng};

use super::layout::{Init, ParamSpec};
use crate::gpu::{Gpu, Tensor, VIEW_ALIGN_ELEMS};

#[derive(Clone, Debug, PartialEq)]
pub struct ParamEntry {
    pub name: String,
    pub shape: Vec<usize>,
    /// First element in the flat buffer (a multiple of the view alignment).
    pub offset: usize,
    pub init: Init,
}

impl ParamEntry {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where each parameter sits in the flat buffer.
#[derive(Clone, Debug)]
pub struct ParamTable {
    pub entries: Vec<ParamEntry>,
    index: HashMap<String, usize>,
    /// Flat length including alignment padding (which always stays zero).
    pub flat_len: usize,
}

impl ParamTable {
    pub fn new(specs: &[ParamSpec]) -> ParamTable {
        let mut entries = Vec::with_capacity(specs.len());
        let mut offset = 0;
        for s in specs {
            entries.push(ParamEntry { name: s.name.clone(), shape: s.shape.clone(), offset, init: s.init });
            offset += s.shape.iter().product::<usize>().div_ceil(VIEW_ALIGN_ELEMS) * VIEW_ALIGN_ELEMS;
        }
        let index = entries.iter().enumerate().map(|(i, e)| (e.name.clone(), i)).collect();
        ParamTable { entries, index, flat_len: offset.max(VIEW_ALIGN_ELEMS) }
    }

    pub fn get(&self, name: &str) -> Option<&ParamEntry> {
        self.index.get(name).map(|&i| &self.entries[i])
    }

    /// Number of parameters (without padding).
    pub fn count(&self) -> usize {
        self.entries.iter().map(ParamEntry::len).sum()
    }

    /// Initial values, seeded: PyTorch's default uniform init for conv and
    /// linear layers, ones/zeros where the layout says.
    pub fn init(&self, seed: u64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut flat = vec![0.0; self.flat_len];
        for e in &self.entries {
            let values = &mut flat[e.offset..e.offset + e.len()];
            match e.init {
                Init::Zeros => {}
                Init::Ones => values.fill(1.0),
                Init::Uniform { fan_in } => {
                    let bound = 1.0 / (fan_in as f32).sqrt();
                    values.iter_mut().for_each(|v| *v = rng.random_range(-bound..bound));
                }
            }
        }
        flat
    }

    /// Refuse, before any allocation, a table whose flat buffer exceeds the
    /// adapter's largest buffer, or with a tensor no kernel could bind.
    pub fn check_fits(&self, gpu: &crate::gpu::Gpu) -> Result<()> {
        let info = gpu.info();
        let bytes = (self.flat_len * 4) as u64;
        if bytes > info.max_buffer_size {
            bail!(
                "the weights take {} MiB, more than this adapter's largest buffer ({} MiB)",
                bytes >> 20,
                info.max_buffer_size >> 20
            );
        }
        if let Some(e) = self.entries.iter().find(|e| (e.len() * 4) as u64 > info.max_storage_binding) {
            bail!(
                "tensor '{}' {:?} takes {} MiB, more than this adapter's largest storage binding ({} MiB)",
                e.name,
                e.shape,
                (e.len() * 4) >> 20,
                info.max_storage_binding >> 20
            );
        }
        Ok(())
    }

    /// Read a safetensors file whose tensors must be exactly this table's
    /// (same names, same shapes, f32) into a flat vector.
    pub fn load(&self, path: &Path) -> Result<Vec<f32>> {
        // Sized before it is read: the tensors plus a header of at most 16 MiB.
        let len = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?.len();
        let expected = (self.flat_len * 4) as u64;
        if len > expected + (16 << 20) {
            bail!(
                "{} is {} MiB but this config's weights take {} MiB (checkpoint from another config?)",
                path.display(),
                len >> 20,
                expected >> 20
            );
        }
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        self.load_bytes(&bytes).with_context(|| format!("loading weights from {}", path.display()))
    }

    pub fn load_bytes(&self, bytes: &[u8]) -> Result<Vec<f32>> {
        let file = safetensors::SafeTensors::deserialize(bytes)
            .context("not a valid safetensors file (truncated or corrupt?)")?;
        let mut flat = vec![0.0; self.flat_len];
        let mut missing = Vec::new();
        for e in &self.entries {
            let Ok(t) = file.tensor(&e.name) else {
                missing.push(e.name.clone());
                continue;
            };
            if t.shape() != e.shape.as_slice() {
                bail!(
                    "tensor '{}' has shape {:?}, the config needs {:?} (checkpoint from another config?)",
                    e.name,
                    t.shape(),
                    e.shape
                );
            }
            if t.dtype() != safetensors::Dtype::F32 {
                bail!("tensor '{}' is {:?}; only F32 checkpoints are supported", e.name, t.dtype());
            }
            let values = &mut flat[e.offset..e.offset + e.len()];
            for (dst, chunk) in values.iter_mut().zip(t.data().chunks_exact(4)) {
                *dst = f32::from_le_bytes(chunk.try_into().unwrap());
            }
            if let Some(bad) = values.iter().find(|v| !v.is_finite()) {
                bail!("tensor '{}' holds {bad} (the weights of a diverged run?)", e.name);
            }
        }
        if !missing.is_empty() {
            bail!("{} tensors missing (checkpoint from another config?), e.g. '{}'", missing.len(), missing[0]);
        }
        let unexpected: Vec<String> =
            file.names().into_iter().filter(|n| self.get(n).is_none()).map(|n| n.to_string()).collect();
        if !unexpected.is_empty() {
            bail!(
                "{} tensors the config does not have (checkpoint from another config?), e.g. '{}'",
                unexpected.len(),
                unexpected[0]
            );
        }
        Ok(flat)
    }

    /// Serialise `flat` (this table's layout) as safetensors bytes.
    pub fn to_safetensors(&self, flat: &[f32], metadata: Option<HashMap<String, String>>) -> Result<Vec<u8>> {
        let mut tensors = BTreeMap::new();
        for e in &self.entries {
            let data: &[u8] = bytemuck::cast_slice(&flat[e.offset..e.offset + e.len()]);
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, e.shape.clone(), data)?;
            tensors.insert(e.name.clone(), view);
        }
        Ok(safetensors::serialize(tensors, metadata)?)
    }

    /// Write `flat` to `path` atomically (temporary file, then rename).
    pub fn save(&self, flat: &[f32], path: &Path) -> Result<()> {
        write_atomically(path, &self.to_safetensors(flat, None)?)
    }
}

/// Write a file so that a crash or Ctrl-C leaves either the old file or the
/// new one, never a truncated one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

/// The parameters on the GPU: one flat tensor and a view per name.
pub struct ParamStore {
    pub table: ParamTable,
    pub flat: Tensor,
}

impl ParamStore {
    pub fn upload(gpu: &Gpu, table: ParamTable, values: &[f32]) -> Result<ParamStore> {
        let flat = gpu.upload(&[table.flat_len], values)?;
        Ok(ParamStore { table, flat })
    }

    /// The parameter `name` as a tensor of its shape.
    pub fn get(&self, name: &str) -> Result<Tensor> {
        view_of(&self.table, &self.flat, name)
    }
}

/// `name`'s view in any flat tensor of `table`'s layout (weights, grads, moments).
pub fn view_of(table: &ParamTable, flat: &Tensor, name: &str) -> Result<Tensor> {
    let e = table.get(name).with_context(|| format!("no parameter named '{name}'"))?;
    flat.view(e.offset, &e.shape)
}
