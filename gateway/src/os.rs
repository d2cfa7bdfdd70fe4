//! What the gateway asks of the operating system: file descriptors and the return of freed
//! memory.

/// Raises the soft open-files limit to the hard limit (each socket is a descriptor).
pub fn raise_nofile_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
    }
}

/// Hands jemalloc's freed pages in every arena back to the operating system at once, instead
/// of when its decay timer next runs (which needs allocator activity).
#[allow(unsafe_code)]
pub fn release_free_memory() -> bool {
    // `MALLCTL_ARENAS_ALL`: every arena.
    const PURGE_ALL: &[u8] = b"arena.4096.purge\0";
    // SAFETY: a void control: a NUL-terminated name and no old or new value.
    let status = unsafe {
        tikv_jemalloc_sys::mallctl(
            PURGE_ALL.as_ptr().cast(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    status == 0
}
