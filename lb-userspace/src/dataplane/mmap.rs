//! `BPF_F_MMAPABLE` arrays mapped into the daemon's memory (`VS_RINGS`, decision 0013;
//! `FLOW_FILTER`, decision 0026).

use aya::maps::MapData;

use super::DataplaneError;

/// A shared, readable and writable mapping of a `BPF_F_MMAPABLE` array, unmapped on
/// drop. It holds its own reference on the map's object: the descriptor it was made
/// from may be closed before it.
pub struct Mapping {
    base: std::ptr::NonNull<u8>,
    bytes: usize,
}

// SAFETY: the mapping is memory the value owns alone; what reads and writes it through
// `as_ptr` decides its own sharing.
unsafe impl Send for Mapping {}

impl Mapping {
    /// Maps the first `len` bytes (rounded up to whole pages, as the kernel takes it)
    /// of the `BPF_F_MMAPABLE` array `map` (named `name`, for errors).
    pub fn shared(map: &MapData, len: usize, name: &'static str) -> Result<Self, DataplaneError> {
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
        Ok(Self { base, bytes })
    }

    /// Returns: the mapping's first byte (page aligned).
    pub fn as_ptr(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    /// Returns: the bytes mapped (whole pages).
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `shared`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.bytes) };
    }
}
