//! Kernel launchers. Each module holds one op family: its Rust launchers
//! beside a `cpu` module with the f64-accumulating reference the tests use;
//! the WGSL lives in `shaders/` under the same name.

pub mod attention;
pub mod class_embedding;
pub mod concat;
pub mod conv2d;
pub mod cross_entropy;
pub mod ddpm;
pub mod dropout;
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

use crate::gpu::{ParamsLayout, Shader};

/// The unrollings the benchmarks' peak-FMA kernel (`benches/ceiling.rs`)
/// is measured at.
pub const CEILING_UNROLLS: [i64; 2] = [4, 8];

/// Every define set the engine may launch `shader` with, enumerated from
/// each family's launch plans; the naga test translates each one for every
/// backend.
pub fn variants(shader: Shader) -> Vec<Vec<(&'static str, i64)>> {
    match shader {
        Shader::Attention => attention::variants(),
        Shader::Concat => concat::variants(),
        Shader::Conv2d => conv2d::variants(),
        Shader::CrossEntropy => cross_entropy::variants(),
        Shader::GroupNorm => group_norm::variants(),
        Shader::Loss => loss::variants(),
        Shader::Matmul => matmul::variants(),
        Shader::Reduce => reduce::variants(),
        Shader::Upsample => upsample::variants(),
        Shader::Ceiling => CEILING_UNROLLS.iter().map(|&u| vec![("UNROLL", u)]).collect(),
        _ => vec![vec![]],
    }
}

/// Every kernel family's launch-parameter layout, for the test that
/// compares each with the `Params` struct of its shader.
pub fn params_layouts() -> Vec<(Shader, ParamsLayout)> {
    vec![
        (Shader::Attention, attention::PARAMS_LAYOUT),
        (Shader::ClassEmbedding, class_embedding::PARAMS_LAYOUT),
        (Shader::Concat, concat::PARAMS_LAYOUT),
        (Shader::Conv2d, conv2d::PARAMS_LAYOUT),
        (Shader::CrossEntropy, cross_entropy::PARAMS_LAYOUT),
        (Shader::Ddpm, ddpm::PARAMS_LAYOUT),
        (Shader::Dropout, dropout::PARAMS_LAYOUT),
        (Shader::Elementwise, elementwise::PARAMS_LAYOUT),
        (Shader::Embedding, embedding::PARAMS_LAYOUT),
        (Shader::GroupNorm, group_norm::PARAMS_LAYOUT),
        (Shader::Loss, loss::PARAMS_LAYOUT),
        (Shader::Matmul, matmul::PARAMS_LAYOUT),
        (Shader::Optimizer, optimizer::PARAMS_LAYOUT),
        (Shader::Permute, permute::PARAMS_LAYOUT),
        (Shader::Reduce, reduce::PARAMS_LAYOUT),
        (Shader::Upsample, upsample::PARAMS_LAYOUT),
        (Shader::Vlb, vlb::PARAMS_LAYOUT),
    ]
}
