//! Builds the BPF objects (lb-ebpf's bins, for bpfel-unknown-none, with the nightly
//! toolchain) and leaves each in OUT_DIR under its bin's name (`xdpvs`: the balancer,
//! `xdpvs-realserver`: the decapsulator, `xdpvs-bench`: the live bench's programs),
//! where `aya::include_bytes_aligned!` embeds them in `xdpvs`.
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
