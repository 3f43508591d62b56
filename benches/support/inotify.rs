//! Files renamed into or closed after writing in one directory, as inotify reports them: how
//! the benchmarks see a rendered file change the moment it does (one wake-up, no polling).
//! Shared by `benches/reaction.rs` and `benches/scale` through `#[path]`.

use std::path::Path;
use std::time::Duration;

pub struct DirEvents {
    fd: libc::c_int,
}

impl DirEvents {
    pub fn new(dir: &Path) -> std::io::Result<DirEvents> {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        // SAFETY: plain syscalls; the descriptor is owned by the returned value, which closes it.
        unsafe {
            let fd = libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let events = DirEvents { fd };
            if libc::inotify_add_watch(fd, path.as_ptr(), libc::IN_MOVED_TO | libc::IN_CLOSE_WRITE)
                < 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(events)
        }
    }

    /// Reads whatever events are queued; returns whether there were any.
    pub fn drain(&self) -> bool {
        let mut buf = [0u8; 4096];
        let mut any = false;
        // SAFETY: reads into a buffer of the given length.
        while unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len()) } > 0 {
            any = true;
        }
        any
    }

    /// Waits until an event arrives (true, all queued events consumed) or `timeout` passes.
    pub fn wait(&self, timeout: Duration) -> bool {
        let mut p = libc::pollfd {
            fd: self.fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, timeout.as_millis() as libc::c_int) };
        n > 0 && self.drain()
    }
}

impl Drop for DirEvents {
    fn drop(&mut self) {
        // SAFETY: the descriptor is ours.
        unsafe { libc::close(self.fd) };
    }
}
