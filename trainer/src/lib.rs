//! # pursamere-trainer
//!
//! Host-side tooling for PurSAMERE. Today: the data loaders ([`data`]). Training,
//! export, the float reference purifier and the attacks are being added.
#![deny(missing_docs)]

pub mod attack;
pub mod data;
pub mod export;
pub mod model;
pub mod reference;
pub mod safetensors_io;
pub mod train;
pub mod unrolled;

pub use pursamere_core as core;
