//! Giving up privilege once started (issue 14, decision 0007). Start-up needs much:
//! mounting bpffs, loading and pinning BPF, attaching XDP, binding sockets. A running
//! daemon needs far less, and keeps only [`KEPT`]: the rest is dropped from the
//! effective, permitted, inheritable, ambient and bounding sets, and no_new_privs is
//! set, so neither this process nor anything it could exec gets them back.
//!
//! What a running daemon does, and what it needs (each found by experiment on kernel
//! 6.18 with `kernel.unprivileged_bpf_disabled=2`; `e2e_privilege` holds it):
//! - map lookups, updates, deletes and walks through descriptors it holds (the
//!   reconciler's maps, the flow reader's duplicate): no capability. Since Linux 6.5
//!   only creating maps and loading programs check `unprivileged_bpf_disabled`.
//! - VIP addresses, announcing routes (reloads, `withdraw`/`announce`, probe-driven
//!   `min_healthy`, the withdrawal at stop), and asking the kernel to resolve a next
//!   hop (`NTF_USE`): CAP_NET_ADMIN. Reading routes, addresses and neighbours: nothing.
//! - probes (TCP, HTTP, HTTPS connects; half-open probes through the two raw sockets
//!   `daemon::run` opens before anything else, while CAP_NET_RAW is still held:
//!   decision 0020),
//!   the control socket and the metrics listener (both bound before the drop),
//!   writing the state file and re-reading the configuration (files owned by root,
//!   the daemon's uid): nothing.
//!
//! A reload never attaches, loads or pins: interface, `control_socket`,
//! `metrics_listen`, `pin_path` and table-size changes already take effect on restart
//! only (and the reload says so), so nothing a reload does needs what was dropped.
//! The one attach after start-up, XDP on a configured interface that came back as a
//! new device (`host::Host::refresh_interfaces`), makes a link from the program
//! descriptor already held and pins it in root's bpffs directory: CAP_NET_ADMIN is
//! enough (`e2e_churn`), as it is for deleting a real's neighbour entry.
//!
//! Capabilities are per thread. The daemon runs on tokio's current-thread runtime.
//! The only threads before the drop are the table builders of the first sync
//! (decision 0013), joined before it; threads started after (the flow walk's blocking
//! thread, the connection table filter's, those that build the tables of a batch of
//! probe results) inherit the dropped sets. [`drop_to_kept`]
//! checks every thread of the process afterwards and fails if any kept more. A joined
//! thread is not gone yet: the kernel wakes its joiner from the thread's exit, before
//! it leaves `/proc/self/task`, and on a loaded machine the check can still find it,
//! with the privileges it was started with. So a thread that differs is looked at
//! again until [`EXITING_GRACE`] has passed; only one still there then fails the start.

use std::{
    io,
    time::{Duration, Instant},
};

/// CAP_NET_ADMIN (linux/capability.h).
pub const CAP_NET_ADMIN: u32 = 12;

/// The capabilities a running daemon keeps, with their names (for the log).
pub const KEPT: &[(u32, &str)] = &[(CAP_NET_ADMIN, "CAP_NET_ADMIN")];

/// How long a thread that kept more than [`KEPT`] after the drop may take to end before
/// the start fails: ample for a joined thread to finish leaving (see the module doc).
const EXITING_GRACE: Duration = Duration::from_secs(2);

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("{what}: {source}")]
    Syscall {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("dropping capability {cap} from the bounding set needs CAP_SETPCAP (add it to the unit's CapabilityBoundingSet)")]
    NoSetpcap { cap: u32 },
    #[error("thread {tid} still has {field} {have:#x} after the drop (want {want:#x}); a thread started before the drop keeps its privileges")]
    Thread {
        tid: String,
        field: &'static str,
        have: u64,
        want: u64,
    },
}

/// Returns: the bit mask of [`KEPT`], as `/proc/<pid>/status` shows capability sets.
pub fn kept_mask() -> u64 {
    KEPT.iter().fold(0, |m, (c, _)| m | 1 << c)
}

/// Returns: the names of the kept capabilities, comma-separated.
pub fn kept_names() -> String {
    KEPT.iter().map(|(_, n)| *n).collect::<Vec<_>>().join(",")
}

fn last_error(what: impl Into<String>) -> PrivilegeError {
    PrivilegeError::Syscall {
        what: what.into(),
        source: io::Error::last_os_error(),
    }
}

/// Returns: the highest capability number this kernel knows.
fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63)
}

/// Drops every capability but [`KEPT`] from this thread's sets, bounding set first
/// (that needs CAP_SETPCAP, still held then), and sets no_new_privs; then checks that
/// every thread of the process shows exactly that.
pub fn drop_to_kept() -> Result<(), PrivilegeError> {
    let kept = kept_mask();
    for cap in (0..=last_cap()).filter(|c| kept & (1 << c) == 0) {
        // SAFETY: prctl with integer arguments only.
        let held = unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong, 0, 0, 0) };
        if held != 1 {
            continue;
        }
        // SAFETY: as above.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EPERM) {
                return Err(PrivilegeError::NoSetpcap { cap });
            }
            return Err(PrivilegeError::Syscall {
                what: format!("dropping capability {cap} from the bounding set"),
                source: e,
            });
        }
    }
    let header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    for (i, d) in data.iter_mut().enumerate() {
        let word = (kept >> (32 * i)) as u32;
        d.effective = word;
        d.permitted = word;
    }
    // SAFETY: capset reads a v3 header and two data words, both live for the call.
    if unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } != 0 {
        return Err(last_error("capset"));
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    } != 0
    {
        return Err(last_error("clearing the ambient capabilities"));
    }
    // SAFETY: as above.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(last_error("setting no_new_privs"));
    }
    check_threads(kept)
}

/// Checks that every thread of this process has exactly `kept` in its effective,
/// permitted and bounding sets, nothing inheritable or ambient, and no_new_privs,
/// waiting up to [`EXITING_GRACE`] for a thread that differs to end.
fn check_threads(kept: u64) -> Result<(), PrivilegeError> {
    check_threads_with(kept, EXITING_GRACE, tasks)
}

/// How often a thread that differs is looked at again.
const RESCAN: Duration = Duration::from_millis(10);

/// [`check_threads`] over the threads `scan` lists (tid, status text), for up to `grace`.
fn check_threads_with(
    kept: u64,
    grace: Duration,
    mut scan: impl FnMut() -> Result<Vec<(String, String)>, PrivilegeError>,
) -> Result<(), PrivilegeError> {
    let deadline = Instant::now() + grace;
    loop {
        match first_privileged(kept, scan()?) {
            None => return Ok(()),
            Some(e) if Instant::now() >= deadline => return Err(e),
            Some(_) => std::thread::sleep(RESCAN),
        }
    }
}

/// Returns: each thread of this process with its `/proc/self/task/<tid>/status` text;
/// a thread that ended while they were read is left out.
fn tasks() -> Result<Vec<(String, String)>, PrivilegeError> {
    let dir = std::fs::read_dir("/proc/self/task").map_err(|source| PrivilegeError::Syscall {
        what: "reading /proc/self/task".into(),
        source,
    })?;
    Ok(dir
        .flatten()
        .filter_map(|task| {
            let text = std::fs::read_to_string(task.path().join("status")).ok()?;
            Some((task.file_name().to_string_lossy().into_owned(), text))
        })
        .collect())
}

/// Returns: the first difference from the dropped sets (`kept`, nothing inheritable
/// or ambient, no_new_privs) among `tasks` (tid, status text), if any.
fn first_privileged(kept: u64, tasks: Vec<(String, String)>) -> Option<PrivilegeError> {
    let want = |field: &str| match field {
        "CapInh" | "CapAmb" => 0,
        "NoNewPrivs" => 1,
        _ => kept,
    };
    tasks.into_iter().find_map(|(tid, text)| {
        status_fields(&text)
            .into_iter()
            .find(|&(field, have)| have != want(field))
            .map(|(field, have)| PrivilegeError::Thread {
                tid,
                field,
                have,
                want: want(field),
            })
    })
}

/// The privilege fields of a `/proc/<pid>/status` text, in this order.
const FIELDS: [&str; 6] = [
    "CapInh",
    "CapPrm",
    "CapEff",
    "CapBnd",
    "CapAmb",
    "NoNewPrivs",
];

/// Returns: each privilege field found in a `/proc/<pid>/status` text with its value
/// (capability sets in hex, NoNewPrivs in decimal).
pub fn status_fields(text: &str) -> Vec<(&'static str, u64)> {
    FIELDS
        .iter()
        .filter_map(|&f| {
            let v = text
                .lines()
                .find_map(|l| l.strip_prefix(f)?.strip_prefix(':'))?;
            let v = v.trim();
            let n = if f == "NoNewPrivs" {
                v.parse().ok()?
            } else {
                u64::from_str_radix(v, 16).ok()?
            };
            Some((f, n))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_is_net_admin_only() {
        assert_eq!(kept_mask(), 0x1000);
        assert_eq!(kept_names(), "CAP_NET_ADMIN");
    }

    fn status(prm: u64, nnp: u8) -> String {
        format!(
            "Name:\txdpvs\nCapInh:\t0000000000000000\nCapPrm:\t{prm:016x}\n\
             CapEff:\t{prm:016x}\nCapBnd:\t{prm:016x}\nCapAmb:\t0000000000000000\n\
             NoNewPrivs:\t{nnp}\n"
        )
    }

    #[test]
    fn a_thread_with_more_than_the_kept_sets_is_named() {
        let kept = kept_mask();
        let dropped = vec![
            ("1".to_string(), status(kept, 1)),
            ("2".into(), status(kept, 1)),
        ];
        assert!(first_privileged(kept, dropped.clone()).is_none());
        let mut builder = dropped.clone();
        builder.push(("3".into(), status(0x1ff_feff_ffff, 0)));
        match first_privileged(kept, builder) {
            Some(PrivilegeError::Thread {
                tid,
                field,
                have,
                want,
            }) => {
                assert_eq!(
                    (tid.as_str(), field, have, want),
                    ("3", "CapPrm", 0x1ff_feff_ffff, kept)
                );
            }
            other => panic!("expected thread 3 named, got {other:?}"),
        }
        let mut no_nnp = dropped;
        no_nnp.push(("4".into(), status(kept, 0)));
        assert!(matches!(
            first_privileged(kept, no_nnp),
            Some(PrivilegeError::Thread {
                field: "NoNewPrivs",
                ..
            })
        ));
    }

    #[test]
    fn a_thread_on_its_way_out_is_waited_for_and_one_that_stays_fails() {
        let kept = kept_mask();
        let main = ("1".to_string(), status(kept, 1));
        let leaving = ("2".to_string(), status(0x1ff_feff_ffff, 0));
        // Listed for two scans, then gone: the start goes on.
        let mut scans = 0;
        let r = check_threads_with(kept, Duration::from_secs(5), || {
            scans += 1;
            Ok(if scans <= 2 {
                vec![main.clone(), leaving.clone()]
            } else {
                vec![main.clone()]
            })
        });
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(scans, 3);
        // Still there when the grace is over: the start fails, naming it.
        let r = check_threads_with(kept, Duration::from_millis(50), || {
            Ok(vec![main.clone(), leaving.clone()])
        });
        assert!(
            matches!(&r, Err(PrivilegeError::Thread { tid, .. }) if tid == "2"),
            "{r:?}"
        );
    }

    #[test]
    fn status_fields_are_read_as_the_kernel_writes_them() {
        let text = "Name:\txdpvs\nCapInh:\t0000000000000000\nCapPrm:\t0000000000001000\n\
                    CapEff:\t0000000000001000\nCapBnd:\t000001fffeffffff\nCapAmb:\t0000000000000000\n\
                    NoNewPrivs:\t1\nSeccomp:\t0\n";
        assert_eq!(
            status_fields(text),
            vec![
                ("CapInh", 0),
                ("CapPrm", 0x1000),
                ("CapEff", 0x1000),
                ("CapBnd", 0x1ff_feff_ffff),
                ("CapAmb", 0),
                ("NoNewPrivs", 1),
            ]
        );
    }
}
