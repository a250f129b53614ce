//! The demo, the README's first command, stopped by a signal once it says its first
//! daemon is starting: it finishes the round under way, removes its namespaces, bpffs
//! mount, daemon and files, and exits 130 (`tests::signals`). Ended by the kernel's
//! default action instead, it would leave all of them behind. Two ways: SIGTERM to the
//! demo alone, and SIGINT to its whole process group, as a terminal's Ctrl-C does.
//! Killed (SIGKILL, which nothing can handle), it leaves them, and the next program
//! that takes a prefix removes them (`tests::leftovers::sweep`).

use std::{
    io::{BufRead as _, BufReader, Read},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use tests::{require_root, wait_for};

/// The demo's process, stopped (SIGTERM, which it cleans up after, then SIGKILL) if
/// the test ends before it does; then whatever of its lab it left behind is removed,
/// so that a failing test leaves nothing either. Nothing here panics.
struct Demo {
    child: Child,
    /// The prefix of its lab's names: `xv<pid % 10000>s0` (`tests::netns::unique_prefix`,
    /// the demo's first and only call).
    lab: String,
}

impl Drop for Demo {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // SAFETY: kill on our own child's pid.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            if !wait_for(Duration::from_secs(60), || {
                matches!(self.child.try_wait(), Ok(Some(_)))
            }) {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        for pid in processes_with(&format!("{}-xdpvs/", self.lab)) {
            // SAFETY: kill on a pid just read; at worst it has ended meanwhile.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        for ns in namespaces_of(&format!("{}-", self.lab)) {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
        let bpffs = bpffs_of(&self.lab);
        if mounted(&bpffs) {
            let _ = Command::new("umount").arg("-l").arg(&bpffs).status();
        }
        let _ = std::fs::remove_dir_all(&bpffs);
        let _ = std::fs::remove_dir_all(dir_of(&self.lab));
        let _ = std::fs::remove_file(state_of(&self.lab));
    }
}

fn bpffs_of(lab: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{lab}-bpffs"))
}

fn dir_of(lab: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{lab}-xdpvs"))
}

fn state_of(lab: &str) -> PathBuf {
    Path::new("/run/xdpvs").join(format!("{lab}.state.json"))
}

/// Returns: the namespaces whose names start with `prefix`; none if `ip` fails.
fn namespaces_of(prefix: &str) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output();
    let text = out.map(|o| o.stdout).unwrap_or_default();
    String::from_utf8_lossy(&text)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

/// Returns: whether `path` is a mount point now.
fn mounted(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let p = path.to_string_lossy();
    mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(&*p))
}

/// Returns: the pids whose command line mentions `needle`.
fn processes_with(needle: &str) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_string_lossy().parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline)
                .contains(needle)
                .then_some(pid)
        })
        .collect()
}

/// Checks that nothing of lab `lab` is left: no namespace, bpffs mount, directory or
/// state file.
fn assert_lab_removed(lab: &str) {
    assert_eq!(
        namespaces_of(&format!("{lab}-")),
        Vec::<String>::new(),
        "namespaces left"
    );
    assert!(
        !mounted(&bpffs_of(lab)),
        "{} still mounted",
        bpffs_of(lab).display()
    );
    for left in [bpffs_of(lab), dir_of(lab), state_of(lab)] {
        assert!(!left.exists(), "{} left behind", left.display());
    }
}

/// Sends every line read from `from` on `to`, on a thread of its own.
fn lines_to(from: impl Read + Send + 'static, to: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            if to.send(line).is_err() {
                return;
            }
        }
    });
}

/// Returns: the lines received on `rx` until every sender is gone or `deadline`.
fn lines_until(rx: &mpsc::Receiver<String>, deadline: Instant) -> Vec<String> {
    let mut v = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) => v.push(l),
            Err(_) => break,
        }
    }
    v
}

/// The demo running, and what it has printed.
struct Running {
    demo: Demo,
    out: mpsc::Receiver<String>,
    err: mpsc::Receiver<String>,
    printed: Vec<String>,
}

/// Starts the demo (`group`: leading a process group of its own) and waits until it
/// says its first daemon is starting and its lab is there. Returns: the demo, its
/// output still being read, and what it printed so far.
fn start_demo(group: bool) -> Running {
    require_root();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_demo"));
    cmd.env("XDPVS_BIN", tests::daemon::binary())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if group {
        cmd.process_group(0);
    }
    let mut child = cmd.spawn().expect("starting the demo");
    let (out_tx, out) = mpsc::channel();
    let (err_tx, err) = mpsc::channel();
    lines_to(child.stdout.take().expect("piped"), out_tx);
    lines_to(child.stderr.take().expect("piped"), err_tx);
    let lab = format!("xv{}s0", child.id() % 10000);
    let demo = Demo { child, lab };
    let lab = demo.lab.clone();

    // "== weights [1, 1, 1]: starting `xdpvs run --config …` in namespace xv…-lb"
    let mut printed = Vec::new();
    let start = Instant::now() + Duration::from_secs(120);
    while !printed
        .iter()
        .any(|l: &String| l.contains("starting `xdpvs run"))
    {
        let left = start.saturating_duration_since(Instant::now());
        match out.recv_timeout(left) {
            Ok(l) => printed.push(l),
            Err(e) => panic!("the demo started no daemon ({e}); it printed {printed:#?}"),
        }
    }
    let said = printed.last().expect("a line");
    assert!(
        said.ends_with(&format!("in namespace {lab}-lb")),
        "the demo's lab is not {lab}: {said}"
    );
    let prefix = format!("{lab}-");
    assert!(
        !namespaces_of(&prefix).is_empty() && mounted(&bpffs_of(&lab)) && dir_of(&lab).exists(),
        "the demo's namespaces {prefix}*, bpffs or directory are missing while it runs"
    );
    Running {
        demo,
        out,
        err,
        printed,
    }
}

/// Runs the demo until it says its first daemon is starting, sends `sig` to it
/// (`group`: to its whole process group, which it leads), and checks that it exits 130
/// having removed everything of its lab.
fn stopped_by(sig: libc::c_int, group: bool) {
    let Running {
        mut demo,
        out,
        err,
        mut printed,
    } = start_demo(group);
    let lab = demo.lab.clone();

    let target = if group {
        -(demo.child.id() as i32)
    } else {
        demo.child.id() as i32
    };
    // SAFETY: kill on our own child, or the process group it leads.
    unsafe { libc::kill(target, sig) };
    let mut status = None;
    let ended = wait_for(Duration::from_secs(120), || {
        status = demo.child.try_wait().ok().flatten();
        status.is_some()
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    printed.extend(lines_until(&out, deadline));
    let errors = lines_until(&err, deadline).join("\n");
    assert!(
        ended,
        "the demo did not end within 120 s of the signal: {printed:#?}"
    );
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(130),
        "the demo's exit after the signal; it printed {printed:#?}\n{errors}"
    );
    assert!(
        printed.iter().any(|l| l.starts_with("cleaned up")),
        "no clean-up line: {printed:#?}"
    );
    assert!(errors.contains("stopped by a signal"), "stderr: {errors}");

    assert_lab_removed(&lab);
    assert_eq!(
        processes_with(&format!("{lab}-xdpvs/")),
        Vec::<i32>::new(),
        "processes still running with the demo's configuration"
    );
}

#[test]
fn the_demo_stopped_by_sigterm_removes_its_lab_and_exits_130() {
    stopped_by(libc::SIGTERM, false);
}

#[test]
fn the_demo_stopped_by_sigint_to_its_group_removes_its_lab_and_exits_130() {
    stopped_by(libc::SIGINT, true);
}

/// Killed, the demo runs no code: its namespaces, bpffs, directory and daemon stay.
/// The next program to take a prefix sweeps them, as [`tests::leftovers::sweep`] does
/// here.
#[test]
fn what_a_killed_demo_leaves_is_swept_by_the_next_run() {
    // The output is still read (a demo writing to a closed pipe would die of it).
    let Running {
        mut demo,
        out: _out,
        err: _err,
        ..
    } = start_demo(false);
    let lab = demo.lab.clone();
    let record = std::path::Path::new(tests::leftovers::OWNERS).join(demo.child.id().to_string());
    let prefix = format!("{lab}-");
    let daemon = format!("{lab}-xdpvs/");
    assert!(
        wait_for(Duration::from_secs(60), || !processes_with(&daemon)
            .is_empty()),
        "no daemon with the demo's configuration ({daemon}) within 60 s"
    );
    demo.child.kill().expect("SIGKILL to the demo");
    demo.child.wait().expect("the demo's exit");
    assert!(
        !namespaces_of(&prefix).is_empty()
            && mounted(&bpffs_of(&lab))
            && dir_of(&lab).exists()
            && !processes_with(&daemon).is_empty()
            && record.exists(),
        "a killed demo left no namespaces {prefix}*, bpffs, directory, daemon or record to sweep"
    );

    tests::leftovers::sweep();

    assert_lab_removed(&lab);
    assert!(
        wait_for(Duration::from_secs(10), || processes_with(&daemon)
            .is_empty()),
        "the demo's daemon still runs: {:?}",
        processes_with(&daemon)
    );
    assert!(
        !record.exists(),
        "the dead demo's record {} is left",
        record.display()
    );
}
