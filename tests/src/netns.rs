//! Network namespaces owned by a test: created with unique names, deleted on drop
//! (deleting a namespace deletes the veths inside it), even when the test panics.

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    process::Command,
    sync::{
        atomic::{AtomicU32, Ordering},
        Once,
    },
};

use crate::leftovers;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A short prefix unique to this process and call: `xv<pid%10000>s<seq>`, so that
/// interface names built on it stay under the kernel's 15-character limit. Every name
/// built on it (namespaces, directories and mounts under the temporary directory)
/// goes on with a character that is not a digit. The first call removes what dead
/// processes left and records this process as an owner of prefixes (`leftovers`).
pub fn unique_prefix() -> String {
    static FIRST: Once = Once::new();
    FIRST.call_once(|| {
        leftovers::sweep();
        leftovers::record_self();
    });
    format!(
        "{}s{}",
        leftovers::part_of(std::process::id()),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs a command; panics with its output if it fails.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: &str) -> Self {
        sh(&["ip", "netns", "add", name]);
        let ns = Netns {
            name: name.to_string(),
        };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Runs a command inside the namespace; panics if it fails.
    pub fn exec(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", self.name.as_str()];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// Runs `f` on a new thread that has entered this namespace, and waits for it.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.spawn(f)
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }

    /// Starts `f` on a thread inside this namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
            // SAFETY: setns on a valid namespace fd affects only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Returns: the MAC address of `dev` in `ns`.
pub fn mac(ns: &Netns, dev: &str) -> [u8; 6] {
    let text = ns.exec(&["cat", &format!("/sys/class/net/{dev}/address")]);
    let bytes: Vec<u8> = text
        .trim()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).expect("hex MAC byte"))
        .collect();
    bytes.try_into().expect("6-byte MAC")
}

/// Returns: `m` as trafgen and ip write it (`aa:bb:...`).
pub fn mac_text(m: [u8; 6]) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}

/// Returns: the destinations of the routes xdpvs announces VIPs with in `ns`: its
/// blackhole routes of protocol 250 in `table` (`ip route show table N proto 250`;
/// a table that never held a route does not exist, and has none).
pub fn announced(ns: &Netns, table: u32) -> Vec<String> {
    let out = Command::new("ip")
        .args(["-n", &ns.name, "route", "show", "table"])
        .arg(table.to_string())
        .args(["proto", "250"])
        .output()
        .expect("ip route");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || err.contains("FIB table does not exist"),
        "{}: ip route show table {table}: {err}",
        ns.name
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("blackhole ").map(|d| d.trim().to_string()))
        .collect()
}

/// Creates a veth pair `a`/`b`, moves each end into its namespace, sets both up and
/// turns transmit checksum offload off (an XDP-forwarded frame must carry a complete
/// checksum: veth otherwise hands over partial ones).
pub fn veth(a: &str, ns_a: &Netns, b: &str, ns_b: &Netns) {
    sh(&[
        "ip", "link", "add", a, "netns", &ns_a.name, "type", "veth", "peer", "name", b, "netns",
        &ns_b.name,
    ]);
    for (ns, dev) in [(ns_a, a), (ns_b, b)] {
        ns.exec(&["ip", "link", "set", dev, "up"]);
        ns.exec(&["ethtool", "-K", dev, "tx", "off"]);
    }
}
