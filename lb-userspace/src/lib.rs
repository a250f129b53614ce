//! xdpvs: an XDP layer-4 load balancer. The library holds everything the `xdpvs`
//! binary does, so the root-run tests can drive the same code.

pub mod announce;
pub mod cli;
pub mod config;
pub mod control;
pub mod convert;
pub mod daemon;
pub mod dataplane;
pub mod health;
pub mod instance;
pub mod maglev;
pub mod metrics;
pub mod model;
pub mod netlink;
pub mod newest;
pub mod realserver;
pub mod reconcile;
pub mod status;

/// The balancer's BPF object (lb-ebpf's `xdpvs`: the programs and maps that
/// `lb_common::maps` names), built by build.rs and embedded at compile time.
pub static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdpvs"));

/// The real server's BPF object (lb-ebpf's `xdpvs-realserver`: the decapsulator and the
/// maps that `lb_common::realserver::maps` names), for `xdpvs realserver decap`.
pub static BPF_REALSERVER_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdpvs-realserver"));

/// The benchmarks' BPF object (lb-ebpf's `xdpvs-bench`: the bounce and the counting
/// sink that `lb_common::bench` names). For benchmarks only: the daemon never loads it.
pub static BPF_BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdpvs-bench"));

/// The embedded objects hold exactly the maps and programs `lb_common` declares: the
/// BPF side names its statics by hand, so a rename or a forgotten map on either side
/// fails here, on the host, instead of at load time as root.
#[cfg(test)]
mod objects {
    use lb_common::{bench, maps, realserver};

    /// Returns: the object's map names and program names, each sorted.
    fn names(object: &[u8]) -> (Vec<String>, Vec<String>) {
        let obj = aya_obj::Object::parse(object).expect("parsing the embedded BPF object");
        let mut maps: Vec<String> = obj.maps.into_keys().collect();
        let mut programs: Vec<String> = obj.programs.into_keys().collect();
        maps.sort();
        programs.sort();
        (maps, programs)
    }

    /// Returns: `list` as owned strings, sorted (a name listed twice stays twice).
    fn sorted(list: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn balancer_object_holds_exactly_the_declared_maps_and_programs() {
        assert_eq!(
            names(super::BPF_OBJECT),
            (sorted(maps::ALL), sorted(maps::PROGRAMS))
        );
    }

    #[test]
    fn realserver_object_holds_exactly_the_declared_maps_and_programs() {
        assert_eq!(
            names(super::BPF_REALSERVER_OBJECT),
            (
                sorted(realserver::maps::ALL),
                sorted(realserver::maps::PROGRAMS)
            )
        );
    }

    /// No map but the section of its globals (`lb_common::bench::BOUNCE_*`).
    #[test]
    fn bench_object_holds_exactly_the_declared_programs_and_its_globals() {
        assert_eq!(
            names(super::BPF_BENCH_OBJECT),
            (sorted(&[".rodata"]), sorted(bench::PROGRAMS))
        );
    }
}
