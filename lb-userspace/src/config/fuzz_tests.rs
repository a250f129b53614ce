//! Configuration fuzzing (issue 14): every example configuration of the repository,
//! mutated thousands of ways, through the loader `xdpvs check` uses ([`super::load`]).
//!
//! Each case must finish without a panic, within [`PER_FILE`], and either load or be
//! rejected with errors that each name a place (see [`names_a_place`]). The PRNG is a
//! seeded xorshift, so a failure is reproduced by its seed and case number, which the
//! failure message prints.
//!
//! `XDPVS_CONFIG_FUZZ_CASES` sets the number of random cases (default [`CASES`], cut
//! short after [`BUDGET`] once [`MIN_CASES`] have run); `XDPVS_CONFIG_FUZZ_SEED` the
//! seed.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::*;

/// Random cases per run of the unit test (a few seconds in a debug build).
const CASES: usize = 3000;
/// Longest a single file may take to load or be rejected, debug build included.
/// Generous for a loaded two-core machine; the problems it catches took seconds.
const PER_FILE: Duration = Duration::from_secs(1);
/// The default run stops after this long once [`MIN_CASES`] have run (a shared
/// machine can be several times slower than an idle one).
const BUDGET: Duration = Duration::from_secs(8);
const MIN_CASES: usize = 1000;

/// Interfaces exist when their name could be one: the fuzzer exercises the file, not
/// the host.
struct AnyInterface;
impl SystemFacts for AnyInterface {
    fn interface_exists(&self, name: &str) -> bool {
        (1..16).contains(&name.len()) && !name.contains(['/', ' ', '\0'])
    }
}

/// xorshift64*: small, seeded, the same on every machine.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Returns: a number in `0..n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Returns: every fenced ```yaml block of `markdown`.
fn yaml_blocks(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<(String, String)> = None;
    for line in markdown.lines() {
        let t = line.trim_start();
        match &mut cur {
            None if t.starts_with("```yaml") => {
                let indent = line.len() - t.len();
                cur = Some((" ".repeat(indent), String::new()));
            }
            Some((_, text)) if t.starts_with("```") => {
                out.push(std::mem::take(text));
                cur = None;
            }
            Some((indent, text)) => {
                text.push_str(line.strip_prefix(indent.as_str()).unwrap_or(line));
                text.push('\n');
            }
            None => {}
        }
    }
    out
}

/// A configuration using every part of the schema, valid.
const FULL: &str = "\
interfaces: [eth0, eth1]
xdp_mode: native
manage_vips: false
flow_table_size: 65536
control_socket: /run/xdpvs/a.sock
instance: a-1
pin_path: /sys/fs/bpf/xdpvs
metrics_listen: '[::1]:9464'
announce: { table: 4242 }
tunnel_source: [10.0.0.1, 'fd00::1']
virtual_servers:
  - name: web
    address: 10.0.0.100
    port: 443
    protocol: tcp
    method: nat
    table_size: 251
    min_healthy: 2
    health_check:
      type: https
      path: /health?full=1
      host: www.example.com
      expect_status: [200, '300-302']
      interval: 500ms
      timeout: 200ms
      rise: 3
      fall: 2
      insecure: true
    persistence: { timeout: 5m, netmask: 24 }
    sorry_server: { address: 10.0.9.9, port: 8443 }
    real_servers:
      - { address: 10.0.1.11, port: 8443, weight: 3 }
      - address: 10.0.1.12
        port: 8443
        weight: 0
        health_check: { type: http, port: 8080, path: /, rise: 1 }
  - name: v6-tunnel
    address: 'fd00::100'
    port: 53
    protocol: udp
    method: tunnel
    fragments: true
    health_check: { type: tcp, port: 5353 }
    real_servers:
      - address: 'fd00:1::11'
      - address: 'fd00:1::12'
        health_check: { type: none }
";

/// Returns: the seed files, by name: every example of the repository's docs, README and
/// dist, and the configurations of these tests.
fn seeds() -> Vec<(String, String)> {
    let root = repo();
    let mut out = vec![
        ("tests.rs GOOD".to_string(), super::tests::GOOD.to_string()),
        ("FULL".to_string(), FULL.to_string()),
    ];
    let dist = root.join("dist/xdpvs.yaml");
    out.push((
        "dist/xdpvs.yaml".to_string(),
        std::fs::read_to_string(&dist).expect("dist/xdpvs.yaml"),
    ));
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.push(root.join("README.md"));
    docs.sort();
    for doc in docs {
        let text = std::fs::read_to_string(&doc).expect("doc");
        for (i, block) in yaml_blocks(&text).into_iter().enumerate() {
            let name = doc
                .strip_prefix(&root)
                .unwrap_or(&doc)
                .display()
                .to_string();
            out.push((format!("{name} block {i}"), block));
        }
    }
    out
}

/// The scalars a value is replaced by.
const SCALARS: &[&str] = &[
    "",
    "~",
    "null",
    "''",
    "\"\"",
    "0",
    "-1",
    "-9223372036854775809",
    "18446744073709551616",
    "99999999999999999999999999999999999999",
    "4294967295",
    "4294967296",
    "65536",
    "1e400",
    "-.inf",
    ".nan",
    "0x1F",
    "0o17",
    "true",
    "no",
    "[]",
    "{}",
    "[1, [2, [3]]]",
    "{ a: 1, b: [x] }",
    "!!binary aGVsbG8=",
    "!custom tag",
    "'\\u0000'",
    "\"\\u0000\\t\\x7f\"",
    "|\n  block\n  text",
    ">-\n  folded",
    "*nowhere",
    "&anchor value",
    "10.0.0.1",
    "'fd00::1'",
    "255.255.255.255",
    "224.0.0.1",
    "'::'",
    "1h",
    "0ms",
    "100000000000000000h",
    "200-100",
    "/etc/passwd",
    "/nonexistent/ca.pem",
    "a/b",
    "\u{feff}bom",
    "日本語",
    "- item",
    "? complex key",
    ": colon",
    "#comment",
    "%YAML 1.2",
    "---",
    "...",
    "\t",
];

/// The keys inserted (unknown ones, known ones in the wrong place, odd ones).
const KEYS: &[&str] = &[
    "colour",
    "weight",
    "interfaces",
    "virtual_servers",
    "health_check",
    "<<",
    "\"quoted key\"",
    "? [a, b]",
    "1",
    "null",
    "real_servers",
    "type",
    "\"\\u00e9\"",
];

fn lines(text: &str) -> Vec<String> {
    text.split_inclusive('\n').map(str::to_string).collect()
}

/// Returns: the byte offsets of `text`'s character boundaries.
fn boundaries(text: &str) -> Vec<usize> {
    (0..=text.len())
        .filter(|&i| text.is_char_boundary(i))
        .collect()
}

/// A value nested `depth` deep, flow or block style.
fn nested(rng: &mut Rng, depth: usize) -> String {
    match rng.below(4) {
        0 => format!("{}{}", "[".repeat(depth), "]".repeat(depth)),
        1 => format!("{}1{}", "{a: ".repeat(depth), "}".repeat(depth)),
        2 => {
            let mut s = String::new();
            for i in 0..depth.min(400) {
                s.push('\n');
                s.push_str(&" ".repeat(i + 2));
                s.push_str("- ");
            }
            s.push('x');
            s
        }
        _ => {
            let mut s = String::new();
            for i in 0..depth.min(400) {
                s.push('\n');
                s.push_str(&" ".repeat(i + 2));
                s.push_str("k:");
            }
            s.push_str(" x");
            s
        }
    }
}

/// An alias bomb ("billion laughs"): `levels` anchors, each a list of `fan` aliases of
/// the one before.
fn alias_bomb(levels: usize, fan: usize) -> String {
    let mut s = String::from("a0: &a0 [lol]\n");
    for l in 1..levels {
        let items = vec![format!("*a{}", l - 1); fan].join(", ");
        s.push_str(&format!("a{l}: &a{l} [{items}]\n"));
    }
    s
}

/// Replaces the value of a random `key: value` line by `value`.
fn replace_value(rng: &mut Rng, text: &str, value: &str) -> String {
    let mut ls = lines(text);
    let with_value: Vec<usize> = ls
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains(": "))
        .map(|(i, _)| i)
        .collect();
    if with_value.is_empty() {
        return format!("{text}{value}\n");
    }
    let i = *rng.pick(&with_value);
    let l = &ls[i];
    let cut = l.find(": ").expect("filtered") + 2;
    ls[i] = format!("{}{value}\n", &l[..cut]);
    ls.concat()
}

/// One random mutation of `text`. Returns: the new text and what was done.
fn mutate(rng: &mut Rng, text: &str) -> (String, String) {
    let mut ls = lines(text);
    let n = ls.len().max(1);
    match rng.below(16) {
        0 if !ls.is_empty() => {
            let i = rng.below(ls.len());
            ls.remove(i);
            (ls.concat(), format!("delete line {}", i + 1))
        }
        1 if !ls.is_empty() => {
            let i = rng.below(ls.len());
            let l = ls[i].clone();
            ls.insert(i, l);
            (ls.concat(), format!("duplicate line {}", i + 1))
        }
        2 if ls.len() > 1 => {
            let (i, j) = (rng.below(ls.len()), rng.below(ls.len()));
            ls.swap(i, j);
            (ls.concat(), format!("swap lines {} and {}", i + 1, j + 1))
        }
        3 => {
            let b = boundaries(text);
            let at = *rng.pick(&b);
            (text[..at].to_string(), format!("truncate at byte {at}"))
        }
        4 if !ls.is_empty() => {
            let i = rng.below(ls.len());
            let delta = rng.below(9) as isize - 4;
            let l = &ls[i];
            ls[i] = if delta >= 0 {
                format!("{}{l}", " ".repeat(delta as usize))
            } else {
                let strip = l.len() - l.trim_start_matches(' ').len();
                l[strip.min((-delta) as usize)..].to_string()
            };
            (ls.concat(), format!("indent line {} by {delta}", i + 1))
        }
        5 | 6 => {
            let v = *rng.pick(SCALARS);
            (
                replace_value(rng, text, v),
                format!("a value replaced by {v:?}"),
            )
        }
        7 => {
            let v = match rng.below(4) {
                0 => format!("{}", rng.next()),
                1 => format!("-{}", rng.next()),
                2 => "9".repeat(1 + rng.below(400)),
                _ => "x".repeat(rng.below(20_000)),
            };
            let shown: String = v.chars().take(20).collect();
            (
                replace_value(rng, text, &v),
                format!("a value replaced by {shown:?}..."),
            )
        }
        8 => {
            let i = rng.below(n);
            let indent = ls
                .get(i)
                .map(|l| l.len() - l.trim_start().len())
                .unwrap_or(0);
            let key = *rng.pick(KEYS);
            let v = *rng.pick(SCALARS);
            let l = format!("{}{key}: {v}\n", " ".repeat(indent));
            ls.insert(i.min(ls.len()), l);
            (
                ls.concat(),
                format!("insert `{key}: {v}` at line {}", i + 1),
            )
        }
        9 => {
            let len = 1 + rng.below(40);
            let bytes: String = (0..len)
                .map(|_| match rng.below(4) {
                    0 => char::from(rng.below(32) as u8),
                    1 => char::from_u32(rng.below(0x11_0000) as u32).unwrap_or('\u{fffd}'),
                    _ => char::from(32 + rng.below(95) as u8),
                })
                .collect();
            let b = boundaries(text);
            let at = *rng.pick(&b);
            (
                format!("{}{bytes}{}", &text[..at], &text[at..]),
                format!("insert {bytes:?} at byte {at}"),
            )
        }
        10 => {
            let depth = *rng.pick(&[10, 100, 127, 128, 129, 1000, 20_000]);
            let v = nested(rng, depth);
            (
                replace_value(rng, text, &v),
                format!("a value nested {depth} deep"),
            )
        }
        11 => {
            let (levels, fan) = *rng.pick(&[(3, 3), (9, 9), (10, 10), (20, 2), (30, 3)]);
            let bomb = alias_bomb(levels, fan);
            let t = match text.find("virtual_servers:\n") {
                // Inside the virtual server list, where the loader keeps raw values.
                Some(at) if rng.below(2) == 0 => {
                    let items: String = bomb
                        .lines()
                        .map(|l| format!("  - {}\n", l.split_once(": ").map_or(l, |(_, v)| v)))
                        .collect();
                    let at = at + "virtual_servers:\n".len();
                    format!("{}{items}{}", &text[..at], &text[at..])
                }
                // As unknown keys at the top.
                _ => format!("{bomb}{text}"),
            };
            (t, format!("alias bomb {levels}x{fan}"))
        }
        12 => {
            // An anchor on one value, aliased elsewhere.
            let t = replace_value(rng, text, "&x 10.0.0.1");
            (replace_value(rng, &t, "*x"), "anchor and alias".to_string())
        }
        13 => {
            let t: String = ls
                .iter()
                .map(|l| {
                    let spaces = l.len() - l.trim_start_matches(' ').len();
                    format!("{}{}", "\t".repeat(spaces / 2), &l[spaces..])
                })
                .collect();
            (t, "indentation as tabs".to_string())
        }
        14 => {
            let i = rng.below(n);
            if let Some(l) = ls.get_mut(i) {
                if let Some(p) = l.find(": ") {
                    l.insert(p + 2, '\t');
                }
            }
            (ls.concat(), format!("tab after a colon on line {}", i + 1))
        }
        _ => {
            // Two mutations at once.
            let (a, wa) = mutate(rng, text);
            let (b, wb) = mutate(rng, &a);
            (b, format!("{wa}, then {wb}"))
        }
    }
}

/// Messages of errors that have no field: the file as a whole is not YAML, or not a
/// mapping, or a top-level key is no field's name (the loader words them so; see
/// `validate.rs`).
const FILE_LEVEL: &[&str] = &[
    "malformed YAML",
    "not UTF-8",
    "the file must be a mapping",
    "a key is not a field name",
];

/// What "names a place" means. An error of the loader must:
/// - carry the file it was given;
/// - carry a position whose line is within the file (1 to lines + 1, the last for the
///   end of the file) and whose column is at least 1;
/// - name a field, or say that the file as a whole is malformed ([`FILE_LEVEL`]) at
///   that position; its `Display`, what the operator reads, then starts with
///   `file:line:col: field:` or `file:line:col: malformed YAML`;
/// - for a field, point at a line that holds something (not blank, not a comment),
///   unless the file holds nothing.
///
/// Returns: what is wrong with `e`, if anything.
fn names_a_place(path: &Path, text: &str, e: &ConfigError) -> Option<String> {
    if e.file != path {
        return Some(format!("names file {} instead", e.file.display()));
    }
    let Some(pos) = e.pos else {
        return Some("has no line".to_string());
    };
    // YAML breaks lines at CR too (and libyaml, a YAML 1.1 parser, at NEL, LS and PS).
    let is_break = |c: char| ['\n', '\r', '\u{85}', '\u{2028}', '\u{2029}'].contains(&c);
    let breaks = text.chars().filter(|&c| is_break(c)).count();
    let unterminated = text.chars().last().is_some_and(|c| !is_break(c));
    let last = breaks + usize::from(unterminated) + 1;
    if !(1..=last).contains(&pos.line) || pos.col == 0 {
        return Some(format!(
            "line {}:{} is outside 1..={last}",
            pos.line, pos.col
        ));
    }
    let shown = e.to_string();
    let head = format!("{}:{}:{}: ", path.display(), pos.line, pos.col);
    if !shown.starts_with(&head) {
        return Some(format!("displays as {shown:?}, not from {head:?}"));
    }
    if e.field.is_empty() {
        if !FILE_LEVEL.iter().any(|p| e.message.starts_with(p)) {
            return Some("names no field and does not say the file is malformed".to_string());
        }
    } else if e.field.split(['.', '[']).any(|seg| seg == "?") {
        return Some("names a field that is not in the file (`?`)".to_string());
    } else if !shown[head.len()..].starts_with(&format!("{}: ", e.field)) {
        return Some(format!("displays as {shown:?} without its field"));
    } else {
        // The line shown holds something of the file: a field's line is never blank
        // nor a comment (the fallback for a field the file lacks is its parent's line).
        let holds = |l: &str| {
            let content = l.trim_start_matches([' ', '\t']);
            !content.is_empty() && !content.starts_with('#')
        };
        let lines: Vec<&str> = text
            .split("\r\n")
            .flat_map(|l| l.split(['\n', '\r']))
            .collect();
        let line = lines.get(pos.line - 1).copied().unwrap_or("");
        // (A file of nothing but comments lacks its fields at line 1.)
        if !holds(line) && lines.iter().any(|l| holds(l)) {
            return Some(format!(
                "points at line {}, {line:?}, which holds no field",
                pos.line
            ));
        }
    }
    None
}

/// Loads `text` as a file (bytes, so invalid UTF-8 can be given) the way `xdpvs check`
/// does, and checks the outcome. Returns: whether it loaded, or what is wrong.
fn check(dir: &Path, bytes: &[u8]) -> Result<bool, String> {
    let path = dir.join("fuzz.yaml");
    std::fs::write(&path, bytes).expect("write case");
    let text = String::from_utf8_lossy(bytes).into_owned();
    let start = Instant::now();
    let outcome = std::panic::catch_unwind(|| load(&path, &AnyInterface));
    let took = start.elapsed();
    let outcome = outcome.map_err(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        format!("panicked: {msg}")
    })?;
    if took > PER_FILE {
        return Err(format!("took {took:?} (> {PER_FILE:?})"));
    }
    match outcome {
        Ok(_) => Ok(true),
        Err(ConfigErrors(errs)) if errs.is_empty() => Err("rejected with no error".to_string()),
        Err(ConfigErrors(errs)) => {
            for e in &errs {
                if let Some(why) = names_a_place(&path, &text, e) {
                    return Err(format!("error {e:?} {why}"));
                }
            }
            Ok(false)
        }
    }
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
    })
}

fn shorten(text: &[u8]) -> String {
    let t = String::from_utf8_lossy(text);
    if t.len() > 600 {
        format!(
            "{}... ({} bytes)",
            &t[..t.floor_char_boundary(600)],
            t.len()
        )
    } else {
        t.into_owned()
    }
}

#[test]
fn mutated_configurations_load_or_name_the_place_of_each_error() {
    let dir = super::tests::TempDir::new("config-fuzz");
    let seeds = seeds();
    let mut valid = Vec::new();
    for (name, text) in &seeds {
        if check(&dir.0, text.as_bytes()).unwrap_or_else(|e| panic!("seed {name}: {e}")) {
            valid.push(name.as_str());
        }
    }
    for must in ["tests.rs GOOD", "FULL", "dist/xdpvs.yaml"] {
        assert!(valid.contains(&must), "seed {must} does not load");
    }
    println!(
        "{} seeds, {} of them valid: {valid:?}",
        seeds.len(),
        valid.len()
    );

    let asked = env_number("XDPVS_CONFIG_FUZZ_CASES");
    let cases = asked.unwrap_or(CASES as u64) as usize;
    let seed = env_number("XDPVS_CONFIG_FUZZ_SEED").unwrap_or(0x5eed_c0f1_9f00_0014);
    let mut rng = Rng(seed | 1);
    let (mut loaded, mut rejected) = (0, 0);
    let start = Instant::now();
    let mut ran = 0;
    for case in 0..cases {
        if asked.is_none() && case >= MIN_CASES && start.elapsed() > BUDGET {
            break;
        }
        ran += 1;
        let (name, text) = rng.pick(&seeds).clone();
        let (mut mutated, mut what) = mutate(&mut rng, &text);
        let mut bytes = std::mem::take(&mut mutated).into_bytes();
        if rng.below(40) == 0 && !bytes.is_empty() {
            // Invalid UTF-8: a lone continuation byte or a cut sequence.
            let at = rng.below(bytes.len());
            bytes.insert(at, *rng.pick(&[0x80u8, 0xc3, 0xff, 0xfe]));
            what.push_str(&format!(", invalid UTF-8 at byte {at}"));
        }
        match check(&dir.0, &bytes) {
            Ok(true) => loaded += 1,
            Ok(false) => rejected += 1,
            Err(e) => panic!(
                "case {case} (seed {seed:#x}) from {name}, {what}: {e}\n--- file ---\n{}",
                shorten(&bytes)
            ),
        }
    }
    println!(
        "{ran} cases in {:?}: {loaded} loaded, {rejected} rejected, each error located",
        start.elapsed()
    );
}

/// Every truncation of the main examples (with `XDPVS_CONFIG_FUZZ_CASES` set, of dist's
/// too; by default at every fifth byte of it).
#[test]
fn every_truncation_of_the_examples_is_located() {
    let dir = super::tests::TempDir::new("config-truncate");
    let every = env_number("XDPVS_CONFIG_FUZZ_CASES").is_some();
    for (name, text) in seeds()
        .into_iter()
        .filter(|(n, _)| ["tests.rs GOOD", "FULL", "dist/xdpvs.yaml"].contains(&n.as_str()))
    {
        // dist's 3.7 kB at every fifth byte by default (seconds on a busy machine).
        let stride = if every || text.len() < 2000 { 1 } else { 5 };
        for at in boundaries(&text).into_iter().step_by(stride) {
            if let Err(e) = check(&dir.0, &text.as_bytes()[..at]) {
                panic!(
                    "{name} cut at byte {at}: {e}\n--- file ---\n{}",
                    &text[..at]
                );
            }
        }
    }
}
