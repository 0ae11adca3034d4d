//! Cross-crate integration tests live in `tests/tests/`. This library holds what
//! they share: the generator of `fixtures/tiny-conv.psm`.

pub mod tiny_conv;
