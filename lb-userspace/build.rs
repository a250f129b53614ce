//! Builds the BPF object (lb-ebpf, for bpfel-unknown-none, with the nightly toolchain)
//! and leaves it in OUT_DIR, where `aya::include_bytes_aligned!` embeds it in `xdpvs`.
use anyhow::Context as _;
use aya_build::Toolchain;

fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../lb-ebpf");
    let ebpf = aya_build::Package {
        name: "lb-ebpf",
        root_dir: root,
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], Toolchain::default())
        .context("building the BPF programs failed; run `cargo xtask setup` (nightly rust-src and bpf-linker)")
}
