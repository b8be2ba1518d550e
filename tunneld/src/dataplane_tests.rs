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

/// A transport that records every send.
#[derive(Default)]
struct Recorder {
    sends: Mutex<Vec<Sent>>,
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

fn config() -> Config {
    let mut c = crate::testkit::config(1, 2, None, &["198.18.2.0/24"]);
    c.dataplane.flows = 4;
    c
}

#[test]
fn gso_runs_never_mix_flows_peers_sizes_or_ecn() {
    let cfg = config();
    let rec = Recorder::default();
    let status = StatusCell::default();
    let shutdown = AtomicBool::new(false);
    let mailbox = Mailbox::default();
    let device = Device::new(&cfg);
    let transports: [&dyn Transport; 1] = [&rec];
    let common = Common {
        fast: device.fast_path(),
        device: Mutex::new(device),
        mailbox: &mailbox,
        transports: &transports,
        status: &status,
        shutdown: &shutdown,
        io: IoStats::default(),
        knobs: cfg.dataplane,
        mtu: 1420,
        info: DataplaneStatus::default(),
        started: Instant::now(),
        events: None,
        track_auth: false,
    };
    let shared = Shared {
        common: &common,
        transport: &rec,
    };
    let p1 = SocketAddr::from(([198, 18, 0, 2], 51820));
    let p2 = SocketAddr::from(([198, 18, 0, 3], 51820));
    // (peer, flow, ECN, frame length); frame i is filled with byte i.
    let plan = [
        (p1, 0, 0, 100),
        (p1, 0, 0, 100),
        (p1, 1, 0, 100), // new flow: new run
        (p1, 1, 0, 100),
        (p1, 1, 0, 60), // shorter: ends the run
        (p1, 1, 0, 100),
        (p2, 1, 0, 100), // new peer: new run
        (p1, 1, 0, 100),
        (p1, 0, 0, 100),
        (p1, 0, 2, 100), // ECT(0): the outer header differs, new run
        (p1, 0, 2, 100),
        (p1, 0, 3, 100), // CE
    ];
    let mut tx = TxState::new(&shared);
    assert_eq!(tx.flows, 4);
    tx.outcomes.clear();
    for (i, (to, flow, ecn, len)) in plan.iter().enumerate() {
        tx.bufs[i][..*len].fill(i as u8);
        tx.flow[i] = *flow;
        tx.ecn[i] = *ecn;
        tx.outcomes.push(Outcome::Send { to: *to, len: *len });
    }
    tx.outcomes.insert(2, Outcome::Held); // a held packet between sends is skipped
    tx.bufs.insert(2, Vec::new());
    tx.flow.insert(2, 3);
    tx.ecn.insert(2, 0);
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
