//! A hand-written GPU compute engine for DDPM diffusion models: WGSL kernels
//! in `shaders/`, launched through wgpu on Vulkan, Metal, DX12 or GL, or on
//! WebGPU in a browser (wasm32; the parts that block on the GPU are native only,
//! and each has an `_async` counterpart the web uses).

// On the web wgpu's handles are neither Send nor Sync (a page has one thread);
// the Arcs that share them between native threads are harmless there.
#![cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]

pub mod checkpoint;
pub mod data;
pub mod distributed;
#[cfg(not(target_arch = "wasm32"))]
pub mod eval;
pub mod gpu;
#[cfg(not(target_arch = "wasm32"))]
pub mod nll;
pub mod ops;
pub mod patch;
#[cfg(not(target_arch = "wasm32"))]
pub mod plot;
pub mod sample;
pub mod schedule;
pub mod tape;
pub mod train;
pub mod unet;

pub use gpu::{Gpu, GpuOptions, Tensor};
