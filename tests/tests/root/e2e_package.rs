//! The Debian package (issue 16) installed on this machine as an operator would: `dpkg
//! -i`, the binary and the configuration it ships (`xdpvs check`), its man page and
//! shell completions, a unit that is neither enabled nor started; then `dpkg --purge`
//! leaves nothing of it behind.
//!
//! The package is `$XDPVS_DEB`, which `cargo xtask test` builds (`cargo xtask dist`)
//! and sets; without it the test fails. dpkg has no namespaces: the package goes on
//! the host itself, so the test refuses to run where xdpvs is already installed, and a
//! guard purges it however the test ends.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use tests::require_root;

const PACKAGE: &str = "xdpvs";
const CONFIG: &str = "/etc/xdpvs/xdpvs.yaml";

/// Runs `cmd args`. Returns: its output; panics if it cannot start.
fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} {args:?}: {e}"))
}

/// Runs `cmd args` and panics with its output unless it succeeds.
/// Returns: its standard output.
fn ok(cmd: &str, args: &[&str]) -> String {
    let out = run(cmd, args);
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Returns: whether dpkg knows the package in any state but "not installed".
fn known_to_dpkg() -> bool {
    let out = run("dpkg-query", &["-W", "-f=${db:Status-Status}", PACKAGE]);
    out.status.success() && out.stdout != b"not-installed"
}

/// The installed package: purged on drop, so a failing test leaves the machine as it
/// found it.
struct Installed;

impl Installed {
    fn purge(&self) {
        let out = run("dpkg", &["--purge", PACKAGE]);
        if !out.status.success() {
            eprintln!(
                "dpkg --purge {PACKAGE}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        self.purge();
    }
}

#[test]
fn the_package_installs_works_and_purges_without_a_trace() {
    require_root();
    let deb = std::env::var_os("XDPVS_DEB").map(PathBuf::from).expect(
        "XDPVS_DEB is not set: run `cargo xtask test`, or `cargo xtask dist` and set it to target/dist/xdpvs_*.deb",
    );
    assert!(deb.is_file(), "XDPVS_DEB={} is not a file", deb.display());
    assert!(
        !known_to_dpkg(),
        "{PACKAGE} is already installed on this machine: the test would remove it; purge it first"
    );

    let installed = Installed;
    ok("dpkg", &["-i", deb.to_str().expect("a UTF-8 path")]);
    let files: Vec<PathBuf> = ok("dpkg", &["-L", PACKAGE])
        .lines()
        .filter(|l| !l.is_empty() && *l != "/.")
        .map(PathBuf::from)
        .collect();
    for want in [
        "/usr/sbin/xdpvs",
        "/lib/systemd/system/xdpvs.service",
        CONFIG,
        "/usr/share/man/man8/xdpvs.8.gz",
        "/usr/share/man/man8/xdpvs-run.8.gz",
        "/usr/share/bash-completion/completions/xdpvs",
        "/usr/share/zsh/vendor-completions/_xdpvs",
        "/usr/share/doc/xdpvs/copyright",
        "/usr/share/doc/xdpvs/changelog.Debian.gz",
    ] {
        assert!(
            files.iter().any(|f| f == Path::new(want)),
            "the package lacks {want}: {files:#?}"
        );
        assert!(Path::new(want).is_file(), "{want} is not installed");
    }
    // What purge must remove: the package's files. Its directories other packages
    // share (/usr/share/man/man8; /lib, a link to /usr/lib on a merged /usr) stay.
    let own_files: Vec<&PathBuf> = files
        .iter()
        .filter(|f| std::fs::symlink_metadata(f).is_ok_and(|m| m.is_file()))
        .collect();
    assert!(own_files.len() >= 20, "{own_files:#?}");
    assert!(
        ok("dpkg-query", &["-W", "-f=${Conffiles}", PACKAGE]).contains(CONFIG),
        "{CONFIG} is not a conffile"
    );

    let version = ok("/usr/sbin/xdpvs", &["--version"]);
    assert_eq!(
        version.trim(),
        format!("xdpvs {}", env!("CARGO_PKG_VERSION")),
        "the packaged binary is the workspace's version"
    );
    let check = ok("/usr/sbin/xdpvs", &["check", "--config", CONFIG]);
    assert!(check.contains(": OK ("), "{check}");

    // man finds the page by its name, as an operator types it.
    let page = Command::new("man")
        .args(["xdpvs"])
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "80")
        .output()
        .expect("man (package man-db, installed by cargo xtask setup)");
    let page = String::from_utf8_lossy(&page.stdout);
    assert!(
        page.contains("SYNOPSIS") && page.contains("xdpvs-run(8)"),
        "man xdpvs: {page}"
    );
    let bash = std::fs::read_to_string("/usr/share/bash-completion/completions/xdpvs").unwrap();
    assert!(bash.contains("complete -F _xdpvs"), "{bash}");
    let zsh = std::fs::read_to_string("/usr/share/zsh/vendor-completions/_xdpvs").unwrap();
    assert!(zsh.starts_with("#compdef xdpvs"), "{zsh}");

    // Installed, not enabled, not started: the example configuration would attach XDP
    // to eth0 and add example VIPs.
    assert!(
        !Path::new("/etc/systemd/system/multi-user.target.wants/xdpvs.service").exists(),
        "installing enabled the unit"
    );
    assert!(
        !Path::new("/run/xdpvs/xdpvs.sock").exists(),
        "a daemon answers after installing"
    );

    installed.purge();
    assert!(
        !known_to_dpkg(),
        "{PACKAGE} is still known to dpkg after purge"
    );
    let left: Vec<&&PathBuf> = own_files
        .iter()
        .filter(|f| std::fs::symlink_metadata(f).is_ok())
        .collect();
    assert!(left.is_empty(), "left after purge: {left:#?}");
    for dir in ["/etc/xdpvs", "/usr/share/doc/xdpvs"] {
        assert!(!Path::new(dir).exists(), "{dir} is left after purge");
    }
}
