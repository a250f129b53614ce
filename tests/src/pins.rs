//! A bpffs of the test's own, and reading what the daemon pinned in it.
//!
//! `ip netns exec` remounts /sys, so /sys/fs/bpf inside it is not the host's: a daemon
//! started there would pin into a view nobody else sees. Tests therefore mount a bpffs
//! of their own in the host's mount namespace (visible under `ip netns exec`, which
//! remounts only /sys), point the configuration's `pin_path` at it, and unmount it on
//! drop, so nothing pinned outlives a test, even one that fails.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

use crate::netns::sh;

/// A bpffs mounted at a directory of its own; unmounted and removed on drop.
pub struct Bpffs {
    pub path: PathBuf,
}

impl Bpffs {
    /// Creates `path` and mounts a fresh bpffs on it. Panics if either fails.
    pub fn mount(path: &Path) -> Self {
        std::fs::create_dir_all(path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        let p = path.to_str().expect("utf-8 path");
        sh(&["mount", "-t", "bpf", "bpf", p]);
        Self {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Busy (a process's working directory): detach it now, freed when idle.
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// Every file and directory under `dir`, relative to it, sorted; directories end in `/`.
/// Returns: the listing (empty if `dir` does not exist).
pub fn listing(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            let rel = path
                .strip_prefix(base)
                .expect("under base")
                .display()
                .to_string();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.push(format!("{rel}/"));
                walk(base, &path, out);
            } else {
                out.push(rel);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Runs `bpftool -j <args>`. Returns: its JSON output; panics if it fails.
fn bpftool(args: &[&str]) -> Value {
    let mut full = vec!["bpftool", "-j"];
    full.extend_from_slice(args);
    let out = sh(&full);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{full:?}: {e}: {out}"))
}

/// Parses bpftool's byte array (`["0x0a", "0x00", ...]`). Returns: the bytes.
fn hex_bytes(v: &Value) -> Vec<u8> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a byte array: {v}"))
        .iter()
        .map(|b| {
            let s = b.as_str().unwrap_or_else(|| panic!("not a hex byte: {b}"));
            u8::from_str_radix(s.trim_start_matches("0x"), 16)
                .unwrap_or_else(|e| panic!("hex byte {s}: {e}"))
        })
        .collect()
}

/// Every entry of the pinned map at `pin` (not per-CPU), as raw bytes.
/// Returns: (key, value) pairs; panics if bpftool cannot read the map.
pub fn dump(pin: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let p = pin.to_str().expect("utf-8 path");
    let v = bpftool(&["map", "dump", "pinned", p]);
    v.as_array()
        .unwrap_or_else(|| panic!("dump of {p}: {v}"))
        .iter()
        .map(|e| {
            let value = e
                .get("value")
                .unwrap_or_else(|| panic!("{p}: no single value (a per-CPU map?): {e}"));
            (hex_bytes(&e["key"]), hex_bytes(value))
        })
        .collect()
}

/// Returns: the value stored under `key` in the pinned map at `pin`, if any.
pub fn lookup(pin: &Path, key: &[u8]) -> Option<Vec<u8>> {
    dump(pin)
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

/// Returns: element `index` of the pinned array at `pin` (one lookup: no dump of a
/// large array).
pub fn element(pin: &Path, index: u32) -> Vec<u8> {
    let p = pin.to_str().expect("utf-8 path");
    let key: Vec<String> = index.to_ne_bytes().iter().map(|b| b.to_string()).collect();
    let mut args = vec!["map", "lookup", "pinned", p, "key"];
    args.extend(key.iter().map(String::as_str));
    let v = bpftool(&args);
    hex_bytes(&v["value"])
}

/// What bpftool says of the pinned map at `pin` (`type`, `name`, `bytes_key`,
/// `bytes_value`, `max_entries`, `id`, ...). Returns: its JSON object.
pub fn map_info(pin: &Path) -> Value {
    bpftool(&["map", "show", "pinned", pin.to_str().expect("utf-8 path")])
}

/// The key of a connection in `FLOWS` (and of a reply in `NAT_STATE`), as the data
/// path stores it: addresses in wire order (IPv4 in the first four of 16 bytes), ports
/// in network order, protocol, family (4 or 6), two bytes of padding. Built here from
/// the layout rather than with lb-common's `FlowKey`, so a test checks the layout too.
/// Returns: the 40 key bytes.
pub fn flow_key(src: SocketAddr, dst: SocketAddr, proto: u8) -> Vec<u8> {
    let family = if src.is_ipv4() { 4 } else { 6 };
    let mut k = Vec::with_capacity(40);
    k.extend_from_slice(&addr(src.ip()));
    k.extend_from_slice(&addr(dst.ip()));
    k.extend_from_slice(&src.port().to_be_bytes());
    k.extend_from_slice(&dst.port().to_be_bytes());
    k.extend_from_slice(&[proto, family, 0, 0]);
    k
}

/// Writes `key` -> `value` into the pinned map at `pin` (`bpftool map update`).
/// Panics if bpftool fails.
pub fn update(pin: &Path, key: &[u8], value: &[u8]) {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>();
    let (k, v) = (hex(key), hex(value));
    let mut args = vec!["bpftool", "map", "update", "pinned"];
    args.push(pin.to_str().expect("utf-8 path"));
    args.extend(["key", "hex"]);
    args.extend(k.iter().map(String::as_str));
    args.extend(["value", "hex"]);
    args.extend(v.iter().map(String::as_str));
    sh(&args);
}

/// Returns: the bytes of a `VsKey` for `at` and `proto`, as `VS_MAP`, `FRAG_VS` and
/// `NAT_REALS` key them.
pub fn vs_key(at: SocketAddr, proto: u8) -> Vec<u8> {
    let mut k = Vec::with_capacity(20);
    k.extend_from_slice(&addr(at.ip()));
    k.extend_from_slice(&at.port().to_be_bytes());
    k.push(proto);
    k.push(if at.is_ipv4() { 4 } else { 6 });
    k
}

/// Returns: `a` as the data path's 16 address bytes (IPv4 in the first four).
fn addr(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(v4) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&v4.octets());
            b
        }
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// A pinned `VS_RINGS` mapped into this process (it is `BPF_F_MMAPABLE`).
struct MappedRings {
    mapping: xdpvs::dataplane::mmap::Mapping,
    entries: usize,
    /// Slots to an element: 2, or 1 for a map of a release before decision 0030.
    per_element: usize,
}

impl MappedRings {
    fn open(pin: &Path) -> Self {
        let data = aya::maps::MapData::from_pin(pin)
            .unwrap_or_else(|e| panic!("opening {}: {e}", pin.display()));
        let info = data.info().expect("map info");
        let entries = info.max_entries() as usize;
        let per_element = if info.value_size() == 4 { 1 } else { 2 };
        // A BPF array gives every value 8 bytes, whatever its size.
        let mapping =
            xdpvs::dataplane::mmap::Mapping::shared(&data, entries * 8, lb_common::maps::VS_RINGS)
                .unwrap_or_else(|e| panic!("mapping {}: {e}", pin.display()));
        Self {
            mapping,
            entries,
            per_element,
        }
    }

    /// Returns: the byte offset of slot `slot` of ring `ring`.
    fn at(&self, ring: usize, slot: usize) -> usize {
        let stride = lb_common::RING_STRIDE as usize;
        if self.per_element == 1 {
            (ring * stride + slot) * 8
        } else {
            (ring * 2 * lb_common::RING_ELEMS as usize + slot) * 4
        }
    }

    fn rings(&self) -> usize {
        if self.per_element == 1 {
            self.entries / lb_common::RING_STRIDE as usize
        } else {
            self.entries / lb_common::RING_ELEMS as usize
        }
    }
}

/// Returns: every ring of the `VS_RINGS` pinned at `pin` (either layout), each its
/// `RING_STRIDE` slots.
pub fn rings(pin: &Path) -> Vec<Vec<u32>> {
    let m = MappedRings::open(pin);
    (0..m.rings())
        .map(|r| {
            (0..lb_common::RING_STRIDE as usize)
                // SAFETY: within the mapping (r < rings), aligned for a u32.
                .map(|s| unsafe { m.mapping.as_ptr().add(m.at(r, s)).cast::<u32>().read() })
                .collect()
        })
        .collect()
}

/// Pins at `pin` an empty mappable array named `VS_RINGS` of `entries` values of
/// `value` bytes, as a daemon would have left one.
pub fn pin_ring_map(pin: &Path, value: u32, entries: u32) {
    sh(&[
        "bpftool",
        "map",
        "create",
        pin.to_str().expect("utf-8 path"),
        "type",
        "array",
        "key",
        "4",
        "value",
        &value.to_string(),
        "entries",
        &entries.to_string(),
        "name",
        lb_common::maps::VS_RINGS,
        "flags",
        &lb_common::maps::VS_RINGS_FLAGS.to_string(),
    ]);
}

/// Pins at `pin` a `VS_RINGS` as releases before decision 0030 made it (a slot to an
/// element: `u32` values, `RING_STRIDE` elements per ring) holding `rings`.
pub fn pin_single_slot_rings(pin: &Path, rings: &[Vec<u32>]) {
    pin_ring_map(pin, 4, rings.len() as u32 * lb_common::RING_STRIDE);
    let m = MappedRings::open(pin);
    assert_eq!(
        m.per_element,
        1,
        "{} is not of a slot to an element",
        pin.display()
    );
    for (r, ring) in rings.iter().enumerate() {
        for (s, real) in ring.iter().enumerate() {
            // SAFETY: within the mapping (r < rings, s < RING_STRIDE), aligned for a u32.
            unsafe {
                m.mapping
                    .as_ptr()
                    .add(m.at(r, s))
                    .cast::<u32>()
                    .write(*real)
            };
        }
    }
}
