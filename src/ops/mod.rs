//! Kernel launchers. Each module holds one op family: its Rust launchers
//! beside a `cpu` module with the f64-accumulating reference the tests use;
//! the WGSL lives in `shaders/` under the same name.

pub mod attention;
pub mod concat;
pub mod conv2d;
pub mod cross_entropy;
pub mod ddpm;
pub mod elementwise;
pub mod embedding;
pub mod group_norm;
pub mod linear;
pub mod loss;
pub mod matmul;
pub mod optimizer;
pub mod permute;
pub mod reduce;
pub mod upsample;
pub mod vlb;
