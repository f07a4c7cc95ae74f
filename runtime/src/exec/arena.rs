//! The CPU executor's arena: one zeroed allocation for every temporary of a program,
//! aligned to 2 MiB and, on Linux, marked for transparent huge pages before its first touch.
//! A training step walks its tensors along strides (a thin product reads a `[2048, 1536]`
//! gradient down its columns, a permute reads attention heads across rows): with 4 KiB pages
//! nearly every such access is a new page and a TLB miss; with 2 MiB pages the whole arena
//! fits in the TLB. Where the kernel's policy is `madvise` (a common default) the pages come
//! only when asked for; where huge pages are unavailable the hint is ignored.

/// Alignment (and the huge page size on x86-64 Linux).
const HUGE: usize = 2 << 20;

/// A zeroed, 2 MiB-aligned byte buffer.
pub struct Arena {
    /// First usable byte (2 MiB-aligned).
    ptr: *mut u8,
    /// Bytes usable from `ptr`.
    len: usize,
    /// What to release on drop.
    mapping: Mapping,
}

enum Mapping {
    None,
    #[cfg(target_os = "linux")]
    Mmap(*mut libc::c_void, usize),
    #[cfg(not(target_os = "linux"))]
    Heap(std::alloc::Layout),
}

// SAFETY: the buffer is plain memory owned by the arena; the executor serialises runs.
unsafe impl Send for Arena {}
// SAFETY: as above (shared access hands out the base pointer only).
unsafe impl Sync for Arena {}

impl Arena {
    /// A zeroed arena of exactly `bytes` usable bytes; `huge` asks for transparent huge pages.
    pub fn new(bytes: usize, huge: bool) -> Result<Arena, String> {
        if bytes == 0 {
            return Ok(Arena {
                ptr: std::ptr::NonNull::<u64>::dangling().as_ptr() as *mut u8,
                len: 0,
                mapping: Mapping::None,
            });
        }
        let fail = || {
            format!(
                "could not allocate the {} MiB arena for temporaries (a smaller --batch or \
                 --seq needs less)",
                bytes.div_ceil(1 << 20)
            )
        };
        #[cfg(target_os = "linux")]
        {
            // Anonymous pages are zero and not yet touched: the hint applies from the first
            // fault. One extra huge page of address space makes room to align the start.
            let size = bytes.checked_add(HUGE).ok_or_else(fail)?;
            // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
            let raw = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    size,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if raw == libc::MAP_FAILED {
                return Err(fail());
            }
            let ptr = (raw as usize).next_multiple_of(HUGE) as *mut u8;
            if huge {
                // SAFETY: the range lies inside the mapping. A refusal only loses the hint.
                unsafe { libc::madvise(ptr as *mut libc::c_void, bytes, libc::MADV_HUGEPAGE) };
            }
            Ok(Arena {
                ptr,
                len: bytes,
                mapping: Mapping::Mmap(raw, size),
            })
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = huge;
            let layout = std::alloc::Layout::from_size_align(bytes, HUGE).map_err(|_| fail())?;
            // SAFETY: the layout has a non-zero size.
            let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
            if ptr.is_null() {
                return Err(fail());
            }
            Ok(Arena {
                ptr,
                len: bytes,
                mapping: Mapping::Heap(layout),
            })
        }
    }

    /// The base address.
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Bytes allocated for use (exactly those asked for).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the arena holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        match self.mapping {
            Mapping::None => {}
            #[cfg(target_os = "linux")]
            // SAFETY: the mapping made in `new`, released once.
            Mapping::Mmap(raw, size) => unsafe {
                libc::munmap(raw, size);
            },
            #[cfg(not(target_os = "linux"))]
            // SAFETY: allocated in `new` with this layout.
            Mapping::Heap(l) => unsafe { std::alloc::dealloc(self.ptr, l) },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The arena is zeroed, aligned, writable end to end, and empty arenas work.
    #[test]
    fn zeroed_aligned_and_writable() {
        for huge in [false, true] {
            let a = Arena::new(3 << 20 | 8, huge).unwrap();
            assert_eq!(a.as_mut_ptr() as usize % HUGE, 0);
            assert_eq!(a.len(), 3 << 20 | 8);
            // SAFETY: within the allocation.
            let s = unsafe { std::slice::from_raw_parts_mut(a.as_mut_ptr(), a.len()) };
            assert!(s.iter().all(|&b| b == 0));
            s.fill(7);
            assert_eq!(s[s.len() - 1], 7);
        }
        let e = Arena::new(0, true).unwrap();
        assert!(e.is_empty());
    }

    /// Requests no machine can back are errors that say what to change, not aborts.
    #[test]
    fn impossible_sizes_are_errors() {
        for bytes in [usize::MAX - 1, 1 << 52] {
            let e = Arena::new(bytes, true).err().expect("no machine maps this");
            assert!(e.contains("arena") && e.contains("--batch"), "{e}");
        }
    }
}
