//! Names the daemon's rooms share. They sit below every room that uses them (health,
//! reconcile, daemon), so imports run only downwards: the health checker names a real
//! without importing the reconciler that acts on its verdicts.

use std::net::IpAddr;

/// A real server (or the sorry server) of a virtual server: its identity everywhere in
/// the daemon. Config validation keeps address and port unique among a virtual server's
/// reals; `sorry` keeps the sorry server apart from a real at the same address and port.
///
/// The field order is the sort order, and the reconciler walks reals in it: keep it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RealKey {
    pub vs: String,
    pub addr: IpAddr,
    pub port: u16,
    /// The virtual server's sorry server rather than one of its reals.
    pub sorry: bool,
}

impl RealKey {
    /// Returns: the key of real `addr:port` of virtual server `vs`.
    pub fn real(vs: &str, addr: IpAddr, port: u16) -> Self {
        Self {
            vs: vs.to_string(),
            addr,
            port,
            sorry: false,
        }
    }

    /// Returns: the key of virtual server `vs`'s sorry server, `addr:port`.
    pub fn sorry(vs: &str, addr: IpAddr, port: u16) -> Self {
        Self {
            sorry: true,
            ..Self::real(vs, addr, port)
        }
    }
}
