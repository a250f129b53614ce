//! `cargo xtask`: set-up, build, tests, demo and benchmarks. Orchestration only: the
//! work lives in the crates. Kept free of the project's own crates so that it builds
//! on a fresh machine before `setup` has installed what the BPF build needs.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

/// Where bpf-linker finds the nightly's own LLVM (see docs/testing.md).
const LLVM_PREFIX: &str = "/opt/xdpvs-llvm";
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Debian packages the tests, demo and set-up use.
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("ethtool", "ethtool"),
    ("bpftool", "bpftool"),
    // promtool: the metrics end-to-end test validates /metrics with it.
    ("promtool", "prometheus"),
    // openssl: the https probe end-to-end test makes its certificates and TLS servers.
    ("openssl", "openssl"),
];

#[derive(Parser)]
#[command(about = "xdpvs development tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what a fresh machine lacks (idempotent; seconds when all is there).
    Setup,
    /// Build the BPF object and target/release/xdpvs.
    Build,
    /// Run every test: unit tests, then the root-run BPF and namespace tests.
    Test,
    /// Build a topology in namespaces, run xdpvs, send requests, print who answered.
    Demo,
    /// Print per-packet costs of the data path as JSON lines (BPF_PROG_TEST_RUN).
    Bench,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: {cmd:?}");
    let status = cmd
        .current_dir(root())
        .status()
        .with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn is_root() -> bool {
    output("id", &["-u"]).as_deref() == Some("0")
}

fn setup() -> Result<()> {
    // Debian packages.
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .filter(|(cmd, _)| !have(cmd))
        .map(|(_, pkg)| *pkg)
        .collect();
    if !missing.is_empty() {
        if !is_root() {
            bail!("missing packages {missing:?}; run as root or install them");
        }
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    // Nightly with rust-src (BPF programs are built with -Z build-std=core).
    let sysroot = output("rustc", &["+nightly", "--print", "sysroot"])
        .context("the nightly toolchain is required (rustup toolchain install nightly)")?;
    if !Path::new(&sysroot)
        .join("lib/rustlib/src/rust/library/core")
        .exists()
    {
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    // bpf-linker 0.13 linked against the nightly's own libLLVM (no LLVM 22 package exists
    // for this distribution; the nightly ships one).
    let llvm = std::fs::read_dir(Path::new(&sysroot).join("lib"))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .context("the nightly toolchain has no libLLVM.so.*")?;
    let lib = Path::new(LLVM_PREFIX).join("lib");
    std::fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    for name in [
        PathBuf::from("libLLVM.so"),
        PathBuf::from(llvm.file_name().expect("file name")),
    ] {
        let link = lib.join(name);
        if std::fs::read_link(&link).ok().as_deref() != Some(llvm.as_path()) {
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&llvm, &link)
                .with_context(|| format!("linking {}", link.display()))?;
        }
    }
    let want = format!("bpf-linker {BPF_LINKER_VERSION}");
    if output("bpf-linker", &["--version"]).as_deref() != Some(want.as_str()) {
        run(Command::new("cargo")
            .args([
                "+nightly",
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args(["--no-default-features", "--features", "llvm-22", "--force"])
            .env("LLVM_PREFIX", LLVM_PREFIX))?;
    }
    // bpffs, for operators who pin and for bpftool.
    if is_root()
        && !std::fs::read_to_string("/proc/mounts")
            .unwrap_or_default()
            .contains(" /sys/fs/bpf bpf ")
    {
        run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
    }
    eprintln!("xtask: setup complete");
    Ok(())
}

fn build() -> Result<()> {
    run(Command::new("cargo").args(["build", "--release", "-p", "lb-userspace"]))
}

fn xdpvs_bin() -> PathBuf {
    root().join("target/release/xdpvs")
}

fn test() -> Result<()> {
    setup()?;
    if !is_root() {
        bail!("`cargo xtask test` runs network-namespace and XDP tests and needs root");
    }
    run(Command::new("cargo").args([
        "clippy",
        "-q",
        "-p",
        "lb-common",
        "-p",
        "lb-userspace",
        "-p",
        "xtask",
        "-p",
        "tests",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(Command::new("cargo").args(["test", "-p", "lb-common", "--features", "user"]))?;
    run(Command::new("cargo").args(["test", "-p", "lb-userspace"]))?;
    build()?;
    // Root-run tests share the host's namespaces directory: run them one at a time.
    run(Command::new("cargo")
        .args(["test", "-p", "tests", "--", "--test-threads=1"])
        .env("XDPVS_BIN", xdpvs_bin()))
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Setup => setup(),
        Cmd::Build => {
            setup()?;
            build()
        }
        Cmd::Test => test(),
        Cmd::Demo => {
            setup()?;
            build()?;
            run(Command::new("cargo")
                .args(["run", "--release", "-q", "-p", "tests", "--bin", "demo"])
                .env("XDPVS_BIN", xdpvs_bin()))
        }
        Cmd::Bench => {
            setup()?;
            run(Command::new("cargo").args([
                "run",
                "--release",
                "-q",
                "-p",
                "tests",
                "--bin",
                "bench",
            ]))
        }
    }
}
