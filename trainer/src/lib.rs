//! # pursamere-trainer
//!
//! Host-side tooling for PurSAMERE: data loaders ([`data`]), architectures
//! ([`arch`]), training ([`train`]),
//! quantised export ([`export`]), conversion of a classifier to int8 activations
//! ([`int8`]), the batched float reference purifier
//! ([`reference`], [`unrolled`]), attacks ([`attack`]) and the white-box robustness
//! evaluation ([`eval`]).
#![deny(missing_docs)]

pub mod arch;
pub mod attack;
pub mod data;
pub mod eval;
pub mod export;
pub mod gather;
pub mod int8;
pub mod model;
pub mod reference;
pub mod safetensors_io;
pub mod train;
pub mod unrolled;

pub use pursamere_core as core;
