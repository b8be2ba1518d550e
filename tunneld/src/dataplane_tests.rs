//! Unit tests of the data path's send grouping: GSO runs never mix peers,
//! outer flows or segment sizes, and each flow's frames leave in order.

use super::*;
use crate::config::Config;
use crate::device::Outcome;
use crate::transport::Received;
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

/// One recorded send: (flow, to, segment size, outer ECN, frames).
type Sent = (usize, SocketAddr, usize, u8, Vec<Vec<u8>>);

/// A transport that records every send, and where its bytes lay.
#[derive(Default)]
struct Recorder {
    sends: Mutex<Vec<Sent>>,
    addrs: Mutex<Vec<usize>>,
}

impl AsRawFd for Recorder {
    fn as_raw_fd(&self) -> RawFd {
        -1
    }
}

impl Transport for Recorder {
    fn send(&self, to: SocketAddr, contents: &[u8], seg: usize) -> io::Result<()> {
        self.send_flow(0, to, contents, seg, 0)
    }
    fn send_flow(
        &self,
        flow: usize,
        to: SocketAddr,
        contents: &[u8],
        seg: usize,
        ecn: u8,
    ) -> io::Result<()> {
        let frames = contents.chunks(seg.max(1)).map(<[u8]>::to_vec).collect();
        self.addrs
            .lock()
            .expect("recorder lock")
            .push(contents.as_ptr() as usize);
        self.sends
            .lock()
            .expect("recorder lock")
            .push((flow, to, seg, ecn, frames));
        Ok(())
    }
    fn recv(&self, _: &mut [IoSliceMut<'_>], _: &mut [Received]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(SocketAddr::from(([127, 0, 0, 1], 1)))
    }
    fn max_segments(&self) -> usize {
        64
    }
    fn gro_segments(&self) -> usize {
        1
    }
    fn flows(&self) -> usize {
        4
    }
}

/// Lays out one batch in `tx` as `plan` says (see the tests).
fn fill(tx: &mut TxState, plan: &[Option<(SocketAddr, usize, u8, usize)>]) {
    use crate::slab::Slots;
    tx.outcomes.clear();
    let mut label = 0u8;
    for (i, p) in plan.iter().enumerate() {
        match *p {
            None => {
                tx.flow[i] = 3;
                tx.ecn[i] = 0;
                tx.outcomes.push(Outcome::Held);
            }
            Some((to, flow, ecn, len)) => {
                tx.bufs.slot(i)[..len].fill(label);
                label += 1;
                tx.flow[i] = flow;
                tx.ecn[i] = ecn;
                tx.outcomes.push(Outcome::Send { to, len });
            }
        }
    }
}

fn config() -> Config {
    let mut c = crate::testkit::config(1, 2, None, &["198.18.2.0/24"]);
    c.dataplane.flows = 4;
    c
}

/// What a worker's [`Common`] borrows, around a [`Recorder`].
struct Rig {
    cfg: Config,
    rec: Recorder,
    status: StatusCell,
    shutdown: AtomicBool,
    mailbox: Mailbox,
}

impl Rig {
    fn new() -> Rig {
        Rig {
            cfg: config(),
            rec: Recorder::default(),
            status: StatusCell::default(),
            shutdown: AtomicBool::new(false),
            mailbox: Mailbox::default(),
        }
    }

    fn common<'a>(&'a self, transports: &'a [&'a dyn Transport]) -> Common<'a> {
        let device = Device::new(&self.cfg);
        Common {
            fast: device.fast_path(),
            device: Mutex::new(device),
            mailbox: &self.mailbox,
            transports,
            status: &self.status,
            shutdown: &self.shutdown,
            io: IoStats::default(),
            knobs: self.cfg.dataplane,
            mtu: 1420,
            info: DataplaneStatus::default(),
            started: Instant::now(),
            events: None,
            track_auth: false,
        }
    }
}

#[test]
fn gso_runs_never_mix_flows_peers_sizes_or_ecn() {
    let rig = Rig::new();
    let transports: [&dyn Transport; 1] = [&rig.rec];
    let common = rig.common(&transports);
    let shared = Shared {
        common: &common,
        transport: &rig.rec,
    };
    let rec = &rig.rec;
    let p1 = SocketAddr::from(([198, 18, 0, 2], 51820));
    let p2 = SocketAddr::from(([198, 18, 0, 3], 51820));
    // (peer, flow, ECN, frame length), or a held packet (None); the k-th
    // frame sent is filled with byte k.
    let plan = [
        Some((p1, 0, 0, 100)),
        Some((p1, 0, 0, 100)),
        None,                  // a held packet between sends is skipped
        Some((p1, 1, 0, 100)), // new flow: new run
        Some((p1, 1, 0, 100)),
        Some((p1, 1, 0, 60)), // shorter: ends the run
        Some((p1, 1, 0, 100)),
        Some((p2, 1, 0, 100)), // new peer: new run
        Some((p1, 1, 0, 100)),
        Some((p1, 0, 0, 100)),
        Some((p1, 0, 2, 100)), // ECT(0): the outer header differs, new run
        Some((p1, 0, 2, 100)),
        Some((p1, 0, 3, 100)), // CE
    ];
    let mut tx = TxState::new(&shared);
    assert_eq!(tx.flows, 4);
    fill(&mut tx, &plan);
    tx.send(&shared);
    let sends = rec.sends.lock().expect("lock").clone();
    let shape: Vec<(usize, SocketAddr, usize, u8, Vec<u8>)> = sends
        .iter()
        .map(|(flow, to, seg, ecn, frames)| {
            (
                *flow,
                *to,
                *seg,
                *ecn,
                frames.iter().map(|f| f[0]).collect(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        vec![
            (0, p1, 100, 0, vec![0, 1]),
            (1, p1, 100, 0, vec![2, 3, 4]),
            (1, p1, 100, 0, vec![5]),
            (1, p2, 100, 0, vec![6]),
            (1, p1, 100, 0, vec![7]),
            (0, p1, 100, 0, vec![8]),
            (0, p1, 100, 2, vec![9, 10]),
            (0, p1, 100, 3, vec![11]),
        ]
    );
    for (_, _, seg, _, frames) in &sends {
        for (k, f) in frames.iter().enumerate() {
            let last = k + 1 == frames.len();
            assert!(f.len() == *seg || (last && f.len() < *seg), "{frames:?}");
            assert!(f.iter().all(|b| *b == f[0]), "a frame was cut or mixed");
        }
    }
}

#[test]
fn full_size_frames_leave_from_where_they_were_sealed() {
    let rig = Rig::new();
    let transports: [&dyn Transport; 1] = [&rig.rec];
    let common = rig.common(&transports);
    let shared = Shared {
        common: &common,
        transport: &rig.rec,
    };
    let p1 = SocketAddr::from(([198, 18, 0, 2], 51820));
    let mut tx = TxState::new(&shared);
    let full = tx.bufs.stride();
    assert_eq!(
        full,
        1420 + crate::device::OVERHEAD,
        "a slot is one full frame"
    );
    let base = tx.bufs.get(0).as_ptr() as usize;
    let slab_at = |i: usize| base + i * full;
    let sent = |from: usize| -> Vec<(usize, usize, usize)> {
        let sends = rig.rec.sends.lock().expect("lock");
        let addrs = rig.rec.addrs.lock().expect("lock");
        sends[from..]
            .iter()
            .zip(&addrs[from..])
            .map(|(s, a)| (s.2, s.4.len(), *a))
            .collect()
    };
    let copies = || common.io.udp_send_copies.load(Ordering::Relaxed);

    // A TSO super-packet's worth: 5 full frames and a short last one in
    // consecutive slots: one send, straight from slot 0, nothing copied.
    let mut plan = vec![Some((p1, 0, 0, full)); 5];
    plan.push(Some((p1, 0, 0, 700)));
    fill(&mut tx, &plan);
    tx.send(&shared);
    assert_eq!(sent(0), vec![(full, 6, slab_at(0))]);
    assert_eq!(copies(), 0);

    // A held packet between full frames: one run still, but not back to
    // back, so copied (one count); a single frame is never copied.
    let plan = [
        Some((p1, 0, 0, full)),
        None,
        Some((p1, 0, 0, full)),
        Some((p1, 1, 0, 300)),
    ];
    fill(&mut tx, &plan);
    tx.send(&shared);
    let s = sent(1);
    assert_eq!(s.len(), 2, "{s:?}");
    assert_eq!((s[0].0, s[0].1), (full, 2));
    assert_ne!(s[0].2, slab_at(0), "copied");
    assert_eq!(s[1], (300, 1, slab_at(3)));
    assert_eq!(copies(), 1);

    // Runs of smaller frames (a host with a smaller MSS, or ACKs) are
    // copied; the frames arrive whole either way.
    fill(&mut tx, &[Some((p1, 0, 0, 200)); 4]);
    tx.send(&shared);
    let s = sent(3);
    assert_eq!((s[0].0, s[0].1), (200, 4));
    assert_eq!(copies(), 2);
    let sends = rig.rec.sends.lock().expect("lock");
    for (_, _, seg, _, frames) in sends.iter() {
        for f in frames {
            assert!(f.len() <= *seg && f.iter().all(|b| *b == f[0]), "{f:?}");
        }
    }
}
