//! `BPF_F_MMAPABLE` arrays mapped into the daemon's memory (`VS_RINGS`, decision 0013;
//! `FLOW_FILTER`, decision 0026).

use aya::maps::MapData;

use super::DataplaneError;

/// Maps the first `len` bytes (rounded up to whole pages, as the kernel takes it) of
/// the `BPF_F_MMAPABLE` array `map` (named `name`) shared, readable and writable.
/// Returns: the mapping's start and length; the caller unmaps it.
pub fn map_shared(
    map: &MapData,
    len: usize,
    name: &'static str,
) -> Result<(std::ptr::NonNull<u8>, usize), DataplaneError> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let bytes = len.div_ceil(page) * page;
    let fd = map.fd().as_fd().as_raw_fd();
    // SAFETY: a shared mapping of a BPF array's own fd at offset 0, of the array's
    // size rounded up to pages, as the kernel's mmap of BPF_F_MMAPABLE arrays takes.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(DataplaneError::Mmap {
            map: name,
            source: std::io::Error::last_os_error(),
        });
    }
    let base = std::ptr::NonNull::new(ptr.cast::<u8>()).ok_or(DataplaneError::Mmap {
        map: name,
        source: std::io::Error::other("mmap returned null"),
    })?;
    Ok((base, bytes))
}
