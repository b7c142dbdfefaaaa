//! Kernel launchers. Each module holds one op family: its Rust launchers
//! beside a `cpu` module with the f64-accumulating reference the tests use;
//! the WGSL lives in `shaders/` under the same name.

pub mod conv2d;
pub mod elementwise;
pub mod matmul;
pub mod reduce;
