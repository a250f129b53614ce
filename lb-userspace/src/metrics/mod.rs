//! Prometheus metrics: with `metrics_listen` set, the daemon serves `GET /metrics`.
//!
//! Every scrape asks the daemon's task for a [`Snapshot`] (the same figures `xdpvs
//! status` shows, read from the BPF maps at that moment, plus the probe and reload
//! counts it keeps), and encodes it with `prometheus-client`. That crate writes the
//! OpenMetrics text format, which Prometheus asks for in its `Accept` header; any other
//! client (curl, `promtool check metrics`, older scrapers) gets the classic text format
//! (0.0.4), converted line by line by [`to_classic_text`].

mod http;

use std::fmt::Write as _;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{
        counter::ConstCounter, gauge::ConstGauge, histogram::Histogram, info::Info, MetricType,
    },
    registry::{Registry, Unit},
};
use tokio::sync::oneshot;

pub use self::http::serve;
use crate::status::{self, Stats, Status};

/// A request for a snapshot, from the HTTP task to the daemon's task.
pub type Ask = oneshot::Sender<Result<Snapshot, String>>;

/// Content type of the OpenMetrics text format.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the classic Prometheus text format.
pub const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One probed real's probe counts.
#[derive(Clone, Debug)]
pub struct ProbeSample {
    pub vs: String,
    pub real: String,
    pub ok: u64,
    pub failed: u64,
    pub latency: Histogram,
}

/// Everything one scrape shows.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub status: Status,
    pub probes: Vec<ProbeSample>,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    /// Whether the last reload (if any) was applied.
    pub last_reload_ok: bool,
}

type Labels = Vec<(&'static str, String)>;

fn vs_labels(v: &status::VsStatus) -> Labels {
    vec![
        ("vs", v.name.clone()),
        ("vip", status::endpoint(v.address, v.port)),
        ("protocol", v.protocol.clone()),
        ("method", v.method.clone()),
    ]
}

fn real_labels(vs: &str, r: &status::RealStatus) -> Labels {
    vec![
        ("vs", vs.to_string()),
        ("real", status::endpoint(r.address, r.port)),
        ("role", if r.sorry { "sorry" } else { "real" }.to_string()),
    ]
}

/// Writes one metric family: `rows` of (labels, value).
fn family<M: prometheus_client::encoding::EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    kind: MetricType,
    rows: impl IntoIterator<Item = (Labels, M)>,
) -> Result<(), std::fmt::Error> {
    let mut m = encoder.encode_descriptor(name, help, unit, kind)?;
    for (labels, metric) in rows {
        metric.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Writes one metric family of a single unlabelled gauge.
fn scalar(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    ConstGauge::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

/// A per-VS and per-real counter: name (after `vs_`/`real_`; empty for bytes), whether
/// it counts bytes, help for the VS and for the real (`None`: the data path counts it
/// per virtual server only), and which field.
type CounterDef = (
    &'static str,
    bool,
    &'static str,
    Option<&'static str>,
    fn(&Stats) -> u64,
);

const COUNTERS: [CounterDef; 5] = [
    (
        "packets",
        false,
        "Packets received for the virtual server (client to VIP).",
        Some("Packets forwarded to the real server."),
        |s| s.packets,
    ),
    (
        "",
        true,
        "Bytes received for the virtual server, as on the wire.",
        Some("Bytes forwarded to the real server, as received."),
        |s| s.bytes,
    ),
    (
        "new_flows",
        false,
        "Connections the virtual server placed on a real (new flows).",
        Some("Connections placed on the real server."),
        |s| s.new_flows,
    ),
    (
        "reply_packets",
        false,
        "NAT replies (real to client) restored to the VIP.",
        // A reply's state names its virtual server, not its real.
        None,
        |s| s.reply_packets,
    ),
    (
        "reply",
        true,
        "Bytes of NAT replies restored to the VIP.",
        None,
        |s| s.reply_bytes,
    ),
];

/// A per-real gauge: name (after `real_`), help, value.
type GaugeDef = (&'static str, &'static str, fn(&status::RealStatus) -> i64);

const REAL_GAUGES: [GaugeDef; 5] = [
    (
        "up",
        "Health of the real server: 1 up, 0 down (unprobed reals and the sorry server are up).",
        |r| i64::from(r.health == "up"),
    ),
    (
        "in_table",
        "1 when the real server takes new connections (it is in its Maglev table).",
        |r| i64::from(r.in_table),
    ),
    (
        "disabled",
        "1 when the real server was disabled at run time (xdpvs real disable).",
        |r| i64::from(r.disabled),
    ),
    (
        "weight",
        "Weight in use (a run-time override, else the file's).",
        |r| i64::from(r.weight),
    ),
    (
        "flows",
        "Connection table entries pinned to the real server.",
        |r| r.flows as i64,
    ),
];

impl Snapshot {
    fn real_rows<T>(&self, value: impl Fn(&status::RealStatus) -> T) -> Vec<(Labels, T)> {
        let mut rows = Vec::new();
        for v in &self.status.virtual_servers {
            for r in &v.reals {
                rows.push((real_labels(&v.name, r), value(r)));
            }
        }
        rows
    }

    fn traffic(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, is_bytes, vs_help, real_help, pick) in COUNTERS {
            let unit = is_bytes.then_some(&Unit::Bytes);
            let join = |prefix: &str| {
                if name.is_empty() {
                    prefix.to_string()
                } else {
                    format!("{prefix}_{name}")
                }
            };
            let vs_rows = self
                .status
                .virtual_servers
                .iter()
                .map(|v| (vs_labels(v), ConstCounter::new(pick(&v.stats))));
            family(e, &join("vs"), vs_help, unit, MetricType::Counter, vs_rows)?;
            let Some(real_help) = real_help else {
                continue;
            };
            let real_rows = self.real_rows(|r| ConstCounter::new(pick(&r.stats)));
            family(
                e,
                &join("real"),
                real_help,
                unit,
                MetricType::Counter,
                real_rows,
            )?;
        }
        for (name, help, value) in REAL_GAUGES {
            let rows = self.real_rows(|r| ConstGauge::new(value(r)));
            family(
                e,
                &format!("real_{name}"),
                help,
                None,
                MetricType::Gauge,
                rows,
            )?;
        }
        Ok(())
    }

    fn probes(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let outcome = |p: &ProbeSample, result: &str| {
            vec![
                ("vs", p.vs.clone()),
                ("real", p.real.clone()),
                ("result", result.to_string()),
            ]
        };
        let counts = self.probes.iter().flat_map(|p| {
            [
                (outcome(p, "ok"), ConstCounter::new(p.ok)),
                (outcome(p, "failed"), ConstCounter::new(p.failed)),
            ]
        });
        let help = "Health probes by outcome.";
        family(e, "probes", help, None, MetricType::Counter, counts)?;
        let latency = self.probes.iter().map(|p| {
            let labels = vec![("vs", p.vs.clone()), ("real", p.real.clone())];
            (labels, p.latency.clone())
        });
        let help = "Latency of successful health probes.";
        let unit = Some(&Unit::Seconds);
        family(
            e,
            "probe_duration",
            help,
            unit,
            MetricType::Histogram,
            latency,
        )
    }

    fn daemon(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.status;
        let help = "Connection table entries in use.";
        scalar(e, "flow_table_entries", help, s.flow_table_entries as i64)?;
        let help = "Connection table size (flow_table_size).";
        scalar(e, "flow_table_capacity", help, s.flow_table_size as i64)?;
        let help = "Opening SYNs balanced without a connection-table lookup during SYN floods (syn_flood_rate).";
        let syns = [(Vec::new(), ConstCounter::new(s.syns_past_flow_table))];
        family(
            e,
            "syns_past_flow_table",
            help,
            None,
            MetricType::Counter,
            syns,
        )?;
        let verdicts = s
            .verdicts
            .iter()
            .map(|(k, v)| (vec![("verdict", k.clone())], ConstCounter::new(*v)));
        let help = "Packets seen by the XDP program, by verdict (drop_* are drops).";
        family(
            e,
            "datapath_packets",
            help,
            None,
            MetricType::Counter,
            verdicts,
        )?;
        let reloads = [
            (vec![("result", "ok".to_string())], self.reloads_ok),
            (vec![("result", "failed".to_string())], self.reloads_failed),
        ]
        .map(|(l, n)| (l, ConstCounter::new(n)));
        let help = "Configuration reloads (SIGHUP or xdpvs reload) by outcome.";
        family(
            e,
            "config_reloads",
            help,
            None,
            MetricType::Counter,
            reloads,
        )?;
        let help = "1 unless the last reload was rejected.";
        scalar(
            e,
            "config_last_reload_successful",
            help,
            i64::from(self.last_reload_ok),
        )?;
        let help = "1 while the node is taken out by `xdpvs withdraw`.";
        scalar(e, "node_withdrawn", help, i64::from(s.withdrawn))?;
        let takes = s.announcements.iter().map(|a| {
            (
                vec![("vip", a.address.to_string())],
                ConstGauge::new(i64::from(a.announced)),
            )
        });
        let help = "1 while this node should take the VIP's traffic (announced, with `announce`; `xdpvs ready`).";
        family(e, "vip_takes_traffic", help, None, MetricType::Gauge, takes)
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let info = Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]);
        let help = "Build information of this xdpvs (value 1).";
        info.encode(e.encode_descriptor("build", help, None, MetricType::Info)?)?;
        self.traffic(&mut e)?;
        self.probes(&mut e)?;
        self.daemon(&mut e)
    }
}

/// Encodes `snapshot` in the OpenMetrics text format.
pub fn encode(snapshot: Snapshot) -> String {
    let mut registry = Registry::with_prefix("xdpvs");
    registry.register_collector(Box::new(snapshot));
    let mut out = String::new();
    // Writing to a String cannot fail, and every value above is encodable.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        let _ = writeln!(out, "# encoding failed: {e}");
    }
    out
}

/// Converts the OpenMetrics text `prometheus-client` writes to the classic Prometheus
/// text format (0.0.4): counter families are named with their `_total` suffix, info
/// families become gauges named `_info`, and `# UNIT` and `# EOF` lines go.
pub fn to_classic_text(openmetrics: &str) -> String {
    let mut types = std::collections::HashMap::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some((name, kind)) = rest.split_once(' ') {
                types.insert(name, kind);
            }
        }
    }
    let classic_name = |name: &str| match types.get(name) {
        Some(&"counter") => format!("{name}_total"),
        Some(&"info") => format!("{name}_info"),
        _ => name.to_string(),
    };
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let _ = writeln!(out, "# HELP {} {help}", classic_name(name));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let kind = if kind == "info" { "gauge" } else { kind };
            let _ = writeln!(out, "# TYPE {} {kind}", classic_name(name));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        let stats = |p| Stats {
            packets: p,
            bytes: p * 100,
            new_flows: p / 5,
            reply_packets: 0,
            reply_bytes: 0,
        };
        let real = |a: &str, p, health: &str, sorry| status::RealStatus {
            address: a.parse().unwrap(),
            port: 80,
            weight: 1,
            file_weight: 1,
            health: health.to_string(),
            check: "http".into(),
            disabled: false,
            in_table: health == "up",
            sorry,
            flows: 3,
            stats: stats(p),
            last_probe: None,
            probe_latency_ms: None,
        };
        let latency = Histogram::new(crate::health::LATENCY_BUCKETS);
        latency.observe(0.0007);
        latency.observe(0.02);
        Snapshot {
            status: Status {
                config: "/etc/xdpvs/xdpvs.yaml".into(),
                virtual_servers: vec![status::VsStatus {
                    name: "web".into(),
                    address: "2001:db8::80".parse().unwrap(),
                    port: 80,
                    protocol: "tcp".into(),
                    method: "dr".into(),
                    scheduler: "maglev".into(),
                    persistence: None,
                    stats: stats(30),
                    reals: vec![
                        real("2001:db8::11", 10, "up", false),
                        real("2001:db8::12", 20, "down", false),
                    ],
                }],
                verdicts: [("tx".to_string(), 30), ("drop_no_real".to_string(), 2)]
                    .into_iter()
                    .collect(),
                flow_table_entries: 6,
                syns_past_flow_table: 0,
                flow_table_size: 65536,
                announce_table: Some(4242),
                withdrawn: false,
                announcements: vec![status::Announcement {
                    address: "2001:db8::80".parse().unwrap(),
                    announced: true,
                    reason: "web at min_healthy or above".into(),
                }],
            },
            probes: vec![ProbeSample {
                vs: "web".into(),
                real: "[2001:db8::11]:80".into(),
                ok: 2,
                failed: 1,
                latency,
            }],
            reloads_ok: 4,
            reloads_failed: 1,
            last_reload_ok: true,
        }
    }

    #[test]
    fn openmetrics_names_follow_the_conventions() {
        let text = encode(snapshot());
        for want in [
            "# TYPE xdpvs_build info\n",
            "xdpvs_build_info{version=\"",
            "# TYPE xdpvs_vs_packets counter\n",
            "xdpvs_vs_packets_total{vs=\"web\",vip=\"[2001:db8::80]:80\",protocol=\"tcp\",method=\"dr\"} 30\n",
            "# UNIT xdpvs_vs_bytes bytes\n",
            "xdpvs_vs_bytes_total{vs=\"web\",vip=\"[2001:db8::80]:80\",protocol=\"tcp\",method=\"dr\"} 3000\n",
            "xdpvs_real_packets_total{vs=\"web\",real=\"[2001:db8::12]:80\",role=\"real\"} 20\n",
            "xdpvs_real_up{vs=\"web\",real=\"[2001:db8::12]:80\",role=\"real\"} 0\n",
            "xdpvs_real_up{vs=\"web\",real=\"[2001:db8::11]:80\",role=\"real\"} 1\n",
            "xdpvs_probes_total{vs=\"web\",real=\"[2001:db8::11]:80\",result=\"failed\"} 1\n",
            "xdpvs_probe_duration_seconds_count{vs=\"web\",real=\"[2001:db8::11]:80\"} 2\n",
            "xdpvs_probe_duration_seconds_bucket{le=\"0.001\",vs=\"web\",real=\"[2001:db8::11]:80\"} 1\n",
            "xdpvs_probe_duration_seconds_bucket{le=\"0.025\",vs=\"web\",real=\"[2001:db8::11]:80\"} 2\n",
            "xdpvs_flow_table_capacity 65536\n",
            "xdpvs_datapath_packets_total{verdict=\"drop_no_real\"} 2\n",
            "xdpvs_config_reloads_total{result=\"failed\"} 1\n",
            "xdpvs_node_withdrawn 0\n",
            "xdpvs_vip_takes_traffic{vip=\"2001:db8::80\"} 1\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        // Replies are counted per virtual server: a real's would always read 0.
        assert!(
            text.contains("# TYPE xdpvs_vs_reply_packets counter\n"),
            "{text}"
        );
        assert!(!text.contains("xdpvs_real_reply"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn classic_text_names_families_by_their_samples() {
        let text = to_classic_text(&encode(snapshot()));
        for want in [
            "# HELP xdpvs_vs_packets_total Packets",
            "# TYPE xdpvs_vs_packets_total counter\n",
            "# TYPE xdpvs_build_info gauge\n",
            "# TYPE xdpvs_probe_duration_seconds histogram\n",
            "# TYPE xdpvs_real_up gauge\n",
            "xdpvs_real_packets_total{vs=\"web\",real=\"[2001:db8::12]:80\",role=\"real\"} 20\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"));
        // Every sample belongs to the family declared last (the classic parser's rule).
        let mut family = String::new();
        let mut kind = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (n, k) = rest.split_once(' ').unwrap();
                family = n.to_string();
                kind = k.to_string();
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                let ok = if kind == "histogram" {
                    ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| name == format!("{family}{s}"))
                } else {
                    name == family
                };
                assert!(ok, "sample {name} under family {family} ({kind})");
            }
        }
    }
}
