//! A hand-written GPU compute engine for DDPM diffusion models: WGSL kernels
//! in `shaders/`, launched through wgpu on Vulkan, Metal, DX12 or GL.

pub mod checkpoint;
pub mod data;
pub mod distributed;
pub mod eval;
pub mod gpu;
pub mod nll;
pub mod ops;
pub mod patch;
pub mod plot;
pub mod sample;
pub mod schedule;
pub mod tape;
pub mod train;
pub mod unet;

pub use gpu::{Gpu, GpuOptions, Tensor};
