//! `xdpvs-gen`: writes what the Debian package ships beside the binary, made from the
//! command line's own definition so that they cannot drift from it: man pages (`xdpvs.8`
//! and one page per subcommand, `xdpvs-real-disable.8` for a nested one) and shell
//! completion scripts. `cargo xtask dist` runs it; it is not installed.
//!
//! A program of its own rather than a hidden `xdpvs generate` subcommand: the shipped
//! binary's interface stays what an operator sees in its help and completions, and the
//! generators (clap_mangen, clap_complete) are linked into this program only.

use std::{
    fs::File,
    io::Write as _,
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::{Command, CommandFactory as _, Parser};
use clap_complete::Shell;
use xdpvs::cli::Cli;

/// Section of every page: xdpvs is an administrator's command (/usr/sbin).
const SECTION: &str = "8";

/// What `xdpvs-gen` writes.
#[derive(Parser)]
#[command(
    name = "xdpvs-gen",
    version,
    about = "Write xdpvs's man pages or completions"
)]
enum Gen {
    /// Man pages, section 8, into DIR (uncompressed).
    Man { dir: PathBuf },
    /// SHELL's completion script into DIR, under the name that shell looks it up by
    /// (`xdpvs` for bash, `_xdpvs` for zsh).
    Completions {
        #[arg(value_enum)]
        shell: Shell,
        dir: PathBuf,
    },
}

/// Writes the page of `cmd` as `name` into `dir`, then one per visible subcommand.
///
/// Returns: the first write that failed.
fn man_pages(cmd: &Command, name: &str, dir: &Path) -> std::io::Result<()> {
    let mut page = cmd.clone().display_name(name);
    // NAME reads `xdpvs - what it is`: an about that starts with the name itself (the
    // crate's description does) loses that start.
    let about = cmd.get_about().map(ToString::to_string).unwrap_or_default();
    if let Some(rest) = about.strip_prefix(&format!("{name}: ")) {
        page = page.about(rest.to_string());
    }
    let mut text = Vec::new();
    clap_mangen::Man::new(page)
        .title(name.to_uppercase())
        .section(SECTION)
        .source(format!("xdpvs {}", env!("CARGO_PKG_VERSION")))
        .manual("xdpvs")
        .render(&mut text)?;
    File::create(dir.join(format!("{name}.{SECTION}")))?.write_all(&text)?;
    // `help` is clap's own (added by `build`), documented by every page's --help.
    let pages = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help");
    for sub in pages {
        man_pages(sub, &format!("{name}-{}", sub.get_name()), dir)?;
    }
    Ok(())
}

/// Returns: the file name `shell` finds the completions of `xdpvs` under in its
/// completion directory.
fn completion_file(shell: Shell) -> String {
    match shell {
        // bash-completion loads /usr/share/bash-completion/completions/COMMAND on demand.
        Shell::Bash => "xdpvs".to_string(),
        other => clap_complete::Generator::file_name(&other, "xdpvs"),
    }
}

fn main() -> ExitCode {
    let mut cli = Cli::command();
    // Subcommands' synopses read `xdpvs real disable`, and global options show on them.
    cli.build();
    let done = match Gen::parse() {
        Gen::Man { dir } => man_pages(&cli, "xdpvs", &dir),
        Gen::Completions { shell, dir } => File::create(dir.join(completion_file(shell)))
            .map(|mut f| clap_complete::generate(shell, &mut cli, "xdpvs", &mut f)),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xdpvs-gen: {e}");
            ExitCode::FAILURE
        }
    }
}
