//! Kernel-side copying for bulk transfers: `splice(2)` from a socket into a pipe, and from
//! the pipe into the other socket, so the bytes never cross into user space. Owns the pipe
//! pool, the two splice calls and their process-wide metrics.
//!
//! Pipes are held only while bytes are in them (HAProxy's pipe pool is the model): a
//! direction takes one when it splices, and drops it as soon as the pipe is empty again, so
//! an idle connection holds no pipe and no extra descriptors. A pipe dropped empty goes back
//! to the pool (at most `MAX_POOLED`), one dropped with bytes in it (a connection that ended
//! mid-transfer) is closed. At most `MAX_PIPES` pipes exist at once; past that, or when a
//! pipe cannot be made (out of descriptors), `take` says no and the caller copies through
//! user space instead. This module must not decide *when* to splice (that is `copy`'s) nor
//! wait for readiness: both calls are non-blocking and report `WouldBlock`.

use std::io;
use std::num::NonZeroU32;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use rustix::pipe::{PipeFlags, SpliceFlags};
use tokio::net::TcpStream;

/// Pipes open at once, in use or pooled (two descriptors each).
pub const MAX_PIPES: usize = 256;
/// Empty pipes kept for reuse.
const MAX_POOLED: usize = 16;
/// Asked of each new pipe (`F_SETPIPE_SZ`): fewer splice calls per gigabyte than the default
/// 64 KiB. A refusal leaves the default.
const PIPE_SIZE: usize = 256 * 1024;

static POOL: Pool = Pool::new(MAX_PIPES, MAX_POOLED, true);
use crate::metrics::pipes_open;

/// A pipe from the process's pool, or a new one; `None` when `MAX_PIPES` are open or the
/// system refuses one (the caller copies through user space then).
pub fn take() -> Option<Pipe> {
    POOL.take()
}

struct Pool {
    free: Mutex<Vec<(OwnedFd, OwnedFd)>>,
    /// Pipes open now (in use + pooled).
    open: AtomicUsize,
    max_open: usize,
    max_pooled: usize,
    /// Whether `pipes_open` reports this pool (the process's one, not a test's).
    exported: bool,
}

impl Pool {
    const fn new(max_open: usize, max_pooled: usize, exported: bool) -> Pool {
        Pool {
            free: Mutex::new(Vec::new()),
            open: AtomicUsize::new(0),
            max_open,
            max_pooled,
            exported,
        }
    }

    fn free(&self) -> std::sync::MutexGuard<'_, Vec<(OwnedFd, OwnedFd)>> {
        self.free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn take(&self) -> Option<Pipe> {
        let pooled = self.free().pop();
        let fds = match pooled {
            Some(fds) => fds,
            None => {
                if self.open.fetch_add(1, Ordering::Relaxed) >= self.max_open {
                    self.open.fetch_sub(1, Ordering::Relaxed);
                    return None;
                }
                match rustix::pipe::pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC) {
                    Ok((r, w)) => {
                        let _ = rustix::pipe::fcntl_setpipe_size(&w, PIPE_SIZE);
                        if self.exported {
                            pipes_open().inc();
                        }
                        (r, w)
                    }
                    Err(e) => {
                        self.open.fetch_sub(1, Ordering::Relaxed);
                        tracing::debug!(error = %e, "no pipe for splice; copying instead");
                        return None;
                    }
                }
            }
        };
        let size = rustix::pipe::fcntl_getpipe_size(&fds.1).unwrap_or(64 * 1024);
        Some(Pipe {
            fds: Some(fds),
            len: 0,
            size: NonZeroU32::new(u32::try_from(size).unwrap_or(u32::MAX))
                .unwrap_or(NonZeroU32::MIN),
        })
    }

    /// Takes `pipe` back: pooled if it is empty and there is room, closed otherwise.
    fn give(&self, pipe: &mut Pipe) {
        let Some(fds) = pipe.fds.take() else { return };
        if pipe.len == 0 {
            let mut free = self.free();
            if free.len() < self.max_pooled {
                free.push(fds);
                return;
            }
        }
        drop(fds);
        self.open.fetch_sub(1, Ordering::Relaxed);
        if self.exported {
            pipes_open().dec();
        }
    }
}

/// A pipe and the bytes in it. Dropped empty, it goes back to the pool. Small (16 bytes):
/// it sits in every connection's state, as `None` while idle.
pub struct Pipe {
    /// (read end, write end); `None` only once given back.
    fds: Option<(OwnedFd, OwnedFd)>,
    /// Bytes spliced in and not yet out.
    len: u32,
    /// The pipe's capacity (non-zero: the niche that keeps `Option<Pipe>` at 16 bytes).
    size: NonZeroU32,
}

impl Pipe {
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Splices what `src` has (up to the pipe's room) into the pipe: the bytes moved, 0 at
    /// end of stream, `WouldBlock` when `src` has nothing (call it only on an empty pipe, so
    /// that `WouldBlock` cannot mean a full pipe).
    pub fn fill(&mut self, src: &TcpStream) -> io::Result<usize> {
        let Some((_, w)) = &self.fds else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        let room = self.size.get().saturating_sub(self.len) as usize;
        let n = rustix::pipe::splice(src, None, w, None, room, flags())?;
        // At most `room`, which fits.
        self.len += n as u32;
        Ok(n)
    }

    /// Splices bytes from the pipe into `dst`: the bytes moved, `WouldBlock` when `dst` is
    /// full.
    pub fn drain(&mut self, dst: &TcpStream) -> io::Result<usize> {
        let Some((r, _)) = &self.fds else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        let n = rustix::pipe::splice(r, None, dst, None, self.len as usize, flags())?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        // At most `len`.
        self.len -= n as u32;
        Ok(n)
    }
}

fn flags() -> SpliceFlags {
    SpliceFlags::MOVE | SpliceFlags::NONBLOCK
}

impl Drop for Pipe {
    fn drop(&mut self) {
        POOL.give(self);
    }
}

/// Whether a splice error means "this pair cannot be spliced" (copy instead) rather than a
/// broken connection.
pub fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn give(pool: &Pool, mut p: Pipe) {
        pool.give(&mut p);
    }

    #[test]
    fn a_pipe_is_small() {
        assert!(size_of::<Option<Pipe>>() <= 16);
    }

    fn pool(max_open: usize) -> Pool {
        Pool::new(max_open, 1, false)
    }

    #[test]
    fn an_empty_pipe_goes_back_to_the_pool_and_one_with_bytes_is_closed() {
        let pool = &pool(8);
        let p = pool.take().unwrap();
        assert!(p.size.get() >= 64 * 1024);
        let fd = p.fds.as_ref().unwrap().0.as_raw_fd();
        give(pool, p);
        assert_eq!(pool.free().len(), 1, "an empty pipe is pooled");
        let mut q = pool.take().unwrap();
        assert_eq!(q.fds.as_ref().unwrap().0.as_raw_fd(), fd, "reused");
        assert_eq!(pool.free().len(), 0);
        q.len = 1; // as if bytes were still in it
        give(pool, q);
        assert_eq!(pool.free().len(), 0, "not pooled with bytes in it");
        assert_eq!(pool.open.load(Ordering::Relaxed), 0, "closed");
    }

    #[test]
    fn no_more_than_max_open_pipes() {
        let pool = &pool(2);
        let a = pool.take().unwrap();
        let b = pool.take().unwrap();
        assert!(pool.take().is_none(), "a third pipe past the cap");
        give(pool, a);
        let c = pool.take().expect("the pooled one is handed out again");
        give(pool, b);
        give(pool, c);
        assert_eq!(
            pool.open.load(Ordering::Relaxed),
            1,
            "one pooled, one closed"
        );
    }
}
