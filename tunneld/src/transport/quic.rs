//! Frames as QUIC unreliable datagrams (RFC 9221): no head-of-line blocking
//! and no retransmission of the inner traffic, but QUIC's congestion control
//! (BBR, so random loss is not taken for congestion),
//! connection migration and a TLS 1.3 handshake that looks like HTTP/3 on
//! the wire. quinn runs on a tokio runtime in a thread of its own; received
//! datagrams reach the data path through an [`Inbox`], and sends call
//! quinn's thread-safe `send_datagram` directly.
//!
//! Authentication without web PKI: each daemon has a (self-signed)
//! certificate, and each side pins the other's SubjectPublicKeyInfo by its
//! SHA-256 (`peers[].quic.spki_sha256`); both ends present certificates
//! (mutual TLS), and a certificate matching no pin is refused with a log
//! line that names both hashes. The Noise handshake inside still
//! authenticates the peer on its own; the pin keeps strangers from even
//! holding a QUIC connection.
//!
//! Datagram size: quinn starts with a UDP payload of `tun MTU + frame
//! overhead + QUIC overhead` (`initial_mtu`), so on a path that carries it
//! every inner packet of the TUN MTU fits at once. On a smaller path quinn's
//! black-hole detection falls back to 1200 bytes and its MTU discovery
//! climbs to what the path carries; meanwhile [`Transport::max_frame`]
//! tells the data path the current limit, and it answers inner packets that
//! do not fit with ICMP "fragmentation needed" / "packet too big", so the
//! inner hosts' path MTU discovery adapts. Frames that still reach quinn too
//! big are dropped and counted (`quic_send_too_big`).

use super::inbox::Inbox;
use super::udp::set_buffers;
use super::{bump, unmap, Received, Stats, Transport, TransportCounters};
use crate::keys::SpkiPin;
use crate::lograte::{suppressed_note, LogLimiter};
use bytes::Bytes;
use quinn::rustls;
use quinn::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use quinn::rustls::crypto::CryptoProvider;
use quinn::rustls::pki_types::pem::PemObject;
use quinn::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use quinn::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use quinn::rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::HashMap;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// ALPN of the tunnel.
const ALPN: &[u8] = b"tunneld/1";
/// Name in our certificates (not checked: the SPKI pin is what counts).
const CERT_NAME: &str = "tunneld";
/// Worst-case QUIC bytes around one datagram: short header with a 20-byte
/// connection ID and a 4-byte packet number (25), AEAD tag (16), DATAGRAM
/// frame type and length (9).
pub const QUIC_OVERHEAD: usize = 50;
/// The smallest datagram any QUIC path carries: 1200 bytes of UDP payload
/// (QUIC's minimum) less [`QUIC_OVERHEAD`].
pub const MIN_DATAGRAM: usize = 1200 - QUIC_OVERHEAD;
/// Live QUIC connections at most.
pub const MAX_CONNECTIONS: usize = 64;
/// First redial delay; doubles up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest redial delay.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Why the QUIC transport could not start or a certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    /// The certificate or key file could not be read or parsed.
    #[error("{}: {message}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// rustls refused the certificate/key pair or the settings.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// Generating a certificate failed.
    #[error("certificate generation: {0}")]
    Generate(String),
    /// The UDP socket or runtime could not be set up.
    #[error("QUIC endpoint: {0}")]
    Io(#[from] io::Error),
}

/// One QUIC peer as the transport needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuicPeer {
    /// Peer name (logs).
    pub name: String,
    /// Where to dial; `None` = wait for the peer to dial us.
    pub endpoint: Option<SocketAddr>,
    /// SHA-256 of the peer certificate's SubjectPublicKeyInfo.
    pub spki_sha256: SpkiPin,
}

/// Everything the QUIC transport is started with.
#[derive(Debug, Clone)]
pub struct QuicSettings {
    /// UDP address of the endpoint.
    pub listen: SocketAddr,
    /// Our certificate (PEM).
    pub cert_file: PathBuf,
    /// Our private key (PEM).
    pub key_file: PathBuf,
    /// Peers on QUIC.
    pub peers: Vec<QuicPeer>,
    /// The largest frame the data path sends (a TUN-MTU inner packet
    /// sealed): frames this large must fit one datagram. Passed in so that
    /// the transport knows nothing of the frame format.
    pub max_frame: usize,
    /// Close a connection silent for this long.
    pub idle_timeout: Duration,
    /// Send QUIC pings this often so idle connections and NAT state live.
    pub keepalive: Duration,
    /// UDP socket buffer bytes.
    pub socket_buffer: usize,
}

/// A fresh self-signed certificate: (certificate PEM, private key PEM, SPKI pin).
pub fn generate_cert() -> Result<(String, String, SpkiPin), QuicError> {
    let ck = rcgen::generate_simple_self_signed(vec![CERT_NAME.to_string()])
        .map_err(|e| QuicError::Generate(e.to_string()))?;
    let pin = SpkiPin::from_bytes(sha256(&ck.key_pair.public_key_der()));
    Ok((ck.cert.pem(), ck.key_pair.serialize_pem(), pin))
}

/// The SPKI pin of the first certificate in a PEM file.
pub fn pin_of_cert_file(path: &Path) -> Result<SpkiPin, QuicError> {
    let certs = load_certs(path)?;
    let first = certs.first().ok_or_else(|| QuicError::File {
        path: path.to_path_buf(),
        message: "no certificate in the file".into(),
    })?;
    let spki = spki_of(first).map_err(|e| QuicError::File {
        path: path.to_path_buf(),
        message: format!("not a usable certificate: {e}"),
    })?;
    Ok(spki)
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// SHA-256 of a certificate's SubjectPublicKeyInfo.
fn spki_of(cert: &CertificateDer<'_>) -> Result<SpkiPin, rustls::Error> {
    let parsed = rustls::server::ParsedCertificate::try_from(cert)?;
    Ok(SpkiPin::from_bytes(sha256(
        parsed.subject_public_key_info().as_ref(),
    )))
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, QuicError> {
    let err = |message: String| QuicError::File {
        path: path.to_path_buf(),
        message,
    };
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(format!("cannot read certificates: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(err("no certificate in the file".into()));
    }
    Ok(certs)
}

/// Longest TLS key file read: a PEM RSA-4096 key is ~3.3 KB, ours (P-256)
/// ~250 bytes; this bounds the read of a wrong file.
const MAX_TLS_KEY_FILE_LEN: u64 = 64 << 10;

/// Reads the TLS private key with the checks the Noise key gets (no
/// symlink, a regular file, mode 0600 or stricter, owned by us or root;
/// [`crate::keys::read_secret_file`]); its bytes are wiped after parsing.
fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, QuicError> {
    let err = |message: String| QuicError::File {
        path: path.to_path_buf(),
        message,
    };
    let pem = crate::keys::read_secret_file(path, MAX_TLS_KEY_FILE_LEN)
        .map_err(|e| err(format!("cannot read a private key: {e}")))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| err(format!("cannot read a private key: {e}")))
}

/// Log lines about refused certificates and connections: anyone can cause them.
static REFUSED_CERTS: LogLimiter = LogLimiter::new();
static REFUSED_CONNECTIONS: LogLimiter = LogLimiter::new();

/// Accepts exactly the certificates whose SPKI hash is pinned.
#[derive(Debug)]
struct Pinned {
    /// (peer name, pin).
    pins: Vec<(String, SpkiPin)>,
    /// Who we are checking, for log lines ("server peer b at 198.18.1.2:51820").
    role: String,
    provider: Arc<CryptoProvider>,
}

impl Pinned {
    fn check(&self, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let got = spki_of(cert)?;
        if self.pins.iter().any(|(_, p)| *p == got) {
            return Ok(());
        }
        let want: Vec<String> = self
            .pins
            .iter()
            .map(|(n, p)| format!("{p} (peer {n})"))
            .collect();
        // Anyone can present a certificate: a warning, rate-limited.
        if let Some(n) = REFUSED_CERTS.allow() {
            log::warn!(
                "QUIC certificate of {} refused: SPKI sha256 {} does not match the pinned {}{}",
                self.role,
                got,
                want.join(", "),
                suppressed_note(n)
            );
        }
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::ApplicationVerificationFailure,
        ))
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not used".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl ClientCertVerifier for Pinned {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not used".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

struct Inner {
    inbox: Inbox,
    stats: Arc<Stats>,
    conns: Mutex<HashMap<SocketAddr, Vec<(u64, quinn::Connection)>>>,
    next_id: AtomicU64,
    shutdown: AtomicBool,
    /// Largest frame the data path sends: TUN MTU + our overhead.
    frame_max: usize,
}

impl Inner {
    fn conns(&self) -> MutexGuard<'_, HashMap<SocketAddr, Vec<(u64, quinn::Connection)>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn live(&self) -> usize {
        self.conns().values().map(Vec::len).sum()
    }
}

/// Frames as QUIC datagrams on one endpoint (client and server).
pub struct QuicTransport {
    inner: Arc<Inner>,
    endpoint: quinn::Endpoint,
    local: SocketAddr,
    dial: Vec<SocketAddr>,
}

impl std::fmt::Debug for QuicTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicTransport")
            .field("local", &self.local)
            .field("dial", &self.dial)
            .finish()
    }
}

fn transport_config(s: &QuicSettings) -> Result<quinn::TransportConfig, QuicError> {
    let mut tc = quinn::TransportConfig::default();
    let need = (s.max_frame + QUIC_OVERHEAD).clamp(1200, 65_000) as u16;
    let idle = quinn::IdleTimeout::try_from(s.idle_timeout)
        .map_err(|e| QuicError::Tls(format!("idle timeout: {e}")))?;
    tc.max_idle_timeout(Some(idle))
        .keep_alive_interval(Some(s.keepalive))
        .initial_mtu(need)
        .datagram_receive_buffer_size(Some(s.socket_buffer))
        .datagram_send_buffer_size(s.socket_buffer)
        .max_concurrent_bidi_streams(0u32.into())
        .max_concurrent_uni_streams(0u32.into())
        // The datagrams carry inner TCP, which runs its own congestion control;
        // a loss-based controller here backs off for every lost datagram on top
        // of it (Cubic: 0.03× UDP at 1% loss in the lab). BBR paces to the
        // measured bottleneck and does not treat random loss as congestion.
        .congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()));
    Ok(tc)
}

fn tls_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_config(
    s: &QuicSettings,
    tc: &Arc<quinn::TransportConfig>,
) -> Result<quinn::ServerConfig, QuicError> {
    let certs = load_certs(&s.cert_file)?;
    let key = load_key(&s.key_file)?;
    let provider = tls_provider();
    let verifier = Pinned {
        pins: s
            .peers
            .iter()
            .map(|p| (p.name.clone(), p.spki_sha256))
            .collect(),
        role: "a connecting client".into(),
        provider: provider.clone(),
    };
    let mut crypto = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| QuicError::Tls(e.to_string()))?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(certs, key)
        .map_err(|e| QuicError::Tls(format!("{}: {e}", s.cert_file.display())))?;
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let qc = quinn::crypto::rustls::QuicServerConfig::try_from(crypto)
        .map_err(|e| QuicError::Tls(e.to_string()))?;
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(qc));
    sc.transport_config(tc.clone());
    Ok(sc)
}

fn client_config(
    s: &QuicSettings,
    peer: &QuicPeer,
    to: SocketAddr,
    tc: &Arc<quinn::TransportConfig>,
) -> Result<quinn::ClientConfig, QuicError> {
    let certs = load_certs(&s.cert_file)?;
    let key = load_key(&s.key_file)?;
    let provider = tls_provider();
    let verifier = Pinned {
        pins: vec![(peer.name.clone(), peer.spki_sha256)],
        role: format!("peer {} at {to}", peer.name),
        provider: provider.clone(),
    };
    let mut crypto = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| QuicError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(certs, key)
        .map_err(|e| QuicError::Tls(format!("{}: {e}", s.cert_file.display())))?;
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let qc = quinn::crypto::rustls::QuicClientConfig::try_from(crypto)
        .map_err(|e| QuicError::Tls(e.to_string()))?;
    let mut cc = quinn::ClientConfig::new(Arc::new(qc));
    cc.transport_config(tc.clone());
    Ok(cc)
}

impl QuicTransport {
    /// Binds the endpoint, starts the runtime thread, dials every peer with
    /// an endpoint and accepts the others.
    pub fn start(s: QuicSettings) -> Result<QuicTransport, QuicError> {
        let tc = Arc::new(transport_config(&s)?);
        let server = server_config(&s, &tc)?;
        let mut dialers = Vec::new();
        for p in &s.peers {
            if let Some(to) = p.endpoint {
                dialers.push((p.clone(), to, client_config(&s, p, to, &tc)?));
            }
        }
        let sock = Socket::new(
            Domain::for_address(s.listen),
            Type::DGRAM.cloexec(),
            Some(Protocol::UDP),
        )?;
        if s.listen.is_ipv6() {
            sock.set_only_v6(false)?;
        }
        set_buffers(&sock, s.socket_buffer);
        sock.bind(&s.listen.into())?;
        let sock: std::net::UdpSocket = sock.into();
        let stats = Arc::new(Stats::default());
        let inner = Arc::new(Inner {
            inbox: Inbox::new(stats.clone())?,
            stats,
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            shutdown: AtomicBool::new(false),
            frame_max: s.max_frame,
        });
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let i = inner.clone();
        std::thread::Builder::new()
            .name("quic".into())
            .spawn(move || runtime_main(i, sock, server, dialers, ready_tx))?;
        let endpoint = ready_rx
            .recv()
            .map_err(|_| io::Error::other("QUIC runtime thread ended during start-up"))??;
        let local = endpoint.local_addr()?;
        Ok(QuicTransport {
            inner,
            endpoint,
            local: unmap(local),
            dial: s.peers.iter().filter_map(|p| p.endpoint).collect(),
        })
    }

    /// Sends to `to` if a connection to it exists or is being dialed;
    /// `None` when `to` is not served by this transport.
    pub fn try_send(
        &self,
        to: SocketAddr,
        contents: &[u8],
        segment_size: usize,
    ) -> Option<io::Result<()>> {
        let conn = self
            .inner
            .conns()
            .get(&to)
            .and_then(|v| v.last().map(|c| c.1.clone()));
        let Some(conn) = conn else {
            if self.dial.contains(&to) {
                bump(&self.inner.stats.tx_no_connection);
                return Some(Ok(()));
            }
            return None;
        };
        let mut result = Ok(());
        for frame in contents.chunks(segment_size.max(1)) {
            match conn.send_datagram(Bytes::copy_from_slice(frame)) {
                Ok(()) => {}
                Err(quinn::SendDatagramError::TooLarge) => {
                    bump(&self.inner.stats.quic_send_too_big);
                    result = Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "{} byte frame exceeds the QUIC datagram size {:?} to {to}",
                            frame.len(),
                            conn.max_datagram_size()
                        ),
                    ));
                }
                Err(_) => bump(&self.inner.stats.tx_no_connection),
            }
        }
        Some(result)
    }
}

impl Drop for QuicTransport {
    fn drop(&mut self) {
        self.inner.shutdown.store(true, Ordering::Relaxed);
        self.endpoint.close(0u32.into(), b"shutdown");
    }
}

type Dialer = (QuicPeer, SocketAddr, quinn::ClientConfig);

fn runtime_main(
    inner: Arc<Inner>,
    sock: std::net::UdpSocket,
    server: quinn::ServerConfig,
    dialers: Vec<Dialer>,
    ready: std::sync::mpsc::Sender<Result<quinn::Endpoint, QuicError>>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(e.into()));
            return;
        }
    };
    rt.block_on(async move {
        let endpoint = match quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server),
            sock,
            Arc::new(quinn::TokioRuntime),
        ) {
            Ok(e) => e,
            Err(e) => {
                let _ = ready.send(Err(e.into()));
                return;
            }
        };
        let _ = ready.send(Ok(endpoint.clone()));
        for (peer, to, cfg) in dialers {
            tokio::spawn(dial_loop(endpoint.clone(), inner.clone(), peer, to, cfg));
        }
        while let Some(incoming) = endpoint.accept().await {
            let i = inner.clone();
            if i.live() >= MAX_CONNECTIONS {
                bump(&i.stats.quic_handshake_failures);
                if let Some(n) = REFUSED_CONNECTIONS.allow() {
                    log::warn!(
                        "QUIC connection from {} refused: {MAX_CONNECTIONS} connections open{}",
                        incoming.remote_address(),
                        suppressed_note(n)
                    );
                }
                incoming.refuse();
                continue;
            }
            tokio::spawn(async move {
                let from = unmap(incoming.remote_address());
                match incoming.await {
                    Ok(conn) => run_conn(&i, conn, "accepted").await,
                    Err(e) => {
                        bump(&i.stats.quic_handshake_failures);
                        if let Some(n) = REFUSED_CONNECTIONS.allow() {
                            log::warn!(
                                "QUIC connection from {from} refused: {e}{}",
                                suppressed_note(n)
                            );
                        }
                    }
                }
            });
        }
    });
}

async fn dial_loop(
    endpoint: quinn::Endpoint,
    inner: Arc<Inner>,
    peer: QuicPeer,
    to: SocketAddr,
    cfg: quinn::ClientConfig,
) {
    let mut backoff = BACKOFF_MIN;
    while !inner.shutdown.load(Ordering::Relaxed) {
        match endpoint.connect_with(cfg.clone(), to, CERT_NAME) {
            Ok(connecting) => match connecting.await {
                Ok(conn) => {
                    let started = Instant::now();
                    run_conn(&inner, conn, "dialed").await;
                    if started.elapsed() > BACKOFF_MAX {
                        backoff = BACKOFF_MIN;
                    }
                }
                Err(e) => {
                    bump(&inner.stats.quic_handshake_failures);
                    log::warn!(
                        "QUIC connection to peer {} at {to} failed: {e}; retrying in {backoff:?}",
                        peer.name
                    );
                }
            },
            Err(e) => log::warn!("QUIC dial of peer {} at {to}: {e}", peer.name),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn run_conn(inner: &Inner, conn: quinn::Connection, how: &str) {
    let peer = unmap(conn.remote_address());
    let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
    inner
        .conns()
        .entry(peer)
        .or_default()
        .push((id, conn.clone()));
    bump(&inner.stats.quic_connections);
    let max = conn.max_datagram_size();
    log::info!("QUIC connection with {peer} established ({how}), max datagram {max:?} bytes");
    if max.is_none_or(|m| m < inner.frame_max) {
        log::warn!(
            "QUIC path to {peer} carries datagrams of {max:?} bytes, below the {} a full-MTU \
             frame needs; lower interface.mtu",
            inner.frame_max
        );
    }
    loop {
        match conn.read_datagram().await {
            Ok(d) => {
                inner.inbox.push(peer, inner.inbox.buffer(&d));
            }
            Err(e) => {
                log::info!("QUIC connection with {peer} closed: {e}");
                break;
            }
        }
    }
    let mut conns = inner.conns();
    if let Some(v) = conns.get_mut(&peer) {
        v.retain(|c| c.0 != id);
        if v.is_empty() {
            conns.remove(&peer);
        }
    }
}

impl Transport for QuicTransport {
    fn send(&self, to: SocketAddr, contents: &[u8], segment_size: usize) -> io::Result<()> {
        self.try_send(to, contents, segment_size)
            .unwrap_or_else(|| {
                bump(&self.inner.stats.tx_no_connection);
                Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    format!("no QUIC connection to {to}"),
                ))
            })
    }

    fn recv(&self, bufs: &mut [IoSliceMut<'_>], out: &mut [Received]) -> io::Result<usize> {
        self.inner.inbox.recv(bufs, out)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn max_segments(&self) -> usize {
        64
    }

    fn gro_segments(&self) -> usize {
        1
    }

    fn counters(&self) -> TransportCounters {
        self.inner.stats.snapshot()
    }

    fn frame_floor(&self) -> Option<usize> {
        Some(MIN_DATAGRAM)
    }

    fn max_frame(&self, to: SocketAddr) -> Option<usize> {
        let conns = self.inner.conns();
        conns.get(&to)?.last()?.1.max_datagram_size()
    }
}

impl AsRawFd for QuicTransport {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.inbox.as_raw_fd()
    }
}

#[cfg(test)]
#[path = "quic_tests.rs"]
mod tests;
