//! One row per error the loader must report, with the line and field it must name.

use std::{path::Path, time::Duration};

use super::*;

struct Facts;
impl SystemFacts for Facts {
    fn interface_exists(&self, name: &str) -> bool {
        name == "eth0" || name == "eth1"
    }
}

pub(super) const GOOD: &str = "\
interfaces: [eth0]
xdp_mode: auto
virtual_servers:
  - name: web
    address: 10.0.0.100
    port: 80
    protocol: tcp
    method: dr
    scheduler: maglev
    real_servers:
      - address: 10.0.1.11
        port: 80
        weight: 1
      - address: 10.0.1.12
";

fn errors(text: &str) -> Vec<ConfigError> {
    parse(Path::new("lb.yaml"), text, &Facts)
        .expect_err("config should be rejected")
        .0
}

#[test]
fn one_virtual_server_per_address_and_protocol_takes_fragments() {
    let two = format!(
        "{GOOD}  - {{ name: web2, address: 10.0.0.100, port: 8080, protocol: tcp, fragments: true,\n      real_servers: [{{ address: 10.0.1.11 }}] }}\n"
    )
    .replace("    scheduler: maglev\n", "    scheduler: maglev\n    fragments: true\n");
    let errs = errors(&two);
    let e = errs
        .iter()
        .find(|e| e.field == "virtual_servers[1].fragments")
        .unwrap_or_else(|| panic!("no error for the second taker: {errs:#?}"));
    assert!(e.message.contains("already takes fragments"), "{e}");
    let one = GOOD.replace(
        "    scheduler: maglev\n",
        "    scheduler: maglev\n    fragments: true\n",
    );
    let c = parse(Path::new("lb.yaml"), &one, &Facts).unwrap();
    assert!(c.virtual_servers[0].fragments);
    // NAT takes them too (decision 0016).
    let nat = one.replace("method: dr", "method: nat");
    let c = parse(Path::new("lb.yaml"), &nat, &Facts).unwrap();
    assert!(c.virtual_servers[0].fragments);
    assert_eq!(c.virtual_servers[0].method, Method::Nat);
}

#[test]
fn announce_names_a_table_of_its_own() {
    let text = format!("announce:\n  table: 4242\n{GOOD}");
    let c = parse(Path::new("lb.yaml"), &text, &Facts).unwrap();
    assert_eq!(c.announce, Some(crate::config::Announce { table: 4242 }));
}

#[test]
fn good_config_parses_with_defaults() {
    let c = parse(Path::new("lb.yaml"), GOOD, &Facts).unwrap();
    assert_eq!(c.interfaces, vec!["eth0"]);
    assert_eq!(c.xdp_mode, XdpMode::Auto);
    assert!(c.manage_vips);
    assert_eq!(c.metrics_listen, None, "metrics are off unless asked for");
    assert_eq!(c.announce, None, "nothing is announced unless asked for");
    assert_eq!(
        (c.instance.as_str(), c.pin_path.to_str()),
        ("default", Some("/sys/fs/bpf/xdpvs"))
    );
    assert_eq!(c.control_socket.to_str(), Some("/run/xdpvs/xdpvs.sock"));
    assert_eq!(c.syn_flood_rate, 10_000, "SYNs a second per CPU");
    let vs = &c.virtual_servers[0];
    assert_eq!(
        (
            vs.name.as_str(),
            vs.port,
            vs.protocol,
            vs.method,
            vs.table_size
        ),
        ("web", 80, Protocol::Tcp, Method::Dr, 65537)
    );
    let r = &vs.real_servers[1];
    assert_eq!(
        (r.address, r.port, r.weight),
        ("10.0.1.12".parse().unwrap(), 80, 1)
    );
    let h = &r.health_check;
    assert_eq!(
        (h.kind, h.port, h.interval, h.timeout, h.rise, h.fall),
        (
            CheckType::Tcp,
            80,
            Duration::from_secs(2),
            Duration::from_secs(1),
            2,
            3
        ),
        "a tcp virtual server is probed over tcp by default"
    );
    assert_eq!((vs.persistence, vs.sorry_server), (None, None));
}

#[test]
fn probes_merge_per_real_and_udp_defaults_to_none() {
    let text = GOOD.replacen(
        "    scheduler: maglev\n",
        "    scheduler: maglev\n    health_check: { type: http, path: /health, expect_status: [200, '300-302'], interval: 500ms, timeout: 200ms, fall: 2 }\n    persistence: { timeout: 5m, netmask: 24 }\n    sorry_server: { address: 10.0.9.9 }\n",
        1,
    )
    .replacen(
        "        weight: 1\n",
        "        weight: 1\n        health_check: { port: 8081, rise: 5 }\n",
        1,
    );
    let c = parse(Path::new("lb.yaml"), &text, &Facts).unwrap();
    let vs = &c.virtual_servers[0];
    let (a, b) = (
        &vs.real_servers[0].health_check,
        &vs.real_servers[1].health_check,
    );
    assert_eq!(
        (a.kind, a.port, a.rise, a.fall),
        (CheckType::Http, 8081, 5, 2)
    );
    assert_eq!((b.port, b.rise, b.fall), (80, 2, 2));
    assert_eq!(b.path, "/health");
    assert_eq!(b.expect_status, vec![(200, 200), (300, 302)]);
    assert!(b.status_ok(301) && !b.status_ok(204));
    assert_eq!(b.interval, Duration::from_millis(500));
    assert_eq!(
        vs.persistence,
        Some(Persistence {
            timeout: Duration::from_secs(300),
            netmask: 24
        })
    );
    assert_eq!(vs.sorry_server.map(|s| s.port), Some(80));
    let half_open = GOOD.replacen(
        "scheduler: maglev",
        "scheduler: maglev\n    health_check: { type: tcp_half_open, port: 8443 }",
        1,
    );
    let c = parse(Path::new("lb.yaml"), &half_open, &Facts).unwrap();
    let hc = &c.virtual_servers[0].real_servers[1].health_check;
    assert_eq!((hc.kind, hc.port), (CheckType::TcpHalfOpen, 8443));
    assert_eq!(hc.kind.to_string(), "tcp_half_open");
    let udp = GOOD.replacen("protocol: tcp", "protocol: udp", 1);
    let c = parse(Path::new("lb.yaml"), &udp, &Facts).unwrap();
    assert_eq!(
        c.virtual_servers[0].real_servers[0].health_check.kind,
        CheckType::None
    );
}

#[test]
fn durations() {
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
    assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
    assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    assert!(parse_duration("2").unwrap_err().contains("needs a unit"));
    assert!(parse_duration("2d").unwrap_err().contains("unknown unit"));
    assert!(parse_duration("s").is_err());
    assert_eq!(fmt_duration(Duration::from_millis(1500)), "1500ms");
    assert_eq!(fmt_duration(Duration::from_secs(120)), "2m");
}

#[test]
fn each_error_names_line_and_field() {
    // (what is wrong, replace this, with this, expected line, expected field, message part)
    let rows: &[(&str, &str, &str, usize, &str, &str)] = &[
        ("unknown top-level field", "xdp_mode: auto", "xdp_mod: auto", 2, "xdp_mod", "unknown field"),
        ("unknown real field", "        weight: 1", "        wieght: 1", 13, "virtual_servers[0].real_servers[0].wieght", "unknown field"),
        ("bad VIP", "10.0.0.100", "10.0.0.300", 5, "virtual_servers[0].address", "not an IPv4 or IPv6"),
        ("bad real address", "10.0.1.12", "10.0.1", 14, "virtual_servers[0].real_servers[1].address", "not an IPv4"),
        ("port out of range", "    port: 80\n", "    port: 70000\n", 6, "virtual_servers[0].port", "70000"),
        ("port zero", "    port: 80\n", "    port: 0\n", 6, "virtual_servers[0].port", "port 0"),
        ("weight out of range", "weight: 1", "weight: 70000", 13, "virtual_servers[0].real_servers[0].weight", "out of range"),
        ("bad protocol", "protocol: tcp", "protocol: sctp", 7, "virtual_servers[0].protocol", "unknown variant"),
        ("bad method", "method: dr", "method: magic", 8, "virtual_servers[0].method", "unknown variant"),
        ("dr port change", "        port: 80\n", "        port: 8080\n", 12, "virtual_servers[0].real_servers[0].port", "method dr cannot change the port"),
        ("tunnel port change", "method: dr\n    scheduler: maglev\n    real_servers:\n      - address: 10.0.1.11\n        port: 80", "method: tunnel\n    tunnel_source: 10.0.0.1\n    real_servers:\n      - address: 10.0.1.11\n        port: 81", 12, "virtual_servers[0].real_servers[0].port", "method tunnel cannot change the port"),
        ("tunnel without source", "method: dr", "method: tunnel", 8, "virtual_servers[0].method", "needs an IPv4 tunnel source"),
        ("tunnel source of other family", "method: dr", "method: tunnel\n    tunnel_source: 2001:db8::1", 9, "virtual_servers[0].tunnel_source", "address family"),
        ("tunnel source on dr", "method: dr", "method: dr\n    tunnel_source: 10.0.0.1", 9, "virtual_servers[0].tunnel_source", "method tunnel only"),
        ("bad global tunnel source", "xdp_mode: auto", "xdp_mode: auto\ntunnel_source: [10.0.0.1, nope]", 3, "tunnel_source[1]", "not an IPv4"),
        ("two global IPv4 sources", "xdp_mode: auto", "xdp_mode: auto\ntunnel_source: [10.0.0.1, 10.0.0.2]", 3, "tunnel_source[1]", "at most one per address family"),
        ("negative SYN flood rate", "xdp_mode: auto", "xdp_mode: auto\nsyn_flood_rate: -1", 3, "syn_flood_rate", "expected u32"),
        ("missing interface", "[eth0]", "[eth9]", 1, "interfaces[0]", "does not exist"),
        ("no interface", "interfaces: [eth0]", "interfaces: []", 1, "interfaces", "at least one"),
        ("bad name", "name: web", "name: \"web server\"", 4, "virtual_servers[0].name", "not a valid name"),
        ("mixed family", "10.0.1.12", "2001:db8::12", 14, "virtual_servers[0].real_servers[1].address", "address family"),
        ("duplicate real", "10.0.1.12", "10.0.1.11", 14, "virtual_servers[0].real_servers[1].address", "listed twice"),
        ("missing field", "    protocol: tcp\n", "", 4, "virtual_servers[0]", "missing field `protocol`"),
        ("wrong type", "weight: 1", "weight: heavy", 13, "virtual_servers[0].real_servers[0].weight", "invalid type"),
        ("table size not prime", "scheduler: maglev", "scheduler: maglev\n    table_size: 1000", 10, "virtual_servers[0].table_size", "prime"),
        ("bad metrics address", "xdp_mode: auto", "xdp_mode: auto\nmetrics_listen: localhost", 3, "metrics_listen", "not ADDRESS:PORT"),
        ("bad xdp mode", "xdp_mode: auto", "xdp_mode: turbo", 2, "xdp_mode", "unknown variant"),
        ("announce in the main table", "xdp_mode: auto", "xdp_mode: auto\nannounce:\n  table: 254", 4, "announce.table", "not a table of its own"),
        ("announce without a table", "xdp_mode: auto", "xdp_mode: auto\nannounce: { metric: 5 }", 3, "announce.metric", "unknown field `metric`"),
        ("min_healthy over the reals", "scheduler: maglev", "scheduler: maglev\n    min_healthy: 9", 10, "virtual_servers[0].min_healthy", "never take traffic"),
        ("bad instance name", "xdp_mode: auto", "xdp_mode: auto\ninstance: 'a/b'", 3, "instance", "letters, digits"),
        ("relative pin path", "xdp_mode: auto", "xdp_mode: auto\npin_path: bpf/xdpvs", 3, "pin_path", "absolute path"),
        ("bad duration unit", "scheduler: maglev", "scheduler: maglev\n    health_check: { interval: 2x }", 10, "virtual_servers[0].health_check.interval", "unknown unit"),
        ("duration without unit", "scheduler: maglev", "scheduler: maglev\n    health_check: { interval: 2 }", 10, "virtual_servers[0].health_check.interval", "needs a unit"),
        ("timeout over interval", "scheduler: maglev", "scheduler: maglev\n    health_check: { interval: 1s, timeout: 2s }", 10, "virtual_servers[0].health_check.timeout", "at most the interval"),
        ("rise zero", "scheduler: maglev", "scheduler: maglev\n    health_check: { rise: 0 }", 10, "virtual_servers[0].health_check.rise", "out of range"),
        ("path on a tcp probe", "scheduler: maglev", "scheduler: maglev\n    health_check: { path: /health }", 10, "virtual_servers[0].health_check.path", "type http only"),
        ("path on a half-open probe", "scheduler: maglev", "scheduler: maglev\n    health_check: { type: tcp_half_open, path: /health }", 10, "virtual_servers[0].health_check.path", "type is tcp_half_open"),
        ("half-open probe of a udp service without a port", "protocol: tcp", "protocol: udp\n    health_check: { type: tcp_half_open }", 8, "virtual_servers[0].health_check.type", "tcp_half_open probe needs health_check.port"),
        ("bad status", "scheduler: maglev", "scheduler: maglev\n    health_check: { type: http, expect_status: 700 }", 10, "virtual_servers[0].health_check.expect_status", "not an HTTP status"),
        ("reversed status range", "scheduler: maglev", "scheduler: maglev\n    health_check: { type: http, expect_status: 399-200 }", 10, "virtual_servers[0].health_check.expect_status", "399-200"),
        ("unknown probe type", "scheduler: maglev", "scheduler: maglev\n    health_check: { type: icmp }", 10, "virtual_servers[0].health_check.type", "unknown variant"),
        ("unknown probe field", "scheduler: maglev", "scheduler: maglev\n    health_check: { intervall: 2s }", 10, "virtual_servers[0].health_check.intervall", "unknown field"),
        ("bad real override", "        weight: 1", "        weight: 1\n        health_check: { fall: 0 }", 14, "virtual_servers[0].real_servers[0].health_check.fall", "out of range"),
        ("udp probe without port", "protocol: tcp\n    method: dr\n    scheduler: maglev", "protocol: udp\n    method: dr\n    scheduler: maglev\n    health_check: { type: tcp }", 10, "virtual_servers[0].health_check.type", "needs health_check.port"),
        ("persistence netmask too long", "scheduler: maglev", "scheduler: maglev\n    persistence: { timeout: 300s, netmask: 33 }", 10, "virtual_servers[0].persistence.netmask", "longer than an IPv4"),
        ("persistence timeout zero", "scheduler: maglev", "scheduler: maglev\n    persistence: { timeout: 0s }", 10, "virtual_servers[0].persistence.timeout", "from 1s"),
        ("sorry server of another family", "scheduler: maglev", "scheduler: maglev\n    sorry_server: { address: '2001:db8::9' }", 10, "virtual_servers[0].sorry_server.address", "address family"),
        ("sorry server port on dr", "scheduler: maglev", "scheduler: maglev\n    sorry_server: { address: 10.0.9.9, port: 8080 }", 10, "virtual_servers[0].sorry_server.port", "cannot change the port"),
        ("sorry server is a real", "scheduler: maglev", "scheduler: maglev\n    sorry_server: { address: 10.0.1.11 }", 10, "virtual_servers[0].sorry_server.address", "one of the real servers"),
        ("unknown field on https", "scheduler: maglev", "scheduler: maglev\n    health_check: { type: https, verify: false }", 10, "virtual_servers[0].health_check.verify", "unknown field"),
        ("insecure on an http probe", "scheduler: maglev", "scheduler: maglev\n    health_check: { type: http, insecure: true }", 10, "virtual_servers[0].health_check.insecure", "type https only (type is http)"),
        ("ca_file on a tcp probe", "scheduler: maglev", "scheduler: maglev\n    health_check: { ca_file: /etc/ssl/ca.pem }", 10, "virtual_servers[0].health_check.ca_file", "type https only (type is tcp)"),
        ("insecure on a real's tcp probe", "        weight: 1", "        weight: 1\n        health_check: { insecure: false }", 14, "virtual_servers[0].real_servers[0].health_check.insecure", "type https only"),
        ("ca_file missing", "scheduler: maglev", "scheduler: maglev\n    health_check: { type: https, ca_file: /nonexistent/xdpvs-ca.pem }", 10, "virtual_servers[0].health_check.ca_file", "cannot read `/nonexistent/xdpvs-ca.pem`"),
        ("ca_file relative", "scheduler: maglev", "scheduler: maglev\n    health_check: { type: https, ca_file: ca.pem }", 10, "virtual_servers[0].health_check.ca_file", "must be an absolute path"),
        ("ca_file of a real missing", "        weight: 1", "        weight: 1\n        health_check: { type: https, ca_file: /nonexistent/r.pem }", 14, "virtual_servers[0].real_servers[0].health_check.ca_file", "cannot read"),
        ("insecure and ca_file together", "scheduler: maglev", "scheduler: maglev\n    health_check: { type: https, insecure: true, ca_file: /nonexistent/ca.pem }", 10, "virtual_servers[0].health_check.insecure", "set one of them"),
        ("https host not a name", "scheduler: maglev", "scheduler: maglev\n    health_check: { type: https, host: 'bad..name' }", 10, "virtual_servers[0].health_check.host", "not a DNS name or an IP address"),
        ("dns label over 63 bytes", "scheduler: maglev", "scheduler: maglev\n    health_check: { type: dns, name: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.test }", 10, "virtual_servers[0].health_check.name", "at most 63"),
        ("dns name over 255 bytes", "scheduler: maglev", "scheduler: maglev\n    health_check: { type: dns, name: bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb.bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb.bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb.bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb }", 10, "virtual_servers[0].health_check.name", "at most 255"),
        ("dns name with an empty label", "        weight: 1", "        weight: 1\n        health_check: { type: dns, name: 'a..test' }", 14, "virtual_servers[0].real_servers[0].health_check.name", "empty label"),
        ("unknown dns type", "scheduler: maglev", "scheduler: maglev\n    health_check: { type: dns, query_type: PTR }", 10, "virtual_servers[0].health_check.query_type", "unknown variant `PTR`"),
        ("dns name on a tcp probe", "scheduler: maglev", "scheduler: maglev\n    health_check: { name: example.test }", 10, "virtual_servers[0].health_check.name", "type dns only (type is tcp)"),
        ("query_type on a real's http probe", "        weight: 1", "        weight: 1\n        health_check: { type: http, query_type: A }", 14, "virtual_servers[0].real_servers[0].health_check.query_type", "type dns only (type is http)"),
        ("path on a dns probe", "scheduler: maglev", "scheduler: maglev\n    health_check: { type: dns, path: /health }", 10, "virtual_servers[0].health_check.path", "type is dns"),
        ("path a URL cannot carry", "scheduler: maglev", "scheduler: maglev\n    health_check: { type: http, path: '/a<b>' }", 10, "virtual_servers[0].health_check.path", "percent-encode"),
    ];
    for (what, from, to, line, field, msg) in rows {
        assert!(GOOD.contains(from), "{what}: fixture lacks {from:?}");
        let text = GOOD.replacen(from, to, 1);
        let errs = errors(&text);
        let e = errs
            .iter()
            .find(|e| e.field == *field)
            .unwrap_or_else(|| panic!("{what}: no error for {field}; got {errs:#?}"));
        assert_eq!(e.pos.map(|p| p.line), Some(*line), "{what}: {e}");
        assert!(
            e.message.contains(msg),
            "{what}: message {:?} lacks {msg:?}",
            e.message
        );
        assert!(
            e.to_string().starts_with(&format!("lb.yaml:{line}:")),
            "{what}: {e}"
        );
    }
}

/// A directory of one test under the temporary one, removed on drop.
pub(super) struct TempDir(pub(super) std::path::PathBuf);

impl TempDir {
    pub(super) fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("xdpvs-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// Writes `text` to file `name` in it. Returns: the file's path.
    fn file(&self, name: &str, text: &str) -> std::path::PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `GOOD` with this https probe on the virtual server and `real` on its first real.
fn https(vs: &str, real: &str) -> String {
    GOOD.replacen(
        "scheduler: maglev\n",
        &format!("scheduler: maglev\n    health_check: {vs}\n"),
        1,
    )
    .replacen(
        "        weight: 1\n",
        &format!("        weight: 1\n        health_check: {real}\n"),
        1,
    )
}

#[test]
fn https_probes_verify_against_system_roots_a_ca_file_or_not_at_all() {
    let pem = rcgen::generate_simple_self_signed(vec!["ca.test".to_string()])
        .unwrap()
        .cert
        .pem();
    let dir = TempDir::new("https-verify");
    let ca = dir.file("ca.pem", &format!("# an internal CA\n{pem}"));
    let ca = ca.display();
    let verify = |text: &str| -> Vec<Verify> {
        parse(Path::new("lb.yaml"), text, &Facts)
            .unwrap()
            .virtual_servers[0]
            .real_servers
            .iter()
            .map(|r| r.health_check.verify.clone())
            .collect()
    };
    let c = parse(
        Path::new("lb.yaml"),
        &https("{ type: https }", "{}"),
        &Facts,
    )
    .unwrap();
    let h = &c.virtual_servers[0].real_servers[0].health_check;
    assert_eq!(
        (h.kind, h.port, &h.verify),
        (CheckType::Https, 80, &Verify::SystemRoots),
        "the real's port, and the system's roots"
    );
    let v = verify(&https(&format!("{{ type: https, ca_file: '{ca}' }}"), "{}"));
    let Verify::CaFile(file) = &v[1] else {
        panic!("{v:?}");
    };
    assert_eq!(file.certs.len(), 1);
    assert_eq!(v[0], v[1]);
    // The real's own choice wins over the virtual server's.
    let v = verify(&https(
        &format!("{{ type: https, ca_file: '{ca}' }}"),
        "{ insecure: true }",
    ));
    assert_eq!(v[0], Verify::Insecure);
    assert!(matches!(v[1], Verify::CaFile(_)), "{v:?}");
    let v = verify(&https(
        "{ type: https, insecure: true }",
        &format!("{{ ca_file: '{ca}' }}"),
    ));
    assert!(matches!(v[0], Verify::CaFile(_)), "{v:?}");
    assert_eq!(v[1], Verify::Insecure);
    // A real that chose tcp for itself inherits the virtual server's TLS fields quietly.
    let v = verify(&https("{ type: https, insecure: true }", "{ type: tcp }"));
    assert_eq!(v[1], Verify::Insecure);
}

#[test]
fn dns_probes_take_keepalived_defaults_and_the_reals_port() {
    // A udp virtual server on port 53: the probe needs no port of its own.
    let text = https("{ type: dns }", "{ name: example.test, query_type: AAAA }")
        .replace("port: 80\n", "port: 53\n")
        .replacen("protocol: tcp", "protocol: udp", 1);
    let c = parse(Path::new("lb.yaml"), &text, &Facts).unwrap();
    let h = &c.virtual_servers[0].real_servers[1].health_check;
    assert_eq!(
        (h.kind, h.port, h.dns.name.as_str(), h.dns.qtype),
        (CheckType::Dns, 53, ".", QueryType::Soa),
        "keepalived's defaults: the root's SOA, at the real's port (no port needed on udp)"
    );
    let h = &c.virtual_servers[0].real_servers[0].health_check;
    assert_eq!(
        (h.dns.name.as_str(), h.dns.qtype),
        ("example.test", QueryType::Aaaa)
    );
}

#[test]
fn the_tls_name_is_host_without_its_port() {
    use rustls_pki_types::ServerName;
    let name = |h: &str| tls_name(h).map(|n| n.to_str().into_owned());
    assert_eq!(name("www.example.com"), Ok("www.example.com".into()));
    assert_eq!(name("www.example.com:8443"), Ok("www.example.com".into()));
    assert_eq!(name("10.0.1.11:443"), Ok("10.0.1.11".into()));
    assert!(matches!(
        tls_name("[2001:db8::1]:443"),
        Ok(ServerName::IpAddress(_))
    ));
    assert!(matches!(
        tls_name("2001:db8::1"),
        Ok(ServerName::IpAddress(_))
    ));
    assert!(tls_name("bad..name").is_err());
    assert!(tls_name("host:port").is_err());
}

#[test]
fn a_bad_ca_file_is_named_with_what_is_wrong() {
    let cert = rcgen::generate_simple_self_signed(vec!["ca.test".to_string()])
        .unwrap()
        .cert
        .pem();
    let not_der = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    let cases = [
        ("empty.pem", String::new(), "holds no PEM certificate"),
        (
            "key.pem",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into(),
            "holds no PEM certificate",
        ),
        (
            "cut.pem",
            cert[..cert.len() - 30].to_string(),
            "is not a valid PEM file",
        ),
        (
            "junk.pem",
            format!("{cert}{not_der}"),
            "certificate 2 is not a CA certificate",
        ),
    ];
    let dir = TempDir::new("bad-ca-file");
    for (name, text, want) in cases {
        let path = dir.file(name, &text);
        let errs = errors(&https(
            &format!("{{ type: https, ca_file: '{}' }}", path.display()),
            "{}",
        ));
        let e = errs
            .iter()
            .find(|e| e.field == "virtual_servers[0].health_check.ca_file")
            .unwrap_or_else(|| panic!("{name}: {errs:#?}"));
        assert!(e.message.contains(want), "{name}: {}", e.message);
        assert!(
            e.message.contains(&path.display().to_string()),
            "{name}: {}",
            e.message
        );
        assert_eq!(e.pos.map(|p| p.line), Some(10), "{name}: {e}");
        assert_eq!(
            errs.len(),
            1,
            "{name}: reported once, not once per real: {errs:#?}"
        );
    }
}

#[test]
fn nat_may_change_the_port_and_tunnel_takes_the_global_source_of_its_family() {
    let text = GOOD.replacen("method: dr", "method: nat", 1).replacen(
        "        port: 80\n",
        "        port: 8080\n",
        1,
    );
    let c = parse(Path::new("lb.yaml"), &text, &Facts).unwrap();
    assert_eq!(
        (
            c.virtual_servers[0].method,
            c.virtual_servers[0].real_servers[0].port
        ),
        (Method::Nat, 8080)
    );
    let v6 = "interfaces: [eth0]\ntunnel_source: [192.0.2.1, 2001:db8::1]\nvirtual_servers:\n  - { name: v6, address: 2001:db8::100, port: 80, protocol: tcp, method: tunnel, real_servers: [{ address: 2001:db8:1::11 }] }\n  - { name: v4, address: 10.0.0.100, port: 80, protocol: tcp, method: tunnel, tunnel_source: 10.9.9.9, real_servers: [{ address: 10.0.1.11 }] }\n";
    let c = parse(Path::new("lb.yaml"), v6, &Facts).unwrap();
    assert_eq!(
        c.virtual_servers[0].tunnel_source,
        Some("2001:db8::1".parse().unwrap())
    );
    assert_eq!(
        c.virtual_servers[1].tunnel_source,
        Some("10.9.9.9".parse().unwrap()),
        "a VS's own source wins"
    );
}

#[test]
fn duplicates_across_virtual_servers() {
    let text =
        format!("{GOOD}  - name: web\n    address: 10.0.0.100\n    port: 80\n    protocol: tcp\n");
    let errs = errors(&text);
    assert!(
        errs.iter().any(|e| e.field == "virtual_servers[1].name"
            && e.message.contains("used twice")
            && e.pos.unwrap().line == 15),
        "{errs:#?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.field == "virtual_servers[1].address"
                && e.message.contains("already defined")),
        "{errs:#?}"
    );
}

#[test]
fn every_error_is_listed_not_just_the_first() {
    let text = GOOD
        .replacen("10.0.0.100", "bad-vip", 1)
        .replacen("weight: 1", "weight: 99999", 1)
        .replacen("[eth0]", "[nope0]", 1)
        .replacen("10.0.1.12", "10.0.1.12\n        colour: red", 1);
    let errs = errors(&text);
    let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "interfaces[0]",
            "virtual_servers[0].address",
            "virtual_servers[0].real_servers[0].weight",
            "virtual_servers[0].real_servers[1].colour"
        ],
        "{errs:#?}"
    );
}

#[test]
fn syntax_error_has_a_position() {
    let errs = errors("interfaces: [eth0\nvirtual_servers: []\n");
    assert_eq!(errs.len(), 1);
    assert!(errs[0].pos.is_some(), "{:?}", errs[0]);
}

#[test]
fn prime_check() {
    let primes: Vec<u32> = (0..30).filter(|&n| validate::is_prime(n)).collect();
    assert_eq!(primes, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
    assert!(validate::is_prime(65537));
    assert!(!validate::is_prime(65535));
}

/// Found by the configuration fuzzer (`fuzz_tests.rs`): each row a file the loader once
/// answered without a line (or a field), too slowly, or at the wrong line.
#[test]
fn fuzzer_findings_are_located() {
    let bomb = {
        let mut s = String::from("a0: &a0 [lol]\n");
        for l in 1..10 {
            s.push_str(&format!(
                "a{l}: &a{l} [{}]\n",
                vec![format!("*a{}", l - 1); 10].join(", ")
            ));
        }
        s
    };
    let deep = format!(
        "{GOOD}tunnel_source: {}{}\n",
        "[".repeat(20_000),
        "]".repeat(20_000)
    );
    let deep_block = format!(
        "{GOOD}announce:{}\n",
        (0..1000)
            .map(|i| format!("\n{}k:", " ".repeat(i + 1)))
            .collect::<String>()
    );
    let aliased = GOOD.replacen("10.0.1.11", "&r 10.0.1.11", 1).replacen(
        "      - address: 10.0.1.12\n",
        "      - *r\n      - address: 10.0.1.300\n",
        1,
    );
    // (what, file, line, field ("" for the file as a whole), message part)
    let rows: &[(&str, String, usize, &str, &str)] = &[
        (
            "an empty file lacks interfaces at line 1",
            String::new(),
            1,
            "interfaces",
            "at least one interface",
        ),
        (
            "a file without interfaces, at its first field",
            "# comment\nxdp_mode: auto\n".into(),
            2,
            "interfaces",
            "at least one interface",
        ),
        (
            "a YAML error after some fields is the file's, not a field's",
            "interfaces: [eth0]\nvirtual_servers:\n  - name: web\n    health_check: {type: [\n"
                .into(),
            5,
            "",
            "malformed YAML",
        ),
        (
            "a document that is not a mapping",
            "just words\n".into(),
            1,
            "",
            "the file must be a mapping",
        ),
        (
            "an empty list item stands at its dash",
            "interfaces: [eth0]\nvirtual_servers:\n  -\n".into(),
            3,
            "virtual_servers[0]",
            "missing field `name`",
        ),
        (
            "lists nested 20,000 deep (seconds in libyaml)",
            deep,
            15,
            "",
            "nested more than 32 deep",
        ),
        (
            "mappings nested 1,000 deep (overflowed yaml-rust2's recursive loader)",
            deep_block,
            47,
            "",
            "nested more than 32 deep",
        ),
        (
            "an alias bomb (seconds in serde_yaml)",
            format!("{bomb}{GOOD}"),
            6,
            "",
            "alias bomb",
        ),
        (
            "a null key in a virtual server, named `?` before",
            GOOD.replacen("    port: 80\n", "    port: 80\n    null: x\n", 1),
            4,
            "virtual_servers[0]",
            "a key is not a field name",
        ),
        (
            "an alias does not shift the items after it",
            aliased,
            15,
            "virtual_servers[0].real_servers[2].address",
            "not an IPv4",
        ),
    ];
    for (what, text, line, field, msg) in rows {
        let start = std::time::Instant::now();
        let errs = errors(text);
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{what}: took {:?}",
            start.elapsed()
        );
        let e = errs
            .iter()
            .find(|e| e.field == *field)
            .unwrap_or_else(|| panic!("{what}: no error for {field:?}; got {errs:#?}"));
        assert_eq!(e.pos.map(|p| p.line), Some(*line), "{what}: {e}");
        assert!(e.message.contains(msg), "{what}: {e}");
    }
}

#[test]
fn a_file_that_is_not_utf8_is_named_at_its_first_bad_byte() {
    let dir = TempDir::new("not-utf8");
    let path = dir.0.join("lb.yaml");
    std::fs::write(
        &path,
        b"interfaces: [eth0]\nvirtual_servers:\n  - name: w\xe9b\n",
    )
    .unwrap();
    let errs = load(&path, &Facts).expect_err("not UTF-8").0;
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(errs[0].pos, Some(Pos { line: 3, col: 12 }), "{}", errs[0]);
    assert!(
        errs[0].to_string().contains("lb.yaml:3:12: not UTF-8"),
        "{}",
        errs[0]
    );
}
