//! The data path's one clock: the kernel's tick count, `jiffies` (decision 0032). Kept
//! hops, the SYN window and a persistent flow's stamp count in it.

use aya_ebpf::helpers::generated::bpf_jiffies64;

/// Returns: `jiffies` now; the verifier turns this helper into one load of it, where
/// even the coarse clock is a helper call.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_jiffies64() }
}
