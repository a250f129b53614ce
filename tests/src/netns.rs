//! Network namespaces owned by a test: created with unique names, deleted on drop
//! (deleting a namespace deletes the veths inside it), even when the test panics.

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    path::Path,
    process::Command,
    sync::{
        atomic::{AtomicU32, Ordering},
        Once,
    },
};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Where each process that takes a prefix leaves a file named after its part of the
/// prefixes (`xv<pid%10000>`), holding the process's id and start time: what [`sweep`]
/// goes by to remove what a process killed before its drops ran (SIGKILL, a CI job's
/// timeout) left behind.
pub const OWNERS: &str = "/run/xdpvs-tests";

/// Returns: this process's part of every prefix it takes, and the name of its record
/// in [`OWNERS`].
fn process_part() -> String {
    format!("xv{}", std::process::id() % 10000)
}

/// A short prefix unique to this process and call: `xv<pid%10000>s<seq>`, so that
/// interface names built on it stay under the kernel's 15-character limit. Every name
/// built on it (namespaces, directories and mounts under the temporary directory)
/// goes on with a character that is not a digit. The first call removes what dead
/// processes left ([`sweep`]) and records this process as the owner of its prefixes.
pub fn unique_prefix() -> String {
    static FIRST: Once = Once::new();
    FIRST.call_once(|| {
        sweep();
        if let Some(me) = started(std::process::id()) {
            // Best effort: without the record, only a sweep is lost.
            let _ = std::fs::create_dir_all(OWNERS)
                .and_then(|()| std::fs::write(Path::new(OWNERS).join(process_part()), me));
        }
    });
    format!("{}s{}", process_part(), SEQ.fetch_add(1, Ordering::Relaxed))
}

/// Returns: `pid`'s id and start time (`/proc/<pid>/stat`, in clock ticks since boot),
/// which together name one process for the machine's uptime; `None` if it is gone.
fn started(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command, which is in parentheses and may hold anything.
    let rest = &stat[stat.rfind(')')? + 2..];
    // Field 22 of the line is the 20th after the command.
    let start = rest.split_whitespace().nth(19)?;
    Some(format!("{pid} {start}"))
}

/// Returns: whether `name` was built on a prefix of the process whose part is `part`
/// (`part`, `s`, the call's number, then no digit).
fn built_on(name: &str, part: &str) -> bool {
    let Some(rest) = name.strip_prefix(part).and_then(|r| r.strip_prefix('s')) else {
        return false;
    };
    let tail = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    tail.len() < rest.len() && !tail.is_empty()
}

/// Removes what the owners recorded in [`OWNERS`] left if they are no longer running:
/// every process in their namespaces (killed), the namespaces (their veths go with
/// them), their bpffs mounts and directories under the temporary directory, and their
/// daemons' state files in `/run/xdpvs`. What running processes own is left alone.
pub fn sweep() {
    let Ok(entries) = std::fs::read_dir(OWNERS) else {
        return;
    };
    for e in entries.flatten() {
        let Some(part) = e.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let owner = std::fs::read_to_string(e.path()).unwrap_or_default();
        let alive = owner
            .split_whitespace()
            .next()
            .and_then(|pid| pid.parse().ok())
            .and_then(started)
            .is_some_and(|now| now == owner.trim());
        if !alive {
            remove_left(&part);
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Removes the namespaces, mounts, directories and daemon state files built on the
/// prefixes of the process whose part is `part`.
fn remove_left(part: &str) {
    let names = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .filter(|n| built_on(n, part))
                    .collect()
            })
            .unwrap_or_default()
    };
    for ns in names(Path::new("/run/netns")) {
        let pids = Command::new("ip")
            .args(["netns", "pids", &ns])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // SAFETY: kill on a process found in the dead owner's namespace.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    }
    let tmp = std::env::temp_dir();
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    for n in names(&tmp) {
        let path = tmp.join(&n);
        let at = format!(" {} ", path.display());
        if mounts.lines().any(|l| l.contains(&at)) {
            let _ = Command::new("umount").arg("-l").arg(&path).status();
        }
        let _ = std::fs::remove_dir_all(&path);
    }
    for n in names(Path::new("/run/xdpvs")) {
        let _ = std::fs::remove_file(Path::new("/run/xdpvs").join(n));
    }
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

#[cfg(test)]
mod tests {
    use super::{built_on, started};

    #[test]
    fn a_name_is_built_on_a_process_prefix_only_in_full() {
        assert!(built_on("xv12s3-lb", "xv12"));
        assert!(built_on("xv12s34n1-bpffs", "xv12"));
        assert!(built_on("xv12s0-xdpvs", "xv12"));
        assert!(!built_on("xv123s4-lb", "xv12"));
        assert!(!built_on("xv1s23-lb", "xv12"));
        assert!(!built_on("xv12s3", "xv12"));
        assert!(!built_on("xv12s-lb", "xv12"));
        assert!(!built_on("xv12-lb", "xv12"));
    }

    #[test]
    fn a_process_is_named_by_its_id_and_start_time() {
        let me = started(std::process::id()).expect("this process's stat");
        let (pid, start) = me.split_once(' ').expect("pid and start time");
        assert_eq!(pid, std::process::id().to_string());
        assert!(start.parse::<u64>().is_ok_and(|t| t > 0), "{me}");
        assert_eq!(started(std::process::id()).as_deref(), Some(&*me));
    }
}
