//! `tunneld`: a daemon on each gateway, configured with the scenario's
//! settings. Configs are built from tunneld's own file-format structs
//! ([`tunneld::config::TunnelFile`]), keys with [`tunneld::keys`]; the
//! daemons install the LAN routes themselves. [`tunnel_file`] is also what
//! the end-to-end tests use to configure a pair.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tunneld::config::{
    CipherKind, InterfaceFile, Kind, PeerFile, PeerQuicFile, QuicFile, RekeyFile, TransportKind,
    TunnelFile,
};
use tunneld::keys::{PrivateKey, PublicKey, SpkiPin};
use tunneld::prefix::Prefix;
use tunneld::units::{Size, Span};

use super::{write_private, Ctx, NotRun, Running};
use crate::lab::scenario::TunneldSettings;
use crate::topo::{self, DcPair};

/// UDP port both daemons listen on.
pub const PORT: u16 = 51820;
/// Largest tunnel MTU the lab uses over QUIC: 1360 + 32 (our frame) + 50
/// (QUIC) + 28 (IPv4/UDP) fits the lab's 1500-byte links (as tests/transports.rs).
pub const QUIC_MAX_MTU: u16 = 1360;
/// How long a daemon gets to answer `status` after start.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Which gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// gw-a (DC A).
    A,
    /// gw-b (DC B).
    B,
}

impl Side {
    /// "a" or "b".
    pub fn letter(self) -> &'static str {
        match self {
            Side::A => "a",
            Side::B => "b",
        }
    }

    /// The other gateway.
    pub fn peer(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }

    /// This gateway's underlay listen address.
    pub fn listen(self) -> SocketAddr {
        let ip = match self {
            Side::A => topo::GW_A_WAN_V4,
            Side::B => topo::GW_B_WAN_V4,
        };
        SocketAddr::new(ip.into(), PORT)
    }

    /// This gateway's tunnel-inner addresses (v4, v6) without prefix length.
    pub fn inner(self) -> (&'static str, &'static str) {
        match self {
            Side::A => ("198.19.0.1", "fd00:19::1"),
            Side::B => ("198.19.0.2", "fd00:19::2"),
        }
    }

    /// The LAN prefixes behind this gateway (v4, v6).
    pub fn lan(self) -> (&'static str, &'static str) {
        match self {
            Side::A => (topo::LAN_A_V4, topo::LAN_A_V6),
            Side::B => (topo::LAN_B_V4, topo::LAN_B_V6),
        }
    }
}

fn prefix(text: &str) -> Prefix {
    // The texts are this module's constants; a bad one is a programming error
    // caught by the unit test below.
    Prefix::parse_interface_addr(text).unwrap_or_else(|_| {
        Prefix::new(IpAddr::from([198, 19, 0, 0]), 24).expect("constant prefix")
    })
}

fn network(text: &str) -> Prefix {
    prefix(text).trunc()
}

/// The standard config of one side: tunnel `tun`, key file `key_file`,
/// control socket `sock`, peer key `peer`, settings from the scenario.
pub fn tunnel_file(
    side: Side,
    tun: &str,
    key_file: &Path,
    sock: &Path,
    peer: PublicKey,
    s: &TunneldSettings,
) -> TunnelFile {
    let (v4, v6) = side.inner();
    let (pv4, pv6) = side.peer().inner();
    let (lan4, lan6) = side.peer().lan();
    TunnelFile {
        kind: Kind::Tunnel,
        interface: InterfaceFile {
            name: tun.to_string(),
            addresses: vec![prefix(&format!("{v4}/24")), prefix(&format!("{v6}/64"))],
            mtu: s.mtu,
        },
        listen: side.listen(),
        private_key_file: key_file.to_path_buf(),
        cipher: s.cipher,
        insecure_lab_only: s.cipher == CipherKind::None,
        control_socket: Some(sock.to_path_buf()),
        socket_buffer: s
            .socket_buffer
            .unwrap_or(Size(tunneld::config::DEFAULT_SOCKET_BUFFER)),
        mss_clamp: s.mss_clamp,
        dataplane: s.dataplane.clone(),
        quic: None,
        metrics: None,
        health: None,
        pmtud: None,
        routes: Default::default(),
        rekey: RekeyFile::default(),
        peers: vec![PeerFile {
            name: side.peer().letter().to_string(),
            public_key: peer,
            endpoint: Some(side.peer().listen()),
            allowed_prefixes: vec![
                network(&format!("{pv4}/32")),
                network(lan4),
                network(&format!("{pv6}/128")),
                network(lan6),
            ],
            keepalive: Some(Span(Duration::from_secs(5))),
            transport: Default::default(),
            quic: None,
            transit: None,
        }],
    }
}

/// Both daemons.
#[derive(Debug)]
pub struct Tunneld {
    pids: Vec<u32>,
    variant: String,
}

struct Prepared {
    config: PathBuf,
    sock: PathBuf,
    ns: String,
}

impl Tunneld {
    /// Writes keys and configs, starts both daemons, waits for `status`.
    pub fn start(ctx: &Ctx) -> Result<Tunneld, NotRun> {
        Self::start_with(ctx, &mut |_, _| {})
    }

    /// As [`Tunneld::start_with`], with every peer on `transport` (for
    /// `quic`, a certificate per gateway is generated into the lab dir
    /// first). The transport is set before `edit` runs, so an explicit
    /// `edit` (a sweep cell's MTU, say) wins over the QUIC MTU cap.
    pub fn start_on(
        ctx: &Ctx,
        transport: TransportKind,
        edit: &mut dyn FnMut(Side, &mut TunnelFile),
    ) -> Result<Tunneld, NotRun> {
        let certs = match transport {
            TransportKind::Quic => {
                let dir = instance_dir(ctx);
                std::fs::create_dir_all(&dir)
                    .map_err(|e| NotRun::Failed(format!("creating {}: {e}", dir.display())))?;
                Some(QuicCerts::generate(&dir).map_err(NotRun::Failed)?)
            }
            _ => None,
        };
        Self::start_with(ctx, &mut |side, f| {
            set_transport(side, f, transport, certs.as_ref());
            edit(side, f);
        })
    }

    // ---- hook for `tunbench sweep` (added on the sweep branch) ----
    /// As [`Tunneld::start`], but `edit` may change each side's generated
    /// config (dataplane knobs, MTU, ...) before it is written. The sweep
    /// uses it to run one cell's tunneld settings.
    pub fn start_with(
        ctx: &Ctx,
        edit: &mut dyn FnMut(Side, &mut TunnelFile),
    ) -> Result<Tunneld, NotRun> {
        let bin = ctx.tunneld_bin.ok_or_else(|| {
            NotRun::NotInstalled(
                "tunneld binary not found next to tunbench nor in PATH (cargo build --release)"
                    .into(),
            )
        })?;
        let dc = ctx.dc;
        let dir = instance_dir(ctx);
        std::fs::create_dir_all(&dir)
            .map_err(|e| NotRun::Failed(format!("creating {}: {e}", dir.display())))?;
        let fail = |what: &str, e: &dyn std::fmt::Display| NotRun::Failed(format!("{what}: {e}"));
        let mut keys = Vec::new();
        for side in [Side::A, Side::B] {
            let k = PrivateKey::generate().map_err(|e| fail("generating a key", &e))?;
            let path = dir.join(format!("{}.key", side.letter()));
            k.save_file(&path).map_err(|e| fail("saving a key", &e))?;
            keys.push((path, k.public()));
        }
        let mut prepared = Vec::new();
        let mut variant = String::new();
        for (i, side) in [Side::A, Side::B].into_iter().enumerate() {
            let tun = dc
                .lab
                .ifname(&format!("t{}", side.letter()))
                .map_err(|e| fail("naming the TUN device", &e))?;
            let sock = dir.join(format!("{}.sock", side.letter()));
            let mut file = tunnel_file(
                side,
                &tun,
                &keys[i].0,
                &sock,
                keys[1 - i].1,
                &ctx.scenario.tunneld,
            );
            edit(side, &mut file);
            if side == Side::A {
                variant = variant_of(&file);
            }
            let yaml = serde_norway::to_string(&file).map_err(|e| fail("rendering YAML", &e))?;
            let config = dir.join(format!("{}.yaml", side.letter()));
            std::fs::write(&config, yaml).map_err(|e| fail("writing the config", &e))?;
            let ns = match side {
                Side::A => dc.gw_a.clone(),
                Side::B => dc.gw_b.clone(),
            };
            prepared.push(Prepared { config, sock, ns });
        }
        let mut me = Tunneld {
            pids: Vec::new(),
            variant,
        };
        for p in &prepared {
            let mut cmd = Command::new(bin);
            cmd.arg("run").arg("--config").arg(&p.config);
            cmd.env(
                "RUST_LOG",
                std::env::var("TUNBENCH_TUNNELD_LOG").unwrap_or_else(|_| "warn".into()),
            );
            let pid = match dc.lab.spawn(&p.ns, cmd) {
                Ok(pid) => pid,
                Err(e) => {
                    me.stop(dc);
                    return Err(fail("starting tunneld", &e));
                }
            };
            me.pids.push(pid);
            if let Err(e) = wait_started(dc, pid, &p.sock) {
                me.stop(dc);
                return Err(NotRun::Failed(e));
            }
        }
        Ok(me)
    }
}

/// Where one start's keys, certificates and configs live.
fn instance_dir(ctx: &Ctx) -> PathBuf {
    ctx.dc.lab.dir().join(format!("tunneld-{}", ctx.instance))
}

/// The row's variant text: cipher, MTU and transport of the config as run.
fn variant_of(f: &TunnelFile) -> String {
    let transport = f.peers.first().map_or(TransportKind::Udp, |p| p.transport);
    format!(
        "tunneld {} mtu {} over {transport}",
        f.cipher, f.interface.mtu
    )
}

/// One gateway's QUIC identity: certificate, private key (mode 0600), and
/// the SPKI pin its peer expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuicIdentity {
    /// Certificate PEM file.
    pub cert_file: PathBuf,
    /// Private key PEM file (mode 0600).
    pub key_file: PathBuf,
    /// SHA-256 of the certificate's SubjectPublicKeyInfo.
    pub pin: SpkiPin,
}

/// Both gateways' QUIC identities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuicCerts {
    /// gw-a's.
    pub a: QuicIdentity,
    /// gw-b's.
    pub b: QuicIdentity,
}

impl QuicCerts {
    /// Generates a self-signed certificate per gateway into `dir`
    /// (`a.crt`/`a.crt.key`, `b.crt`/`b.crt.key`).
    pub fn generate(dir: &Path) -> Result<QuicCerts, String> {
        let one = |side: Side| -> Result<QuicIdentity, String> {
            let (cert, key, pin) = tunneld::transport::quic::generate_cert()
                .map_err(|e| format!("generating a QUIC certificate: {e}"))?;
            let cert_file = dir.join(format!("{}.crt", side.letter()));
            let key_file = dir.join(format!("{}.crt.key", side.letter()));
            std::fs::write(&cert_file, cert)
                .map_err(|e| format!("writing {}: {e}", cert_file.display()))?;
            write_private(&key_file, key.as_bytes())?;
            Ok(QuicIdentity {
                cert_file,
                key_file,
                pin,
            })
        };
        Ok(QuicCerts {
            a: one(Side::A)?,
            b: one(Side::B)?,
        })
    }

    /// The identity of `side`.
    pub fn of(&self, side: Side) -> &QuicIdentity {
        match side {
            Side::A => &self.a,
            Side::B => &self.b,
        }
    }
}

/// Puts every peer of `side`'s config on `transport`. For `tcp` and `quic`
/// only gw-a dials (gw-b's peers lose their endpoint and accept), as the
/// end-to-end tests run them. For `quic` it fills `quic:` with this side's
/// identity from `certs`, each peer's pin with the other side's, and caps
/// the MTU at [`QUIC_MAX_MTU`]; without `certs` a quic config is left
/// without them (tunneld's check then names what is missing).
pub fn set_transport(
    side: Side,
    f: &mut TunnelFile,
    transport: TransportKind,
    certs: Option<&QuicCerts>,
) {
    for p in &mut f.peers {
        p.transport = transport;
        p.quic = None;
        if transport != TransportKind::Udp && side == Side::B {
            p.endpoint = None;
        }
    }
    f.quic = None;
    if transport != TransportKind::Quic {
        return;
    }
    f.interface.mtu = f.interface.mtu.min(QUIC_MAX_MTU);
    if let Some(c) = certs {
        let mine = c.of(side);
        f.quic = Some(QuicFile {
            cert_file: mine.cert_file.clone(),
            key_file: mine.key_file.clone(),
            port: None,
            idle_timeout: Span(tunneld::config::DEFAULT_QUIC_IDLE),
            keepalive: Span(tunneld::config::DEFAULT_QUIC_KEEPALIVE),
        });
        let theirs = c.of(side.peer()).pin;
        for p in &mut f.peers {
            p.quic = Some(PeerQuicFile {
                spki_sha256: theirs,
            });
        }
    }
}

/// Waits until the control socket exists and the daemon still runs.
fn wait_started(dc: &DcPair, pid: u32, sock: &Path) -> Result<(), String> {
    let start = Instant::now();
    loop {
        if let Ok(Some(st)) = dc.lab.try_wait(pid) {
            return Err(format!(
                "tunneld exited during start-up ({st}): {}",
                super::tail(&dc.lab.log(pid), 15)
            ));
        }
        if sock.exists() {
            return Ok(());
        }
        if start.elapsed() > START_TIMEOUT {
            return Err(format!(
                "tunneld did not open its control socket within {START_TIMEOUT:?}: {}",
                super::tail(&dc.lab.log(pid), 15)
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Running for Tunneld {
    fn variant(&self) -> String {
        self.variant.clone()
    }
    fn pids(&self) -> Vec<u32> {
        self.pids.clone()
    }
    fn stop(&mut self, dc: &DcPair) {
        for pid in self.pids.drain(..) {
            let _ = dc.lab.stop(pid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_config_passes_tunneld_checks() {
        let dir = std::env::temp_dir().join(format!("tb-lab-cfg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let ka = PrivateKey::generate().expect("key");
        let kb = PrivateKey::generate().expect("key");
        ka.save_file(&dir.join("a.key")).expect("save");
        let file = tunnel_file(
            Side::A,
            "tb1x1ta",
            Path::new("a.key"),
            &dir.join("a.sock"),
            kb.public(),
            &TunneldSettings::default(),
        );
        let yaml = serde_norway::to_string(&file).expect("yaml");
        let cfg = tunneld::config::parse_str(&yaml, &dir)
            .unwrap_or_else(|e| panic!("tunneld rejects the lab's config: {e}\n{yaml}"));
        assert_eq!(cfg.peers.len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Both sides' configs for `transport`, as the lab writes them, with
    /// the keys (and certificates) in `dir`.
    fn pair(dir: &Path, transport: TransportKind) -> Vec<(Side, TunnelFile)> {
        let certs = (transport == TransportKind::Quic)
            .then(|| QuicCerts::generate(dir).expect("certificates"));
        let keys = [
            PrivateKey::generate().expect("key"),
            PrivateKey::generate().expect("key"),
        ];
        let mut out = Vec::new();
        for (i, side) in [Side::A, Side::B].into_iter().enumerate() {
            let key = dir.join(format!("{}.key", side.letter()));
            keys[i].save_file(&key).expect("save key");
            let mut f = tunnel_file(
                side,
                &format!("tb1x1t{}", side.letter()),
                &key,
                &dir.join(format!("{}.sock", side.letter())),
                keys[1 - i].public(),
                &TunneldSettings::default(),
            );
            set_transport(side, &mut f, transport, certs.as_ref());
            out.push((side, f));
        }
        out
    }

    #[test]
    fn transport_configs_pass_tunneld_checks() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("tb-lab-tr-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        for transport in [TransportKind::Tcp, TransportKind::Quic] {
            let dir = dir.join(transport.as_str());
            std::fs::create_dir_all(&dir).expect("temp dir");
            for (side, file) in pair(&dir, transport) {
                let yaml = serde_norway::to_string(&file).expect("yaml");
                let parsed = tunneld::config::parse_file_format(&yaml, "lab.yaml")
                    .unwrap_or_else(|e| panic!("{transport}: does not parse: {e}\n{yaml}"));
                let cfg = tunneld::config::check(&parsed, &dir, "lab.yaml", Some(&yaml))
                    .unwrap_or_else(|e| panic!("{transport}: tunneld rejects it: {e}\n{yaml}"));
                assert_eq!(cfg.peers.len(), 1);
                assert_eq!(parsed.peers[0].transport, transport);
                // Only gw-a dials.
                assert_eq!(
                    parsed.peers[0].endpoint.is_some(),
                    side == Side::A,
                    "{yaml}"
                );
                if transport == TransportKind::Quic {
                    assert!(parsed.interface.mtu <= QUIC_MAX_MTU);
                    let q = parsed.quic.as_ref().expect("quic section");
                    let mode = std::fs::metadata(&q.key_file)
                        .expect("key file")
                        .permissions()
                        .mode();
                    assert_eq!(mode & 0o777, 0o600, "{}", q.key_file.display());
                    // The pin is the other gateway's certificate.
                    let other = match side {
                        Side::A => dir.join("b.crt"),
                        Side::B => dir.join("a.crt"),
                    };
                    let pin = tunneld::transport::quic::pin_of_cert_file(&other).expect("pin");
                    let have = parsed.peers[0].quic.as_ref().expect("peer quic");
                    assert_eq!(have.spki_sha256, pin);
                } else {
                    assert!(parsed.quic.is_none() && parsed.peers[0].quic.is_none());
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn quic_without_certificates_is_refused_by_tunneld() {
        let dir = std::env::temp_dir().join(format!("tb-lab-trn-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let (_, mut f) = pair(&dir, TransportKind::Udp).remove(0);
        set_transport(Side::A, &mut f, TransportKind::Quic, None);
        let yaml = serde_norway::to_string(&f).expect("yaml");
        let e = tunneld::config::check(&f, &dir, "lab.yaml", Some(&yaml));
        assert!(
            e.is_err(),
            "accepted a quic config without certificates:\n{yaml}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
