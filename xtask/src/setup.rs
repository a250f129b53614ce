//! `cargo xtask setup`: installs what a fresh machine lacks. Idempotent, and seconds
//! when all is there, because `build`, `test`, `demo` and `bench` run it first.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::cmd::{have, is_root, output, run};

/// Where bpf-linker finds the nightly's own LLVM (see docs/testing.md).
const LLVM_PREFIX: &str = "/opt/xdpvs-llvm";
const BPF_LINKER_VERSION: &str = "0.13.0";
/// cargo-deny for `cargo xtask test`'s dependency checks. 0.20.2 needs rustc 1.88 and
/// builds with the stable 1.95 here; installing it from crates.io takes 350 s of CPU
/// once per machine (10.5 minutes on two cores busy with other builds).
const CARGO_DENY_VERSION: &str = "0.20.2";
/// Debian packages the tests, demo and set-up use.
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("ethtool", "ethtool"),
    ("bpftool", "bpftool"),
    // promtool: the metrics end-to-end test validates /metrics with it.
    ("promtool", "prometheus"),
    // openssl: the https probe end-to-end test makes its certificates and TLS servers.
    ("openssl", "openssl"),
    // keepalived and bird2: the HA and scale-out end-to-end tests run them as an operator
    // would, in the tests' namespaces (no service is started on the host).
    ("keepalived", "keepalived"),
    ("bird", "bird2"),
    // dnsmasq: the dns probe's end-to-end test runs it as the real's DNS server
    // (dnsmasq-base: the program without Debian's service, so nothing starts on the host).
    ("dnsmasq", "dnsmasq-base"),
    // `cargo xtask dist`: dpkg-shlibdeps computes the package's Depends, lintian checks
    // it, and e2e_package reads the installed page with man.
    ("dpkg-shlibdeps", "dpkg-dev"),
    ("lintian", "lintian"),
    ("man", "man-db"),
    // trafgen: the traffic generator of the live bench and of e2e_synflood's full-rate
    // flood (xdp-trafficgen does not load on the development kernel; trafgen's packet
    // socket does).
    ("trafgen", "netsniff-ng"),
];

/// Installs everything, cheapest checks first.
///
/// Returns: an error naming what could not be installed.
pub fn setup() -> Result<()> {
    debian_packages()?;
    let sysroot = nightly_with_rust_src()?;
    link_nightly_llvm(&sysroot)?;
    bpf_linker()?;
    cargo_deny()?;
    mount_bpffs()?;
    eprintln!("xtask: setup complete");
    Ok(())
}

/// Installs the Debian packages of `DEBIAN_PACKAGES` whose command is missing.
///
/// Returns: an error when some are missing and xtask is not root, or apt-get fails.
fn debian_packages() -> Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .filter(|(cmd, _)| !have(cmd))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!("missing packages {missing:?}; run as root or install them");
    }
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    stop_host_services(&missing);
    Ok(())
}

/// Packages whose Debian unit starts a daemon on the host at install. The tests run
/// their own copies in namespaces; one on the host would speak VRRP or BGP on its
/// networks with Debian's sample configuration.
const HOST_SERVICES: &[(&str, &str)] = &[("keepalived", "keepalived"), ("bird2", "bird")];

/// Stops and disables the services that installing `installed` started, where systemd
/// runs (elsewhere, as in containers, the packages start nothing).
fn stop_host_services(installed: &[&str]) {
    if !Path::new("/run/systemd/system").exists() {
        return;
    }
    for (pkg, unit) in HOST_SERVICES {
        if installed.contains(pkg) {
            eprintln!("xtask: disabling the host's {unit} service that installing {pkg} started");
            let _ = Command::new("systemctl")
                .args(["disable", "--now", unit])
                .status();
        }
    }
}

/// BPF programs are built with `-Z build-std=core`, which needs the nightly's rust-src.
///
/// Returns: the nightly's sysroot.
fn nightly_with_rust_src() -> Result<String> {
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
    Ok(sysroot)
}

/// bpf-linker 0.13 links against `LLVM_PREFIX/lib/libLLVM.so`: point that (and the
/// soname looked up at run time) at the nightly's own libLLVM, as no LLVM 22 package
/// exists for this distribution.
///
/// Returns: an error when the nightly has no libLLVM or the links cannot be made.
fn link_nightly_llvm(sysroot: &str) -> Result<()> {
    let llvm = std::fs::read_dir(Path::new(sysroot).join("lib"))?
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
    Ok(())
}

/// Installs bpf-linker `BPF_LINKER_VERSION` against the nightly's LLVM unless that
/// exact version answers already.
///
/// Returns: an error when `cargo install` fails.
fn bpf_linker() -> Result<()> {
    let want = format!("bpf-linker {BPF_LINKER_VERSION}");
    if output("bpf-linker", &["--version"]).as_deref() == Some(want.as_str()) {
        return Ok(());
    }
    run(Command::new("cargo")
        .args([
            "+nightly",
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
        ])
        .args(["--no-default-features", "--features", "llvm-22", "--force"])
        .env("LLVM_PREFIX", LLVM_PREFIX))
}

/// Installs cargo-deny `CARGO_DENY_VERSION` from crates.io unless that exact version
/// answers already. `--locked` builds it with the dependency versions its authors
/// tested.
///
/// Returns: an error when `cargo install` fails.
pub fn cargo_deny() -> Result<()> {
    let want = format!("cargo-deny {CARGO_DENY_VERSION}");
    if output("cargo", &["deny", "--version"]).as_deref() == Some(want.as_str()) {
        return Ok(());
    }
    run(Command::new("cargo").args([
        "install",
        "--locked",
        "cargo-deny",
        "--version",
        CARGO_DENY_VERSION,
        "--force",
    ]))
}

/// Mounts bpffs, for operators who pin and for bpftool.
///
/// Returns: an error when root and the mount fails.
fn mount_bpffs() -> Result<()> {
    if is_root()
        && !std::fs::read_to_string("/proc/mounts")
            .unwrap_or_default()
            .contains(" /sys/fs/bpf bpf ")
    {
        run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
    }
    Ok(())
}
