//! # pursamere-trainer
//!
//! Host-side tooling for PurSAMERE. This crate is being built up (training, export,
//! the float reference purifier and the attacks land with later work); today it
//! re-exports the core so the workspace layout is final.
#![deny(missing_docs)]

pub use pursamere_core as core;
