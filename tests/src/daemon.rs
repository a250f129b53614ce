//! `xdpvs run` as an operator starts it: a child process in the balancer's namespace,
//! reading a YAML file. Stopped with SIGTERM on drop; since SIGTERM leaves the data path
//! forwarding, the lab that owns the instance tears it down (`xdpvs teardown`).

use std::{
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::netns::Netns;

/// The `xdpvs` binary under test: `$XDPVS_BIN`, else the workspace's release build.
pub fn binary() -> PathBuf {
    std::env::var_os("XDPVS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/xdpvs"))
}

pub struct Daemon {
    child: Option<Child>,
    pub log: PathBuf,
    /// Its slot among the daemons a second signal stops (`crate::signals::started`).
    slot: Option<usize>,
}

impl Daemon {
    /// Starts `xdpvs run --config <config>` in `ns` and waits until it reports running.
    /// Panics with the daemon's log if it exits or does not come up within 20 s.
    pub fn start(ns: &Netns, config: &Path) -> Self {
        Self::start_as(ns, config, &binary(), &config.with_extension("log"))
    }

    /// As [`Daemon::start`], running the binary `bin` and logging to `log`: an upgrade
    /// runs a copy of the binary, and each start of a restart test keeps its own log.
    pub fn start_as(ns: &Netns, config: &Path, bin: &Path, log: &Path) -> Self {
        let args = [
            "run".to_string(),
            "--config".to_string(),
            config.display().to_string(),
        ];
        Self::launch(ns, bin, &args, log, "xdpvs running", &[])
    }

    /// Starts `xdpvs <args>` in `ns`, logging to `log`, and waits until the log shows
    /// `ready`. Panics with the log if it exits or is not ready within 20 s.
    pub fn spawn(ns: &Netns, args: &[String], log: &Path, ready: &str) -> Self {
        Self::spawn_env(ns, args, log, ready, &[])
    }

    /// As [`Daemon::spawn`], with extra environment variables.
    pub fn spawn_env(
        ns: &Netns,
        args: &[String],
        log: &Path,
        ready: &str,
        env: &[(&str, String)],
    ) -> Self {
        Self::launch(ns, &binary(), args, log, ready, env)
    }

    /// Runs `bin <args>` in `ns` with `env`, stderr to `log`, and waits for `ready`.
    fn launch(
        ns: &Netns,
        bin: &Path,
        args: &[String],
        log: &Path,
        ready: &str,
        env: &[(&str, String)],
    ) -> Self {
        assert!(
            bin.exists(),
            "{} not built: run `cargo xtask test` (it builds it)",
            bin.display()
        );
        let log = log.to_path_buf();
        let log_file = std::fs::File::create(&log).expect("daemon log");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns.name])
            .arg(bin)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        let handled = crate::signals::handled();
        if handled {
            // Out of the terminal's foreground group: the program that handles a
            // Ctrl-C stops the daemon itself (crate::signals).
            cmd.process_group(0);
        }
        let child = cmd.spawn().expect("spawning xdpvs");
        let slot = handled
            .then(|| crate::signals::started(child.id() as i32))
            .flatten();
        let mut d = Daemon {
            child: Some(child),
            log,
            slot,
        };
        let up = crate::wait_for(Duration::from_secs(20), || {
            if let Some(Ok(Some(status))) = d.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "xdpvs {args:?} exited ({status}) during start-up:\n{}",
                    d.log_text()
                );
            }
            d.log_text().contains(ready)
        });
        assert!(
            up,
            "xdpvs {args:?} did not come up within 20 s:\n{}",
            d.log_text()
        );
        d
    }

    /// Returns: the daemon's process id (`ip netns exec` execs the binary in place), or
    /// `None` once stopped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal to the daemon.
    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill on our own child's pid.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// Stops the daemon with SIGTERM. Returns: its exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let mut code = None;
        let ended = crate::wait_for(Duration::from_secs(5), || match child.try_wait() {
            Ok(Some(s)) => {
                code = s.code();
                true
            }
            _ => false,
        });
        if !ended {
            let _ = child.kill();
            code = child.wait().ok().and_then(|s| s.code());
        }
        self.reaped();
        code
    }

    /// Kills the daemon with SIGKILL (a crash: it cleans nothing up) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            self.reaped();
        }
    }

    /// Forgets the reaped daemon's pid for a second signal (`crate::signals`).
    fn reaped(&mut self) {
        if let Some(slot) = self.slot.take() {
            crate::signals::ended(slot);
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `xdpvs <args>` in `ns`, as an operator would (`ip netns exec`).
/// Returns: its exit code, stdout and stderr.
pub fn cli(ns: &Netns, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(binary())
        .args(args)
        .output()
        .expect("running xdpvs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Takes `instance` (pinned under `pin_path`) off the host from `ns` with `xdpvs
/// teardown` by name and pin path (a test may have left a broken file), on a lab's
/// drop: a failure is reported, not raised, and a state file it left is removed, with
/// `/run/xdpvs` once empty.
pub fn teardown(ns: &Netns, instance: &str, pin_path: &Path) {
    let pin_path = pin_path.display().to_string();
    let (code, out, err) = cli(
        ns,
        &["teardown", "--instance", instance, "--pin-path", &pin_path],
    );
    if code != Some(0) {
        eprintln!("{instance}: xdpvs teardown exited {code:?}: {out}{err}");
    }
    let state = Path::new("/run/xdpvs").join(format!("{instance}.state.json"));
    if state.exists() {
        eprintln!("{instance}: removing the state file teardown left");
        let _ = std::fs::remove_file(state);
    }
    // The directory the daemon made for its state file, if nothing else is in it (a
    // daemon of the host's own keeps its socket there).
    let _ = std::fs::remove_dir("/run/xdpvs");
}
