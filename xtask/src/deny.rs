//! `cargo deny` over the workspace (config: deny.toml at the root): licences, banned and
//! duplicate crates, and sources always; security advisories whenever a database can
//! be had.
//!
//! The RustSec advisory database is a git repository on GitHub. cargo-deny 0.20 clones
//! or updates it on every run and fails outright when it cannot, even with a copy on
//! disk; `--offline` uses the copy on disk instead, and refuses one older than 90
//! days. So: fetch first; if that fails, check against the copy on disk; if there is
//! none, say loudly that advisories were NOT checked and why. Never a silent pass.

use std::process::Command;

use anyhow::{bail, Result};

use crate::cmd::{capture, run};

/// Set (to anything) where advisories must be checked, so that a missing database
/// fails the run instead of being reported.
pub const REQUIRE_ENV: &str = "XDPVS_REQUIRE_ADVISORIES";

/// How the advisories check went, when it did not find anything.
#[derive(Debug, PartialEq, Eq)]
pub enum Advisories {
    /// Checked against the database as fetched just now.
    Fresh,
    /// Checked against the copy already on this machine, as it could not be updated.
    LocalCopy { why_not_fresh: String },
    /// Not checked: the database could not be fetched (`fetch` says why) and no usable
    /// copy is on disk (`local` says why).
    NotChecked { fetch: String, local: String },
}

/// Runs every cargo-deny check.
///
/// Returns: how advisories were checked, or an error when any check finds a problem.
pub fn check() -> Result<Advisories> {
    run(Command::new("cargo").args(["deny", "--locked", "check", "bans", "licenses", "sources"]))?;
    let advisories = advisories()?;
    if let Some(text) = banner(&advisories) {
        eprintln!("{text}");
    }
    if matches!(advisories, Advisories::NotChecked { .. })
        && std::env::var_os(REQUIRE_ENV).is_some()
    {
        bail!("advisories were not checked and {REQUIRE_ENV} is set");
    }
    Ok(advisories)
}

/// Fetches the advisory database and checks against it; failing the fetch, checks
/// against the copy on disk.
///
/// Returns: how the check was made, or an error when it found an advisory.
fn advisories() -> Result<Advisories> {
    let fetch = capture(Command::new("cargo").args(["deny", "fetch", "db"]))?;
    if fetch.ok {
        run(Command::new("cargo").args(["deny", "--locked", "check", "advisories"]))?;
        return Ok(Advisories::Fresh);
    }
    let why_not_fresh = failure_reason(&fetch.text);
    let local = capture(Command::new("cargo").args([
        "deny",
        "--locked",
        "--offline",
        "check",
        "advisories",
    ]))?;
    if local.ok {
        return Ok(Advisories::LocalCopy { why_not_fresh });
    }
    if let Some(local) = database_error(&local.text) {
        return Ok(Advisories::NotChecked {
            fetch: why_not_fresh,
            local,
        });
    }
    eprint!("{}", local.text);
    bail!("cargo deny check advisories failed (against the copy on disk; see above)")
}

/// Picks the line that says why cargo-deny failed: git's `fatal:` line when there is
/// one (`Could not resolve host: github.com`), else cargo-deny's own first error.
///
/// Returns: that line, trimmed, or a note that the output said nothing.
fn failure_reason(output: &str) -> String {
    let lines = || output.lines().map(str::trim);
    lines()
        .find(|l| l.starts_with("fatal:"))
        .or_else(|| lines().find_map(|l| l.split_once("[ERROR] ").map(|(_, e)| e)))
        .or_else(|| lines().find(|l| !l.is_empty()))
        .unwrap_or("cargo-deny printed nothing")
        .to_string()
}

/// cargo-deny logs `[ERROR] ...` when it cannot open the database (none on disk, or
/// stale), whereas an advisory that matches is a diagnostic (`error[vulnerability]`).
/// Any diagnostic means the database was read, whatever else was logged.
///
/// Returns: the first logged error, when there is one and no diagnostic.
fn database_error(output: &str) -> Option<String> {
    if output.lines().any(|l| l.trim_start().starts_with("error[")) {
        return None;
    }
    output
        .lines()
        .find_map(|l| l.split_once("[ERROR] ").map(|(_, e)| e.trim().to_string()))
}

/// The text that makes an incomplete advisories check impossible to miss: printed
/// where the check ran and again as the last words of `cargo xtask test`.
///
/// Returns: the text, or `None` when advisories were checked against a fresh database.
pub fn banner(advisories: &Advisories) -> Option<String> {
    let rule = "=".repeat(78);
    let body = match advisories {
        Advisories::Fresh => return None,
        Advisories::LocalCopy { why_not_fresh } => format!(
            "ADVISORIES CHECKED AGAINST AN OLD COPY: the RustSec database could not be\n\
             updated ({why_not_fresh}).\n\
             The copy on this machine (at most 90 days old, or cargo-deny refuses it) was used."
        ),
        Advisories::NotChecked { fetch, local } => format!(
            "SECURITY ADVISORIES WERE NOT CHECKED.\n\
             The RustSec advisory database (a git repository on GitHub) could not be fetched:\n  \
             {fetch}\n\
             and no usable copy is on this machine:\n  \
             {local}\n\
             Licences, bans, duplicates and sources WERE checked. Run `cargo xtask deny`\n\
             where GitHub is reachable, or set {REQUIRE_ENV}=1 to make this an error."
        ),
    };
    Some(format!("{rule}\n{body}\n{rule}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What cargo-deny 0.20.2 printed here, without network, for `fetch db`.
    const FETCH_FAILED: &str = "\
2026-11-22 02:03:57 [ERROR] failed to fetch advisory database https://github.com/RustSec/advisory-db with cli: failed to clone: [\"clone\", \"--depth=1\"]
Cloning into '/root/.cargo/advisory-dbs/advisory-db-3157b0e258782691'...
fatal: unable to access 'https://github.com/RustSec/advisory-db/': Could not resolve host: github.com
";

    /// ... and for `--offline check advisories` with no copy on disk.
    const NO_COPY: &str = "\
2026-11-22 02:04:00 [ERROR] failed to get 'FETCH_HEAD' metadata: failed to get HEAD timestamp: [\"-C\", \"/root/.cargo/advisory-dbs/advisory-db-3157b0e258782691\"]
fatal: cannot change to '/root/.cargo/advisory-dbs/advisory-db-3157b0e258782691': No such file or directory
";

    /// ... and for a copy on disk that has an advisory for a crate in the tree.
    const FOUND: &str = "\
error[vulnerability]: Test advisory: proves the check reads this database
   ├ ID: RUSTSEC-2099-0001
advisories FAILED
";

    #[test]
    fn the_reason_is_gits_fatal_line() {
        assert_eq!(
            failure_reason(FETCH_FAILED),
            "fatal: unable to access 'https://github.com/RustSec/advisory-db/': Could not resolve host: github.com"
        );
        assert_eq!(failure_reason("[ERROR] boom\n"), "boom");
        assert_eq!(failure_reason(""), "cargo-deny printed nothing");
    }

    #[test]
    fn a_missing_database_is_told_from_a_finding() {
        assert!(database_error(NO_COPY)
            .unwrap()
            .starts_with("failed to get 'FETCH_HEAD' metadata"));
        assert_eq!(database_error(FOUND), None);
        let both = format!("2026-11-22 02:04:00 [ERROR] failed to fetch crates\n{FOUND}");
        assert_eq!(database_error(&both), None);
    }

    #[test]
    fn only_a_fresh_check_goes_without_a_banner() {
        assert_eq!(banner(&Advisories::Fresh), None);
        let not = banner(&Advisories::NotChecked {
            fetch: "no DNS".into(),
            local: "no FETCH_HEAD".into(),
        })
        .unwrap();
        assert!(
            not.contains("WERE NOT CHECKED")
                && not.contains("no DNS")
                && not.contains("no FETCH_HEAD"),
            "{not}"
        );
        let old = banner(&Advisories::LocalCopy {
            why_not_fresh: "no DNS".into(),
        })
        .unwrap();
        assert!(old.contains("OLD COPY") && old.contains("no DNS"), "{old}");
    }
}
