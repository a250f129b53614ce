//! CPU time spent on the path of the frames, from the scheduler's own accounting
//! (`/proc/<pid>/schedstat`, nanoseconds on the CPU), so that packets per second can be
//! stated per second of CPU: what one core given to the path would do, however busy
//! the shared machine was.
//!
//! Where the frames' time goes: trafgen transmits synchronously through the veths,
//! and the kernel runs the receive side (bridge, XDP programs) in softirq on the way
//! out of the same system call. This kernel accounts softirq time to the task it
//! interrupts (no `CONFIG_IRQ_TIME_ACCOUNTING`), so trafgen's own runtime holds it;
//! what softirq defers runs in `ksoftirqd/<cpu>`, which is counted too.

/// Returns: the time `pid` has run on a CPU, in nanoseconds (0 once it is gone).
fn runtime_ns(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Returns: the parent of `pid` (field 4 of `/proc/<pid>/stat`), if it still runs.
fn parent(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Returns: every process id on the machine.
fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Returns: `root` and all its descendants, running now.
pub fn tree(root: i32) -> Vec<i32> {
    let pids: Vec<(i32, Option<i32>)> = all_pids().into_iter().map(|p| (p, parent(p))).collect();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(
            pids.iter()
                .filter(|(_, pp)| *pp == Some(p))
                .map(|(c, _)| *c),
        );
        i += 1;
    }
    found
}

/// Returns: the pid of `ksoftirqd/<cpu>`. Panics if there is none.
pub fn ksoftirqd(cpu: usize) -> i32 {
    let name = format!("ksoftirqd/{cpu}");
    all_pids()
        .into_iter()
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim_end() == name)
        })
        .unwrap_or_else(|| panic!("no {name}"))
}

/// Returns: the CPU time of `pids` together, in nanoseconds (a process gone counts 0).
pub fn runtime_of(pids: &[i32]) -> u64 {
    pids.iter().map(|&p| runtime_ns(p)).sum()
}
