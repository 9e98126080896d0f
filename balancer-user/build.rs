//! Embeds the XDP object built by `cargo xtask build-ebpf` so `balancer` is self-contained.
use std::{env, fs, path::PathBuf};

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let default = manifest.join("../target/bpfel-unknown-none/bpf-release/balancer-xdp");
    let object = env::var_os("BALANCER_EBPF_OBJ").map_or(default, PathBuf::from);
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("balancer.bpf.o");
    println!("cargo:rerun-if-env-changed=BALANCER_EBPF_OBJ");
    println!("cargo:rerun-if-changed={}", object.display());
    if let Ok(bytes) = fs::read(&object) {
        fs::write(&out, bytes).expect("write OUT_DIR/balancer.bpf.o");
    } else {
        // Unit tests and clippy need no program; the agent refuses to start without one.
        println!(
            "cargo:warning=XDP object {} not found: building without it (run `cargo xtask build`)",
            object.display()
        );
        fs::write(&out, b"").expect("write OUT_DIR/balancer.bpf.o");
    }
}
