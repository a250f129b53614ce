//! The XDP program loaded for BPF_PROG_TEST_RUN, its maps filled by the daemon's own
//! code (YAML -> config -> Reconciler -> maps). Used by the fixture tests and the bench.

use std::{net::IpAddr, path::Path};

use aya::programs::{TestRun as _, TestRunOptions, Xdp};
use lb_common::{flow_hash, maps::{MAX_VS, PROG_LB, PROG_PASS}, FlowKey, IfaceInfo};
use xdpvs::{
    config::{self, Config, SystemFacts},
    dataplane::{bpf, bpf::BpfDataplane, Dataplane as _},
    reconcile::{L2Next, RealKey, Reconciler},
};

/// Test runs happen on the loopback device of the test's namespace (ifindex 1): a
/// real reached "through" it is forwarded with XDP_TX.
pub const TEST_IFINDEX: u32 = 1;
/// The source MAC the balancer writes (registered for TEST_IFINDEX).
pub const LB_MAC: [u8; 6] = [0x02, 0x4c, 0x42, 0, 0, 0x01];

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
    pub config: Config,
}

/// Output of one program run.
#[derive(Debug)]
pub struct Run {
    pub action: u32,
    pub out: Vec<u8>,
    pub ns: u64,
}

impl Fixture {
    /// Loads the object and applies `yaml` (interfaces are not checked).
    pub fn new(yaml: &str) -> Self {
        crate::require_root();
        let ebpf = bpf::load(bpf::LoadOptions { flow_entries: 65536, ring_count: 8 }).expect("load BPF object");
        let mut rec = Reconciler::new(BpfDataplane::new(ebpf), MAX_VS, 8);
        rec.dp.set_iface(TEST_IFINDEX, &IfaceInfo { mac: LB_MAC, _pad: [0; 2] }).expect("iface");
        let mut f = Fixture { rec, config: Self::parse(yaml) };
        f.apply_config(yaml);
        f
    }

    fn parse(yaml: &str) -> Config {
        config::parse(Path::new("fixture.yaml"), yaml, &AnyInterface).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Applies a new configuration, as a reload would, and resolves every real.
    pub fn apply_config(&mut self, yaml: &str) {
        self.config = Self::parse(yaml);
        self.rec.apply(&self.config).expect("apply");
        for addr in self.rec.real_addresses() {
            self.rec.set_next_hop(addr, L2Next { ifindex: TEST_IFINDEX, mac: real_mac(addr) }).expect("next hop");
        }
    }

    fn prog(&self, name: &str) -> &Xdp {
        self.rec.dp.ebpf.program(name).expect("program").try_into().expect("xdp")
    }

    /// Runs the balancer on `frame` `repeat` times.
    pub fn run_n(&self, prog: &str, frame: &[u8], repeat: u32) -> Run {
        let mut out = vec![0u8; frame.len() + 256];
        let opts = TestRunOptions { data_in: Some(frame), data_out: Some(&mut out), repeat, ..Default::default() };
        let r = self.prog(prog).test_run(opts).expect("BPF_PROG_TEST_RUN");
        out.truncate(r.data_size_out as usize);
        Run { action: r.return_value, out, ns: r.duration.as_nanos() as u64 }
    }

    /// Runs the balancer once.
    pub fn run(&self, frame: &[u8]) -> Run {
        self.run_n(PROG_LB, frame, 1)
    }

    /// Runs the pass-only program (the floor of any XDP program's cost).
    pub fn run_pass(&self, frame: &[u8], repeat: u32) -> Run {
        self.run_n(PROG_PASS, frame, repeat)
    }

    /// Returns: the address of the real that Maglev gives `key` on virtual server `vs`
    /// (computed here from the shared flow hash and the live table).
    pub fn predict(&self, vs: &str, key: &FlowKey) -> IpAddr {
        let table = self.rec.live_table(vs).expect("vs table");
        let id = table[(flow_hash(key) % table.len() as u32) as usize];
        let v = self.config.virtual_servers.iter().find(|v| v.name == vs).expect("vs");
        v.real_servers
            .iter()
            .find(|r| self.rec.real_id(&RealKey { vs: vs.to_string(), addr: r.address, port: r.port }) == Some(id))
            .map(|r| r.address)
            .expect("real of predicted id")
    }
}
