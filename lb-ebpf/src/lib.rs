//! What both BPF objects share: the wire formats and checksum arithmetic. Each object
//! is a bin of this package with its own maps (`src/balancer/`: the load balancer;
//! `src/realserver/`: the real server's decapsulator); neither sees the other's.
//!
//! This library is also lb-userspace's build-dependency (so that cargo rebuilds the
//! objects when it changes) and is then compiled for the host, where nothing uses it.
#![no_std]

pub mod csum;
pub mod headers;
