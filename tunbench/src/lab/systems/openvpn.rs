//! `openvpn`: OpenVPN 2.6 (Debian package openvpn) between the gateways,
//! one process per gateway namespace as a point-to-point TLS pair: gw-a is
//! `--tls-server`, gw-b `--tls-client`. UDP, data channel AES-256-GCM,
//! `dh none` (ECDHE), no DCO (the kernel module is absent on most lab
//! hosts; `disable-dco` keeps the row userspace everywhere). The throwaway
//! PKI, an EC P-256 CA and one certificate per gateway, is made with the
//! `openssl` command into the lab's run directory (keys mode 0600; the CA
//! key is deleted once both certificates are signed) when the row starts. Static-key mode is not used: it cannot do AES-GCM.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{ip_quiet, which, write_private, Ctx, NotRun, Running};
use crate::topo::{DcPair, GW_A_WAN_V4, GW_B_WAN_V4, LAN_A_V4, LAN_B_V4};

/// UDP port of both ends (OpenVPN's registered port).
pub const PORT: u16 = 1194;
/// The data-channel cipher, the only one offered.
pub const CIPHER: &str = "AES-256-GCM";
/// Inner MTU, the same as the WireGuard rows and tunneld's lab default, so
/// every tunnel row carries TCP with the same segment size.
pub const TUN_MTU: u16 = 1420;
/// What OpenVPN logs once its tunnel is up.
const READY: &str = "Initialization Sequence Completed";
/// How long the TLS handshake and tunnel set-up may take.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long after [`READY`] the cipher line may take to appear in the log.
const CIPHER_LOG_WAIT: Duration = Duration::from_secs(2);
/// Validity of the throwaway certificates, in days (a lab run is minutes).
const CERT_DAYS: &str = "2";
/// Inner (tunnel) addresses of gw-a and gw-b, inside 198.18.0.0/15 and
/// apart from tunneld's (198.19.0.0/24) and WireGuard's (198.19.1.0/24).
const INNER_A: Ipv4Addr = Ipv4Addr::new(198, 19, 2, 1);
/// See [`INNER_A`].
const INNER_B: Ipv4Addr = Ipv4Addr::new(198, 19, 2, 2);

/// Which side of the TLS handshake an end plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `--tls-server` (gw-a).
    Server,
    /// `--tls-client` (gw-b).
    Client,
}

/// Everything one end's configuration file says.
#[derive(Debug, Clone)]
pub struct End {
    /// TLS role.
    pub role: Role,
    /// The tun device's name.
    pub ifname: String,
    /// Underlay address to bind.
    pub local: Ipv4Addr,
    /// The peer's underlay address.
    pub remote: Ipv4Addr,
    /// This end's tunnel address.
    pub inner_local: Ipv4Addr,
    /// The peer's tunnel address.
    pub inner_remote: Ipv4Addr,
    /// CA certificate.
    pub ca: PathBuf,
    /// This end's certificate.
    pub cert: PathBuf,
    /// This end's private key.
    pub key: PathBuf,
    /// The common name the peer's certificate must carry.
    pub peer_cn: String,
}

/// The configuration file of one end (point-to-point TLS mode).
pub fn config_text(e: &End) -> String {
    let (tls, peer_role) = match e.role {
        Role::Server => ("tls-server\ndh none\n", "client"),
        Role::Client => ("tls-client\n", "server"),
    };
    format!(
        "# tunbench lab: OpenVPN point-to-point, TLS mode (generated per run)\n\
         dev {ifname}\n\
         dev-type tun\n\
         proto udp4\n\
         local {local}\n\
         remote {remote}\n\
         port {PORT}\n\
         ifconfig {il} {ir}\n\
         tun-mtu {TUN_MTU}\n\
         {tls}\
         ca {ca}\n\
         cert {cert}\n\
         key {key}\n\
         remote-cert-tls {peer_role}\n\
         verify-x509-name {cn} name\n\
         tls-version-min 1.2\n\
         data-ciphers {CIPHER}\n\
         disable-dco\n\
         verb 3\n",
        ifname = e.ifname,
        local = e.local,
        remote = e.remote,
        il = e.inner_local,
        ir = e.inner_remote,
        ca = e.ca.display(),
        cert = e.cert.display(),
        key = e.key.display(),
        cn = e.peer_cn,
    )
}

/// The data-channel cipher OpenVPN reports in its log: the line
/// `Data Channel: cipher 'AES-256-GCM'` (printed just after
/// [`READY`]), or before it the p2p negotiation result
/// (`P2P mode NCP negotiation result: ..., cipher=AES-256-GCM`).
pub fn negotiated_cipher(log: &str) -> Option<&str> {
    const MARK: &str = "Data Channel: cipher '";
    const NCP: &str = "NCP negotiation result:";
    if let Some(i) = log.find(MARK) {
        let rest = &log[i + MARK.len()..];
        return rest
            .find('\'')
            .map(|end| &rest[..end])
            .filter(|c| !c.is_empty());
    }
    let line = log[log.find(NCP)?..].lines().next()?;
    let rest = &line[line.find("cipher=")? + "cipher=".len()..];
    let end = rest
        .find(|c: char| c == ',' || c.is_whitespace())
        .unwrap_or(rest.len());
    Some(&rest[..end]).filter(|c| !c.is_empty())
}

/// The openssl configuration of the throwaway PKI: certificate extensions
/// for the CA and each gateway's role.
pub fn pki_conf() -> &'static str {
    "# tunbench lab: throwaway PKI for the openvpn row\n\
     [req]\n\
     distinguished_name = dn\n\
     prompt = no\n\
     [dn]\n\
     CN = tunbench-lab\n\
     [ca]\n\
     basicConstraints = critical,CA:TRUE\n\
     keyUsage = critical,keyCertSign,cRLSign\n\
     subjectKeyIdentifier = hash\n\
     [server]\n\
     basicConstraints = critical,CA:FALSE\n\
     keyUsage = critical,digitalSignature,keyAgreement\n\
     extendedKeyUsage = serverAuth\n\
     [client]\n\
     basicConstraints = critical,CA:FALSE\n\
     keyUsage = critical,digitalSignature,keyAgreement\n\
     extendedKeyUsage = clientAuth\n"
}

/// The files of the throwaway PKI.
#[derive(Debug, Clone)]
pub struct Pki {
    /// CA certificate (public).
    pub ca: PathBuf,
    /// gw-a's certificate and key (CN gw-a, TLS server).
    pub server: (PathBuf, PathBuf),
    /// gw-b's certificate and key (CN gw-b, TLS client).
    pub client: (PathBuf, PathBuf),
}

/// Runs openssl; Ok(stdout).
fn openssl(bin: &Path, args: &[&str]) -> Result<Vec<u8>, String> {
    let out = Command::new(bin)
        .args(args)
        .output()
        .map_err(|e| format!("running openssl: {e}"))?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(format!(
            "`openssl {}` failed ({}): {}",
            args.first().copied().unwrap_or(""),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A new EC P-256 private key (PEM) written to `path` with mode 0600.
fn new_key(bin: &Path, path: &Path) -> Result<(), String> {
    let pem = openssl(
        bin,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ],
    )?;
    if !pem.starts_with(b"-----BEGIN PRIVATE KEY-----") {
        return Err("openssl genpkey wrote no PEM private key".into());
    }
    write_private(path, &pem)
}

/// Makes the CA and the two gateway certificates in `dir` (keys mode 0600);
/// the CA key is deleted once both are signed.
pub fn make_pki(bin: &Path, dir: &Path) -> Result<Pki, String> {
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let conf = dir.join("pki.cnf");
    std::fs::write(&conf, pki_conf()).map_err(|e| format!("writing {}: {e}", conf.display()))?;
    let (ca_key, ca) = (dir.join("ca.key"), dir.join("ca.crt"));
    new_key(bin, &ca_key)?;
    openssl(
        bin,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            &s(&ca_key),
            "-config",
            &s(&conf),
            "-extensions",
            "ca",
            "-subj",
            "/CN=tunbench-lab-ca",
            "-days",
            CERT_DAYS,
            "-sha256",
            "-out",
            &s(&ca),
        ],
    )?;
    let leaf = |name: &str, ext: &str, serial: &str| -> Result<(PathBuf, PathBuf), String> {
        let key = dir.join(format!("{name}.key"));
        let csr = dir.join(format!("{name}.csr"));
        let crt = dir.join(format!("{name}.crt"));
        new_key(bin, &key)?;
        let subj = format!("/CN={name}");
        openssl(
            bin,
            &[
                "req",
                "-new",
                "-key",
                &s(&key),
                "-config",
                &s(&conf),
                "-subj",
                &subj,
                "-out",
                &s(&csr),
            ],
        )?;
        openssl(
            bin,
            &[
                "x509",
                "-req",
                "-in",
                &s(&csr),
                "-CA",
                &s(&ca),
                "-CAkey",
                &s(&ca_key),
                "-set_serial",
                serial,
                "-days",
                CERT_DAYS,
                "-sha256",
                "-extfile",
                &s(&conf),
                "-extensions",
                ext,
                "-out",
                &s(&crt),
            ],
        )?;
        Ok((crt, key))
    };
    let server = leaf("gw-a", "server", "1")?;
    let client = leaf("gw-b", "client", "2")?;
    // Throwaway: nothing is signed after this, so the CA key goes now.
    std::fs::remove_file(&ca_key).map_err(|e| format!("removing {}: {e}", ca_key.display()))?;
    Ok(Pki { ca, server, client })
}

/// Both openvpn processes.
#[derive(Debug)]
pub struct Openvpn {
    pids: Vec<u32>,
    /// (namespace, tun device) of each end.
    devs: Vec<(String, String)>,
    version: String,
    cipher: String,
}

impl Openvpn {
    /// Makes the PKI, starts both ends, waits for the tunnel, routes the LANs.
    pub fn start(ctx: &Ctx) -> Result<Openvpn, NotRun> {
        let (Some(ovpn), Some(ossl)) = (which("openvpn"), which("openssl")) else {
            return Err(NotRun::NotInstalled(
                "needs the Debian packages openvpn and openssl (see \
                 tests/bench/install-baselines.sh)"
                    .into(),
            ));
        };
        let dc = ctx.dc;
        let fail = NotRun::Failed;
        let dir = dc.lab.dir().join(format!("openvpn-{}", ctx.instance));
        std::fs::create_dir_all(&dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
        let pki = make_pki(&ossl, &dir).map_err(|e| fail(format!("throwaway PKI: {e}")))?;
        let ifa = dc.lab.ifname("ova").map_err(|e| fail(e.to_string()))?;
        let ifb = dc.lab.ifname("ovb").map_err(|e| fail(e.to_string()))?;
        let ends = [
            (
                &dc.gw_a,
                End {
                    role: Role::Server,
                    ifname: ifa,
                    local: GW_A_WAN_V4,
                    remote: GW_B_WAN_V4,
                    inner_local: INNER_A,
                    inner_remote: INNER_B,
                    ca: pki.ca.clone(),
                    cert: pki.server.0.clone(),
                    key: pki.server.1.clone(),
                    peer_cn: "gw-b".into(),
                },
                LAN_B_V4,
            ),
            (
                &dc.gw_b,
                End {
                    role: Role::Client,
                    ifname: ifb,
                    local: GW_B_WAN_V4,
                    remote: GW_A_WAN_V4,
                    inner_local: INNER_B,
                    inner_remote: INNER_A,
                    ca: pki.ca.clone(),
                    cert: pki.client.0.clone(),
                    key: pki.client.1.clone(),
                    peer_cn: "gw-a".into(),
                },
                LAN_A_V4,
            ),
        ];
        let mut me = Openvpn {
            pids: Vec::new(),
            devs: Vec::new(),
            version: version(&ovpn),
            cipher: String::new(),
        };
        // Both files first, so a write error leaves no process behind.
        let mut confs = Vec::new();
        for (_, end, _) in &ends {
            let conf = dir.join(format!("{}.conf", end.ifname));
            std::fs::write(&conf, config_text(end))
                .map_err(|e| fail(format!("writing {}: {e}", conf.display())))?;
            confs.push(conf);
        }
        for ((ns, end, _), conf) in ends.iter().zip(&confs) {
            let mut cmd = Command::new(&ovpn);
            cmd.arg("--config").arg(conf);
            let pid = match dc.lab.spawn(ns, cmd) {
                Ok(pid) => pid,
                Err(e) => {
                    me.stop(dc);
                    return Err(fail(format!("starting openvpn: {e}")));
                }
            };
            me.pids.push(pid);
            me.devs.push((ns.to_string(), end.ifname.clone()));
        }
        let setup = |me: &mut Openvpn| -> Result<(), String> {
            for &pid in &me.pids {
                wait_ready(dc, pid)?;
            }
            for &pid in &me.pids {
                let cipher = wait_cipher(dc, pid);
                if cipher.as_deref() != Some(CIPHER) {
                    return Err(format!(
                        "openvpn (pid {pid}) data channel cipher: {}, expected {CIPHER}",
                        cipher.as_deref().unwrap_or("not logged")
                    ));
                }
                me.cipher = CIPHER.into();
            }
            for (ns, end, lan) in &ends {
                dc.lab
                    .ip(ns, &["route", "add", lan, "dev", &end.ifname])
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        };
        if let Err(e) = setup(&mut me) {
            let logs = me
                .pids
                .iter()
                .map(|&p| {
                    format!(
                        "--- openvpn pid {p} ---\n{}",
                        super::tail(&dc.lab.log(p), 12)
                    )
                })
                .collect::<Vec<_>>()
                .join("\n");
            me.stop(dc);
            return Err(fail(format!("{e}\n{logs}")));
        }
        Ok(me)
    }
}

/// The first line of `openvpn --version`, shortened to "OpenVPN 2.6.x".
fn version(bin: &Path) -> String {
    let out = Command::new(bin).arg("--version").output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let words: Vec<&str> = text.split_whitespace().take(2).collect();
    if words.len() == 2 && words[0] == "OpenVPN" {
        words.join(" ")
    } else {
        "OpenVPN".into()
    }
}

/// Waits until openvpn `pid` logs that its tunnel is up.
fn wait_ready(dc: &DcPair, pid: u32) -> Result<(), String> {
    let start = Instant::now();
    loop {
        if dc.lab.log(pid).contains(READY) {
            return Ok(());
        }
        if let Ok(Some(st)) = dc.lab.try_wait(pid) {
            return Err(format!("openvpn (pid {pid}) exited during start-up ({st})"));
        }
        if start.elapsed() > READY_TIMEOUT {
            return Err(format!(
                "openvpn (pid {pid}) did not complete its TLS handshake and tunnel \
                 set-up within {READY_TIMEOUT:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The data-channel cipher `pid` logged; waits up to [`CIPHER_LOG_WAIT`]
/// for it, since the line may follow [`READY`].
fn wait_cipher(dc: &DcPair, pid: u32) -> Option<String> {
    let start = Instant::now();
    loop {
        if let Some(c) = negotiated_cipher(&dc.lab.log(pid)) {
            return Some(c.to_string());
        }
        if start.elapsed() > CIPHER_LOG_WAIT {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Running for Openvpn {
    fn variant(&self) -> String {
        format!(
            "{} UDP, TLS mode (EC P-256), data channel {}, tun-mtu {TUN_MTU}, no DCO",
            self.version, self.cipher
        )
    }
    fn pids(&self) -> Vec<u32> {
        self.pids.clone()
    }
    fn stop(&mut self, dc: &DcPair) {
        for pid in self.pids.drain(..) {
            let _ = dc.lab.stop(pid);
        }
        // The tun devices go with their process; routes with the devices.
        // Removing them again covers a process that was never reaped.
        for (ns, dev) in self.devs.drain(..) {
            ip_quiet(dc, &ns, &["link", "del", &dev]);
        }
    }
}

#[cfg(test)]
#[path = "openvpn_tests.rs"]
mod tests;
