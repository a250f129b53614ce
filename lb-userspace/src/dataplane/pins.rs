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
//! The maps the reconciler writes hold references to each other and the connection
//! and persistence tables name real ids, so when one of those is dropped all of them
//! are.

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
    maps::{ALL, FLOWS, IFACES, NAT_STATE, PERSIST, REALS, SETTINGS, VS_MAP, VS_RINGS},
    RING_STRIDE,
};

use super::bpf::LoadOptions;

/// The maps the reconciler writes (they refer to each other by index and id) and the
/// tables that name real ids: reused together or dropped together.
const TOGETHER: [&str; 7] = [VS_MAP, VS_RINGS, REALS, IFACES, SETTINGS, FLOWS, PERSIST];

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
    /// of the others, and creates the directories. A pinned `VS_RINGS` larger than
    /// `opts` asks for is kept at its size (`opts.ring_count` grows to it).
    /// Returns: the plan.
    pub fn prepare(&self, object: &[u8], opts: &mut LoadOptions) -> Result<Plan, PinError> {
        for d in [self.maps_dir(), self.links_dir()] {
            std::fs::create_dir_all(&d).map_err(io_err("creating", &d))?;
        }
        let mut want = object_shapes(object, opts)?;
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
        // A larger pinned ring map still holds every ring this configuration needs.
        if let (Some(p), Some(w)) = (pinned.get(VS_RINGS), want.get_mut(VS_RINGS)) {
            let same_but_size = Shape {
                entries: w.entries,
                ..*p
            } == *w;
            if same_but_size && p.entries > w.entries && p.entries % RING_STRIDE == 0 {
                w.entries = p.entries;
                opts.ring_count = p.entries / RING_STRIDE;
            }
        }
        let mut dropped = Vec::new();
        for &name in ALL {
            match pinned.get(name) {
                Some(p) if *p != want[name] => dropped.push((
                    name,
                    format!("{name}: pinned as {p}, this release has {}", want[name]),
                )),
                None => dropped.push((name, format!("{name}: not pinned"))),
                Some(_) => {}
            }
        }
        let together_lost = dropped.iter().any(|(n, _)| TOGETHER.contains(n));
        if together_lost {
            for name in TOGETHER {
                if !dropped.iter().any(|(n, _)| *n == name) {
                    dropped.push((name, format!("{name}: dropped with the maps it refers to")));
                }
            }
        }
        let mut plan = Plan {
            adopt: !together_lost,
            dropped: Vec::new(),
        };
        for (name, why) in dropped {
            let path = self.map(name);
            if path.exists() {
                std::fs::remove_file(&path).map_err(io_err("removing", &path))?;
                plan.dropped.push(why);
            }
        }
        plan.dropped.sort();
        Ok(plan)
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
            let replaced = PinnedLink::from_pin(&path)
                .map_err(|e| e.to_string())
                .and_then(|p| XdpLink::try_from(FdLink::from(p)).map_err(|e| e.to_string()))
                .and_then(|l| prog.attach_to_link(l).map_err(|e| e.to_string()));
            match replaced {
                Ok(_) => return Ok(true),
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
            VS_RINGS => opts.ring_count * RING_STRIDE,
            FLOWS | NAT_STATE => opts.flow_entries,
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
