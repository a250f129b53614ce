//! `cargo xtask`: set-up, build, tests, demo and benchmarks. Orchestration only: the
//! work lives in the crates. Kept free of the project's own crates so that it builds
//! on a fresh machine before `setup` has installed what the BPF build needs.

mod cmd;
mod deny;
mod dist;
mod layers;
mod setup;

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};

use crate::{
    cmd::{is_root, root, run},
    setup::setup,
};

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
    /// Build the Debian package target/dist/xdpvs_<version>_amd64.deb and check it with
    /// lintian.
    Dist,
    /// Run every test: static checks, unit tests, then the root-run BPF and namespace tests.
    Test,
    /// Run cargo-deny: licences, bans and duplicates, sources, and security advisories
    /// when a database can be had (see docs/testing.md).
    Deny,
    /// Check that imports between sibling modules of every crate target of the
    /// workspace run one way (no cycle).
    Layers,
    /// Build a topology in namespaces, run xdpvs, send requests, print who answered.
    Demo,
    /// Print per-packet costs of the data path as JSON lines (BPF_PROG_TEST_RUN), the
    /// control plane's at scale, then the live bench; with --live or --scale, that part
    /// only; with --soak, run the daemon under mixed traffic, reloads and a flapping
    /// real instead.
    Bench {
        /// The long run: memory, descriptors and flows over `--minutes` (see
        /// tests/src/bin/soak.rs).
        #[arg(long, conflicts_with = "live")]
        soak: bool,
        /// Only the live bench: the daemon forwarding trafgen's frames between
        /// namespaces, beside a pass program and a bounce (see tests/src/live.rs).
        #[arg(long)]
        live: bool,
        /// Length of the soak, in minutes.
        #[arg(long, default_value_t = 30, requires = "soak")]
        minutes: u64,
        /// Only the control plane at scale (tests/src/scale.rs): 1,000 virtual
        /// servers of 100 reals applied and changed, Maglev, 10,000 probed reals.
        #[arg(long, conflicts_with_all = ["soak", "live"])]
        scale: bool,
    },
}

/// Builds the daemon with the BPF object embedded (lb-userspace/build.rs builds lb-ebpf).
///
/// Returns: an error when cargo fails.
fn build() -> Result<()> {
    run(Command::new("cargo").args(["build", "--release", "-p", "lb-userspace"]))
}

/// Returns: `cargo run` of the tests crate's binary `name`, in release.
fn tests_bin(name: &str) -> Command {
    let mut c = Command::new("cargo");
    c.args(["run", "--release", "-q", "-p", "tests", "--bin", name]);
    c
}

/// Returns: where `build` leaves the daemon; the root-run tests take it from XDPVS_BIN.
fn xdpvs_bin() -> PathBuf {
    root().join("target/release/xdpvs")
}

/// Everything CI runs, cheapest first, so a lint fails in seconds rather than after the
/// namespace tests.
///
/// Returns: the first failure.
fn test() -> Result<()> {
    setup()?;
    if !is_root() {
        bail!("`cargo xtask test` runs network-namespace and XDP tests and needs root");
    }
    layers::check(&root())?;
    let advisories = deny::check()?;
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
    // xtask's own checks (the cycle finder, the advisories triage) are code too.
    run(Command::new("cargo").args(["test", "-p", "xtask"]))?;
    // Builds the daemon too; e2e_package installs the package it makes.
    let deb = dist::dist()?;
    // Root-run tests share the host's namespaces directory: run them one at a time.
    run(Command::new("cargo")
        .args(["test", "-p", "tests", "--", "--test-threads=1"])
        .env("XDPVS_BIN", xdpvs_bin())
        .env("XDPVS_DEB", deb))?;
    // Said again at the end, where it cannot scroll away.
    if let Some(text) = deny::banner(&advisories) {
        eprintln!("{text}");
    }
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Setup => setup(),
        Cmd::Build => {
            setup()?;
            build()
        }
        Cmd::Dist => {
            setup()?;
            dist::dist().map(drop)
        }
        Cmd::Test => test(),
        Cmd::Deny => {
            setup::cargo_deny()?;
            deny::check().map(drop)
        }
        Cmd::Layers => layers::check(&root()),
        Cmd::Demo => {
            setup()?;
            build()?;
            run(tests_bin("demo").env("XDPVS_BIN", xdpvs_bin()))
        }
        Cmd::Bench {
            soak: true,
            minutes,
            ..
        } => {
            setup()?;
            build()?;
            run(tests_bin("soak")
                .arg("--")
                .arg(minutes.to_string())
                .env("XDPVS_BIN", xdpvs_bin()))
        }
        Cmd::Bench {
            soak: false,
            live,
            scale,
            ..
        } => {
            setup()?;
            // The live bench runs the daemon's release build.
            build()?;
            let mut bench = tests_bin("bench");
            if live {
                bench.args(["--", "--live"]);
            } else if scale {
                bench.args(["--", "--scale"]);
            }
            run(bench.env("XDPVS_BIN", xdpvs_bin()))
        }
    }
}
