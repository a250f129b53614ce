//! The XDP program loaded for BPF_PROG_TEST_RUN, its maps filled by the daemon's own
//! code (YAML -> config -> Reconciler -> maps). Used by the fixture tests and the bench.
//! The real server's decapsulator, a separate object, has its own [`DecapFixture`].
//!
//! Each fixture owns a network namespace, entered by the calling thread, in which the
//! test runs happen (the kernel runs them on that namespace's loopback). For the
//! methods that route (NAT, tunnel) it holds a fixed, static world for the FIB lookup:
//!
//! ```text
//!   fxa (FIB_MAC) 10.0.1.1/24, fd00:1::1/64, forwarding on
//!     reals 10.0.1.x / fd00:1::x on link      neighbour: real_mac(addr)
//!     clients 192.0.2.0/24, 2001:db8:c::/64   neighbour: CLIENT_MAC
//!     10.0.9.0/24, fd00:9::/64 via .254/::fe  neighbour: GW_MAC
//! ```

use std::{fs::File, net::IpAddr, os::fd::AsRawFd as _, path::Path};

use aya::{
    maps::{HashMap, MapData, PerCpuArray},
    programs::{ProgramError, TestRun as _, TestRunOptions, Xdp},
    Ebpf,
};
use lb_common::{
    flow_hash,
    maps::{MAX_VS, PROG_LB, PROG_PASS},
    realserver::{
        maps::{DECAP_LOCAL, DECAP_STATS, DECAP_VIPS},
        AddrKey,
    },
    FlowKey, IfaceInfo, NeighMiss, VlanKey, VlanOut, IFACE_F_VLAN,
};
use xdpvs::{
    config::{self, Config, SystemFacts},
    dataplane::{
        bpf::{self, BpfDataplane, Programs},
        neigh_misses::NeighMisses,
        DataplaneRead as _, FlowReader as _,
    },
    model::RealKey,
    netlink,
    realserver::decap,
    reconcile::{fmt_mac, L2Next, Reconciler},
};

use crate::netns::{unique_prefix, Netns};

/// Test runs happen on the loopback device of the test's namespace (ifindex 1): a
/// real reached "through" it is forwarded with XDP_TX.
pub const TEST_IFINDEX: u32 = 1;
/// The balancer's MAC (registered for TEST_IFINDEX): the source MAC it writes, and the
/// destination of the frames the tests craft.
pub const LB_MAC: [u8; 6] = crate::packet::BALANCER_MAC;

/// MAC of the fixture's routed interface (source MAC of NAT and tunnel output).
pub const FIB_MAC: [u8; 6] = [0x02, 0x46, 0x49, 0x42, 0, 0x01];
/// MAC of every client address (the neighbour entry of 192.0.2.7 and 2001:db8:c::7).
pub const CLIENT_MAC: [u8; 6] = [0x02, 0x43, 0x4c, 0, 0, 0x07];
/// MAC of the router toward 10.0.9.0/24 and fd00:9::/64.
pub const GW_MAC: [u8; 6] = [0x02, 0x47, 0x57, 0, 0, 0xfe];
/// MACs of the interfaces standing in for VLAN devices (see `Fixture::add_vlans`).
pub const VLAN_MAC: [u8; 6] = [0x02, 0x56, 0x4c, 0, 0, 0x64];
pub const QINQ_MAC: [u8; 6] = [0x02, 0x56, 0x4c, 0, 0, 0xc8];
/// MTU of the routed interface.
pub const FIB_MTU: u32 = 1500;

/// Returns: the MAC the fixture gives the real at `addr` (derived from the address).
pub fn real_mac(addr: IpAddr) -> [u8; 6] {
    let o = match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets()[12..].to_vec(),
    };
    [0x02, 0x52, o[0], o[1], o[2], o[3]]
}

struct AnyInterface;
impl SystemFacts for AnyInterface {
    fn interface_exists(&self, _: &str) -> bool {
        true
    }
}

pub struct Fixture {
    pub rec: Reconciler<BpfDataplane>,
    programs: Programs,
    /// The data path's reports of unresolved next hops, once taken.
    misses: Option<NeighMisses>,
    pub config: Config,
    pub net: Netns,
}

/// Builds the fixture's namespace and moves the calling thread into it.
fn enter_namespace() -> Netns {
    let net = Netns::new(&format!("{}-fx", unique_prefix()));
    let mac = |m: [u8; 6]| fmt_mac(&m);
    for cmd in [
        "sysctl -qw net.ipv4.conf.all.forwarding=1".to_string(),
        "sysctl -qw net.ipv6.conf.all.forwarding=1".to_string(),
        "ip link add fxa type veth peer name fxb".to_string(),
        format!("ip link set fxa address {} mtu {FIB_MTU} up", mac(FIB_MAC)),
        "ip link set fxb up".to_string(),
        "ip addr add 10.0.1.1/24 dev fxa".to_string(),
        "ip -6 addr add fd00:1::1/64 dev fxa nodad".to_string(),
        "ip route add 192.0.2.0/24 dev fxa".to_string(),
        "ip -6 route add 2001:db8:c::/64 dev fxa".to_string(),
        "ip neigh replace 10.0.1.254 lladdr GW dev fxa nud permanent".replace("GW", &mac(GW_MAC)),
        "ip -6 neigh replace fd00:1::fe lladdr GW dev fxa nud permanent"
            .replace("GW", &mac(GW_MAC)),
        "ip route add 10.0.9.0/24 via 10.0.1.254".to_string(),
        "ip -6 route add fd00:9::/64 via fd00:1::fe".to_string(),
        format!(
            "ip neigh replace 192.0.2.7 lladdr {} dev fxa nud permanent",
            mac(CLIENT_MAC)
        ),
        format!(
            "ip -6 neigh replace 2001:db8:c::7 lladdr {} dev fxa nud permanent",
            mac(CLIENT_MAC)
        ),
    ] {
        let args: Vec<&str> = cmd.split(' ').collect();
        net.exec(&args);
    }
    let path = format!("/run/netns/{}", net.name);
    let file = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
    // SAFETY: setns on a valid namespace fd; it changes only the calling thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
    net
}

/// Output of one program run.
#[derive(Debug)]
pub struct Run {
    pub action: u32,
    pub out: Vec<u8>,
    pub ns: u64,
}

impl Fixture {
    /// Builds the namespace (the calling thread enters it), loads the object and
    /// applies `yaml` (interfaces are not checked).
    pub fn new(yaml: &str) -> Self {
        crate::require_root();
        let net = enter_namespace();
        let ebpf = bpf::load(bpf::LoadOptions {
            flow_entries: 65536,
            ring_count: 16,
        })
        .expect("load BPF object");
        let (dp, programs) = BpfDataplane::new(ebpf).expect("maps");
        let mut rec = Reconciler::new(dp, MAX_VS, 16);
        rec.set_iface(
            TEST_IFINDEX,
            &IfaceInfo {
                mac: LB_MAC,
                flags: 0,
                _pad: 0,
            },
        )
        .expect("iface");
        let mut f = Fixture {
            rec,
            programs,
            misses: None,
            config: Self::parse(yaml),
            net,
        };
        f.apply_config(yaml);
        f
    }

    fn parse(yaml: &str) -> Config {
        config::parse(Path::new("fixture.yaml"), yaml, &AnyInterface)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Applies a new configuration, as a reload would, resolves every real and marks
    /// every real healthy (the fixture runs no probes; [`Fixture::set_health`] changes
    /// that).
    pub fn apply_config(&mut self, yaml: &str) {
        self.config = Self::parse(yaml);
        self.rec.apply(&self.config).expect("apply");
        for vs in &self.config.virtual_servers {
            for r in &vs.real_servers {
                let key = RealKey::real(&vs.name, r.address, r.port);
                self.rec.set_health(&key, true).expect("health");
            }
        }
        for addr in self.rec.real_addresses() {
            self.rec
                .set_next_hop(
                    addr,
                    L2Next {
                        ifindex: TEST_IFINDEX,
                        mac: real_mac(addr),
                    },
                )
                .expect("next hop");
            self.neighbour(addr, "fxa");
        }
    }

    /// Adds two VLANs to the fixture's world and registers them as the daemon would
    /// register VLAN devices of the trunk (tagged test frames arrive on TEST_IFINDEX,
    /// so that is the trunk). This kernel has no 802.1Q driver, so a veth stands in for
    /// each VLAN device: the data path only needs an interface for the FIB to route
    /// from and to, and the maps to say which tags go with it.
    ///
    /// ```text
    ///   fxv (VLAN_MAC), VLAN 100: 10.0.100.1/24, fd00:100::1/64
    ///        clients 198.51.100.0/24, 2001:db8:100::/64   neighbour: CLIENT_MAC
    ///   fxq (QINQ_MAC), 802.1ad 300 + 802.1Q 200: 10.0.20.1/24, fd00:20::1/64
    /// ```
    /// Returns: the ifindexes of fxv and fxq.
    pub fn add_vlans(&mut self) -> (u32, u32) {
        let client = fmt_mac(&CLIENT_MAC);
        for cmd in [
            "ip link add fxv type veth peer name fxvp".to_string(),
            "ip link add fxq type veth peer name fxqp".to_string(),
            format!("ip link set fxv address {} up", fmt_mac(&VLAN_MAC)),
            format!("ip link set fxq address {} up", fmt_mac(&QINQ_MAC)),
            "ip link set fxvp up".to_string(),
            "ip link set fxqp up".to_string(),
            "ip addr add 10.0.100.1/24 dev fxv".to_string(),
            "ip -6 addr add fd00:100::1/64 dev fxv nodad".to_string(),
            "ip addr add 10.0.20.1/24 dev fxq".to_string(),
            "ip -6 addr add fd00:20::1/64 dev fxq nodad".to_string(),
            "ip route add 198.51.100.0/24 dev fxv".to_string(),
            "ip -6 route add 2001:db8:100::/64 dev fxv".to_string(),
            format!("ip neigh replace 198.51.100.7 lladdr {client} dev fxv nud permanent"),
            format!("ip -6 neigh replace 2001:db8:100::7 lladdr {client} dev fxv nud permanent"),
        ] {
            let args: Vec<&str> = cmd.split(' ').collect();
            self.net.exec(&args);
        }
        let index = |name: &str| {
            let out = self
                .net
                .exec(&["cat", &format!("/sys/class/net/{name}/ifindex")]);
            out.trim().parse::<u32>().expect("ifindex")
        };
        let (v, q) = (index("fxv"), index("fxq"));
        let out = |tags: u8, tpid: [u16; 2], vid: [u16; 2]| VlanOut {
            xmit_ifindex: TEST_IFINDEX,
            tags,
            _pad: [0; 3],
            tpid_be: tpid.map(u16::to_be),
            vid_be: vid.map(u16::to_be),
        };
        let iface = |mac: [u8; 6]| IfaceInfo {
            mac,
            flags: IFACE_F_VLAN,
            _pad: 0,
        };
        let ins = [(vlan_key([100, 0]), v), (vlan_key([300, 200]), q)]
            .into_iter()
            .collect();
        let outs = [
            (v, (iface(VLAN_MAC), out(1, [0x8100, 0], [100, 0]))),
            (q, (iface(QINQ_MAC), out(2, [0x88a8, 0x8100], [300, 200]))),
        ]
        .into_iter()
        .collect();
        self.rec.set_vlans(&ins, &outs).expect("vlans");
        (v, q)
    }

    /// Makes real `addr` reached through interface `ifindex`, as the daemon would
    /// after reading its route.
    pub fn set_next_hop(&mut self, addr: IpAddr, ifindex: u32) {
        let hop = L2Next {
            ifindex,
            mac: real_mac(addr),
        };
        self.rec.set_next_hop(addr, hop).expect("next hop");
    }

    /// Reads the namespace's rules and routes and marks each NAT real routed by its
    /// address alone or not (`REAL_F_BY_DEST`), and clients (`SETTING_CLIENTS_BY_DEST`),
    /// as the daemon does each second (decision 0024). Returns: what it found.
    pub fn refresh_by_dest(&mut self) -> netlink::RouteShape {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let addrs = self.rec.nat_real_addresses();
        // The socket is opened on this thread, in the fixture's namespace.
        let shape = rt.block_on(async {
            let handle = netlink::connect().expect("netlink");
            netlink::route_shape(&handle, &addrs, true).await
        });
        self.rec.set_route_shape(&shape).expect("route shape");
        shape
    }

    /// Writes a permanent neighbour entry for `addr` on `dev` (its MAC: `real_mac`).
    pub fn neighbour(&self, addr: IpAddr, dev: &str) {
        let (a, m) = (addr.to_string(), fmt_mac(&real_mac(addr)));
        let args = [
            "ip",
            "neigh",
            "replace",
            &a,
            "lladdr",
            &m,
            "dev",
            dev,
            "nud",
            "permanent",
        ];
        self.net.exec(&args);
    }

    /// Sets the health of real `addr` (port 80) of virtual server `vs`, as a probe would.
    pub fn set_health(&mut self, vs: &str, addr: &str, healthy: bool) {
        self.set_port_health(vs, addr, 80, healthy);
    }

    /// Sets the health of real `addr:port` of virtual server `vs`, as a probe would.
    pub fn set_port_health(&mut self, vs: &str, addr: &str, port: u16, healthy: bool) {
        let key = RealKey::real(vs, addr.parse().expect("address"), port);
        self.rec.set_health(&key, healthy).expect("health");
    }

    /// Runs the balancer on `frame` `repeat` times.
    pub fn run_n(&self, prog: &str, frame: &[u8], repeat: u32) -> Run {
        test_run(
            self.programs.program(prog).expect("XDP program"),
            frame,
            repeat,
        )
    }

    /// Runs the balancer once.
    pub fn run(&self, frame: &[u8]) -> Run {
        self.run_n(PROG_LB, frame, 1)
    }

    /// Runs the pass-only program (the floor of any XDP program's cost).
    pub fn run_pass(&self, frame: &[u8], repeat: u32) -> Run {
        self.run_n(PROG_PASS, frame, repeat)
    }

    /// Returns: the next hops the data path reported unresolved since the last call
    /// (`NEIGH_MISS`), oldest first.
    pub fn neigh_misses(&mut self) -> Vec<NeighMiss> {
        if self.misses.is_none() {
            self.misses = Some(self.programs.take_neigh_misses().expect("NEIGH_MISS"));
        }
        self.misses.as_mut().expect("taken").drain()
    }

    /// Returns: the connection table's entries.
    pub fn flow_entries(&self) -> u64 {
        let reader = self.rec.dataplane().flow_reader().expect("flow reader");
        reader.count().expect("count").values().sum()
    }

    /// Returns: the connection table, `FLOWS`.
    fn flows(&self) -> HashMap<MapData, FlowKey, lb_common::FlowState> {
        let reader = self.rec.dataplane().flow_reader().expect("flow reader");
        HashMap::try_from(aya::maps::Map::LruHashMap(reader.into_map())).expect("FLOWS")
    }

    /// Returns: flow `key`'s `FLOWS` entry, if there is one.
    pub fn flow_state(&self, key: &FlowKey) -> Option<lb_common::FlowState> {
        self.flows().get(key, 0).ok()
    }

    /// Writes `state` as flow `key`'s `FLOWS` entry, behind the daemon's back.
    pub fn set_flow_state(&self, key: &FlowKey, state: &lb_common::FlowState) {
        self.flows()
            .insert(key, state, 0)
            .expect("FLOWS entry written");
    }

    /// Returns: the `VS_MAP` value of the virtual server at `key`.
    pub fn vs_info(&self, key: &lb_common::VsKey) -> lb_common::VsInfo {
        use xdpvs::dataplane::DataplaneContents as _;
        let all = self.rec.dataplane().virtual_servers().expect("VS_MAP");
        all.into_iter()
            .find(|(k, _)| k == key)
            .unwrap_or_else(|| panic!("no virtual server at {key:?}"))
            .1
    }

    /// Runs `frame` with the `VS_MAP` value of the virtual server at `key` taken away
    /// behind the daemon's back, then writes it back. Returns: the run.
    pub fn run_without_vs(&mut self, key: &lb_common::VsKey, frame: &[u8]) -> Run {
        use xdpvs::dataplane::Dataplane as _;
        let info = self.vs_info(key);
        let dp = self.rec.dataplane_behind_its_back();
        dp.remove_vs(key).expect("VS_MAP");
        let r = self.run(frame);
        let dp = self.rec.dataplane_behind_its_back();
        dp.set_vs(key, &info).expect("VS_MAP");
        r
    }

    /// Runs `frame`, the first packet past its SYN of flow `key`, new, of a persistent
    /// virtual server. Returns: the stamp its entry was recorded with
    /// (`FlowState::touched`, decision 0033): the program's tick count now, which a
    /// test cannot read otherwise.
    pub fn ticks_now(&self, frame: &[u8], key: &FlowKey) -> u32 {
        self.run(frame);
        self.flow_state(key).expect("the flow recorded").touched
    }

    /// Returns: the persistence table, `PERSIST`, on a descriptor of its own.
    fn persist(&self) -> HashMap<MapData, lb_common::PersistKey, lb_common::PersistState> {
        use std::os::fd::AsFd as _;
        let data = match self.programs.map(lb_common::maps::PERSIST) {
            Some(aya::maps::Map::LruHashMap(m)) => m,
            _ => panic!("PERSIST is an LRU hash map"),
        };
        let fd = data.fd().as_fd().try_clone_to_owned().expect("dup PERSIST");
        let data = MapData::from_fd(fd).expect("PERSIST");
        HashMap::try_from(aya::maps::Map::LruHashMap(data)).expect("PERSIST")
    }

    /// Returns: every `PERSIST` entry (a persistent virtual server's client networks).
    pub fn persist_entries(&self) -> Vec<(lb_common::PersistKey, lb_common::PersistState)> {
        self.persist()
            .iter()
            .map(|e| e.expect("PERSIST entry"))
            .collect()
    }

    /// Writes `state` as `PERSIST` entry `key`, behind the daemon's back.
    pub fn set_persist_entry(&self, key: &lb_common::PersistKey, state: &lb_common::PersistState) {
        self.persist()
            .insert(key, state, 0)
            .expect("PERSIST entry written");
    }

    /// Returns: the entries of `NAT_STATE`, the reply state of NAT flows whose replies
    /// `FLOWS` cannot find.
    pub fn nat_state_entries(&self) -> usize {
        let map = self
            .programs
            .map(lb_common::maps::NAT_STATE)
            .expect("NAT_STATE");
        let m = aya::maps::HashMap::<_, FlowKey, lb_common::NatState>::try_from(map)
            .expect("NAT_STATE is a hash map");
        m.keys().count()
    }

    /// Returns: what each CPU keeps in slot `slot` of `REAL_HOPS` or `CLIENT_HOPS`
    /// (decision 0024): when it was looked up (`bpf_ktime_get_coarse_ns`, 0: never) and
    /// the id it was kept for (a real id; a client's address family).
    pub fn kept_hops(&self, map: &str, slot: u32) -> Vec<(u64, u32)> {
        let m = self.programs.map(map).expect("a kept-hop map");
        let m = PerCpuArray::<_, [u8; 56]>::try_from(m).expect("a per-CPU array");
        let values = m.get(&slot, 0).expect("slot");
        values
            .iter()
            .map(|v| {
                let at = u64::from_ne_bytes(v[..8].try_into().expect("8 bytes"));
                let id = u32::from_ne_bytes(v[8..12].try_into().expect("4 bytes"));
                (at, id)
            })
            .collect()
    }

    /// Returns: new flows counted over every virtual server of the configuration.
    pub fn new_flows(&self) -> u64 {
        (0..self.config.virtual_servers.len() as u32)
            .map(|i| {
                let c = self.rec.dataplane().vs_counters(i).expect("counters");
                c.new_flows
            })
            .sum()
    }

    /// Returns: the connection table's filter (decision 0026), as the daemon's thread
    /// has it: sized and marked incomplete at load, so the data path sets its bits but
    /// trusts it only after a rebuild.
    pub fn flow_filter(&self) -> xdpvs::dataplane::flow_filter::FlowFilter {
        self.rec.dataplane().flow_filter().expect("FLOW_FILTER")
    }

    /// Returns: opening SYNs balanced past the connection table during SYN floods
    /// (`SYN_RATE`, decision 0025), summed over CPUs.
    pub fn syns_past_table(&self) -> u64 {
        self.rec.dataplane().syns_past_table().expect("SYN_RATE")
    }

    /// Returns: packets counted under verdict `reason` since load.
    pub fn verdicts(&self, reason: u32) -> u64 {
        self.rec.dataplane().verdicts().expect("verdicts")[reason as usize]
    }

    /// Returns: the address of the real that Maglev gives `key` on virtual server `vs`
    /// (computed here from the shared flow hash and the live table).
    pub fn predict(&self, vs: &str, key: &FlowKey) -> IpAddr {
        let table = self.rec.live_table(vs).expect("vs table");
        let id = table[(flow_hash(key) % table.len() as u32) as usize];
        let v = self
            .config
            .virtual_servers
            .iter()
            .find(|v| v.name == vs)
            .expect("vs");
        v.real_servers
            .iter()
            .find(|r| self.rec.real_id(&RealKey::real(vs, r.address, r.port)) == Some(id))
            .map(|r| r.address)
            .expect("real of predicted id")
    }
}

/// Returns: the `VLAN_IN` key of frames with VLAN ids `vid` on TEST_IFINDEX.
fn vlan_key(vid: [u16; 2]) -> VlanKey {
    VlanKey {
        ifindex: TEST_IFINDEX,
        vid_be: vid.map(u16::to_be),
    }
}

/// Runs `prog` on `frame` `repeat` times. A signal that arrives meanwhile ends a
/// repeated run early with `EINTR` (the kernel checks between repeats); the run is made
/// again, and whoever handles the signal (the bench's stop flag) sees it at its next
/// check.
/// Returns: the verdict and output of the last run, and the mean time per run.
fn test_run(prog: &Xdp, frame: &[u8], repeat: u32) -> Run {
    let mut out = vec![0u8; frame.len() + 256];
    let r = loop {
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat,
            ..Default::default()
        };
        match prog.test_run(opts) {
            Err(ProgramError::SyscallError(e))
                if e.io_error.kind() == std::io::ErrorKind::Interrupted => {}
            r => break r.expect("BPF_PROG_TEST_RUN"),
        }
    };
    out.truncate(r.data_size_out as usize);
    Run {
        action: r.return_value,
        out,
        ns: r.duration.as_nanos() as u64,
    }
}

/// The real server's object (the decapsulator) loaded for BPF_PROG_TEST_RUN by the code
/// `xdpvs realserver decap` uses. It routes nothing, so it needs no namespace.
pub struct DecapFixture {
    pub ebpf: Ebpf,
}

impl DecapFixture {
    /// Loads the real server's object, its maps empty.
    pub fn load() -> Self {
        crate::require_root();
        Self {
            ebpf: decap::load().expect("load the real server's BPF object"),
        }
    }

    /// Runs program `prog` on `frame` `repeat` times.
    pub fn run_n(&self, prog: &str, frame: &[u8], repeat: u32) -> Run {
        let prog: &Xdp = self
            .ebpf
            .program(prog)
            .expect("program")
            .try_into()
            .expect("xdp");
        test_run(prog, frame, repeat)
    }

    /// Returns: the decapsulator's counter `i` (`lb_common::realserver::DECAP_*`).
    pub fn decap_count(&self, i: u32) -> u64 {
        let m = self.ebpf.map(DECAP_STATS).expect("map");
        let a: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(m).expect("percpu");
        a.get(&i, 0).expect("get").iter().sum()
    }

    /// Fills the decapsulator's maps as `xdpvs realserver decap` does.
    pub fn set_decap(&mut self, vips: &[IpAddr], local: &[IpAddr]) {
        for (name, addrs) in [(DECAP_VIPS, vips), (DECAP_LOCAL, local)] {
            let m = self.ebpf.map_mut(name).expect("map");
            let mut h: HashMap<&mut MapData, AddrKey, u8> = HashMap::try_from(m).expect("hash");
            for a in addrs {
                h.insert(AddrKey::new(*a), 1, 0).expect("insert");
            }
        }
    }
}
