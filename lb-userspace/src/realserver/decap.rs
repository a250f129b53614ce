//! `xdpvs realserver decap`: the tunnel method's decapsulator.
//!
//! `decap` loads the real server's own BPF object ([`crate::BPF_REALSERVER_OBJECT`]: the
//! decapsulator and its three small maps, none of the balancer's), attaches it to the
//! interface tunnelled packets arrive on and keeps its maps true: the VIPs given on the
//! command line, and this host's own addresses (the accepted outer destinations),
//! re-read every few seconds.
//! It runs until SIGTERM/SIGINT and detaches on exit; `--detach` removes one left
//! attached by anything else.

use std::{collections::BTreeSet, net::IpAddr, time::Duration};

use anyhow::Context as _;
use aya::{
    maps::{HashMap, MapData, PerCpuArray},
    programs::Xdp,
    Ebpf,
};
use lb_common::realserver::{
    maps::{DECAP_LOCAL, DECAP_STATS, DECAP_VIPS, MAX_DECAP_ADDRS, PROGRAMS, PROG_DECAP},
    AddrKey, DECAP_DONE, DECAP_SKIPPED,
};
use rtnetlink::Handle;
use tokio::signal::unix::{signal, SignalKind};

use crate::{config::XdpMode, dataplane::bpf, netlink};

/// How often the host's addresses are re-read.
const ADDRESS_REFRESH: Duration = Duration::from_secs(2);

/// Loads the real server's BPF object; its programs are loaded (verified) but attached
/// nowhere. The root-run tests load it through here too.
/// Returns: the object.
pub fn load() -> anyhow::Result<Ebpf> {
    let mut ebpf = Ebpf::load(crate::BPF_REALSERVER_OBJECT)?;
    for &name in PROGRAMS {
        let prog: &mut Xdp = ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing from the real server's object"))?
            .try_into()?;
        prog.load()
            .with_context(|| format!("the kernel rejected XDP program {name}"))?;
    }
    Ok(ebpf)
}

fn addr_map<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> anyhow::Result<HashMap<&'a mut MapData, AddrKey, u8>> {
    let m = ebpf
        .map_mut(name)
        .with_context(|| format!("map {name} missing"))?;
    Ok(HashMap::try_from(m)?)
}

/// Makes map `name` hold exactly `want`.
fn sync_addrs(
    ebpf: &mut Ebpf,
    name: &'static str,
    have: &mut BTreeSet<IpAddr>,
    want: &BTreeSet<IpAddr>,
) -> anyhow::Result<()> {
    let mut map = addr_map(ebpf, name)?;
    for gone in have.difference(want) {
        map.remove(&AddrKey::new(*gone))
            .with_context(|| format!("removing {gone} from {name}"))?;
    }
    for new in want.difference(have) {
        map.insert(AddrKey::new(*new), 1, 0)
            .with_context(|| format!("adding {new} to {name}"))?;
    }
    *have = want.clone();
    Ok(())
}

fn counter(ebpf: &Ebpf, i: u32) -> u64 {
    ebpf.map(DECAP_STATS)
        .and_then(|m| PerCpuArray::<&MapData, u64>::try_from(m).ok())
        .and_then(|a| a.get(&i, 0).ok())
        .map(|v| v.iter().sum())
        .unwrap_or(0)
}

/// Runs the decapsulator on `interface` for `vips` until SIGTERM/SIGINT.
pub async fn decap(interface: &str, vips: &[IpAddr], mode: XdpMode) -> anyhow::Result<()> {
    anyhow::ensure!(!vips.is_empty(), "give at least one --vip");
    anyhow::ensure!(
        vips.len() <= MAX_DECAP_ADDRS as usize,
        "at most {MAX_DECAP_ADDRS} VIPs"
    );
    let handle = netlink::connect().context("netlink")?;
    let iface = netlink::interface(&handle, interface).await?;
    let mut ebpf =
        load().context("loading the BPF programs (run as root; kernel with BPF and XDP)")?;
    let mut vip_set = BTreeSet::new();
    sync_addrs(
        &mut ebpf,
        DECAP_VIPS,
        &mut vip_set,
        &vips.iter().copied().collect(),
    )?;
    let mut local = BTreeSet::new();
    refresh_local(&handle, &mut ebpf, &mut local).await?;
    bpf::attach(&mut ebpf, PROG_DECAP, iface.index, mode.into())
        .with_context(|| format!("interface {interface}"))?;
    let vip_list: Vec<String> = vips.iter().map(IpAddr::to_string).collect();
    tracing::info!(interface, vips = %vip_list.join(","), local_addresses = local.len(), "decap running");

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(ADDRESS_REFRESH);
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = tick.tick() => {
                if let Err(e) = refresh_local(&handle, &mut ebpf, &mut local).await {
                    tracing::error!("re-reading local addresses: {e:#}");
                }
            }
        }
    }
    tracing::info!(
        interface,
        decapsulated = counter(&ebpf, DECAP_DONE),
        skipped = counter(&ebpf, DECAP_SKIPPED),
        "decap stopping; XDP detached"
    );
    Ok(())
}

async fn refresh_local(
    handle: &Handle,
    ebpf: &mut Ebpf,
    have: &mut BTreeSet<IpAddr>,
) -> anyhow::Result<()> {
    let want: BTreeSet<IpAddr> = netlink::all_addresses(handle)
        .await?
        .into_iter()
        .filter(|a| !a.is_loopback())
        .take(MAX_DECAP_ADDRS as usize)
        .collect();
    if &want != have {
        sync_addrs(ebpf, DECAP_LOCAL, have, &want)?;
        tracing::info!(
            addresses = want.len(),
            "local addresses (accepted tunnel destinations) updated"
        );
    }
    Ok(())
}

/// Removes an XDP program left attached to `interface` (for instance by a decapsulator
/// that could not clean up). A program attached through a BPF link belongs to a running
/// process: stop that process instead.
pub async fn detach(interface: &str) -> anyhow::Result<()> {
    let handle = netlink::connect().context("netlink")?;
    let iface = netlink::interface(&handle, interface).await?;
    if netlink::xdp_prog_id(&handle, iface.index).await?.is_none() {
        println!("{interface}: no XDP program attached");
        return Ok(());
    }
    netlink::detach_xdp(&handle, iface.index).await.with_context(|| {
        format!("{interface}: the XDP program is held by a running process (a BPF link); stop that `xdpvs realserver decap` instead")
    })?;
    println!("{interface}: XDP program detached");
    Ok(())
}
