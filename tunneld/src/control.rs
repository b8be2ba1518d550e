//! Status and metrics over a Unix control socket.
//!
//! The data path publishes a [`Status`] snapshot every tick into a
//! [`StatusCell`]; the control thread answers requests from that snapshot, so
//! the data path never waits for a client. Protocol: the client writes one
//! line, `status` (JSON) or `metrics` (Prometheus text format), and reads the
//! answer until the server closes the connection.

use crate::device::{Counters, Device, PeerStatus};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest request line accepted; anything longer is not one of our commands.
const MAX_REQUEST: u64 = 256;
/// How long a client may take to send its request.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

/// Errors of the data path's I/O that the protocol core never sees.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct IoCounters {
    /// Transport sends that failed (socket buffer full, no route to peer).
    pub send_errors: u64,
    /// Transport receives that failed (e.g. ICMP port unreachable surfacing).
    pub recv_errors: u64,
    /// Packets the TUN device refused.
    pub tun_write_errors: u64,
    /// TUN reads, and the inner packets they yielded (more packets than
    /// reads: TSO super-packets were split).
    pub tun_reads: u64,
    pub tun_read_packets: u64,
    /// Batched TUN writes, and the inner packets they carried (coalesced per
    /// TCP flow when offload is on).
    pub tun_writes: u64,
    pub tun_write_packets: u64,
    /// UDP send calls, and the frames they carried (more frames than calls: GSO).
    pub udp_sends: u64,
    pub udp_send_frames: u64,
    /// UDP receive buffers, and the frames they held (more frames than
    /// buffers: GRO).
    pub udp_recv_buffers: u64,
    pub udp_recv_frames: u64,
    /// Inner packets the fq_codel queue dropped: CoDel (a standing queue)
    /// and overflow (the queue held `queue_limit` packets).
    pub queue_codel_drops: u64,
    pub queue_overflow_drops: u64,
    /// Packets in the fq_codel queue at the last status snapshot.
    pub queue_packets: u64,
    /// ECN (`dataplane.ecn`): packets the fq_codel queue marked CE instead
    /// of dropping; inner packets marked CE because the path marked their
    /// outer header CE (RFC 6040); packets dropped because the path marked
    /// CE on an inner packet that is not ECN-capable.
    pub queue_ecn_marks: u64,
    pub ecn_path_ce: u64,
    pub ecn_not_ect_drops: u64,
}

/// The data path's shape and which offloads are active (probed at start).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DataplaneStatus {
    pub workers: usize,
    pub batch: usize,
    /// TUN TSO/GRO via IFF_VNET_HDR.
    pub tun_offload: bool,
    /// Datagrams per UDP send (1: no GSO).
    pub udp_gso_segments: usize,
    /// Datagrams per UDP receive buffer (1: no GRO).
    pub udp_gro_segments: usize,
    /// TUN → network queue: `fq_codel` or `fifo`.
    pub queue: &'static str,
    /// CPUs the workers are pinned to (TX then RX), if pinned.
    pub cpus: Option<Vec<u16>>,
    /// UDP flows (sockets) frames are spread over (`dataplane.flows`; 1
    /// when no peer uses UDP).
    pub flows: usize,
}

/// What `tunneld status` prints.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Status {
    pub interface: String,
    pub listen: String,
    pub cipher: String,
    pub uptime_secs: f64,
    pub dataplane: DataplaneStatus,
    pub peers: Vec<PeerStatus>,
    pub counters: Counters,
    pub io: IoCounters,
    /// Connection counters of the TCP and QUIC transports (zero on UDP).
    pub transport: crate::transport::TransportCounters,
}

impl Status {
    /// Takes a snapshot of `device`.
    pub fn snapshot(device: &Device, io: IoCounters, started: Instant, now: Instant) -> Status {
        Status {
            uptime_secs: now.duration_since(started).as_secs_f64(),
            peers: device.peer_status(now),
            counters: device.counters().clone(),
            io,
            ..Status::default()
        }
    }

    /// Renders the Prometheus text exposition format.
    pub fn prometheus(&self) -> String {
        let mut s = String::new();
        let iface = &self.interface;
        let c = &self.counters;
        for (name, help, v) in [
            (
                "tunneld_rx_packets_total",
                "Inner packets delivered to the TUN device.",
                c.rx_packets,
            ),
            (
                "tunneld_rx_bytes_total",
                "Inner bytes delivered to the TUN device.",
                c.rx_bytes,
            ),
            (
                "tunneld_tx_packets_total",
                "Inner packets sealed and sent.",
                c.tx_packets,
            ),
            (
                "tunneld_tx_bytes_total",
                "Inner bytes sealed and sent.",
                c.tx_bytes,
            ),
            (
                "tunneld_handshakes_total",
                "Handshakes completed.",
                c.handshakes,
            ),
        ] {
            s.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n"));
            s.push_str(&format!("{name}{{interface=\"{iface}\"}} {v}\n"));
        }
        let mut family = |name: &str, kind: &str, help: &str, label: &str, rows: &[(&str, u64)]| {
            metric_family(&mut s, iface, (name, kind, help), label, rows)
        };
        family(
            "tunneld_drops_total",
            "counter",
            "Packets dropped, by reason.",
            "reason",
            &[
                ("malformed", c.drop_malformed),
                ("bad_tag", c.drop_bad_tag),
                ("replay", c.drop_replay),
                ("unknown_index", c.drop_unknown_index),
                ("spoofed_source", c.drop_spoofed_source),
                ("handshake_invalid", c.drop_handshake_invalid),
                ("handshake_ratelimit", c.drop_handshake_ratelimit),
                ("no_route", c.drop_no_route),
                ("no_session", c.drop_no_session),
                ("transit_denied", c.drop_transit_denied),
            ],
        );
        let io = &self.io;
        family(
            "tunneld_io_errors_total",
            "counter",
            "Data-path I/O errors, by operation.",
            "op",
            &[
                ("send", io.send_errors),
                ("recv", io.recv_errors),
                ("tun_write", io.tun_write_errors),
            ],
        );
        family(
            "tunneld_queue_drops_total",
            "counter",
            "Inner packets dropped by the fq_codel queue, by reason.",
            "reason",
            &[
                ("codel", io.queue_codel_drops),
                ("overflow", io.queue_overflow_drops),
            ],
        );
        family(
            "tunneld_ecn_total",
            "counter",
            "ECN events: CE marks by the fq_codel queue (queue_ce), CE marks from the path carried into inner packets (path_ce), outer CE on inner packets that are not ECN-capable, dropped (path_ce_not_ect_dropped).",
            "event",
            &[
                ("queue_ce", io.queue_ecn_marks),
                ("path_ce", io.ecn_path_ce),
                ("path_ce_not_ect_dropped", io.ecn_not_ect_drops),
            ],
        );
        let t = &self.transport;
        let d = &self.dataplane;
        family(
            "tunneld_offload",
            "gauge",
            "Offloads in use (1 = on; udp_gso/udp_gro: segments per call).",
            "kind",
            &[
                ("tun", u64::from(d.tun_offload)),
                ("udp_gso", d.udp_gso_segments as u64),
                ("udp_gro", d.udp_gro_segments as u64),
            ],
        );
        for (name, kind, help, v) in [
            (
                "tunneld_queue_packets",
                "gauge",
                "Packets in the fq_codel queue.",
                io.queue_packets,
            ),
            (
                "tunneld_udp_flows",
                "gauge",
                "UDP flows (sockets) frames are spread over.",
                d.flows as u64,
            ),
            (
                "tunneld_udp_rcvbuf_drops_total",
                "counter",
                "Datagrams the kernel dropped at the UDP sockets: receive buffer full.",
                t.udp_rcvbuf_drops,
            ),
            (
                "tunneld_udp_rx_queued_bytes",
                "gauge",
                "Bytes waiting in the UDP sockets' receive buffers.",
                t.udp_rx_queued_bytes,
            ),
        ] {
            family(name, kind, help, "", &[("", v)]);
        }
        s.push_str("# HELP tunneld_io_calls_total Data-path system calls by operation.\n# TYPE tunneld_io_calls_total counter\n");
        s.push_str("# HELP tunneld_io_packets_total Packets moved by those calls (packets / calls = batching achieved).\n# TYPE tunneld_io_packets_total counter\n");
        for (op, calls, packets) in [
            ("tun_read", io.tun_reads, io.tun_read_packets),
            ("tun_write", io.tun_writes, io.tun_write_packets),
            ("udp_send", io.udp_sends, io.udp_send_frames),
            ("udp_recv", io.udp_recv_buffers, io.udp_recv_frames),
        ] {
            s.push_str(&format!(
                "tunneld_io_calls_total{{interface=\"{iface}\",op=\"{op}\"}} {calls}\n"
            ));
            s.push_str(&format!(
                "tunneld_io_packets_total{{interface=\"{iface}\",op=\"{op}\"}} {packets}\n"
            ));
        }
        if !t.udp_flow_datagrams.is_empty() {
            s.push_str("# HELP tunneld_udp_flow_datagrams_total UDP datagrams sent, per flow.\n# TYPE tunneld_udp_flow_datagrams_total counter\n");
            for (flow, v) in t.udp_flow_datagrams.iter().enumerate() {
                s.push_str(&format!(
                    "tunneld_udp_flow_datagrams_total{{interface=\"{iface}\",flow=\"{flow}\"}} {v}\n"
                ));
            }
        }
        s.push_str("# HELP tunneld_peer_session Whether a usable session exists with the peer.\n# TYPE tunneld_peer_session gauge\n");
        for p in &self.peers {
            s.push_str(&format!(
                "tunneld_peer_session{{interface=\"{iface}\",peer=\"{}\"}} {}\n",
                p.name, p.session as u8
            ));
        }
        s.push_str("# HELP tunneld_peer_up Whether the peer is up (session established and heard from within health.dead_after); what routes.install on-session follows.\n# TYPE tunneld_peer_up gauge\n");
        for p in &self.peers {
            s.push_str(&format!(
                "tunneld_peer_up{{interface=\"{iface}\",peer=\"{}\"}} {}\n",
                p.name,
                u8::from(p.up)
            ));
        }
        s.push_str("# HELP tunneld_peer_downs_total Times the peer went down.\n# TYPE tunneld_peer_downs_total counter\n");
        for p in &self.peers {
            s.push_str(&format!(
                "tunneld_peer_downs_total{{interface=\"{iface}\",peer=\"{}\"}} {}\n",
                p.name, p.downs
            ));
        }
        s.push_str("# HELP tunneld_peer_bytes_total Inner bytes per peer and direction.\n# TYPE tunneld_peer_bytes_total counter\n");
        for p in &self.peers {
            s.push_str(&format!(
                "tunneld_peer_bytes_total{{interface=\"{iface}\",peer=\"{}\",direction=\"tx\"}} {}\n",
                p.name, p.tx_bytes
            ));
            s.push_str(&format!(
                "tunneld_peer_bytes_total{{interface=\"{iface}\",peer=\"{}\",direction=\"rx\"}} {}\n",
                p.name, p.rx_bytes
            ));
        }
        s.push_str("# HELP tunneld_peer_transport The peer's transport (value 1).\n# TYPE tunneld_peer_transport gauge\n");
        for p in &self.peers {
            s.push_str(&format!(
                "tunneld_peer_transport{{interface=\"{iface}\",peer=\"{}\",transport=\"{}\"}} 1\n",
                p.name, p.transport
            ));
        }
        let t = &self.transport;
        s.push_str("# HELP tunneld_transport_events_total TCP/QUIC transport events, by kind (drops included).\n# TYPE tunneld_transport_events_total counter\n");
        for (event, v) in [
            ("tcp_accepted", t.tcp_accepted),
            ("tcp_dialed", t.tcp_dialed),
            ("tcp_refused", t.tcp_refused),
            ("tcp_bad_length", t.tcp_bad_length),
            ("tcp_truncated", t.tcp_truncated),
            ("quic_connections", t.quic_connections),
            ("quic_handshake_failures", t.quic_handshake_failures),
            ("quic_send_too_big", t.quic_send_too_big),
            ("rx_queue_full", t.rx_queue_full),
            ("tx_queue_full", t.tx_queue_full),
            ("tx_no_connection", t.tx_no_connection),
        ] {
            s.push_str(&format!(
                "tunneld_transport_events_total{{interface=\"{iface}\",event=\"{event}\"}} {v}\n"
            ));
        }
        s
    }
}

/// The latest snapshot, shared between the data path and the control thread.
#[derive(Debug, Default)]
pub struct StatusCell {
    inner: Mutex<Status>,
    base: Status,
}

impl StatusCell {
    /// A cell whose snapshots carry the fixed fields of `base` (interface,
    /// listen address, cipher).
    pub fn new(base: Status) -> StatusCell {
        StatusCell {
            inner: Mutex::new(base.clone()),
            base,
        }
    }

    /// Replaces the snapshot (fixed fields are filled in from the base).
    pub fn publish(&self, mut s: Status) {
        s.interface.clone_from(&self.base.interface);
        s.listen.clone_from(&self.base.listen);
        s.cipher.clone_from(&self.base.cipher);
        if let Ok(mut g) = self.inner.lock() {
            *g = s;
        }
    }

    /// The latest snapshot.
    pub fn get(&self) -> Status {
        self.inner.lock().map(|g| g.clone()).unwrap_or_default()
    }
}

/// Why the control socket could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Another process answers on the socket path: a second daemon for the
    /// same interface is refused.
    #[error("{0} is in use by a running tunneld")]
    InUse(PathBuf),
    /// Creating the directory or binding the socket failed.
    #[error("control socket {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// The control socket server; the socket file is removed on drop.
#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ControlServer {
    /// Binds `path` (replacing a stale socket file) and serves `status`.
    pub fn start(path: &Path, status: Arc<StatusCell>) -> Result<ControlServer, ControlError> {
        let err = |source| ControlError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() && !dir.exists() {
                std::fs::create_dir_all(dir).map_err(err)?;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                    .map_err(err)?;
            }
        }
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "exists and is not a socket; refusing to remove it",
                )));
            }
            if UnixStream::connect(path).is_ok() {
                return Err(ControlError::InUse(path.to_path_buf()));
            }
            std::fs::remove_file(path).map_err(err)?;
        }
        let listener = UnixListener::bind(path).map_err(err)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
        listener.set_nonblocking(true).map_err(err)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("control".into())
            .spawn(move || serve(listener, status, stop2))
            .map_err(err)?;
        Ok(ControlServer {
            path: path.to_path_buf(),
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(listener: UnixListener, status: Arc<StatusCell>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = answer(stream, &status) {
                    log::debug!("control client: {e}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                log::warn!("control socket accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn answer(stream: UnixStream, status: &StatusCell) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(io::Read::take(&stream, MAX_REQUEST)).read_line(&mut line)?;
    let reply = match line.trim() {
        "status" => serde_json::to_string_pretty(&status.get()).map_err(io::Error::other)? + "\n",
        "metrics" => status.get().prometheus(),
        other => format!(
            "error: unknown command {:?} (expected status or metrics)\n",
            other
        ),
    };
    (&stream).write_all(reply.as_bytes())
}

/// Sends `command` to the daemon at `path` and returns its answer.
pub fn query(path: &Path, command: &str) -> io::Result<String> {
    let mut stream = UnixStream::connect(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("{}: {e} (is tunneld running?)", path.display()),
        )
    })?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.write_all(format!("{command}\n").as_bytes())?;
    let mut out = String::new();
    io::Read::read_to_string(&mut stream, &mut out)?;
    Ok(out)
}

/// Appends one metric family: HELP and TYPE lines, then one sample per row
/// labelled `label="<row name>"` (no extra label when `label` is empty).
fn metric_family(
    s: &mut String,
    iface: &str,
    (name, kind, help): (&str, &str, &str),
    label: &str,
    rows: &[(&str, u64)],
) {
    s.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
    for (value_of, v) in rows {
        if label.is_empty() {
            s.push_str(&format!("{name}{{interface=\"{iface}\"}} {v}\n"));
        } else {
            s.push_str(&format!(
                "{name}{{interface=\"{iface}\",{label}=\"{value_of}\"}} {v}\n"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flows_and_per_flow_counts_in_metrics() {
        let mut s = Status {
            interface: "t0".into(),
            ..Status::default()
        };
        s.dataplane.flows = 1;
        let one = s.prometheus();
        assert!(
            one.contains("tunneld_udp_flows{interface=\"t0\"} 1\n"),
            "{one}"
        );
        assert!(!one.contains("tunneld_udp_flow_datagrams_total{"), "{one}");
        s.dataplane.flows = 3;
        s.transport.udp_flow_datagrams = vec![7, 0, 42];
        let m = s.prometheus();
        assert!(m.contains("tunneld_udp_flows{interface=\"t0\"} 3\n"), "{m}");
        for (flow, n) in [(0, 7), (1, 0), (2, 42)] {
            let line = format!(
                "tunneld_udp_flow_datagrams_total{{interface=\"t0\",flow=\"{flow}\"}} {n}\n"
            );
            assert!(m.contains(&line), "{line} missing in {m}");
        }
        let json = serde_json::to_value(&s).expect("status serializes");
        assert_eq!(json["dataplane"]["flows"], 3);
        s.transport.udp_rcvbuf_drops = 5;
        s.io.ecn_path_ce = 9;
        s.io.ecn_not_ect_drops = 2;
        s.io.queue_ecn_marks = 4;
        let m = s.prometheus();
        for line in [
            "tunneld_udp_rcvbuf_drops_total{interface=\"t0\"} 5\n",
            "tunneld_udp_rx_queued_bytes{interface=\"t0\"} 0\n",
            "tunneld_ecn_total{interface=\"t0\",event=\"path_ce\"} 9\n",
            "tunneld_ecn_total{interface=\"t0\",event=\"path_ce_not_ect_dropped\"} 2\n",
            "tunneld_ecn_total{interface=\"t0\",event=\"queue_ce\"} 4\n",
        ] {
            assert!(m.contains(line), "{line} missing in {m}");
        }
        assert_eq!(json["transport"]["udp_flow_datagrams"][2], 42);
    }
}
