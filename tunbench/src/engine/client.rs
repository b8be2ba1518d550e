//! The client side of a test: connect, negotiate, probe the idle path, open the data
//! streams, run the session, and assemble the [`TestResult`].

use crate::engine::latency::{self, LatencyResult, Phase};
use crate::engine::proto::{self, Msg, Role, MAX_MESSAGE};
use crate::engine::result::{assemble_direction, DirectionInput, Flow, TestResult, SCHEMA};
use crate::engine::session::Session;
use crate::engine::sock::{self, LocalBind};
use crate::engine::spec::{Protocol, TestSpec};
use crate::engine::stats::{TestClock, UdpHeader};
use crate::engine::streams::{self, Event, Flags, UdpPace, UdpTx};
use crate::engine::EngineError;
use std::io::BufReader;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long the server may take to answer the hello and to start the test.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn setup<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> EngineError + '_ {
    move |e| EngineError::Setup(format!("{what}: {e}"))
}

/// Runs one test against a server. `Err` if nothing could be measured; a test that
/// started and then broke returns `Ok` with `complete: false` and an `error`.
pub fn run_client(spec: &TestSpec) -> Result<TestResult, EngineError> {
    spec.validate()?;
    let p = &spec.params;
    let target = format!("{}:{}", spec.server, spec.port);
    let connect_err = |error| EngineError::Connect {
        server: target.clone(),
        error,
    };
    let addr = sock::resolve(&spec.server, spec.port).map_err(connect_err)?;
    let bind = LocalBind {
        addr: spec.bind,
        dev: spec.bind_dev.clone(),
    };
    let ctrl = sock::connect_tcp(addr, &bind, None, spec.connect_timeout).map_err(connect_err)?;
    let _ = ctrl.set_nodelay(true);
    ctrl.set_read_timeout(Some(HANDSHAKE_TIMEOUT))
        .map_err(setup("control socket"))?;
    let mut reader = BufReader::new(ctrl.try_clone().map_err(setup("control socket"))?);
    let mut writer = ctrl.try_clone().map_err(setup("control socket"))?;

    let hello = Msg::Hello {
        params: p.clone(),
        client: format!("tunbench {}", env!("CARGO_PKG_VERSION")),
    };
    proto::write_msg(&mut writer, &hello).map_err(|e| EngineError::Protocol(e.into()))?;
    let mut answer = proto::read_msg(&mut reader, MAX_MESSAGE)?;
    if let Msg::Challenge { nonce } = &answer {
        let Some(key) = &spec.auth_key else {
            return Err(EngineError::Rejected(
                "the server requires authentication: pass --auth-key FILE with its shared key"
                    .into(),
            ));
        };
        let nonce = crate::engine::auth::unhex(nonce)
            .filter(|n| n.len() == crate::engine::auth::NONCE_LEN)
            .ok_or_else(|| EngineError::Rejected("malformed authentication challenge".into()))?;
        let auth = Msg::Auth {
            mac: key.answer(&nonce),
        };
        proto::write_msg(&mut writer, &auth).map_err(|e| EngineError::Protocol(e.into()))?;
        answer = proto::read_msg(&mut reader, MAX_MESSAGE)?;
    } else if spec.auth_key.is_some() {
        log::info!("the server did not ask for authentication");
    }
    let (cookie, udp_port, echo_port) = match answer {
        Msg::Accept {
            cookie,
            udp_port,
            echo_port,
        } => (proto::parse_cookie(&cookie)?, udp_port, echo_port),
        Msg::Error { message } => return Err(EngineError::Rejected(message)),
        other => {
            return Err(EngineError::Rejected(format!(
                "unexpected answer to hello: {other:?}"
            )))
        }
    };
    let test_id = proto::test_id(&cookie);
    let udp_peer = |port: Option<u16>, what: &str| {
        port.map(|p| SocketAddr::new(addr.ip(), p))
            .ok_or_else(|| EngineError::Rejected(format!("server did not give a {what} port")))
    };

    // Latency: idle phase before any load.
    let never = AtomicBool::new(false);
    let mut probe_sock = None;
    let mut idle = None;
    if let Some(lp) = &p.latency {
        let s = sock::udp_socket(udp_peer(echo_port, "echo")?, &bind, None, true)
            .map_err(setup("probe socket"))?;
        if !lp.idle.is_zero() {
            let now = Instant::now();
            idle = Some(latency::probe(
                &s,
                test_id,
                lp.size as usize,
                lp.interval,
                now,
                now + lp.idle,
                &never,
            ));
        }
        probe_sock = Some(s);
    }

    // Control messages from here on arrive through the event queue.
    let (tx, rx) = channel::<Event>();
    ctrl.set_read_timeout(None)
        .map_err(setup("control socket"))?;
    spawn_ctrl_reader(reader, tx.clone());

    // Data connections.
    let mut tcp_send = Vec::new();
    let mut tcp_recv = Vec::new();
    let mut udp_send = Vec::new();
    let mut udp_recv = None;
    let hello_stop = Arc::new(AtomicBool::new(false));
    match p.protocol {
        Protocol::Tcp => {
            let roles = [
                (p.direction.client_sends(), Role::ClientSends),
                (p.direction.client_receives(), Role::ServerSends),
            ];
            for (_, role) in roles.iter().filter(|(on, _)| *on) {
                for id in 0..p.parallel as u16 {
                    let mut s = sock::connect_tcp(addr, &bind, Some(p), spec.connect_timeout)
                        .map_err(setup(&format!("data connection {id}")))?;
                    std::io::Write::write_all(&mut s, &proto::data_hello(&cookie, id, *role))
                        .map_err(setup("data connection preamble"))?;
                    match role {
                        Role::ClientSends => tcp_send.push((id, s)),
                        Role::ServerSends => tcp_recv.push((id, s)),
                    }
                }
            }
        }
        Protocol::Udp => {
            let peer = udp_peer(udp_port, "UDP data")?;
            if p.direction.client_sends() {
                for id in 0..p.parallel as u16 {
                    let s = sock::udp_socket(peer, &bind, p.window, true)
                        .map_err(setup("UDP socket"))?;
                    udp_send.push((id, Arc::new(s)));
                }
            }
            if p.direction.client_receives() {
                let s = Arc::new(
                    sock::udp_socket(peer, &bind, p.window, true).map_err(setup("UDP socket"))?,
                );
                spawn_udp_hello(s.clone(), test_id, hello_stop.clone());
                udp_recv = Some(s);
            }
        }
    }

    // Wait for the start.
    let wait = wait_start(&rx);
    hello_stop.store(true, Ordering::Relaxed);
    wait?;
    let t0 = Instant::now();
    let start_unix_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let clock = TestClock::new(t0, p.omit, p.time, p.interval);
    let flags = Arc::new(Flags::default());
    let mut data_socks = Vec::new();
    let mut tcp_senders = Vec::new();
    let len = p.length as usize;
    for (id, s) in tcp_send {
        clone_into(&s, &mut data_socks);
        if let Ok(c) = s.try_clone() {
            tcp_senders.push((id, c));
        }
        let (f, t) = (flags.clone(), tx.clone());
        std::thread::spawn(move || streams::tcp_sender(id, s, len, clock, f, t));
    }
    let local_receivers = tcp_recv.len()
        + if udp_recv.is_some() {
            p.parallel as usize
        } else {
            0
        };
    for (id, s) in tcp_recv {
        clone_into(&s, &mut data_socks);
        let (f, t) = (flags.clone(), tx.clone());
        std::thread::spawn(move || streams::tcp_receiver(id, s, clock, f, t));
    }
    let local_senders = tcp_senders.len() + udp_send.len();
    let pace = UdpPace {
        len,
        rate: p.rate,
        test_id,
    };
    for (id, s) in udp_send {
        let (f, t) = (flags.clone(), tx.clone());
        let u = UdpTx {
            sock: s,
            dest: None,
        };
        std::thread::spawn(move || streams::udp_sender(id, u, pace, clock, f, t));
    }
    if let Some(s) = udp_recv {
        let (f, t, n) = (flags.clone(), tx.clone(), p.parallel as usize);
        std::thread::spawn(move || streams::udp_receiver(s, None, n, test_id, clock, f, t));
    }
    // Latency under load: probes sent inside the measured window count.
    let loaded = probe_sock.map(|s| {
        let (lp, f) = (p.latency.clone().unwrap_or_default(), flags.clone());
        std::thread::spawn(move || {
            latency::probe(
                &s,
                test_id,
                lp.size as usize,
                lp.interval,
                clock.window_start(),
                clock.window_end(),
                &f.abort,
            )
        })
    });
    drop(tx);

    let session = Session {
        params: p,
        clock,
        ctrl: writer,
        events: &rx,
        flags: flags.clone(),
        local_senders,
        local_receivers,
        tcp_senders,
        data_socks,
        peer_sends: p.direction.client_receives(),
        peer_receives: p.direction.client_sends(),
    };
    let out = session.run();
    flags.abort.store(true, Ordering::Relaxed);
    let loaded: Option<Phase> = loaded.and_then(|h| h.join().ok());
    let _ = ctrl.shutdown(std::net::Shutdown::Both);

    let ended_s = out.error.as_ref().map(|_| out.ended_ns as f64 / 1e9);
    let mut directions = Vec::new();
    if p.direction.client_sends() {
        directions.extend(assemble_direction(&DirectionInput {
            flow: Flow::ClientToServer,
            params: p,
            senders: Some(&out.senders),
            receivers: out.peer_receivers.as_deref(),
            ended_s,
        }));
    }
    if p.direction.client_receives() {
        directions.extend(assemble_direction(&DirectionInput {
            flow: Flow::ServerToClient,
            params: p,
            senders: out.peer_senders.as_deref(),
            receivers: Some(&out.receivers),
            ended_s,
        }));
    }
    let latency = p.latency.as_ref().map(|_| LatencyResult {
        method: "udp-ping-pong".into(),
        idle: idle.and_then(|ph| ph.summary()),
        loaded: loaded.and_then(|ph| ph.summary()),
    });
    Ok(TestResult {
        schema: SCHEMA.into(),
        complete: out.error.is_none(),
        error: out.error,
        server: addr.to_string(),
        params: p.clone(),
        start_unix_s,
        directions,
        latency,
    })
}

fn clone_into(s: &TcpStream, v: &mut Vec<TcpStream>) {
    if let Ok(c) = s.try_clone() {
        v.push(c);
    }
}

fn wait_start(rx: &Receiver<Event>) -> Result<(), EngineError> {
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Event::Ctrl(Ok(Msg::Start))) => return Ok(()),
            Ok(Event::Ctrl(Ok(Msg::Error { message }))) => {
                return Err(EngineError::Rejected(message))
            }
            Ok(Event::Ctrl(Ok(other))) => {
                return Err(EngineError::Rejected(format!(
                    "expected start, got {other:?}"
                )))
            }
            Ok(Event::Ctrl(Err(e))) => return Err(EngineError::Protocol(e)),
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout) => {
                return Err(EngineError::Setup(format!(
                    "server did not start the test within {}s",
                    HANDSHAKE_TIMEOUT.as_secs()
                )))
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(EngineError::Setup("event queue closed".into()))
            }
        }
    }
}

/// Forwards control messages to the event queue until the connection ends.
pub(crate) fn spawn_ctrl_reader(mut reader: BufReader<TcpStream>, tx: Sender<Event>) {
    std::thread::spawn(move || loop {
        let m = proto::read_msg(&mut reader, MAX_MESSAGE);
        let end = m.is_err();
        if tx.send(Event::Ctrl(m)).is_err() || end {
            break;
        }
    });
}

/// Announces the client's UDP receive address until the test starts.
fn spawn_udp_hello(s: Arc<UdpSocket>, test_id: u32, stop: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let buf = UdpHeader::hello(test_id);
        while !stop.load(Ordering::Relaxed) {
            let _ = s.send(&buf);
            std::thread::sleep(Duration::from_millis(50));
        }
    });
}
