//! Parameters in one flat buffer with a name table. Gradients, Adam moments
//! and the EMA copy use the same layout, so the optimiser and the EMA are
//! single dispatches; each named parameter is a view into it.
//!
//! Files are safetensors with diffusers' names and PyTorch's shapes
//! (`diffusion_pytorch_model.safetensors`), written atomically.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::StandardNormal;

use super::layout::{Init, InitScheme, ParamSpec};
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
    /// linear layers, ones/zeros where the layout says, and the ends of the
    /// residual branches as `scheme` says.
    pub fn init(&self, seed: u64, scheme: InitScheme) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut flat = vec![0.0; self.flat_len];
        for e in &self.entries {
            let values = &mut flat[e.offset..e.offset + e.len()];
            match (e.init, scheme) {
                (Init::Zeros, _) | (Init::ZeroedBranch { .. }, InitScheme::Ddpm) => {}
                (Init::Ones, _) => values.fill(1.0),
                (Init::Normal, _) => values.iter_mut().for_each(|v| *v = rng.sample(StandardNormal)),
                (Init::Uniform { fan_in } | Init::ZeroedBranch { fan_in }, _) => {
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
    /// (same names, same shapes; F32, F16 or BF16, converted to f32) into a
    /// flat vector. Lazily: the header first, then each tensor's byte range
    /// straight into its place, so no second copy of the file is held.
    pub fn load(&self, path: &Path) -> Result<Vec<f32>> {
        let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
        let len = file.metadata().with_context(|| format!("reading {}", path.display()))?.len();
        // Sized before it is read: the tensors plus a header of at most 16 MiB.
        let expected = (self.flat_len * 4) as u64;
        if len > expected + MAX_HEADER_BYTES {
            bail!(
                "{} is {} MiB but this config's weights take {} MiB (checkpoint from another config?)",
                path.display(),
                len >> 20,
                expected >> 20
            );
        }
        self.load_from(std::io::BufReader::new(file), len)
            .with_context(|| format!("loading weights from {}", path.display()))
    }

    /// [`ParamTable::load`] from bytes in memory.
    pub fn load_bytes(&self, bytes: &[u8]) -> Result<Vec<f32>> {
        self.load_from(std::io::Cursor::new(bytes), bytes.len() as u64)
    }

    fn load_from(&self, mut reader: impl Read + Seek, len: u64) -> Result<Vec<f32>> {
        let header = read_header(&mut reader, len).context("not a valid safetensors file (truncated or corrupt?)")?;
        let mut flat = vec![0.0; self.flat_len];
        let mut missing = Vec::new();
        let mut bytes = Vec::new();
        for e in &self.entries {
            let Some(t) = header.tensors.get(&e.name) else {
                missing.push(e.name.clone());
                continue;
            };
            if t.shape != e.shape {
                bail!(
                    "tensor '{}' has shape {:?}, the config needs {:?} (checkpoint from another config?)",
                    e.name,
                    t.shape,
                    e.shape
                );
            }
            reader.seek(SeekFrom::Start(header.data_start + t.start))?;
            bytes.resize(e.len() * t.dtype.bytes(), 0);
            reader.read_exact(&mut bytes).context("not a valid safetensors file (truncated or corrupt?)")?;
            let values = &mut flat[e.offset..e.offset + e.len()];
            t.dtype.decode(&bytes, values);
            if let Some(bad) = values.iter().find(|v| !v.is_finite()) {
                bail!("tensor '{}' holds {bad} (the weights of a diverged run?)", e.name);
            }
        }
        if !missing.is_empty() {
            bail!("{} tensors missing (checkpoint from another config?), e.g. '{}'", missing.len(), missing[0]);
        }
        let unexpected: Vec<&String> = header.tensors.keys().filter(|n| self.get(n).is_none()).collect();
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
}

/// The largest safetensors header read (the format's own limit is 100 MB).
const MAX_HEADER_BYTES: u64 = 16 << 20;

/// The element types a weights file may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightType {
    F32,
    /// IEEE half precision (diffusers' `variant="fp16"` files).
    F16,
    /// bfloat16: the top half of an f32.
    BF16,
}

impl WeightType {
    fn parse(name: &str) -> Result<WeightType> {
        match name {
            "F32" => Ok(WeightType::F32),
            "F16" => Ok(WeightType::F16),
            "BF16" => Ok(WeightType::BF16),
            other => bail!("tensors of type {other} are not supported (F32, F16 or BF16)"),
        }
    }

    fn bytes(self) -> usize {
        match self {
            WeightType::F32 => 4,
            WeightType::F16 | WeightType::BF16 => 2,
        }
    }

    /// Little-endian `bytes` into `out` as f32 (exact: every f16 and bf16 is an f32).
    pub fn decode(self, bytes: &[u8], out: &mut [f32]) {
        match self {
            WeightType::F32 => {
                for (dst, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *dst = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            WeightType::F16 => {
                for (dst, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *dst = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
                }
            }
            WeightType::BF16 => {
                for (dst, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *dst = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16);
                }
            }
        }
    }
}

/// IEEE 754 binary16 to f32: sign, 5 exponent bits (bias 15), 10 mantissa
/// bits; subnormals (exponent 0) scale the mantissa by 2^-24.
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exponent = (h >> 10) & 0x1f;
    let mantissa = (h & 0x3ff) as f32;
    sign * match exponent {
        0 => mantissa * (-24f32).exp2(),
        0x1f if mantissa == 0.0 => f32::INFINITY,
        0x1f => f32::NAN,
        e => (1.0 + mantissa / 1024.0) * (e as f32 - 15.0).exp2(),
    }
}

/// One tensor's entry in a safetensors header.
struct TensorEntry {
    dtype: WeightType,
    shape: Vec<usize>,
    /// Byte offset from the start of the data section.
    start: u64,
}

struct Header {
    tensors: HashMap<String, TensorEntry>,
    /// File offset of the data section.
    data_start: u64,
}

/// Parse and check a safetensors header: an 8-byte little-endian length,
/// then JSON mapping each name to its dtype, shape and data offsets (plus an
/// optional `__metadata__`). Every tensor's bytes must lie in the file and
/// match its shape and type.
fn read_header(reader: &mut impl Read, len: u64) -> Result<Header> {
    let mut size = [0u8; 8];
    reader.read_exact(&mut size)?;
    let n = u64::from_le_bytes(size);
    ensure!(n <= MAX_HEADER_BYTES && 8 + n <= len, "header of {n} bytes in a file of {len}");
    let mut text = vec![0u8; n as usize];
    reader.read_exact(&mut text)?;
    let json: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&text)?;
    let data_len = len - 8 - n;
    let mut tensors = HashMap::new();
    for (name, v) in json {
        if name == "__metadata__" {
            continue;
        }
        let field = |k: &str| v.get(k).with_context(|| format!("tensor '{name}' has no {k}"));
        let dtype =
            WeightType::parse(field("dtype")?.as_str().unwrap_or("?")).with_context(|| format!("tensor '{name}'"))?;
        let numbers = |k: &str| -> Result<Vec<u64>> {
            field(k)?
                .as_array()
                .and_then(|a| a.iter().map(|x| x.as_u64()).collect())
                .with_context(|| format!("tensor '{name}': {k} must be a list of whole numbers"))
        };
        let shape: Vec<usize> = numbers("shape")?.into_iter().map(|d| d as usize).collect();
        let offsets = numbers("data_offsets")?;
        ensure!(offsets.len() == 2, "tensor '{name}': data_offsets must hold two numbers");
        let (start, end) = (offsets[0], offsets[1]);
        let elements = shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
        let bytes = elements.and_then(|e| e.checked_mul(dtype.bytes() as u64));
        ensure!(
            start <= end && end <= data_len && bytes == Some(end - start),
            "tensor '{name}': bytes {start}..{end} do not hold {shape:?} {dtype:?} in {data_len} bytes of data"
        );
        tensors.insert(name, TensorEntry { dtype, shape, start });
    }
    Ok(Header { tensors, data_start: 8 + n })
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
