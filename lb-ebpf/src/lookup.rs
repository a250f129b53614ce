//! Choosing the real: flow table first, then the virtual server's Maglev ring.

use lb_common::{
    flow_hash, FlowKey, FlowState, RealInfo, VsInfo, NO_REAL, REAL_F_ACTIVE, RING_STRIDE,
};

use crate::maps::{FLOWS, REALS, VS_RINGS};

/// A real chosen for a packet.
pub struct Choice {
    pub real_id: u32,
    pub real: *const RealInfo,
    /// The flow was (re)scheduled by this packet.
    pub new_flow: bool,
}

pub enum Miss {
    /// The ring slot is empty: the virtual server has no real taking new flows.
    NoReal,
    /// A ring or real index out of range: daemon/data-path disagreement.
    Internal,
}

#[inline(always)]
fn real_usable(id: u32, generation: u32) -> Option<*const RealInfo> {
    let r = REALS.get_ptr(id)?;
    // SAFETY: array value pointer from the kernel, valid for this run.
    let ok = unsafe { (*r).flags & REAL_F_ACTIVE != 0 && (*r).generation == generation };
    ok.then_some(r)
}

/// Picks the real for `key` on virtual server `vs`, recording new choices in FLOWS.
/// An entry naming a real that is gone (inactive, or its id reused) is re-steered.
#[inline(always)]
pub fn choose(key: &FlowKey, vs: &VsInfo) -> Result<Choice, Miss> {
    // SAFETY: LRU hash value; a concurrent update can at worst give a stale but
    // well-formed FlowState, which is then validated against REALS.
    if let Some(f) = unsafe { FLOWS.get(key) } {
        if f.vs_index == vs.vs_index {
            if let Some(real) = real_usable(f.real_id, f.real_generation) {
                return Ok(Choice {
                    real_id: f.real_id,
                    real,
                    new_flow: false,
                });
            }
        }
    }
    if vs.ring_size == 0 || vs.ring_size > RING_STRIDE {
        return Err(Miss::Internal);
    }
    let slot = vs.ring_id * RING_STRIDE + flow_hash(key) % vs.ring_size;
    let real_id = *VS_RINGS.get(slot).ok_or(Miss::Internal)?;
    if real_id == NO_REAL {
        return Err(Miss::NoReal);
    }
    let real = REALS.get_ptr(real_id).ok_or(Miss::Internal)?;
    // SAFETY: as above.
    let generation = unsafe { (*real).generation };
    let state = FlowState {
        real_id,
        real_generation: generation,
        vs_index: vs.vs_index,
        _pad: 0,
    };
    // A full LRU evicts the oldest entry; an error here only costs stickiness.
    let _ = FLOWS.insert(key, &state, 0);
    Ok(Choice {
        real_id,
        real,
        new_flow: true,
    })
}
