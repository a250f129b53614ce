//! An in-memory data path: the maps as plain collections, for reconciler tests.

use std::collections::HashMap;

use lb_common::{IfaceInfo, RealInfo, VsInfo, VsKey, RING_STRIDE};

use super::{Dataplane, DataplaneError};

#[derive(Default, Debug)]
pub struct MemoryDataplane {
    pub ifaces: HashMap<u32, IfaceInfo>,
    pub reals: HashMap<u32, RealInfo>,
    /// `ring_id * RING_STRIDE + slot` -> real id.
    pub rings: HashMap<u32, u32>,
    pub vs: HashMap<VsKey, VsInfo>,
    pub settings: u32,
    /// Number of ring slot writes, to check that only changed slots are written.
    pub slot_writes: usize,
}

impl MemoryDataplane {
    /// Returns: the live table of a virtual server, as the data path would read it.
    pub fn table(&self, key: &VsKey) -> Option<Vec<u32>> {
        let vs = self.vs.get(key)?;
        Some(
            (0..vs.ring_size)
                .map(|s| {
                    self.rings
                        .get(&(vs.ring_id * RING_STRIDE + s))
                        .copied()
                        .unwrap_or(0)
                })
                .collect(),
        )
    }
}

impl Dataplane for MemoryDataplane {
    fn set_iface(&mut self, ifindex: u32, info: &IfaceInfo) -> Result<(), DataplaneError> {
        self.ifaces.insert(ifindex, *info);
        Ok(())
    }
    fn set_real(&mut self, id: u32, info: &RealInfo) -> Result<(), DataplaneError> {
        self.reals.insert(id, *info);
        Ok(())
    }
    fn set_ring_slots(&mut self, ring_id: u32, slots: &[(u32, u32)]) -> Result<(), DataplaneError> {
        for &(slot, real) in slots {
            self.rings.insert(ring_id * RING_STRIDE + slot, real);
        }
        self.slot_writes += slots.len();
        Ok(())
    }
    fn set_vs(&mut self, key: &VsKey, info: &VsInfo) -> Result<(), DataplaneError> {
        self.vs.insert(*key, *info);
        Ok(())
    }
    fn set_settings(&mut self, bits: u32) -> Result<(), DataplaneError> {
        self.settings = bits;
        Ok(())
    }
    fn remove_vs(&mut self, key: &VsKey) -> Result<(), DataplaneError> {
        self.vs.remove(key);
        Ok(())
    }
    fn reset_counters(
        &mut self,
        _vs: Option<u32>,
        _real: Option<u32>,
    ) -> Result<(), DataplaneError> {
        Ok(())
    }
}
