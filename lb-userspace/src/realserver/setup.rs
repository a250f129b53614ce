//! `xdpvs realserver setup`: the host configuration a real server needs for direct
//! routing or tunnelling, printed (default), applied (`--apply`) or reverted (`--undo`).
//!
//! Both methods deliver packets whose destination is the VIP, so the real must hold the
//! VIP (on loopback, as a host address), and must not answer ARP for it: otherwise the
//! real and the balancer both claim the VIP on the shared segment, and clients' traffic
//! bypasses the balancer or flaps between hosts ("the ARP problem"). Hence
//! `arp_ignore=1` (answer ARP only for addresses of the receiving interface) and
//! `arp_announce=2` (never use the VIP as the source of ARP requests). The kernel takes
//! the larger of `conf.all` and the interface's value, so `conf.all` covers every
//! interface. IPv6 needs neither: Linux answers neighbour solicitations only for
//! addresses of the receiving interface.
//!
//! The tunnel method also needs reverse-path filtering loose (2) on the interface the
//! tunnelled packets arrive on, since the unwrapped packet's source is the client, and
//! the decapsulator (`xdpvs realserver decap`), a long-running process this command
//! names but does not start.
//!
//! `--apply` records every change with the value it replaced in a state file; `--undo`
//! reverts exactly those and deletes the file. Applying twice changes nothing more and
//! keeps the first recorded values.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::netlink;

/// Where `--apply` records what it changed unless `--state` says otherwise. Under /run:
/// the changes (addresses, sysctls) do not survive a reboot either.
pub const DEFAULT_STATE: &str = "/run/xdpvs/realserver.json";

/// The forwarding method the real serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SetupMethod {
    /// Direct routing.
    Dr,
    /// IP-in-IP tunnelling (with xdpvs's decapsulator).
    Tunnel,
}

impl SetupMethod {
    fn describe(self) -> &'static str {
        match self {
            SetupMethod::Dr => "direct routing",
            SetupMethod::Tunnel => "tunnelling",
        }
    }
}

/// An IPv4 per-interface sysctl: `net.ipv4.conf.<conf>.<name>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sysctl {
    /// `all` or an interface name.
    pub conf: String,
    pub name: String,
}

impl Sysctl {
    fn new(conf: &str, name: &str) -> Self {
        Self {
            conf: conf.to_string(),
            name: name.to_string(),
        }
    }

    fn path(&self) -> PathBuf {
        Path::new("/proc/sys/net/ipv4/conf")
            .join(&self.conf)
            .join(&self.name)
    }

    /// Returns: the name as `sysctl(8)` takes it (slashes when an interface name has a
    /// dot, as VLAN interfaces do).
    fn key(&self) -> String {
        if self.conf.contains('.') {
            format!("net/ipv4/conf/{}/{}", self.conf, self.name)
        } else {
            format!("net.ipv4.conf.{}.{}", self.conf, self.name)
        }
    }
}

/// One thing the method needs of the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// `sysctl` must be `want`; it is `now`, which `ok` says is fine or not.
    Sysctl {
        sysctl: Sysctl,
        want: String,
        now: String,
        ok: bool,
        why: &'static str,
    },
    /// `addr` must be a host address on loopback; `present` if it is.
    Address { addr: IpAddr, present: bool },
    /// A process to run (not started by this command).
    Run { command: String, why: &'static str },
}

impl Step {
    /// Returns: whether `--apply` would change something for this step.
    pub fn needed(&self) -> bool {
        match self {
            Step::Sysctl { ok, .. } => !ok,
            Step::Address { present, .. } => !present,
            Step::Run { .. } => false,
        }
    }

    /// Returns: the shell command that does this step.
    pub fn command(&self) -> String {
        match self {
            Step::Sysctl { sysctl, want, .. } => format!("sysctl -w {}={want}", sysctl.key()),
            Step::Address { addr, .. } if addr.is_ipv4() => {
                format!("ip -4 addr add {addr}/32 dev lo")
            }
            // Deprecated, as `--apply` adds it: never the source of the host's own
            // connections.
            Step::Address { addr, .. } => {
                format!("ip -6 addr add {addr}/128 dev lo nodad preferred_lft 0")
            }
            Step::Run { command, .. } => command.clone(),
        }
    }
}

/// What the host has now, as [`plan`] needs it.
pub trait HostState {
    /// Returns: the value of `sysctl`, or `None` if it does not exist.
    fn sysctl(&self, sysctl: &Sysctl) -> Option<String>;
    /// Returns: whether `addr` is on loopback.
    fn on_loopback(&self, addr: IpAddr) -> bool;
}

/// Returns: the steps `method` needs for `vips` on this host, in the order they are
/// applied (ARP settings before the VIP is added, so the VIP is never announced).
pub fn plan(
    vips: &[IpAddr],
    method: SetupMethod,
    interface: Option<&str>,
    host: &impl HostState,
) -> anyhow::Result<Vec<Step>> {
    anyhow::ensure!(!vips.is_empty(), "give at least one --vip");
    let vips: Vec<IpAddr> = vips
        .iter()
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    for v in &vips {
        anyhow::ensure!(
            !v.is_unspecified() && !v.is_multicast() && !v.is_loopback(),
            "{v} cannot be a VIP"
        );
    }
    anyhow::ensure!(
        method != SetupMethod::Tunnel || interface.is_some(),
        "--method tunnel needs --interface: the interface tunnelled packets arrive on"
    );
    let v4 = vips.iter().any(IpAddr::is_ipv4);
    let read = |s: &Sysctl| {
        host.sysctl(s).with_context(|| {
            format!(
                "{} does not exist (IPv4 disabled, or no interface `{}`?)",
                s.key(),
                s.conf
            )
        })
    };
    let mut steps = Vec::new();
    if v4 {
        let ignore = Sysctl::new("all", "arp_ignore");
        let now = read(&ignore)?;
        // 1, 2 and 8 all keep the VIP on lo from being answered on other interfaces.
        let ok = matches!(now.as_str(), "1" | "2" | "8");
        steps.push(Step::Sysctl {
            sysctl: ignore,
            want: "1".into(),
            now,
            ok,
            why: "answer ARP only for addresses of the receiving interface, not the VIP on lo",
        });
        let announce = Sysctl::new("all", "arp_announce");
        let now = read(&announce)?;
        let ok = now == "2";
        steps.push(Step::Sysctl {
            sysctl: announce,
            want: "2".into(),
            now,
            ok,
            why: "never use the VIP as the source of this host's ARP requests",
        });
    }
    if let Some(ifname) = interface.filter(|_| method == SetupMethod::Tunnel && v4) {
        let all = read(&Sysctl::new("all", "rp_filter"))?;
        let rp = Sysctl::new(ifname, "rp_filter");
        let now = read(&rp)?;
        // The kernel uses the larger of all and the interface's value: strict (1) only
        // if that is 1.
        let num = |v: &str| v.parse::<u8>().unwrap_or(1);
        let strict = num(&all).max(num(&now)) == 1;
        steps.push(Step::Sysctl {
            sysctl: rp,
            want: "2".into(),
            ok: !strict,
            now,
            why: "loose reverse-path filter: unwrapped packets come from clients, not from the tunnel's peer",
        });
    }
    for &addr in &vips {
        steps.push(Step::Address {
            addr,
            present: host.on_loopback(addr),
        });
    }
    if method == SetupMethod::Tunnel {
        let ifname = interface.unwrap_or_default();
        let list: Vec<String> = vips.iter().map(|v| format!("--vip {v}")).collect();
        steps.push(Step::Run {
            command: format!(
                "xdpvs realserver decap --interface {ifname} {}",
                list.join(" ")
            ),
            why: "unwraps the balancer's tunnelled packets in XDP; keep it running (a service)",
        });
    }
    Ok(steps)
}

/// Renders the plan for the default (print) mode: a script of what is missing, with
/// what is already in place as comments.
pub fn render(steps: &[Step], method: SetupMethod) -> String {
    let mut out = String::new();
    let m = method.describe();
    let _ = writeln!(
        out,
        "# What this host needs to be a real server for {m} (nothing was changed;\n# --apply does it, --undo reverts what --apply did)."
    );
    for s in steps {
        match s {
            Step::Sysctl { now, why, .. } if s.needed() => {
                let _ = writeln!(out, "{}\t# now {now}: {why}", s.command());
            }
            Step::Sysctl { sysctl, now, .. } => {
                let _ = writeln!(out, "# in place: {} = {now}", sysctl.key());
            }
            Step::Address { addr, present } => {
                if *present {
                    let _ = writeln!(out, "# in place: {addr} on lo");
                } else {
                    let _ = writeln!(
                        out,
                        "{}\t# the VIP, so that packets for it are accepted here",
                        s.command()
                    );
                }
            }
            Step::Run { command, why } => {
                let _ = writeln!(out, "# and run: {command}\t# {why}");
            }
        }
    }
    out
}

/// A sysctl `--apply` changed, and the value it replaced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SysctlChange {
    pub sysctl: Sysctl,
    pub old: String,
    pub new: String,
}

/// What `--apply` changed, for `--undo`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub sysctls: Vec<SysctlChange>,
    /// Addresses added to loopback.
    pub addresses: Vec<IpAddr>,
}

impl State {
    fn load(path: &Path) -> anyhow::Result<Option<State>> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).map(Some).with_context(|| {
                format!(
                    "{}: not a state file of xdpvs realserver setup",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn save(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let tmp = path.with_extension("tmp");
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
    }

    /// Records a sysctl change, keeping the first value replaced if it was changed
    /// before.
    fn record_sysctl(&mut self, sysctl: &Sysctl, old: &str, new: &str) {
        match self.sysctls.iter_mut().find(|c| c.sysctl == *sysctl) {
            Some(c) => c.new = new.to_string(),
            None => self.sysctls.push(SysctlChange {
                sysctl: sysctl.clone(),
                old: old.to_string(),
                new: new.to_string(),
            }),
        }
    }
}

/// The host as it is, read from /proc/sys and rtnetlink.
struct Live {
    loopback: BTreeSet<IpAddr>,
}

impl HostState for Live {
    fn sysctl(&self, sysctl: &Sysctl) -> Option<String> {
        read_sysctl(sysctl)
    }
    fn on_loopback(&self, addr: IpAddr) -> bool {
        self.loopback.contains(&addr)
    }
}

fn read_sysctl(sysctl: &Sysctl) -> Option<String> {
    std::fs::read_to_string(sysctl.path())
        .ok()
        .map(|v| v.trim().to_string())
}

fn write_sysctl(sysctl: &Sysctl, value: &str) -> anyhow::Result<()> {
    std::fs::write(sysctl.path(), value)
        .with_context(|| format!("setting {}={value} (run as root)", sysctl.key()))
}

/// Returns: a netlink connection, and loopback's interface index.
async fn loopback() -> anyhow::Result<(rtnetlink::Handle, u32)> {
    let handle = netlink::connect().context("netlink")?;
    let lo = netlink::interface(&handle, "lo").await?.index;
    Ok((handle, lo))
}

/// Returns: [`plan`] for this host as it is now (`lo` is loopback's index).
async fn plan_live(
    handle: &rtnetlink::Handle,
    lo: u32,
    vips: &[IpAddr],
    method: SetupMethod,
    interface: Option<&str>,
) -> anyhow::Result<Vec<Step>> {
    let mut loopback = BTreeSet::new();
    for &v in vips {
        if netlink::has_address(handle, lo, v).await? {
            loopback.insert(v);
        }
    }
    plan(vips, method, interface, &Live { loopback })
}

/// `xdpvs realserver setup` without `--apply`/`--undo`: prints the plan.
pub async fn print(
    vips: &[IpAddr],
    method: SetupMethod,
    interface: Option<&str>,
) -> anyhow::Result<()> {
    let (handle, lo) = loopback().await?;
    let steps = plan_live(&handle, lo, vips, method, interface).await?;
    print!("{}", render(&steps, method));
    Ok(())
}

/// `--apply`: makes every needed change, recording each in `state` as it is made (a
/// failure part way leaves a state `--undo` can revert).
pub async fn apply(
    vips: &[IpAddr],
    method: SetupMethod,
    interface: Option<&str>,
    state_path: &Path,
) -> anyhow::Result<()> {
    let (handle, lo) = loopback().await?;
    let steps = plan_live(&handle, lo, vips, method, interface).await?;
    let mut state = State::load(state_path)?.unwrap_or_default();
    let mut changed = 0;
    for s in &steps {
        match s {
            Step::Run { command, why } => {
                println!("still to do: run {command}  ({why})");
                continue;
            }
            _ if !s.needed() => continue,
            Step::Sysctl {
                sysctl, want, now, ..
            } => {
                write_sysctl(sysctl, want)?;
                state.record_sysctl(sysctl, now, want);
            }
            Step::Address { addr, .. } => {
                netlink::add_address(&handle, lo, *addr).await?;
                if !state.addresses.contains(addr) {
                    state.addresses.push(*addr);
                }
            }
        }
        state.save(state_path)?;
        changed += 1;
        println!("applied: {}", s.command());
    }
    if changed == 0 {
        println!(
            "nothing to change: this host is set up for {}",
            method.describe()
        );
    } else {
        println!(
            "{changed} changes applied and recorded in {}; `xdpvs realserver setup --undo` reverts them",
            state_path.display()
        );
    }
    Ok(())
}

/// `--undo`: reverts what `--apply` recorded in `state`, then deletes it. A sysctl that
/// something else changed since is left as it is (and said so).
pub async fn undo(state_path: &Path) -> anyhow::Result<()> {
    let Some(state) = State::load(state_path)? else {
        println!("nothing to undo: no state at {}", state_path.display());
        return Ok(());
    };
    let (handle, lo) = loopback().await?;
    // Addresses first: the VIP leaves before ARP settings loosen.
    for addr in &state.addresses {
        netlink::del_address(&handle, lo, *addr).await?;
        println!("removed: {addr} from lo");
    }
    for c in state.sysctls.iter().rev() {
        match read_sysctl(&c.sysctl) {
            Some(now) if now == c.new => {
                write_sysctl(&c.sysctl, &c.old)?;
                println!("restored: {} = {}", c.sysctl.key(), c.old);
            }
            Some(now) => println!(
                "left as is: {} is {now}, changed since setup set it to {}",
                c.sysctl.key(),
                c.new
            ),
            None => println!("left as is: {} no longer exists", c.sysctl.key()),
        }
    }
    std::fs::remove_file(state_path)
        .with_context(|| format!("removing {}", state_path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    struct Fake {
        sysctls: HashMap<String, String>,
        lo: Vec<IpAddr>,
    }

    impl HostState for Fake {
        fn sysctl(&self, s: &Sysctl) -> Option<String> {
            self.sysctls.get(&s.key()).cloned()
        }
        fn on_loopback(&self, addr: IpAddr) -> bool {
            self.lo.contains(&addr)
        }
    }

    fn fresh() -> Fake {
        let sysctls = [
            ("net.ipv4.conf.all.arp_ignore", "0"),
            ("net.ipv4.conf.all.arp_announce", "0"),
            ("net.ipv4.conf.all.rp_filter", "1"),
            ("net.ipv4.conf.eth1.rp_filter", "0"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        Fake {
            sysctls,
            lo: Vec::new(),
        }
    }

    fn vip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Returns: the commands of the steps `--apply` would make.
    fn needed(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .filter(|s| s.needed())
            .map(Step::command)
            .collect()
    }

    #[test]
    fn dr_on_a_fresh_host_needs_arp_settings_before_the_vip() {
        let steps = plan(&[vip("10.0.0.100")], SetupMethod::Dr, None, &fresh()).unwrap();
        let cmds = needed(&steps);
        assert_eq!(
            cmds,
            [
                "sysctl -w net.ipv4.conf.all.arp_ignore=1",
                "sysctl -w net.ipv4.conf.all.arp_announce=2",
                "ip -4 addr add 10.0.0.100/32 dev lo",
            ]
        );
        let text = render(&steps, SetupMethod::Dr);
        assert!(
            text.contains("sysctl -w net.ipv4.conf.all.arp_ignore=1\t# now 0:"),
            "{text}"
        );
    }

    #[test]
    fn ipv6_needs_only_the_vip_and_what_is_in_place_is_left() {
        let steps = plan(&[vip("2001:db8::100")], SetupMethod::Dr, None, &fresh()).unwrap();
        let cmds = needed(&steps);
        assert_eq!(
            cmds,
            ["ip -6 addr add 2001:db8::100/128 dev lo nodad preferred_lft 0"]
        );

        let mut host = fresh();
        host.sysctls
            .insert("net.ipv4.conf.all.arp_ignore".into(), "2".into());
        host.sysctls
            .insert("net.ipv4.conf.all.arp_announce".into(), "2".into());
        host.lo.push(vip("10.0.0.100"));
        let steps = plan(&[vip("10.0.0.100")], SetupMethod::Dr, None, &host).unwrap();
        assert!(steps.iter().all(|s| !s.needed()), "{steps:?}");
        let text = render(&steps, SetupMethod::Dr);
        assert!(
            text.contains("# in place: net.ipv4.conf.all.arp_ignore = 2"),
            "{text}"
        );
        assert!(text.contains("# in place: 10.0.0.100 on lo"), "{text}");
    }

    #[test]
    fn tunnel_loosens_rp_filter_on_its_interface_and_names_the_decapsulator() {
        let vips = [vip("10.0.0.100"), vip("10.0.0.101")];
        assert!(plan(&vips, SetupMethod::Tunnel, None, &fresh())
            .unwrap_err()
            .to_string()
            .contains("needs --interface"));
        let steps = plan(&vips, SetupMethod::Tunnel, Some("eth1"), &fresh()).unwrap();
        let cmds = needed(&steps);
        assert!(
            cmds.contains(&"sysctl -w net.ipv4.conf.eth1.rp_filter=2".to_string()),
            "{cmds:?}"
        );
        let run = steps.iter().find_map(|s| match s {
            Step::Run { command, .. } => Some(command.clone()),
            _ => None,
        });
        assert_eq!(
            run.as_deref(),
            Some("xdpvs realserver decap --interface eth1 --vip 10.0.0.100 --vip 10.0.0.101")
        );
        // all=0 and the interface 0: not strict, nothing to change.
        let mut host = fresh();
        host.sysctls
            .insert("net.ipv4.conf.all.rp_filter".into(), "0".into());
        let steps = plan(&vips, SetupMethod::Tunnel, Some("eth1"), &host).unwrap();
        assert!(!steps
            .iter()
            .any(|s| s.needed() && s.command().contains("rp_filter")));
        // A missing interface is named.
        let e = plan(&vips, SetupMethod::Tunnel, Some("eth9"), &fresh()).unwrap_err();
        assert!(e.to_string().contains("no interface `eth9`"), "{e}");
    }

    #[test]
    fn bad_vips_are_refused() {
        for bad in ["0.0.0.0", "127.0.0.1", "224.0.0.1", "::1"] {
            assert!(
                plan(&[vip(bad)], SetupMethod::Dr, None, &fresh()).is_err(),
                "{bad}"
            );
        }
        assert!(plan(&[], SetupMethod::Dr, None, &fresh()).is_err());
    }

    #[test]
    fn applying_twice_keeps_the_first_values_replaced() {
        let mut s = State::default();
        let k = Sysctl::new("all", "arp_ignore");
        s.record_sysctl(&k, "0", "1");
        s.record_sysctl(&k, "1", "1");
        assert_eq!(
            s.sysctls,
            [SysctlChange {
                sysctl: k,
                old: "0".into(),
                new: "1".into()
            }]
        );
        let dir = std::env::temp_dir().join(format!("xdpvs-state-{}", std::process::id()));
        let path = dir.join("realserver.json");
        s.addresses.push(vip("10.0.0.100"));
        s.save(&path).unwrap();
        assert_eq!(State::load(&path).unwrap(), Some(s));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(State::load(&path).unwrap(), None);
    }
}
