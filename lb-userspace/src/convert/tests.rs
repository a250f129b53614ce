//! The corpus under `corpus/`: each input (`*.conf` for keepalived, `*.ipvsadm` for
//! ipvsadm-save) beside the YAML it must convert to (`.yaml`, byte for byte) and the
//! findings it must report (`.findings`); each input of `corpus/errors/` beside the
//! error it must stop with (`.error`). Every output must pass the validator
//! `xdpvs check` runs. `XDPVS_BLESS=1` rewrites the expected files.

use std::path::{Path, PathBuf};

use super::*;
use crate::config::SystemFacts;

/// The interfaces of the host the output is checked on: the placeholder exists
/// everywhere.
struct OnlyLoopback;

impl SystemFacts for OnlyLoopback {
    fn interface_exists(&self, name: &str) -> bool {
        name == PLACEHOLDER_INTERFACE
    }
}

fn corpus(sub: &str) -> Vec<(PathBuf, Format)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/convert/corpus")
        .join(sub);
    let mut out: Vec<(PathBuf, Format)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .filter_map(|p| match p.extension()?.to_str()? {
            "conf" => Some((p, Format::Keepalived)),
            "ipvsadm" => Some((p, Format::Ipvsadm)),
            _ => None,
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn bless() -> bool {
    std::env::var_os("XDPVS_BLESS").is_some()
}

/// Compares `got` with the file at `path` (or writes it when blessing).
/// Returns: a description of the difference, if any.
fn compare(path: &Path, got: &str) -> Option<String> {
    if bless() {
        std::fs::write(path, got).expect("writing an expected file");
        return None;
    }
    let want = std::fs::read_to_string(path).unwrap_or_default();
    (want != got).then(|| {
        format!(
            "{} differs:\n--- expected\n{want}\n--- got\n{got}",
            path.display()
        )
    })
}

#[test]
fn corpus_converts_to_the_expected_yaml_and_findings_and_validates() {
    let cases = corpus("");
    assert!(cases.len() >= 5, "the corpus is missing: {cases:?}");
    let mut failures = Vec::new();
    for (input, format) in cases {
        let out = convert(format, &input, &Options::default())
            .unwrap_or_else(|e| panic!("{}: {e}", input.display()));
        let findings: String = out.findings.iter().map(|f| format!("{f}\n")).collect();
        failures.extend(compare(&input.with_extension("yaml"), &out.yaml));
        failures.extend(compare(&input.with_extension("findings"), &findings));
        if let Err(e) = config::parse(&input.with_extension("yaml"), &out.yaml, &OnlyLoopback) {
            failures.push(format!(
                "{}: the output does not validate:\n{e}",
                input.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn broken_inputs_stop_with_the_file_line_and_what_was_expected() {
    let cases = corpus("errors");
    assert!(cases.len() >= 4, "the error corpus is missing: {cases:?}");
    let mut failures = Vec::new();
    for (input, format) in cases {
        let got = match convert(format, &input, &Options::default()) {
            Ok(_) => format!("{}: converted, but should have failed", input.display()),
            Err(e) => format!("{e}\n"),
        };
        failures.extend(compare(&input.with_extension("error"), &got));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn interfaces_and_tunnel_sources_from_the_command_line_replace_the_placeholders() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/convert/corpus");
    let options = Options {
        interfaces: vec!["eth0".into(), "eth1".into()],
        tunnel_sources: vec!["10.1.0.1".parse().unwrap(), "fd00::1".parse().unwrap()],
    };
    let out = convert(Format::Keepalived, &dir.join("methods.conf"), &options).unwrap();
    assert!(
        out.yaml.contains("\ninterfaces: [eth0, eth1]\n"),
        "{}",
        out.yaml
    );
    assert!(
        out.yaml.contains("\ntunnel_source: [10.1.0.1, fd00::1]\n"),
        "{}",
        out.yaml
    );
    assert!(!out.yaml.contains("SET ME"), "{}", out.yaml);
    assert!(
        !out.findings
            .iter()
            .any(|f| f.message.contains("placeholder")),
        "{:?}",
        out.findings
    );
}

#[test]
fn virtual_servers_beyond_the_table_are_refused_and_the_output_still_validates() {
    let dir = std::env::temp_dir().join(format!("xdpvs-convert-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("many.conf");
    let n = lb_common::maps::MAX_VS as usize + 4;
    let text: String = (0..n)
        .map(|i| {
            format!(
                "virtual_server 10.90.{}.{} 80 {{\n  lb_kind DR\n  real_server 10.91.0.1 80 {{\n  }}\n}}\n",
                i / 200,
                i % 200 + 1
            )
        })
        .collect();
    std::fs::write(&path, text).unwrap();
    let most = format!("at most {} virtual servers", lb_common::maps::MAX_VS);
    let out = convert(Format::Keepalived, &path, &Options::default()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let c = config::parse(Path::new("many.yaml"), &out.yaml, &OnlyLoopback).unwrap();
    assert_eq!(c.virtual_servers.len(), lb_common::maps::MAX_VS as usize);
    let refused = out
        .findings
        .iter()
        .filter(|f| f.message.contains(&most))
        .count();
    assert_eq!(refused, n - lb_common::maps::MAX_VS as usize);
}

/// A small deterministic generator (xorshift), for mutations that repeat run to run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

#[test]
fn mangled_inputs_never_panic_and_whatever_converts_validates() {
    let dir = std::env::temp_dir().join(format!("xdpvs-convert-mangle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut converted = 0;
    for (input, format) in corpus("") {
        let text = std::fs::read_to_string(&input).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for round in 0..60 {
            let mut l: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
            for _ in 0..=rng.below(3) {
                let i = rng.below(l.len());
                match rng.below(5) {
                    0 => {
                        l.remove(i);
                    }
                    1 => {
                        let j = rng.below(l.len());
                        let dup = l[j].clone();
                        l.insert(i, dup);
                    }
                    2 => {
                        // Cut a line short, perhaps inside a word or an address.
                        let cut = rng.below(l[i].len() + 1);
                        let at = l[i].floor_char_boundary(cut);
                        l[i].truncate(at);
                    }
                    3 => {
                        // Swap two words of a line.
                        let mut w: Vec<String> =
                            l[i].split_whitespace().map(String::from).collect();
                        if w.len() > 1 {
                            let (a, b) = (rng.below(w.len()), rng.below(w.len()));
                            w.swap(a, b);
                            l[i] = w.join(" ");
                        }
                    }
                    _ => {
                        let words = [
                            "0", "-1", "99999", "::", "{", "}", "\"", "10.0.0.1", "-w", "weight",
                        ];
                        let w = words[rng.below(words.len())];
                        l[i] = format!("{} {w}", l[i]);
                    }
                }
            }
            let path = dir.join(format!(
                "m{round}.{}",
                input.extension().unwrap().to_string_lossy()
            ));
            std::fs::write(&path, l.join("\n")).unwrap();
            match convert(format, &path, &Options::default()) {
                Ok(out) => {
                    converted += 1;
                    if let Err(e) = config::parse(&path, &out.yaml, &OnlyLoopback) {
                        panic!(
                            "{}: mangled output does not validate:\n{e}\n{}",
                            input.display(),
                            out.yaml
                        );
                    }
                }
                Err(ConvertError::Invalid(e)) => {
                    panic!(
                        "{}: mangled input made an invalid configuration:\n{e}\n{}",
                        input.display(),
                        l.join("\n")
                    )
                }
                Err(_) => {}
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        converted > 100,
        "too few mangled inputs converted ({converted}) to prove anything"
    );
}
