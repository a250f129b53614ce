//! Choosing the real: flow table first, then (for a persistent virtual server) the
//! client network's real, then the virtual server's Maglev ring.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use lb_common::{
    flow_hash, maps::UDP_SEEN_SLOTS, reason, FlowKey, FlowState, PersistKey, PersistState,
    RealInfo, TunnelSource, VsInfo, METHOD_DR, METHOD_NAT, METHOD_TUNNEL, NO_REAL,
    PERSIST_TOUCH_JIFFIES, REAL_F_ACTIVE, REAL_F_NEW, REAL_F_PLAIN_DR, REAL_F_PLAIN_NAT,
    REAL_F_PLAIN_PERSIST, REAL_F_PLAIN_TUNNEL, RING_ELEMS, RING_STRIDE,
};

use crate::{
    flow_filter,
    maps::{FLOWS, PERSIST, REALS, TUNNEL_SRCS, UDP_SEEN, VS_RINGS},
    ticks,
    verdict::Verdict,
};

/// A persistence entry's last-seen time is rewritten at most this often (ns), or half
/// its virtual server's timeout if that is shorter, so that the established fast path
/// does not write a shared cache line on every packet.
const PERSIST_TOUCH_NS: u64 = 1_000_000_000;

/// A real chosen for a packet.
pub struct Choice {
    pub real_id: u32,
    pub real: *const RealInfo,
    /// The flow was (re)scheduled by this packet: counted as a new flow.
    pub new_flow: bool,
    /// `FLOWS` holds the flow (found there, or written by this packet).
    pub recorded: bool,
    /// The flow's hash is in `UDP_SEEN` (left there by this packet), where a NAT
    /// real's reply finds it while the flow is unrecorded (decision 0021).
    pub marked: bool,
}

/// Returns: real `id` if it still is the holder of `generation` and has every bit of
/// `flags` set.
#[inline(always)]
fn real_usable(id: u32, generation: u32, flags: u32) -> Option<*const RealInfo> {
    let r = REALS.get_ptr(id)?;
    // SAFETY: array value pointer from the kernel, valid for this run.
    let ok = unsafe { (*r).flags & flags == flags && (*r).generation == generation };
    ok.then_some(r)
}

#[inline(always)]
fn persist_key(key: &FlowKey, vs: &VsInfo) -> PersistKey {
    PersistKey {
        net: [
            key.src[0] & vs.persist_mask[0],
            key.src[1] & vs.persist_mask[1],
            key.src[2] & vs.persist_mask[2],
            key.src[3] & vs.persist_mask[3],
        ],
        vs_index: vs.vs_index,
        family: key.family,
        _pad: [0; 3],
    }
}

/// Keeps a persistent client network's entry alive while its flows carry packets, and
/// stamps the entry of flow `key`, so that its packets go by the entry and the real
/// alone for [`PERSIST_TOUCH_JIFFIES`] (decision 0033). A flow's packets come here at
/// most that often while its real is flagged plain (a fragment's, whose entry is by
/// addresses and never plain, every time: its entry is not stamped); its client
/// network's entry is rewritten at most once in [`PERSIST_TOUCH_NS`] or half the
/// timeout, so that it lags the network's last packet by less than the timeout.
#[inline(always)]
fn persist_touch(key: &FlowKey, vs: &VsInfo, real_id: u32) {
    if key.dport_be != 0 {
        if let Some(f) = FLOWS.get_ptr_mut(key) {
            // SAFETY: LRU hash value pointer, valid for this run; a racing writer
            // stamps the same clock.
            unsafe { (*f).touched = ticks::now() as u32 };
        }
    }
    let pk = persist_key(key, vs);
    if let Some(p) = PERSIST.get_ptr_mut(&pk) {
        let now = unsafe { bpf_ktime_get_ns() };
        let every = PERSIST_TOUCH_NS.min(vs.persist_timeout_ns / 2);
        // SAFETY: LRU value pointer, valid for this run; a racing writer can only make
        // the time older or newer by a packet's worth.
        unsafe {
            if (*p).real_id == real_id && now.wrapping_sub((*p).last_seen_ns) > every {
                (*p).last_seen_ns = now;
            }
        }
    }
}

/// Returns: the live, new-flow-taking real the client network of `pk` sticks to, if its
/// entry has not timed out.
#[inline(always)]
fn persist_lookup(pk: &PersistKey, vs: &VsInfo, now: u64) -> Option<(u32, *const RealInfo)> {
    // SAFETY: LRU value; a concurrent update gives at worst a stale, well-formed entry,
    // which is validated against REALS.
    let p = unsafe { PERSIST.get(pk) }?;
    if now.wrapping_sub(p.last_seen_ns) > vs.persist_timeout_ns {
        return None;
    }
    let r = real_usable(p.real_id, p.real_generation, REAL_F_ACTIVE | REAL_F_NEW)?;
    Some((p.real_id, r))
}

/// When a packet whose flow the flow table does not hold writes it there (and into
/// `PERSIST`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// At once: TCP past its SYN, UDP with persistence, fragments.
    Now,
    /// At the flow's second packet: UDP without persistence (decision 0017). The first
    /// leaves the flow's hash in `UDP_SEEN`, where a NAT real's reply also finds it
    /// (decision 0021), and counts as the new flow; a flow re-steered from a stale
    /// entry is recorded at once.
    Second,
    /// Never: a TCP SYN (decision 0012; the packet after it records the flow), an ICMP
    /// error about the flow.
    Never,
    /// Never, but leave the flow's hash in `UDP_SEEN`: a NAT virtual server's TCP SYN,
    /// whose real's SYN-ACK finds it there (decision 0021). Without persistence only.
    Mark,
}

/// Picks the real for `key` on virtual server `vs`, recording a new choice in FLOWS
/// (and PERSIST) as `record` says. `found`: the flow's entry, which the caller looked
/// up with [`recorded`], or `None` where it did not look (an opening SYN during a SYN
/// flood, decision 0025: the flow goes where persistence or Maglev sends it, as if it
/// had no entry). The packets of a flow before it is recorded find the same real by
/// the same means while the tables hold. An entry naming a real that is gone
/// (inactive, or its id reused) is re-steered.
/// Returns: the choice, or the drop verdict: `drop_no_real` when the ring slot is empty
/// (no real takes new flows), `drop_internal` for a ring or real index out of range.
#[inline(always)]
pub fn real(
    key: &FlowKey,
    vs: &VsInfo,
    record: Record,
    found: Option<&FlowState>,
) -> Result<Choice, Verdict> {
    pick(key, vs, record, found)
}

/// Finds the real that serves `key` as [`real`] would, writing nothing: for an ICMP
/// error about the flow, which must not create or refresh state.
#[inline(always)]
pub fn serving(key: &FlowKey, vs: &VsInfo) -> Result<Choice, Verdict> {
    pick(key, vs, Record::Never, recorded(key))
}

/// An established flow that goes by its entry and its real alone (decision 0027).
#[derive(Clone, Copy)]
pub struct Plain {
    /// The entry's real.
    pub real_id: u32,
    /// Its `REALS` value.
    pub real: &'static RealInfo,
    /// The entry's virtual server index.
    pub vs_index: u32,
    /// `METHOD_*` of that virtual server, by the real's `REAL_F_PLAIN_*` flag.
    pub method: u8,
}

impl Plain {
    /// Returns: the choice of the flow's packet: its recorded real.
    #[inline(always)]
    pub fn choice(&self) -> Choice {
        Choice {
            real_id: self.real_id,
            real: self.real,
            new_flow: false,
            recorded: true,
            marked: false,
        }
    }
}

/// Returns: the flow whose entry is `f`, plain, when the entry's real still holds the
/// entry's generation, is active and is flagged `REAL_F_PLAIN_*`: its virtual server
/// (the entry's index) forwards the flow by direct routing, NAT or tunnelling, and is
/// still at the packet's VIP, port and protocol, since the daemon gives the reals of a
/// virtual server that leaves them a new generation (decision 0027). Not a persistent
/// one's flow whose entry was touched [`PERSIST_TOUCH_JIFFIES`] ago or more: that
/// packet goes through the virtual server, which touches the client network's
/// persistence entry (decision 0033).
#[inline(always)]
pub fn plain(f: &FlowState) -> Option<Plain> {
    let real = real_usable(f.real_id, f.real_generation, REAL_F_ACTIVE)?;
    // SAFETY: array value pointer, valid for this run.
    let real = unsafe { &*real };
    let method = if real.flags & REAL_F_PLAIN_DR != 0 {
        METHOD_DR
    } else if real.flags & REAL_F_PLAIN_NAT != 0 {
        METHOD_NAT
    } else if real.flags & REAL_F_PLAIN_TUNNEL != 0 {
        METHOD_TUNNEL
    } else {
        return None;
    };
    if real.flags & REAL_F_PLAIN_PERSIST != 0
        && (ticks::now() as u32).wrapping_sub(f.touched) >= PERSIST_TOUCH_JIFFIES
    {
        return None;
    }
    Some(Plain {
        real_id: f.real_id,
        real,
        vs_index: f.vs_index,
        method,
    })
}

/// Returns: a copy of the outer source `TUNNEL_SRCS` holds for virtual server
/// `vs_index` (decision 0028), all zero if there is none. Copied once, so that the
/// address checked ([`TunnelSource::is_whole`]) is the address used: the daemon
/// rewrites the value in place.
#[inline(always)]
pub fn tunnel_source(vs_index: u32) -> TunnelSource {
    match TUNNEL_SRCS.get(vs_index) {
        Some(t) => *t,
        None => TunnelSource::default(),
    }
}

/// Returns: the `UDP_SEEN` slot of hash `h`.
#[inline(always)]
fn seen_slot(h: u32) -> Option<*mut u32> {
    // Two slots per element: an array's elements are 8-byte aligned.
    let slot = h % UDP_SEEN_SLOTS;
    let pair = UDP_SEEN.get_ptr_mut(slot / 2)?;
    // SAFETY: array value pointer, valid for this run; the index is 0 or 1.
    Some(unsafe { &mut (*pair)[(slot & 1) as usize] as *mut u32 })
}

/// Returns: whether the flow of hash `h` left its hash in `UDP_SEEN` with an earlier
/// packet (this one then records it); otherwise leaves it there for the next.
#[inline(always)]
fn seen_before(h: u32) -> bool {
    let Some(mark) = seen_slot(h) else {
        return true;
    };
    // SAFETY: slot pointer, valid for this run. Two CPUs writing one slot at once
    // leave one of the two hashes: the other flow is recorded a packet later.
    unsafe {
        if *mark == h {
            return true;
        }
        *mark = h;
    }
    false
}

/// Leaves hash `h` in its `UDP_SEEN` slot. Returns: whether it could.
#[inline(always)]
fn mark(h: u32) -> bool {
    let Some(mark) = seen_slot(h) else {
        return false;
    };
    // SAFETY: as in `seen_before`.
    unsafe { *mark = h };
    true
}

/// Returns: whether the flow of hash `h` has its mark in `UDP_SEEN`, writing nothing.
#[inline(always)]
fn is_marked(h: u32) -> bool {
    // SAFETY: as in `seen_before`.
    seen_slot(h).is_some_and(|m| unsafe { *m } == h)
}

/// Returns: the `FLOWS` entry that would record the unrecorded flow `key` of virtual
/// server `vs` (without persistence) if it left its mark in `UDP_SEEN` and Maglev
/// gives it to the real at `addr:port_be`: a NAT real's reply to a SYN or to a first
/// datagram (decision 0021). Writes nothing.
#[inline(always)]
pub fn marked_to(key: &FlowKey, vs: &VsInfo, addr: &[u32; 4], port_be: u16) -> Option<FlowState> {
    if vs.persist_timeout_ns != 0 {
        return None;
    }
    let h = flow_hash(key);
    if !is_marked(h) {
        return None;
    }
    let real_id = maglev(vs, h).ok()?;
    let real = REALS.get(real_id)?;
    if real.addr != *addr || real.port_be != port_be {
        return None;
    }
    Some(FlowState {
        real_id,
        real_generation: real.generation,
        vs_index: vs.vs_index,
        touched: 0,
    })
}

/// Returns: flow `key`'s entry in `FLOWS`, not looked up where the table's filter
/// rules the flow out (decision 0026).
#[inline(always)]
pub fn recorded(key: &FlowKey) -> Option<&'static FlowState> {
    if !flow_filter::may_hold(key) {
        return None;
    }
    // SAFETY: LRU hash value, valid for this run.
    unsafe { FLOWS.get(key) }
}

/// Records flow `key` as `state` in `FLOWS`, its bit set in the table's filter before
/// and after (decision 0026). A full LRU evicts its oldest entry; an error here only
/// costs stickiness (the flow's next packet is balanced again).
#[inline(always)]
pub fn record_flow(key: &FlowKey, state: &FlowState) {
    flow_filter::hold(key);
    let _ = FLOWS.insert(key, state, 0);
    flow_filter::hold(key);
}

/// Returns: the real id in the slot of virtual server `vs`'s live Maglev ring that
/// hash `h` picks; `drop_no_real` for an empty slot (no real takes new flows),
/// `drop_internal` for a ring out of range.
#[inline(always)]
fn maglev(vs: &VsInfo, h: u32) -> Result<u32, Verdict> {
    if vs.ring_size == 0 || vs.ring_size > RING_STRIDE {
        return Err(Verdict::internal());
    }
    let slot = h % vs.ring_size;
    let pair = VS_RINGS
        .get(vs.ring_id * RING_ELEMS + slot / 2)
        .ok_or(Verdict::internal())?;
    let real_id = pair[(slot & 1) as usize];
    if real_id == NO_REAL {
        return Err(Verdict::drop(reason::DROP_NO_REAL));
    }
    Ok(real_id)
}

#[inline(always)]
fn pick(
    key: &FlowKey,
    vs: &VsInfo,
    mut record: Record,
    found: Option<&FlowState>,
) -> Result<Choice, Verdict> {
    let persistent = vs.persist_timeout_ns != 0;
    // A concurrent update can at worst give a stale but well-formed FlowState, which
    // is then validated against REALS. Copied: `persist_touch` writes the entry.
    if let Some(f) = found.copied() {
        if f.vs_index == vs.vs_index {
            if let Some(real) = real_usable(f.real_id, f.real_generation, REAL_F_ACTIVE) {
                if persistent && record != Record::Never {
                    persist_touch(key, vs, f.real_id);
                }
                return Ok(Choice {
                    real_id: f.real_id,
                    real,
                    new_flow: false,
                    recorded: true,
                    marked: false,
                });
            }
        }
        // Re-steered: a flow that was recorded has shown its second packet already. A
        // NAT SYN that found the stale entry leaves its reply state in NAT_STATE, not a
        // mark (decision 0021; its SYN-ACK finds the stale entry first, and looks for a
        // mark past it only for a SYN that skipped the table, decision 0025).
        match record {
            Record::Second => record = Record::Now,
            Record::Mark => record = Record::Never,
            _ => {}
        }
    }
    // The one hash of the packet: Maglev's slot, and the flow's mark in UDP_SEEN.
    // Computed here only without persistence (which is never `Second`): a flow held
    // by its client network needs none.
    let hash = (!persistent).then(|| flow_hash(key));
    // (write FLOWS, a new flow, the flow's mark is in UDP_SEEN)
    let (write, new_flow, marked) = match record {
        Record::Now => (true, true, false),
        Record::Never => (false, false, false),
        Record::Mark => (false, false, hash.is_some_and(mark)),
        Record::Second => {
            let seen = hash.is_none_or(seen_before);
            (seen, !seen, !seen)
        }
    };
    let mut sticky = None;
    let mut now = 0;
    let pk = persist_key(key, vs);
    if persistent {
        now = unsafe { bpf_ktime_get_ns() };
        sticky = persist_lookup(&pk, vs, now);
    }
    let (real_id, real) = match sticky {
        Some(s) => s,
        None => {
            let real_id = maglev(vs, hash.unwrap_or_else(|| flow_hash(key)))?;
            (real_id, REALS.get_ptr(real_id).ok_or(Verdict::internal())?)
        }
    };
    if !write {
        return Ok(Choice {
            real_id,
            real,
            new_flow,
            recorded: false,
            marked,
        });
    }
    // SAFETY: as above.
    let generation = unsafe { (*real).generation };
    let state = FlowState {
        real_id,
        real_generation: generation,
        vs_index: vs.vs_index,
        touched: if persistent { ticks::now() as u32 } else { 0 },
    };
    record_flow(key, &state);
    if persistent {
        let p = PersistState {
            real_id,
            real_generation: generation,
            last_seen_ns: now,
        };
        let _ = PERSIST.insert(&pk, &p, 0);
    }
    Ok(Choice {
        real_id,
        real,
        new_flow,
        recorded: true,
        marked: false,
    })
}
