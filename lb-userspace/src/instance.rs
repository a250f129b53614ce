//! What one instance of xdpvs leaves on the host between runs of its daemon: the
//! pinned data path (see `dataplane::pins`) and a state file,
//! `/run/xdpvs/<instance>.state.json`, with the VIPs the daemon added and when a daemon
//! last took the data path over and left it. A daemon that starts adopts both;
//! `xdpvs teardown` removes both.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::{
    config::{self, Config},
    control,
    dataplane::pins::Pins,
    netlink,
};

/// Where instances keep their state files.
pub const STATE_DIR: &str = "/run/xdpvs";

/// What a daemon records for the next one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// VIPs the daemon added (interface index, address): the next daemon removes those
    /// its file no longer has, teardown removes them all.
    pub added_vips: Vec<(u32, IpAddr)>,
    /// When a daemon last started serving, in seconds since the epoch.
    pub started_at: Option<u64>,
    /// When the last daemon stopped and left the data path forwarding (`None` while
    /// one runs).
    pub stopped_at: Option<u64>,
    /// Taken out by `xdpvs withdraw` (until `xdpvs announce`): the next daemon stays out.
    #[serde(default)]
    pub withdrawn: bool,
    /// The routing table the daemon announced VIPs in, for withdrawing them when no
    /// daemon runs (`xdpvs withdraw`, teardown).
    #[serde(default)]
    pub announce_table: Option<u32>,
}

/// One instance: its name, its pins, its state file and its control socket.
#[derive(Clone, Debug)]
pub struct Instance {
    pub name: String,
    pub pins: Pins,
    pub socket: PathBuf,
    state: PathBuf,
}

/// Returns: now, in seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Instance {
    /// The instance `config` names.
    pub fn of(config: &Config) -> Self {
        Self::named(&config.instance, &config.pin_path, &config.control_socket)
    }

    /// Instance `name`, pinned under `pin_path`, its daemon answering on `socket`.
    pub fn named(name: &str, pin_path: &Path, socket: &Path) -> Self {
        Self {
            name: name.to_string(),
            pins: Pins::new(pin_path, name),
            socket: socket.to_owned(),
            state: Path::new(STATE_DIR).join(format!("{name}.state.json")),
        }
    }

    /// Instance `name` with the default pin path and socket.
    pub fn by_name(name: &str, pin_path: Option<&Path>) -> Self {
        let pin_path = pin_path.unwrap_or(Path::new(config::DEFAULT_PIN_PATH));
        Self::named(name, pin_path, &config::default_socket(name))
    }

    /// Returns: the state the last daemon left (empty when there is none; a file that
    /// cannot be read is reported and taken as empty).
    pub fn load_state(&self) -> State {
        match std::fs::read_to_string(&self.state) {
            Ok(text) => serde_json::from_str(&text).unwrap_or_else(|e| {
                tracing::warn!(file = %self.state.display(), "state file not understood, ignored: {e}");
                State::default()
            }),
            Err(_) => State::default(),
        }
    }

    /// Writes `state` for the next daemon (whole: a new file renamed into place).
    pub fn save_state(&self, state: &State) -> anyhow::Result<()> {
        let dir = self.state.parent().unwrap_or(Path::new(STATE_DIR));
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let tmp = self.state.with_extension("json.new");
        std::fs::write(&tmp, serde_json::to_vec_pretty(state)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.state)
            .with_context(|| format!("writing {}", self.state.display()))
    }

    /// Records, for the next daemon, whether the node is withdrawn (`xdpvs withdraw` or
    /// `announce` while no daemon runs).
    pub fn set_withdrawn(&self, withdrawn: bool) -> anyhow::Result<()> {
        let state = State {
            withdrawn,
            ..self.load_state()
        };
        self.save_state(&state)
    }

    /// Removes the routes announcing this instance's VIPs while no daemon runs: from
    /// the table its last daemon recorded, else from `table`. Returns: the table and
    /// the VIPs withdrawn, `None` when no table is known.
    pub async fn withdraw_routes(
        &self,
        table: Option<u32>,
    ) -> anyhow::Result<Option<(u32, Vec<IpAddr>)>> {
        let Some(table) = self.load_state().announce_table.or(table) else {
            return Ok(None);
        };
        let handle = netlink::connect().context("netlink")?;
        let vips = netlink::withdraw_table(&handle, table).await?;
        Ok(Some((table, vips)))
    }

    /// Returns: whether a daemon answers on the instance's control socket.
    pub fn daemon_running(&self) -> bool {
        control::client::answers(&self.socket)
    }

    /// Returns: what to tell an operator who asks for the status of an instance whose
    /// daemon is not running, when its data path still forwards.
    pub fn unattended(&self) -> Option<String> {
        if !self.pins.exist() {
            return None;
        }
        let since = match self.load_state().stopped_at {
            Some(t) => format!(
                "since {} ago",
                config::fmt_duration(Duration::from_secs(now().saturating_sub(t)))
            ),
            None => "since its daemon died".to_string(),
        };
        Some(format!(
            "no daemon answers on {}, but the data path of instance `{}` ({}) has been forwarding unattended {since}: health checks are not running, nothing follows the configuration, and next hops without a neighbour entry are not resolved. `xdpvs run` takes it over; `xdpvs teardown` removes it.",
            self.socket.display(),
            self.name,
            self.pins.dir().display(),
        ))
    }

    /// Takes the instance off the host: its XDP links (detaching the program), the
    /// routes announcing its VIPs, the VIPs its daemons added, its pinned maps and
    /// directories, its state file.
    /// Refuses while a daemon runs. Running it again finds nothing and succeeds.
    /// Returns: what was removed, for the operator.
    pub async fn teardown(&self) -> anyhow::Result<Vec<String>> {
        if self.daemon_running() {
            anyhow::bail!(
                "a daemon answers on {}: stop it first (systemctl stop xdpvs), then tear down",
                self.socket.display()
            );
        }
        let state = self.load_state();
        let mut removed = self.pins.remove_all()?;
        if let Some(table) = state.announce_table {
            let handle = netlink::connect().context("netlink")?;
            for vip in netlink::withdraw_table(&handle, table).await? {
                removed.push(format!("the route announcing {vip} (table {table})"));
            }
        }
        if !state.added_vips.is_empty() {
            let handle = netlink::connect().context("netlink")?;
            for (ifindex, vip) in &state.added_vips {
                if netlink::has_address(&handle, *ifindex, *vip).await? {
                    netlink::del_address(&handle, *ifindex, *vip).await?;
                    removed.push(format!("VIP {vip}"));
                }
            }
        }
        match std::fs::remove_file(&self.state) {
            Ok(()) => removed.push(format!("state file {}", self.state.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).context(format!("removing {}", self.state.display())),
        }
        Ok(removed)
    }
}
