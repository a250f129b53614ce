//! trafgen (netsniff-ng) as a traffic generator, for the live bench and the SYN flood
//! at full rate of `e2e_synflood`: one packet description per workload, and a run
//! bounded in packets (`-n`) and in time (`timeout`), pinned to one CPU.
//!
//! Pinning: trafgen forks one process per CPU (`-P`) and a packet block prefixed
//! `cpu(N):` is sent only by CPU N's process; the others have nothing to send. With
//! veths the whole path of a frame (the sender's veth, the bridge, the balancer's XDP,
//! the receiver's tc) runs in softirq on the CPU that sent it, so a pinned generator
//! measures one core doing everything, and leaves the other cores alone.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::netns::{mac_text, Netns};

/// Most packets one run may send: far more than a run sends before it is stopped (a few
/// hundred thousand packets per second here), so that the bound is time in practice.
pub const MAX_PACKETS: u64 = 20_000_000;
/// Longest one run may last, whatever happens to the bench (seconds).
pub const MAX_SECONDS: u64 = 10;

/// What a frame carries beyond Ethernet: UDP, or TCP with its flags.
#[derive(Clone, Copy, Debug)]
pub enum L4 {
    Udp,
    /// A SYN.
    TcpSyn,
    /// An ACK of an established connection.
    TcpAck,
}

/// A source (address or port) fixed, or drawn at random for every packet.
#[derive(Clone, Copy, Debug)]
pub enum Src<T> {
    Fixed(T),
    Random,
}

/// One packet description: trafgen sends it again and again, re-drawing the random
/// fields (and the checksums) for every packet.
#[derive(Clone, Debug)]
pub struct Frame {
    pub dst_mac: [u8; 6],
    pub src: Src<Ipv4Addr>,
    pub dst: Ipv4Addr,
    pub sport: Src<u16>,
    pub dport: u16,
    pub l4: L4,
}

/// Random sources are drawn from 198.18.0.0/16 (the benchmarking range): 65,536
/// addresses times 64,512 ports, so that successive packets are new flows.
pub const RANDOM_NET: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);

impl Frame {
    /// Returns: the trafgen packet block, to be sent only by `cpu`'s process. The frame
    /// is 60 bytes (the Ethernet minimum without FCS): UDP carries 18 bytes, TCP 6.
    pub fn trafgen(&self, cpu: usize) -> String {
        let sa = match self.src {
            Src::Fixed(a) => format!("sa={a}"),
            Src::Random => format!("sa={RANDOM_NET}, sa[2:2]=drnd()"),
        };
        let sp = match self.sport {
            Src::Fixed(p) => p.to_string(),
            Src::Random => "drnd(1024, 65535)".to_string(),
        };
        let dp = self.dport;
        let l4 = match self.l4 {
            L4::Udp => format!("udp(sp={sp}, dp={dp}), fill(0x61, 18)"),
            L4::TcpSyn => format!("tcp(sp={sp}, dp={dp}, syn, seq=1, win=65535), fill(0, 6)"),
            L4::TcpAck => {
                format!("tcp(sp={sp}, dp={dp}, ack, seq=2, aseq=2, win=65535), fill(0, 6)")
            }
        };
        format!(
            "cpu({cpu}): {{ eth(da={}), ipv4({sa}, da={}, ttl=64), {l4} }}\n",
            mac_text(self.dst_mac),
            self.dst
        )
    }
}

/// A trafgen run in progress; stopped (SIGINT, then SIGKILL) on drop.
pub struct Run {
    child: Option<Child>,
    /// Its log.
    log: PathBuf,
}

/// Starts trafgen in `ns` on `dev` sending `frame` from CPU `cpu` until stopped, at most
/// `MAX_PACKETS` packets and `MAX_SECONDS` seconds. `dir` holds its configuration and
/// log (`<name>.trafgen`, `<name>.trafgen.log`).
pub fn start(ns: &Netns, dev: &str, frame: &Frame, cpu: usize, dir: &Path, name: &str) -> Run {
    let conf: PathBuf = dir.join(format!("{name}.trafgen"));
    std::fs::write(&conf, frame.trafgen(cpu)).expect("write trafgen configuration");
    let log_path = dir.join(format!("{name}.trafgen.log"));
    let log = std::fs::File::create(&log_path).expect("log");
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let child = Command::new("timeout")
        .args(["-s", "INT", "-k", "3", &MAX_SECONDS.to_string()])
        .args(["ip", "netns", "exec", &ns.name, "trafgen", "--no-sock-mem"])
        .args(["--no-cpu-stats", "-o", dev, "-P", &cpus.to_string()])
        .args(["-n", &MAX_PACKETS.to_string(), "-i"])
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawning trafgen (netsniff-ng; `cargo xtask setup` installs it)");
    Run {
        child: Some(child),
        log: log_path,
    }
}

impl Run {
    /// Returns: the packets trafgen says it sent, once stopped (the sum of the
    /// `packets outgoing` of its processes, which each print theirs as they exit; 0
    /// if they had to be killed).
    pub fn sent(&self) -> u64 {
        sent_in(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }

    /// Returns: whether trafgen is still sending (it has not run out of packets, time,
    /// or failed).
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Returns: the pid of `timeout`, the root of trafgen's processes, while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// Stops trafgen: SIGINT to `timeout`, which hands it on; after 5 s SIGKILL to
    /// `timeout`'s process group (it makes one of its own), trafgen's processes with it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let stopped = crate::wait_for(Duration::from_secs(5), || {
            matches!(child.try_wait(), Ok(Some(_)))
        });
        if !stopped {
            // SAFETY: kill on the process group our own child leads.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
        }
    }
}

/// Returns: the sum of the `N packets outgoing` lines of trafgen's output `log`.
fn sent_in(log: &str) -> u64 {
    log.lines()
        .filter_map(|l| {
            l.trim()
                .strip_suffix("packets outgoing")?
                .trim()
                .parse::<u64>()
                .ok()
        })
        .sum()
}

impl Drop for Run {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_packets_sent_are_the_sum_of_the_processes_outgoing_counts() {
        let log = "Running! Hang up with ^C!\n\n           0 packets outgoing\n           \
                   0 bytes outgoing\n\n      286002 packets outgoing\n    17160120 bytes \
                   outgoing\n";
        assert_eq!(super::sent_in(log), 286_002);
        assert_eq!(super::sent_in(""), 0);
    }
}
