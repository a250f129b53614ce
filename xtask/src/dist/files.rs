//! What goes into the package: its files in the staging tree, and its control files.
//! The texts that are not generated (control template, maintainer scripts, copyright)
//! live in dist/debian/ where they can be read as they ship.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use super::{version, MAINTAINER};
use crate::cmd::{output, root, run};

/// Where the binary goes: a daemon for the administrator (Debian policy 9.1.1), and the
/// path dist/xdpvs.service starts.
pub const BINARY: &str = "usr/sbin/xdpvs";
/// Where a Debian 12 package puts its systemd units (debhelper's place in bookworm).
pub const UNIT: &str = "lib/systemd/system/xdpvs.service";
/// The configuration, a conffile: dpkg keeps the operator's edits across upgrades.
pub const CONFIG: &str = "etc/xdpvs/xdpvs.yaml";
const DOC: &str = "usr/share/doc/xdpvs";
/// Documents this size or larger are shipped gzipped (Debian policy 12.3).
const COMPRESS_FROM: u64 = 4096;
/// The maintainer scripts of dist/debian/.
pub const SCRIPTS: [&str; 3] = ["postinst", "prerm", "postrm"];

/// Returns: a time of the last commit in `git log` format `format` (`%ct`: seconds since
/// the epoch, `%aD`: RFC 2822), so that a package of one commit is built the same twice.
pub fn commit_time(format: &str) -> Result<String> {
    output(
        "git",
        &[
            "-C",
            root().to_str().unwrap_or("."),
            "log",
            "-1",
            &format!("--format={format}"),
        ],
    )
    .context("git log: the package's dates are the last commit's")
}

/// Copies `from` to `stage/to`, making the directories on the way.
fn put(from: &Path, stage: &Path, to: &str) -> Result<PathBuf> {
    let dest = stage.join(to);
    fs::create_dir_all(dest.parent().expect("a path under the stage"))?;
    fs::copy(from, &dest)
        .with_context(|| format!("copying {} to {}", from.display(), dest.display()))?;
    Ok(dest)
}

/// `gzip -9n`: no name or time stored, so the same file gives the same bytes.
fn gzip(file: &Path) -> Result<()> {
    run(Command::new("gzip").args(["-9nf"]).arg(file))
}

/// Fills `stage` with the package's files from the workspace and `release` (the release
/// build's directory).
///
/// Returns: the first step that failed.
pub fn stage(stage: &Path, release: &Path) -> Result<()> {
    let src = root();
    let bin = put(&release.join("xdpvs"), stage, BINARY)?;
    // As dh_strip does: no debug sections or notes in the shipped binary.
    run(Command::new("strip")
        .args([
            "--strip-unneeded",
            "--remove-section=.comment",
            "--remove-section=.note",
        ])
        .arg(&bin))?;
    put(&src.join("dist/xdpvs.service"), stage, UNIT)?;
    put(&src.join("dist/xdpvs.yaml"), stage, CONFIG)?;

    let man = stage.join("usr/share/man/man8");
    fs::create_dir_all(&man)?;
    let gen = release.join("xdpvs-gen");
    run(Command::new(&gen).arg("man").arg(&man))?;
    for page in fs::read_dir(&man)? {
        gzip(&page?.path())?;
    }
    let bash = stage.join("usr/share/bash-completion/completions");
    let zsh = stage.join("usr/share/zsh/vendor-completions");
    for (shell, dir) in [("bash", &bash), ("zsh", &zsh)] {
        fs::create_dir_all(dir)?;
        run(Command::new(&gen).args(["completions", shell]).arg(dir))?;
    }

    let doc = stage.join(DOC);
    put(&src.join("README.md"), stage, &format!("{DOC}/README.md"))?;
    for sub in ["docs", "docs/decisions"] {
        for entry in fs::read_dir(src.join(sub))? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "md") {
                let rel = path.strip_prefix(src.join("docs"))?;
                put(&path, stage, &format!("{DOC}/{}", rel.display()))?;
            }
        }
    }
    compress_docs(&doc)?;
    put(
        &src.join("dist/debian/copyright"),
        stage,
        &format!("{DOC}/copyright"),
    )?;
    // Each override says why (lintian reads the comments above it).
    put(
        &src.join("dist/debian/lintian-overrides"),
        stage,
        "usr/share/lintian/overrides/xdpvs",
    )?;
    let changelog = doc.join("changelog.Debian");
    fs::write(&changelog, changelog_text()?)?;
    gzip(&changelog)?;
    Ok(())
}

/// Gzips every document of `dir` (recursively) of `COMPRESS_FROM` bytes or more.
fn compress_docs(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            compress_docs(&path)?;
        } else if fs::metadata(&path)?.len() >= COMPRESS_FROM {
            gzip(&path)?;
        }
    }
    Ok(())
}

/// Returns: a Debian changelog of one entry, this version, dated by the last commit.
fn changelog_text() -> Result<String> {
    Ok(format!(
        "xdpvs ({}) unstable; urgency=medium\n\n  * Built by `cargo xtask dist` from the xdpvs workspace at commit {}.\n\n -- {MAINTAINER}  {}\n",
        version(),
        commit_time("%h")?,
        commit_time("%aD")?,
    ))
}

/// Writes DEBIAN/: control (from dist/debian/control with the version, installed size
/// and shared-library dependencies filled in), conffiles, md5sums and the maintainer
/// scripts.
///
/// Returns: the first step that failed.
pub fn control(stage: &Path) -> Result<()> {
    let src = root();
    let debian = stage.join("DEBIAN");
    // md5sums and the size first, of the payload alone.
    let md5 = Command::new("sh")
        .arg("-c")
        // Conffiles are left out, as dh_md5sums does (dpkg tracks them in conffiles).
        .arg(
            "find . -type f ! -path './etc/*' -printf '%P\\0' | LC_ALL=C sort -z | xargs -0 md5sum",
        )
        .current_dir(stage)
        .output()
        .context("md5sum")?;
    if !md5.status.success() {
        bail!("md5sum failed: {}", String::from_utf8_lossy(&md5.stderr));
    }
    let size = installed_size(stage)?;
    fs::create_dir_all(&debian)?;
    fs::write(debian.join("md5sums"), md5.stdout)?;
    fs::write(debian.join("conffiles"), format!("/{CONFIG}\n"))?;
    for script in SCRIPTS {
        fs::copy(src.join("dist/debian").join(script), debian.join(script))?;
    }
    let template = fs::read_to_string(src.join("dist/debian/control"))?;
    let text = template
        .replace("@VERSION@", &version())
        .replace("@MAINTAINER@", MAINTAINER)
        .replace("@INSTALLED_SIZE@", &size.to_string())
        .replace("@DEPENDS@", &shlib_depends(stage)?);
    fs::write(debian.join("control"), text)?;
    Ok(())
}

/// Returns: Installed-Size as dpkg-gencontrol counts it: KiB, each file rounded up,
/// plus one per directory.
fn installed_size(dir: &Path) -> Result<u64> {
    let mut kib = 0;
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        kib += if path.is_dir() {
            1 + installed_size(&path)?
        } else {
            fs::metadata(&path)?.len().div_ceil(1024)
        };
    }
    Ok(kib)
}

/// Returns: the Depends of the binary's shared libraries (libc6, libgcc-s1 with their
/// minimum versions), as dpkg-shlibdeps computes them from the installed packages'
/// symbols files. dpkg-shlibdeps wants a debian/control of a source package: it is
/// given one of two lines in a directory of its own.
fn shlib_depends(stage: &Path) -> Result<String> {
    let dir = stage.with_extension("shlibdeps");
    fs::create_dir_all(dir.join("debian"))?;
    fs::write(
        dir.join("debian/control"),
        "Source: xdpvs\n\nPackage: xdpvs\nArchitecture: any\n",
    )?;
    let out = Command::new("dpkg-shlibdeps")
        .args(["-O", "-e"])
        .arg(stage.join(BINARY))
        .current_dir(&dir)
        .output()
        .context("running dpkg-shlibdeps (package dpkg-dev)")?;
    let _ = fs::remove_dir_all(&dir);
    if !out.status.success() {
        bail!(
            "dpkg-shlibdeps failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .map(str::to_string)
        .context("dpkg-shlibdeps printed no shlibs:Depends")
}
