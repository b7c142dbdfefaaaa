//! The DDPM UNet (diffusers' `UNet2DModel` layout and names).

pub mod config;
pub mod layout;
pub mod model;
pub mod params;

pub use config::UNetConfig;
pub use layout::UNetLayout;
pub use model::{ParamVars, UNet};
pub use params::ParamStore;
