//! The data path in bpffs, not in the process: every map of the balancer's object is
//! pinned at `<pin_path>/<instance>/maps/<NAME>` and every XDP link at
//! `<pin_path>/<instance>/links/<interface>`. A pinned link keeps its program attached,
//! and the program its maps, when the daemon stops or dies; the next `xdpvs run` loads
//! its object against the same pins (reusing the maps with their contents) and swaps
//! its program onto the same links (BPF_LINK_UPDATE: atomic, the interface never
//! without a program). Decision 0005.
//!
//! A pinned map is reused only when the kernel's definition of it (type, key and value
//! size, entries, flags) is the one this release's object has. Otherwise it is dropped
//! and made anew: the program still attached keeps using the old one until the swap.
//! The maps the reconciler writes hold references to each other, so when one of those
//! is dropped all of them are, and with them the connection and persistence tables,
//! whose entries name real ids that the new maps give out afresh. The connection or
//! persistence table alone can be dropped on its own.
//!
//! `VS_RINGS` differs from the others in its size alone when a configuration wants
//! more rings than the pinned map holds. Ring `i` lies at the same offset in a map of
//! any size, so such a map is grown, not dropped: it is set aside (pinned under
//! `VS_RINGS-old`), the load makes a larger one in its place, the daemon copies every
//! ring into it and swaps its program onto the links, and only then unpins the one set
//! aside ([`Grow`]). A start that dies before that finds the map set aside and puts it
//! back: it is the one whose rings the program still attached reads. A `VS_RINGS` of a
//! release before decision 0030, a slot to an element, goes the same way: set aside,
//! its rings copied slot by slot into a map of pairs.

use std::{
    collections::HashMap,
    ffi::CString,
    io,
    path::{Path, PathBuf},
};

use aya::{
    maps::MapInfo,
    programs::{
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
        Xdp, XdpMode,
    },
};
use lb_common::{
    maps::{
        ALL, FLOWS, FLOW_FILTER, IFACES, IFACE_INDEX, NAT_STATE, PERSIST, REALS, SETTINGS,
        TUNNEL_SRCS, VS_MAP, VS_RINGS,
    },
    RING_ELEMS, RING_STRIDE,
};

use super::LoadOptions;

/// The maps the reconciler writes: they refer to each other by index and id, so they
/// are reused together or made anew together.
const RECONCILED: [&str; 5] = [VS_MAP, VS_RINGS, REALS, IFACES, SETTINGS];
/// The tables whose entries name real ids: dropped with the reconciler's maps.
const NAMING_REALS: [&str; 2] = [FLOWS, PERSIST];
/// Copies of part of a reconciler's map: dropped with the reconciler's maps (a copy of
/// entries that are gone must not outlive them), and made anew alone without harm (the
/// data path looks an entry missing there up in the map it copies, and the daemon
/// writes it again at start).
const COPIES: [&str; 2] = [IFACE_INDEX, TUNNEL_SRCS];

/// A failure to prepare, read or remove pins.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the BPF object cannot be parsed: {0}")]
    Object(String),
    #[error("the BPF object has no map {0}")]
    MissingMap(&'static str),
    #[error("XDP link of {interface}: {message}")]
    Link { interface: String, message: String },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PinError + 'a {
    move |source| PinError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Where one instance's data path is pinned.
#[derive(Clone, Debug)]
pub struct Pins {
    dir: PathBuf,
}

/// What loading against the pins will do, decided before the load.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// The reconciler's maps are reused: the reconciler adopts them.
    pub adopt: bool,
    /// Maps that were pinned but are made anew, each with why (their contents are
    /// lost).
    pub dropped: Vec<String>,
    /// The pinned `VS_RINGS` is too small, or has a slot to an element, and was set
    /// aside: the load makes a larger one (or one with pairs), which the daemon fills
    /// from it before anything else.
    pub grow: Option<Grow>,
}

/// A pinned `VS_RINGS` being grown. Until [`Pins::finish_grow`], the old map stays
/// pinned at [`Pins::rings_aside`]; the daemon copies its rings into the new one
/// (`BpfDataplane::copy_rings`) and puts its program on the pinned links before
/// finishing, because `VS_MAP`, shared by both programs, names rings by id and the
/// old program must never read a ring written into the new map only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grow {
    /// Rings of the map set aside.
    pub from: u32,
    /// Rings of the new map.
    pub to: u32,
    /// The map set aside has a slot to an element (a release before decision 0030): it
    /// is remade with two, whatever its size.
    pub single: bool,
}

/// A map's definition as the kernel or the object has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Shape {
    kind: u32,
    key: u32,
    value: u32,
    entries: u32,
    flags: u32,
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "type {}, key {} B, value {} B, {} entries, flags {:#x}",
            self.kind, self.key, self.value, self.entries, self.flags
        )
    }
}

impl Pins {
    /// The pins of instance `instance` under the bpffs directory `pin_path`.
    pub fn new(pin_path: &Path, instance: &str) -> Self {
        Self {
            dir: pin_path.join(instance),
        }
    }

    /// Returns: the instance's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn maps_dir(&self) -> PathBuf {
        self.dir.join("maps")
    }

    fn links_dir(&self) -> PathBuf {
        self.dir.join("links")
    }

    /// Returns: where map `name` is pinned.
    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    /// Returns: where a `VS_RINGS` being grown is pinned until its rings are copied
    /// (not `.old`: bpffs refuses names with a dot).
    pub fn rings_aside(&self) -> PathBuf {
        self.maps_dir().join(format!("{VS_RINGS}-old"))
    }

    /// Returns: where the XDP link of interface `ifname` is pinned.
    pub fn link(&self, ifname: &str) -> PathBuf {
        self.links_dir().join(ifname)
    }

    /// Returns: whether an earlier run left a data path here.
    pub fn exist(&self) -> bool {
        self.map(VS_MAP).exists() || self.links_dir().exists()
    }

    /// Returns: the interfaces that have a pinned XDP link, by name.
    pub fn linked_interfaces(&self) -> Vec<String> {
        let Ok(dir) = std::fs::read_dir(self.links_dir()) else {
            return Vec::new();
        };
        let mut names: Vec<String> = dir
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        names.sort();
        names
    }

    /// Decides which pinned maps the load reuses (see the module doc), removes the pins
    /// of the others, sets aside a `VS_RINGS` to be grown, and creates the directories.
    /// `opts.ring_count` is raised to a larger pinned `VS_RINGS`'s size, which is kept.
    /// Returns: the plan.
    pub fn prepare(&self, object: &[u8], opts: &mut LoadOptions) -> Result<Plan, PinError> {
        for d in [self.maps_dir(), self.links_dir()] {
            std::fs::create_dir_all(&d).map_err(io_err("creating", &d))?;
        }
        self.restore_rings()?;
        let want = object_shapes(object, opts)?;
        let mut pinned = HashMap::new();
        for &name in ALL {
            let path = self.map(name);
            if path.exists() {
                pinned.insert(name, pinned_shape(&path)?);
            }
        }
        if pinned.is_empty() {
            return Ok(Plan::default());
        }
        let decision = decide(&pinned, &want);
        opts.ring_count = decision.rings;
        let mut plan = Plan {
            adopt: decision.adopt,
            ..Plan::default()
        };
        for (name, why) in decision.dropped {
            let path = self.map(name);
            if path.exists() {
                std::fs::remove_file(&path).map_err(io_err("removing", &path))?;
                plan.dropped.push(why);
            }
        }
        plan.dropped.sort();
        if let Some(from) = decision.grow_from {
            let (pin, aside) = (self.map(VS_RINGS), self.rings_aside());
            std::fs::rename(&pin, &aside).map_err(io_err("setting aside", &pin))?;
            plan.grow = Some(Grow {
                from,
                to: decision.rings,
                single: decision.single,
            });
        }
        Ok(plan)
    }

    /// Puts back a `VS_RINGS` an earlier start set aside and did not finish growing:
    /// it holds the rings the attached program reads; whatever is pinned as `VS_RINGS`
    /// (a larger map, maybe half-filled) is replaced.
    fn restore_rings(&self) -> Result<(), PinError> {
        let aside = self.rings_aside();
        if !aside.exists() {
            return Ok(());
        }
        std::fs::rename(&aside, self.map(VS_RINGS)).map_err(io_err("putting back", &aside))?;
        tracing::warn!(pin = %aside.display(), "an earlier start stopped while growing the ring map: its rings are taken from the map it set aside");
        Ok(())
    }

    /// Ends a grow ([`Grow`]): unpins the map set aside. Call it once its rings are
    /// copied and the new program is on the links.
    pub fn finish_grow(&self) -> Result<(), PinError> {
        let aside = self.rings_aside();
        std::fs::remove_file(&aside).map_err(io_err("removing", &aside))
    }

    /// Attaches `prog` to interface `ifname` (`ifindex`) through its pinned link: the
    /// program on an existing link is replaced atomically; without one (or when the
    /// pinned link's interface is gone) a new link is made and pinned.
    /// Returns: whether a program was replaced.
    pub fn attach(
        &self,
        prog: &mut Xdp,
        ifindex: u32,
        ifname: &str,
        mode: XdpMode,
    ) -> Result<bool, PinError> {
        let path = self.link(ifname);
        let link_err = |message: String| PinError::Link {
            interface: ifname.to_string(),
            message,
        };
        if path.exists() {
            match self.replace(prog, ifname) {
                Ok(()) => return Ok(true),
                Err(e) => {
                    tracing::warn!(
                        interface = ifname,
                        "the pinned XDP link cannot take the new program ({e}); making a new link"
                    );
                    std::fs::remove_file(&path).map_err(io_err("removing", &path))?;
                }
            }
        }
        let id = prog.attach_to_if_index(ifindex, mode).map_err(|e| {
            link_err(format!(
                "attaching in {mode:?} mode failed: {e}; try xdp_mode: generic"
            ))
        })?;
        let link = prog.take_link(id).map_err(|e| link_err(e.to_string()))?;
        let fd = FdLink::try_from(link).map_err(|e| {
            link_err(format!(
                "the kernel gave a netlink attachment, which cannot be pinned: {e}"
            ))
        })?;
        fd.pin(&path)
            .map_err(|e| link_err(format!("pinning: {e}")))?;
        Ok(false)
    }

    /// Puts `prog` in place of the program on the pinned link of interface `ifname`
    /// (BPF_LINK_UPDATE: atomic; a no-op when it is there already).
    /// Returns: why not, when the link is not pinned or cannot take it (its interface
    /// is gone).
    pub fn replace(&self, prog: &mut Xdp, ifname: &str) -> Result<(), String> {
        PinnedLink::from_pin(self.link(ifname))
            .map_err(|e| e.to_string())
            .and_then(|p| XdpLink::try_from(FdLink::from(p)).map_err(|e| e.to_string()))
            .and_then(|l| prog.attach_to_link(l).map_err(|e| e.to_string()))
            .map(|_| ())
    }

    /// Removes the pinned link of interface `ifname`: with no descriptor left, the
    /// kernel detaches its program.
    pub fn unlink(&self, ifname: &str) -> Result<(), PinError> {
        let path = self.link(ifname);
        std::fs::remove_file(&path).map_err(io_err("removing", &path))
    }

    /// Removes every pin of the instance and its directories: links first (detaching
    /// XDP), then maps.
    /// Returns: what was removed, for the log.
    pub fn remove_all(&self) -> Result<Vec<String>, PinError> {
        let mut removed = Vec::new();
        for ifname in self.linked_interfaces() {
            self.unlink(&ifname)?;
            removed.push(format!("XDP link of {ifname}"));
        }
        let maps = self.maps_dir();
        if let Ok(dir) = std::fs::read_dir(&maps) {
            for e in dir.filter_map(Result::ok) {
                let p = e.path();
                std::fs::remove_file(&p).map_err(io_err("removing", &p))?;
                removed.push(format!("map {}", e.file_name().to_string_lossy()));
            }
        }
        for d in [self.links_dir(), maps, self.dir.clone()] {
            if d.exists() {
                std::fs::remove_dir(&d).map_err(io_err("removing", &d))?;
            }
        }
        Ok(removed)
    }
}

/// What to do with the pinned maps, from their definitions alone.
#[derive(Debug, PartialEq, Eq)]
struct Decision {
    /// Rings `VS_RINGS` is loaded with.
    rings: u32,
    /// Rings of a pinned `VS_RINGS` that differs from the one wanted in its size alone
    /// and is smaller, or has a slot to an element: it is grown (or remade with pairs),
    /// not dropped.
    grow_from: Option<u32>,
    /// The pinned `VS_RINGS` has a slot to an element (before decision 0030).
    single: bool,
    /// The reconciler's maps are reused.
    adopt: bool,
    /// Maps made anew (pinned or not), each with why.
    dropped: Vec<(&'static str, String)>,
}

/// Returns: what to do with the maps `pinned` when loading maps defined as `want`
/// (both by name; `want` has every map of `ALL`). See the module doc.
fn decide(pinned: &HashMap<&'static str, Shape>, want: &HashMap<&'static str, Shape>) -> Decision {
    let mut want = want.clone();
    let mut grow_from = None;
    let mut single = false;
    // Ring `i` is at the same offset in a ring map of any size: a larger pinned one
    // still holds every ring wanted, a smaller one is grown. One with a slot to an
    // element (before decision 0030) is made anew with pairs, its rings copied.
    if let (Some(p), Some(w)) = (pinned.get(VS_RINGS), want.get_mut(VS_RINGS)) {
        let same_but_size = Shape {
            entries: w.entries,
            ..*p
        } == *w;
        let single_slots = Shape {
            entries: w.entries,
            value: w.value,
            ..*p
        } == *w
            && p.value as usize == std::mem::size_of::<u32>()
            && p.entries % RING_STRIDE == 0;
        let rings = if same_but_size && p.entries % RING_ELEMS == 0 {
            Some(p.entries / RING_ELEMS)
        } else if single_slots {
            single = true;
            Some(p.entries / RING_STRIDE)
        } else {
            None
        };
        if let Some(rings) = rings {
            let wanted = w.entries / RING_ELEMS;
            if single || rings < wanted {
                grow_from = Some(rings);
            }
            w.entries = wanted.max(rings) * RING_ELEMS;
        }
    }
    let mut dropped = Vec::new();
    for &name in ALL {
        match pinned.get(name) {
            // Grown: its rings are copied into the larger map.
            Some(_) if name == VS_RINGS && grow_from.is_some() => {}
            Some(p) if *p != want[name] => dropped.push((
                name,
                format!("{name}: pinned as {p}, this release has {}", want[name]),
            )),
            None => dropped.push((name, format!("{name}: not pinned"))),
            Some(_) => {}
        }
    }
    let adopt = !dropped.iter().any(|(n, _)| RECONCILED.contains(n));
    if !adopt {
        grow_from = None;
        single = false;
        for name in RECONCILED.into_iter().chain(NAMING_REALS).chain(COPIES) {
            if !dropped.iter().any(|(n, _)| *n == name) {
                dropped.push((name, format!("{name}: dropped with the maps it refers to")));
            }
        }
    }
    Decision {
        rings: want[VS_RINGS].entries / RING_ELEMS,
        grow_from,
        single,
        adopt,
        dropped,
    }
}

/// Returns: the definition of each of the balancer's maps in `object`, with the sizes
/// `opts` sets at load time.
fn object_shapes(
    object: &[u8],
    opts: &LoadOptions,
) -> Result<HashMap<&'static str, Shape>, PinError> {
    let obj = aya_obj::Object::parse(object).map_err(|e| PinError::Object(e.to_string()))?;
    let mut out = HashMap::new();
    for &name in ALL {
        let m = obj.maps.get(name).ok_or(PinError::MissingMap(name))?;
        let entries = match name {
            VS_RINGS => opts.ring_count * RING_ELEMS,
            FLOWS | NAT_STATE => opts.flow_entries,
            FLOW_FILTER => lb_common::maps::flow_filter_entries(lb_common::maps::flow_filter_log2(
                opts.flow_entries,
            )),
            _ => m.max_entries(),
        };
        out.insert(
            name,
            Shape {
                kind: m.map_type(),
                key: m.key_size(),
                value: m.value_size(),
                entries,
                flags: m.map_flags(),
            },
        );
    }
    Ok(out)
}

/// Returns: the kernel's definition of the map pinned at `path`.
fn pinned_shape(path: &Path) -> Result<Shape, PinError> {
    let bad = |e: aya::maps::MapError| PinError::Io {
        what: "reading the pinned map",
        path: path.to_owned(),
        source: io::Error::other(e.to_string()),
    };
    let info = MapInfo::from_pin(path).map_err(bad)?;
    Ok(Shape {
        kind: info.map_type().map_err(bad)? as u32,
        key: info.key_size(),
        value: info.value_size(),
        entries: info.max_entries(),
        flags: info.map_flags(),
    })
}

/// Returns: whether `path` is on a bpffs.
fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: c is a valid C string and st is writable for one statfs.
    if unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: statfs succeeded, so st is initialised.
    let st = unsafe { st.assume_init() };
    st.f_type == libc::BPF_FS_MAGIC
}

/// Makes sure `pin_path` is a directory on a bpffs: when the nearest existing directory
/// on its way is not on one, mounts one (at `/sys/fs/bpf` for a path below it, as
/// systems mount it; at `pin_path` itself otherwise), then creates the directory.
pub fn mount_bpffs(pin_path: &Path) -> Result<(), PinError> {
    let existing = pin_path
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    if !is_bpffs(existing) {
        let sys = Path::new("/sys/fs/bpf");
        let at = if pin_path.starts_with(sys) {
            sys
        } else {
            pin_path
        };
        std::fs::create_dir_all(at).map_err(io_err("creating", at))?;
        let target = CString::new(at.as_os_str().as_encoded_bytes()).map_err(|_| PinError::Io {
            what: "mounting bpffs at",
            path: at.to_owned(),
            source: io::Error::from(io::ErrorKind::InvalidInput),
        })?;
        // SAFETY: every argument is a valid C string; no data.
        let r = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                target.as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if r != 0 {
            return Err(PinError::Io {
                what: "mounting bpffs at",
                path: at.to_owned(),
                source: io::Error::last_os_error(),
            });
        }
        tracing::info!(path = %at.display(), "mounted bpffs (pins last as long as this mount)");
    }
    std::fs::create_dir_all(pin_path).map_err(io_err("creating", pin_path))
}

#[cfg(test)]
mod tests {
    use lb_common::maps::VS_RINGS_FLAGS;

    use super::*;

    /// Returns: the definitions of this release's maps with `rings` Maglev rings.
    fn shapes(rings: u32) -> HashMap<&'static str, Shape> {
        let opts = LoadOptions {
            ring_count: rings,
            ..LoadOptions::default()
        };
        object_shapes(crate::BPF_OBJECT, &opts).expect("the embedded object")
    }

    /// Returns: the names of `d`'s dropped maps, sorted.
    fn dropped(d: &Decision) -> Vec<&'static str> {
        let mut names: Vec<_> = d.dropped.iter().map(|(n, _)| *n).collect();
        names.sort();
        names
    }

    /// The reconciler's maps, the tables naming reals and the copies, sorted.
    fn together() -> Vec<&'static str> {
        let mut names: Vec<_> = RECONCILED
            .into_iter()
            .chain(NAMING_REALS)
            .chain(COPIES)
            .collect();
        names.sort();
        names
    }

    #[test]
    fn unchanged_pins_are_all_adopted() {
        let d = decide(&shapes(64), &shapes(64));
        assert_eq!(
            d,
            Decision {
                rings: 64,
                grow_from: None,
                single: false,
                adopt: true,
                dropped: Vec::new()
            }
        );
    }

    #[test]
    fn a_smaller_pinned_ring_map_of_the_same_shape_is_grown_not_dropped() {
        let d = decide(&shapes(64), &shapes(81));
        assert_eq!(
            d,
            Decision {
                rings: 81,
                grow_from: Some(64),
                single: false,
                adopt: true,
                dropped: Vec::new()
            }
        );
    }

    /// A ring map of a release before decision 0030 (a slot to an element, whole rings
    /// of `RING_STRIDE` elements) is remade with pairs and its rings copied, at its size
    /// or the one wanted, whichever is larger; nothing is dropped.
    #[test]
    fn a_ring_map_of_a_slot_to_an_element_is_remade_with_pairs_not_dropped() {
        for (pinned_rings, wanted, rings) in [(64, 64, 64), (64, 81, 81), (81, 64, 81)] {
            let mut pinned = shapes(64);
            let r = pinned.get_mut(VS_RINGS).expect("VS_RINGS");
            r.value = 4;
            r.entries = pinned_rings * RING_STRIDE;
            let d = decide(&pinned, &shapes(wanted));
            assert_eq!(
                d,
                Decision {
                    rings,
                    grow_from: Some(pinned_rings),
                    single: true,
                    adopt: true,
                    dropped: Vec::new()
                },
                "{pinned_rings} rings pinned, {wanted} wanted"
            );
        }
    }

    /// A ring map of a slot to an element is not remade alone when the maps it goes
    /// with are dropped: it goes with them, and nothing is copied.
    #[test]
    fn a_ring_map_of_a_slot_to_an_element_goes_with_the_maps_dropped() {
        let mut pinned = shapes(64);
        let r = pinned.get_mut(VS_RINGS).expect("VS_RINGS");
        r.value = 4;
        r.entries = 64 * RING_STRIDE;
        pinned.get_mut(REALS).expect("REALS").value += 8;
        let d = decide(&pinned, &shapes(64));
        assert_eq!((d.grow_from, d.single, d.adopt), (None, false, false));
        assert_eq!(dropped(&d), together());
        // Of another kind of map as well: not a ring map this release can read.
        let mut pinned = shapes(64);
        let r = pinned.get_mut(VS_RINGS).expect("VS_RINGS");
        r.value = 4;
        r.entries = 64 * RING_STRIDE;
        r.flags &= !VS_RINGS_FLAGS;
        let d = decide(&pinned, &shapes(64));
        assert_eq!((d.grow_from, d.single, d.adopt), (None, false, false));
        assert_eq!(dropped(&d), together());
    }

    #[test]
    fn a_larger_pinned_ring_map_is_kept_at_its_size() {
        let d = decide(&shapes(81), &shapes(64));
        assert_eq!((d.rings, d.grow_from, d.adopt), (81, None, true));
        assert!(d.dropped.is_empty(), "{:?}", d.dropped);
    }

    #[test]
    fn a_grow_keeps_a_connection_table_of_another_size_dropped_alone() {
        let mut pinned = shapes(64);
        pinned.get_mut(FLOWS).expect("FLOWS").entries /= 2;
        let d = decide(&pinned, &shapes(81));
        assert_eq!((d.rings, d.grow_from, d.adopt), (81, Some(64), true));
        assert_eq!(dropped(&d), [FLOWS]);
    }

    #[test]
    fn a_ring_map_of_another_shape_is_dropped_with_the_maps_that_refer_to_it() {
        let changes: [fn(&mut Shape); 4] = [
            |s| s.flags &= !VS_RINGS_FLAGS,
            |s| s.value = 16,
            // Not whole rings.
            |s| s.entries -= 1,
            // A slot to an element, but not whole rings of them.
            |s| {
                s.value = 4;
                s.entries = 64 * RING_STRIDE - 1;
            },
        ];
        for change in changes {
            let mut pinned = shapes(64);
            change(pinned.get_mut(VS_RINGS).expect("VS_RINGS"));
            let d = decide(&pinned, &shapes(81));
            assert_eq!((d.rings, d.grow_from, d.adopt), (81, None, false));
            assert_eq!(dropped(&d), together());
            let why = why_dropped(&d, VS_RINGS);
            assert!(why.contains("pinned as"), "{why}");
        }
    }

    #[test]
    fn a_smaller_ring_map_is_not_grown_when_the_maps_it_goes_with_are_dropped() {
        let mut pinned = shapes(64);
        pinned.get_mut(REALS).expect("REALS").value += 8;
        let d = decide(&pinned, &shapes(81));
        assert_eq!((d.rings, d.grow_from, d.adopt), (81, None, false));
        assert_eq!(dropped(&d), together());
        let why = why_dropped(&d, VS_RINGS);
        assert!(why.contains("dropped with the maps it refers to"), "{why}");
    }

    /// An `IFACE_INDEX` or `TUNNEL_SRCS` missing from the pins (a release before it) is
    /// made anew alone: the data path finds what it lacks in `IFACES` or `VS_MAP`, which
    /// are adopted (and the load fills `TUNNEL_SRCS` from `VS_MAP`).
    #[test]
    fn a_missing_copy_is_made_anew_alone() {
        for copy in COPIES {
            let mut pinned = shapes(64);
            pinned.remove(copy);
            let d = decide(&pinned, &shapes(64));
            assert!(d.adopt);
            assert_eq!(dropped(&d), [copy]);
        }
    }

    /// Returns: why `d` drops map `name` (panics if it does not).
    fn why_dropped<'a>(d: &'a Decision, name: &str) -> &'a str {
        let (_, why) = d
            .dropped
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("{name} not dropped"));
        why
    }
}
