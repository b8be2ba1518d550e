//! The data path: the only place that knows about threads, polling and
//! buffers. The protocol decisions are the [`Device`]'s.
//!
//! Parallelism model (the foundation: plain, correct, single-threaded):
//! 1. One OS thread runs [`run`]; the control socket has a thread of its own
//!    and only ever reads a published [`Status`] snapshot.
//! 2. `poll()` waits on the TUN device and the transport socket, at most
//!    [`TICK`] at a time, so timers and the shutdown flag are seen promptly.
//! 3. TUN readable: up to [`BATCH`] packets are read, each into the headroom
//!    offset of one reused buffer, sealed in place and sent.
//! 4. Transport readable: up to [`BATCH`] frames are received into a second
//!    reused buffer, opened in place and written to the TUN device.
//! 5. Every [`TICK`]: the device's timers run (handshakes, rekey, keepalive)
//!    and the status snapshot is published.
//!
//! No allocation happens per data packet; control messages (handshakes,
//! keepalives) are rare and allocate.

use crate::control::{IoCounters, Status, StatusCell};
use crate::device::{Datagram, Device, Outcome, Time, HEADROOM, OVERHEAD};
use crate::transport::Transport;
use crate::tun::Tun;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Packets handled per readiness event on one side before the loop turns to
/// the other side: bounds the latency one direction can add to the other.
pub const BATCH: usize = 64;
/// Timer granularity: handshake retries and keepalives are in seconds, so
/// 50 ms is precise enough and costs nothing when idle.
pub const TICK: Duration = Duration::from_millis(50);
/// Largest inner packet the TUN device can hand us (an IPv4/IPv6 datagram).
const MAX_PACKET: usize = 65_535;

fn time_now() -> Time {
    Time {
        now: Instant::now(),
        unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default(),
    }
}

fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// Moves packets until `shutdown` is set. Returns an error only for failures
/// that make going on pointless (the TUN device or socket broke).
pub fn run(
    mut device: Device,
    tun: &Tun,
    transport: &dyn Transport,
    status: &StatusCell,
    shutdown: &Arc<AtomicBool>,
) -> io::Result<()> {
    let mut tx_buf = vec![0u8; OVERHEAD + MAX_PACKET];
    let mut rx_buf = vec![0u8; OVERHEAD + MAX_PACKET];
    let mut control: Vec<Datagram> = Vec::new();
    let mut io_counters = IoCounters::default();
    let started = Instant::now();
    let mut last_tick = Instant::now() - TICK;

    let send_control = |control: &mut Vec<Datagram>, io_counters: &mut IoCounters| {
        for d in control.drain(..) {
            if let Err(e) = transport.send_to(&d.data, d.to) {
                io_counters.send_errors += 1;
                log::debug!("send to {} failed: {e}", d.to);
            }
        }
    };

    while !shutdown.load(Ordering::Relaxed) {
        let mut fds = [
            libc::pollfd {
                fd: tun.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: transport.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd structs for the call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, TICK.as_millis() as libc::c_int) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        let t = time_now();

        if fds[0].revents & (libc::POLLIN | libc::POLLERR) != 0 {
            for _ in 0..BATCH {
                let n = match tun.read(&mut tx_buf[HEADROOM..HEADROOM + MAX_PACKET]) {
                    Ok(n) => n,
                    Err(e) if would_block(&e) => break,
                    Err(e) => return Err(io::Error::new(e.kind(), format!("TUN read: {e}"))),
                };
                match device.encapsulate(&mut tx_buf, n, &t, &mut control) {
                    Outcome::Send { to, len } => {
                        if let Err(e) = transport.send_to(&tx_buf[..len], to) {
                            io_counters.send_errors += 1;
                            log::debug!("send to {to} failed: {e}");
                        }
                    }
                    Outcome::Held => {}
                }
                send_control(&mut control, &mut io_counters);
            }
        }

        if fds[1].revents & (libc::POLLIN | libc::POLLERR) != 0 {
            for _ in 0..BATCH {
                let (n, from) = match transport.recv_from(&mut rx_buf) {
                    Ok(r) => r,
                    Err(e) if would_block(&e) => break,
                    Err(e) => {
                        // ICMP errors surface here (e.g. port unreachable while
                        // the peer restarts); they are not fatal.
                        io_counters.recv_errors += 1;
                        log::debug!("receive failed: {e}");
                        break;
                    }
                };
                if let Some(range) = device.decapsulate(&mut rx_buf, n, from, &t, &mut control) {
                    if let Err(e) = tun.write(&rx_buf[range]) {
                        io_counters.tun_write_errors += 1;
                        log::debug!("TUN write failed: {e}");
                    }
                }
                send_control(&mut control, &mut io_counters);
            }
        }

        if t.now.duration_since(last_tick) >= TICK {
            last_tick = t.now;
            device.tick(&t, &mut control);
            send_control(&mut control, &mut io_counters);
            status.publish(Status::snapshot(
                &device,
                io_counters.clone(),
                started,
                t.now,
            ));
        }
    }
    Ok(())
}
