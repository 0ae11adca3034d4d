//! `pursamere_dsp` on targets with the Armv7E-M DSP instructions (SMLAD, SXTB16):
//! stable Rust exposes no `target_feature` for them, so the target name decides, as
//! in the `cortex-m` crate.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(pursamere_dsp)");
    println!("cargo::rustc-check-cfg=cfg(pursamere_fpu)");
    println!("cargo::rerun-if-changed=build.rs");
    let target = std::env::var("TARGET").unwrap_or_default();
    if target.starts_with("thumbv7em") || target.starts_with("thumbv8m.main") {
        println!("cargo::rustc-cfg=pursamere_dsp");
        // The float kernel's `asm!` needs the single-precision FPU: the hard-float
        // targets only.
        if target.ends_with("eabihf") {
            println!("cargo::rustc-cfg=pursamere_fpu");
        }
    }
}
