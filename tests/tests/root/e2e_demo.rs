//! The demo, the README's first command, stopped by SIGTERM once its first daemon
//! starts: it finishes the round under way, removes its namespaces, bpffs mount,
//! daemon and files, and exits 130 (`tests::signals`). Ended by the kernel's default
//! action instead, it would leave all of them behind.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use tests::{require_root, wait_for};

/// The demo's process, stopped (SIGTERM, which it cleans up after, then SIGKILL) if
/// the test ends before it does; then whatever of its lab (`lab`, once known) it left
/// behind is removed, so that a failing test leaves nothing either.
struct Demo {
    child: Child,
    lab: Option<String>,
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
        let Some(lab) = &self.lab else {
            return;
        };
        for pid in processes_with(&format!("{lab}-xdpvs/")) {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
        }
        for ns in namespaces_of(&format!("{lab}-")) {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
        let tmp = std::env::temp_dir();
        let bpffs = tmp.join(format!("{lab}-bpffs"));
        let _ = Command::new("umount").arg("-l").arg(&bpffs).status();
        let _ = std::fs::remove_dir_all(&bpffs);
        let _ = std::fs::remove_dir_all(tmp.join(format!("{lab}-xdpvs")));
        let _ = std::fs::remove_file(Path::new("/run/xdpvs").join(format!("{lab}.state.json")));
    }
}

/// Returns: the namespaces whose names start with `prefix`.
fn namespaces_of(prefix: &str) -> Vec<String> {
    let out = tests::netns::sh(&["ip", "netns", "list"]);
    out.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

/// Returns: the pids whose command line mentions `needle`.
fn processes_with(needle: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn the_demo_stopped_by_sigterm_removes_its_lab_and_exits_130() {
    require_root();
    let mut child = Command::new(env!("CARGO_BIN_EXE_demo"))
        .env("XDPVS_BIN", tests::daemon::binary())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the demo");
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let mut demo = Demo { child, lab: None };
    let (tx, lines) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let errors = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());

    // "== weights [1, 1, 1]: starting `xdpvs run --config …` in namespace xv…-lb"
    let mut seen = Vec::new();
    let lab = loop {
        let line = lines
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("the demo started no daemon ({e}); it printed {seen:#?}"));
        if let Some(ns) = line.split("in namespace ").nth(1) {
            break ns.trim().trim_end_matches("-lb").to_string();
        }
        seen.push(line);
    };
    assert!(lab.starts_with("xv"), "lab prefix {lab:?}");
    demo.lab = Some(lab.clone());
    let prefix = format!("{lab}-");
    assert!(
        !namespaces_of(&prefix).is_empty(),
        "the demo's namespaces {prefix}* are not there while it runs"
    );

    // SAFETY: kill on our own child's pid.
    unsafe { libc::kill(demo.child.id() as i32, libc::SIGTERM) };
    let mut status = None;
    let ended = wait_for(Duration::from_secs(120), || {
        status = demo.child.try_wait().expect("waiting for the demo");
        status.is_some()
    });
    assert!(ended, "the demo did not end within 120 s of SIGTERM");
    reader.join().expect("stdout reader");
    let printed: Vec<String> = lines.try_iter().collect();
    let errors = errors.join().expect("stderr reader");
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(130),
        "the demo's exit after SIGTERM; it printed {printed:#?}\n{errors}"
    );
    assert!(
        printed.iter().any(|l| l.starts_with("cleaned up")),
        "no clean-up line: {printed:#?}"
    );
    assert!(errors.contains("stopped by a signal"), "stderr: {errors}");

    assert_eq!(
        namespaces_of(&prefix),
        Vec::<String>::new(),
        "namespaces left"
    );
    let tmp = std::env::temp_dir();
    let bpffs = tmp.join(format!("{lab}-bpffs"));
    let mounts = std::fs::read_to_string("/proc/mounts").expect("/proc/mounts");
    assert!(
        !mounts.contains(&*bpffs.to_string_lossy()),
        "{} still mounted",
        bpffs.display()
    );
    for left in [bpffs, tmp.join(format!("{lab}-xdpvs"))] {
        assert!(!left.exists(), "{} left behind", left.display());
    }
    let state = Path::new("/run/xdpvs").join(format!("{lab}.state.json"));
    assert!(!state.exists(), "{} left behind", state.display());
    let config_dir = format!("{lab}-xdpvs/");
    assert_eq!(
        processes_with(&config_dir),
        Vec::<String>::new(),
        "processes still running with the demo's configuration"
    );
}
