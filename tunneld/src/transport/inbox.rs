//! The hand-over from background connection threads (TCP readers, the QUIC
//! runtime) to the data path: a bounded queue of received frames and an
//! eventfd that is readable exactly while the queue is not empty, so the
//! poll loop wakes. Frame buffers are recycled through a small free list, so
//! steady traffic does not allocate per frame.

use super::{bump, Received, Stats};
use std::collections::VecDeque;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};

/// Frames queued at most; more are dropped and counted (`rx_queue_full`).
pub(crate) const INBOX_CAPACITY: usize = 4096;
/// Spare buffers kept for reuse.
const POOL: usize = 1024;

struct Queue {
    frames: VecDeque<(SocketAddr, Vec<u8>)>,
    free: Vec<Vec<u8>>,
}

/// Received frames waiting for the data path.
pub(crate) struct Inbox {
    queue: Mutex<Queue>,
    wake: OwnedFd,
    stats: Arc<Stats>,
}

impl Inbox {
    /// A new empty inbox with its eventfd.
    pub(crate) fn new(stats: Arc<Stats>) -> io::Result<Inbox> {
        // SAFETY: eventfd takes no pointers; the result is checked below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let wake = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Inbox {
            queue: Mutex::new(Queue {
                frames: VecDeque::with_capacity(INBOX_CAPACITY),
                free: Vec::new(),
            }),
            wake,
            stats,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A buffer holding a copy of `data` (recycled when one is free).
    pub(crate) fn buffer(&self, data: &[u8]) -> Vec<u8> {
        let mut v = self.lock().free.pop().unwrap_or_default();
        v.clear();
        v.extend_from_slice(data);
        v
    }

    /// Queues one frame from `from`; false (and counted) when full.
    pub(crate) fn push(&self, from: SocketAddr, frame: Vec<u8>) -> bool {
        let mut q = self.lock();
        if q.frames.len() >= INBOX_CAPACITY {
            bump(&self.stats.rx_queue_full);
            if q.free.len() < POOL {
                q.free.push(frame);
            }
            return false;
        }
        q.frames.push_back((from, frame));
        if q.frames.len() == 1 {
            self.poke();
        }
        true
    }

    fn poke(&self) {
        let one: u64 = 1;
        // SAFETY: valid eventfd, pointer to a live u64 and its size.
        let _ = unsafe {
            libc::write(
                self.wake.as_raw_fd(),
                &one as *const u64 as *const libc::c_void,
                8,
            )
        };
    }

    fn reset(&self) {
        let mut v: u64 = 0;
        // SAFETY: valid non-blocking eventfd, pointer to a live u64 and its size.
        let _ = unsafe {
            libc::read(
                self.wake.as_raw_fd(),
                &mut v as *mut u64 as *mut libc::c_void,
                8,
            )
        };
    }

    /// Moves queued frames into `bufs` (one frame per buffer); `WouldBlock`
    /// when none is queued. A frame larger than its buffer is dropped.
    pub(crate) fn recv(
        &self,
        bufs: &mut [IoSliceMut<'_>],
        out: &mut [Received],
    ) -> io::Result<usize> {
        let mut q = self.lock();
        let mut n = 0;
        let want = bufs.len().min(out.len());
        while n < want {
            let Some((from, frame)) = q.frames.pop_front() else {
                break;
            };
            let buf = &mut bufs[n];
            if frame.len() <= buf.len() && !frame.is_empty() {
                buf[..frame.len()].copy_from_slice(&frame);
                out[n] = Received {
                    from,
                    len: frame.len(),
                    stride: frame.len(),
                    ecn: 0,
                };
                n += 1;
            }
            if q.free.len() < POOL {
                q.free.push(frame);
            }
        }
        // Readable exactly while frames wait (reset under the lock, so a
        // concurrent push pokes again after this).
        if q.frames.is_empty() {
            self.reset();
        }
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }
}

impl AsRawFd for Inbox {
    fn as_raw_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readable(fd: RawFd) -> bool {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut p, 1, 0) == 1 }
    }

    #[test]
    fn eventfd_tracks_the_queue_and_capacity_is_bounded() {
        let stats = Arc::new(Stats::default());
        let inbox = Inbox::new(stats.clone()).expect("eventfd");
        let from: SocketAddr = "198.18.0.1:1".parse().expect("addr");
        assert!(!readable(inbox.as_raw_fd()));
        for i in 0..3u8 {
            assert!(inbox.push(from, inbox.buffer(&[i; 10])));
        }
        assert!(readable(inbox.as_raw_fd()));
        let mut storage = [[0u8; 16]; 2];
        let mut got = [Received::default(); 2];
        {
            let mut bufs: Vec<IoSliceMut> =
                storage.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            assert_eq!(inbox.recv(&mut bufs, &mut got).expect("recv"), 2);
        }
        assert_eq!(storage[1][..10], [1u8; 10]);
        assert!(readable(inbox.as_raw_fd()), "one frame still queued");
        let mut bufs: Vec<IoSliceMut> = storage.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        assert_eq!(inbox.recv(&mut bufs, &mut got).expect("recv"), 1);
        assert!(!readable(inbox.as_raw_fd()));
        assert!(inbox.recv(&mut bufs, &mut got).is_err());
        for _ in 0..INBOX_CAPACITY {
            inbox.push(from, vec![1]);
        }
        assert!(!inbox.push(from, vec![1]));
        assert_eq!(stats.snapshot().rx_queue_full, 1);
    }
}
