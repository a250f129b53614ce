//! What a process killed before its guards ran (SIGKILL, a CI job's timeout) leaves
//! behind, and its removal by a later process. Every process that takes a name prefix
//! (`netns::unique_prefix`) records itself in [`OWNERS`]; [`sweep`] removes what the
//! recorded processes that no longer run left: the processes in their namespaces, the
//! namespaces (their veths go with them), their bpffs mounts and directories under the
//! temporary directory, and their daemons' state files in `/run/xdpvs`.

use std::{collections::HashSet, path::Path, process::Command};

/// A file per process that took a prefix, named after its pid, holding its start time.
pub const OWNERS: &str = "/run/xdpvs-tests";

/// Returns: the part of every name prefix process `pid` takes: `xv<pid%10000>`, short
/// enough for interface names built on it to stay under the kernel's 15 characters.
pub fn part_of(pid: u32) -> String {
    format!("xv{}", pid % 10000)
}

/// Records this process in [`OWNERS`], written under another name and renamed, so that
/// no reader sees half a record. Best effort: without the record, only a sweep is lost.
pub fn record_self() {
    let pid = std::process::id();
    let Some(start) = started(pid) else {
        return;
    };
    let dir = Path::new(OWNERS);
    let tmp = dir.join(format!(".{pid}"));
    let _ = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&tmp, start))
        .and_then(|()| std::fs::rename(&tmp, dir.join(pid.to_string())));
}

/// Returns: `pid`'s start time (`/proc/<pid>/stat`, in clock ticks since boot), which
/// with its pid names one process for the machine's uptime; `None` if it is gone or a
/// zombie (dead, its exit status not yet collected).
fn started(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command, which is in parentheses and may hold anything:
    // the state first, the start time (field 22 of the line) the 20th.
    let mut fields = stat[stat.rfind(')')? + 2..].split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    fields.nth(18).map(str::to_string)
}

/// Returns: whether `name` was built on a prefix with part `part` (the part, `s`, the
/// prefix's number, then no digit).
fn built_on(name: &str, part: &str) -> bool {
    let Some(rest) = name.strip_prefix(part).and_then(|r| r.strip_prefix('s')) else {
        return false;
    };
    let tail = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    tail.len() < rest.len() && !tail.is_empty()
}

/// Removes what the recorded processes that no longer run left, and their records.
/// A dead process whose part a running recorded process shares is left for later: the
/// names of the two cannot be told apart. A record stays while anything built on its
/// part is left (a step failed), so that the next sweep tries again.
pub fn sweep() {
    let (live, dead) = owners();
    for pid in dead {
        let part = part_of(pid);
        // Read again just before: a process with this part may have recorded itself
        // since.
        if live.contains(&part) || owners().0.contains(&part) {
            continue;
        }
        if remove_left(&part) {
            let _ = std::fs::remove_file(Path::new(OWNERS).join(pid.to_string()));
        }
    }
}

/// Returns: the parts of the recorded processes that run, and the pids of those that
/// no longer do.
fn owners() -> (HashSet<String>, Vec<u32>) {
    let mut live = HashSet::new();
    let mut dead = Vec::new();
    let Ok(entries) = std::fs::read_dir(OWNERS) else {
        return (live, dead);
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let recorded = std::fs::read_to_string(e.path()).unwrap_or_default();
        if started(pid).is_some_and(|now| now == recorded.trim()) {
            live.insert(part_of(pid));
        } else {
            dead.push(pid);
        }
    }
    (live, dead)
}

/// Returns: the names in `dir` built on a prefix with part `part`.
fn names(dir: &Path, part: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| built_on(n, part))
                .collect()
        })
        .unwrap_or_default()
}

/// Removes the namespaces (killing the processes in them), mounts, directories and
/// daemon state files built on prefixes with part `part`. Returns: whether none is
/// left.
fn remove_left(part: &str) -> bool {
    let netns = Path::new("/run/netns");
    for ns in names(netns, part) {
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
    for n in names(&tmp, part) {
        let path = tmp.join(&n);
        let at = format!(" {} ", path.display());
        if mounts.lines().any(|l| l.contains(&at)) {
            let _ = Command::new("umount").arg("-l").arg(&path).status();
        }
        let _ = std::fs::remove_dir_all(&path);
    }
    let state = Path::new("/run/xdpvs");
    for n in names(state, part) {
        let _ = std::fs::remove_file(state.join(n));
    }
    let left = [netns, tmp.as_path(), state]
        .into_iter()
        .any(|d| !names(d, part).is_empty());
    !left
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
    fn a_process_start_time_reads_the_same_twice() {
        let me = started(std::process::id()).expect("this process's stat");
        assert!(me.parse::<u64>().is_ok_and(|t| t > 0), "{me}");
        assert_eq!(started(std::process::id()).as_deref(), Some(&*me));
    }
}
