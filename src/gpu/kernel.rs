//! The shader registry and the pipeline cache.
//!
//! Every `.wgsl` file in `shaders/` is one [`Shader`], embedded at compile
//! time. A [`Kernel`] names an entry point, its storage bindings and the
//! template defines of the variant wanted; its pipeline and bind-group layout
//! are built on first use and cached for the life of the [`Gpu`].

use std::sync::Arc;

use anyhow::{anyhow, Result};

use super::{template, Gpu};

/// One shader file in `shaders/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shader {
    Attention,
    Ceiling,
    ClassEmbedding,
    Concat,
    Conv2d,
    CrossEntropy,
    Ddpm,
    Dropout,
    Elementwise,
    Embedding,
    GroupNorm,
    Loss,
    Matmul,
    Optimizer,
    Permute,
    Reduce,
    Upsample,
    Vlb,
}

/// Every shader, so tests can check that each file in `shaders/` is here.
pub const ALL_SHADERS: &[Shader] = &[
    Shader::Attention,
    Shader::Ceiling,
    Shader::ClassEmbedding,
    Shader::Concat,
    Shader::Conv2d,
    Shader::CrossEntropy,
    Shader::Ddpm,
    Shader::Dropout,
    Shader::Elementwise,
    Shader::Embedding,
    Shader::GroupNorm,
    Shader::Loss,
    Shader::Matmul,
    Shader::Optimizer,
    Shader::Permute,
    Shader::Reduce,
    Shader::Upsample,
    Shader::Vlb,
];

impl Shader {
    /// The file name and its source, embedded at compile time.
    fn file(self) -> (&'static str, &'static str) {
        macro_rules! file {
            ($name:literal) => {
                ($name, include_str!(concat!("../../shaders/", $name)))
            };
        }
        match self {
            Shader::Attention => file!("attention.wgsl"),
            Shader::Ceiling => file!("ceiling.wgsl"),
            Shader::ClassEmbedding => file!("class_embedding.wgsl"),
            Shader::Concat => file!("concat.wgsl"),
            Shader::Conv2d => file!("conv2d.wgsl"),
            Shader::CrossEntropy => file!("cross_entropy.wgsl"),
            Shader::Ddpm => file!("ddpm.wgsl"),
            Shader::Dropout => file!("dropout.wgsl"),
            Shader::Elementwise => file!("elementwise.wgsl"),
            Shader::Embedding => file!("embedding.wgsl"),
            Shader::GroupNorm => file!("group_norm.wgsl"),
            Shader::Loss => file!("loss.wgsl"),
            Shader::Matmul => file!("matmul.wgsl"),
            Shader::Optimizer => file!("optimizer.wgsl"),
            Shader::Permute => file!("permute.wgsl"),
            Shader::Reduce => file!("reduce.wgsl"),
            Shader::Upsample => file!("upsample.wgsl"),
            Shader::Vlb => file!("vlb.wgsl"),
        }
    }

    pub fn file_name(self) -> &'static str {
        self.file().0
    }

    pub fn source(self) -> &'static str {
        self.file().1
    }

    /// The shared WGSL (`shaders/lib/`) appended to this shader's source:
    /// after it, so the line numbers of errors are the file's own.
    pub fn libraries(self) -> &'static [(&'static str, &'static str)] {
        const PHILOX: (&str, &str) = ("lib/philox.wgsl", include_str!("../../shaders/lib/philox.wgsl"));
        const SIN_COS: (&str, &str) = ("lib/sin_cos.wgsl", include_str!("../../shaders/lib/sin_cos.wgsl"));
        match self {
            Shader::Ddpm => &[PHILOX, SIN_COS],
            Shader::Dropout => &[PHILOX],
            Shader::Embedding => &[SIN_COS],
            _ => &[],
        }
    }

    /// The WGSL for one variant.
    pub fn expand(self, defines: &[(&str, i64)]) -> Result<String> {
        let mut source = self.source().to_string();
        for (_, library) in self.libraries() {
            source.push('\n');
            source.push_str(library);
        }
        template::expand(&source, defines).map_err(|e| anyhow!("{}: {e}", self.file_name()))
    }
}

/// The adapter capabilities kernel variants are chosen by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Caps {
    /// Subgroup operations are used.
    pub subgroups: bool,
    /// Subgroups are exactly 8 lanes (broadcasts from a constant lane);
    /// otherwise kernels shuffle within aligned groups of 8.
    pub sg8: bool,
    /// The shader compiler is SwiftShader's (Chrome's software WebGPU, also a
    /// Vulkan driver), which takes minutes over a loop body that loads many
    /// inputs: kernels take tiles that load fewer ([`DeviceInfo::few_loads`]).
    ///
    /// [`DeviceInfo::few_loads`]: super::DeviceInfo::few_loads
    pub few_loads: bool,
}

impl Caps {
    /// Every kind of adapter the kernels tell apart: portable (with
    /// SwiftShader's tiles or not), 8-lane subgroups, wider subgroups.
    pub const ALL: [Caps; 4] = [
        Caps { subgroups: false, sg8: false, few_loads: false },
        Caps { subgroups: false, sg8: false, few_loads: true },
        Caps { subgroups: true, sg8: true, few_loads: false },
        Caps { subgroups: true, sg8: false, few_loads: false },
    ];
}

/// How a kernel uses one storage binding (group 1, in order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    Read,
    ReadWrite,
}

/// One entry point of one shader variant.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Kernel {
    pub shader: Shader,
    pub entry: &'static str,
    pub bindings: &'static [Access],
    pub defines: Vec<(&'static str, i64)>,
}

impl Kernel {
    pub fn new(shader: Shader, entry: &'static str, bindings: &'static [Access]) -> Kernel {
        Kernel { shader, entry, bindings, defines: Vec::new() }
    }

    pub fn with_defines(mut self, defines: Vec<(&'static str, i64)>) -> Kernel {
        self.defines = defines;
        self
    }
}

pub(crate) type PipelineKey = Kernel;

pub(crate) struct Pipeline {
    pub pipeline: wgpu::ComputePipeline,
    pub tensors_layout: wgpu::BindGroupLayout,
}

impl Gpu {
    pub(crate) fn pipeline(&self, kernel: &Kernel) -> Result<Arc<Pipeline>> {
        if let Some(p) = self.pipelines.lock().unwrap().get(kernel) {
            return Ok(p.clone());
        }
        let p = Arc::new(self.build_pipeline(kernel)?);
        self.pipelines.lock().unwrap().insert(kernel.clone(), p.clone());
        Ok(p)
    }

    fn build_pipeline(&self, kernel: &Kernel) -> Result<Pipeline> {
        let source = kernel.shader.expand(&kernel.defines)?;
        let label = format!("{}::{}", kernel.shader.file_name(), kernel.entry);
        let build = || {
            let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(&label),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            });
            let entries: Vec<wgpu::BindGroupLayoutEntry> = kernel
                .bindings
                .iter()
                .enumerate()
                .map(|(i, access)| wgpu::BindGroupLayoutEntry {
                    binding: i as u32,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage { read_only: *access == Access::Read },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                })
                .collect();
            let tensors_layout = self
                .device
                .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some(&label), entries: &entries });
            let layout = self.device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(&label),
                bind_group_layouts: &[Some(&self.params_layout), Some(&tensors_layout)],
                immediate_size: 0,
            });
            let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(&label),
                layout: Some(&layout),
                module: &module,
                entry_point: Some(kernel.entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &[],
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
            (pipeline, tensors_layout)
        };
        let ((pipeline, tensors_layout), error) = super::scoped(&self.device, wgpu::ErrorFilter::Validation, build);
        if let Some(err) = error {
            return Err(anyhow!("building kernel {label} {:?}: {err}", kernel.defines));
        }
        Ok(Pipeline { pipeline, tensors_layout })
    }
}
