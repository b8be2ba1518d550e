//! The `tunneld` command: run a tunnel, check a config, make keys, query status.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use tunneld::config::{self, CipherKind, Config, TransportKind};
use tunneld::control::{self, ControlServer, Status, StatusCell};
use tunneld::device::Device;
use tunneld::keys::PrivateKey;
use tunneld::routes::{RouteManager, RouteWorker};
use tunneld::transport::quic::{self, QuicPeer, QuicSettings};
use tunneld::transport::{MultiTransport, QuicTransport, TcpTransport, Transport, UdpTransport};
use tunneld::tun::Tun;

/// Userspace site-to-site IP tunnel on Linux TUN devices (Noise IK + AES-256-GCM over UDP, QUIC or TCP).
#[derive(Parser, Debug)]
#[command(name = "tunneld", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the tunnel in the foreground until SIGINT or SIGTERM.
    Run {
        /// The tunnel config (YAML, `kind: tunnel`).
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Validate a config; exits non-zero with the field and line of the first error.
    Check {
        /// The tunnel config (YAML, `kind: tunnel`).
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Print a new private key (base64). Store it with mode 0600.
    Genkey,
    /// Read a private key on stdin and print its public key (base64).
    Pubkey,
    /// Write a self-signed QUIC certificate and key (PEM) and print the SPKI
    /// pin that peers put in `peers[].quic.spki_sha256`.
    Gencert {
        /// Certificate file to write.
        #[arg(long)]
        cert: PathBuf,
        /// Private key file to write (mode 0600).
        #[arg(long)]
        key: PathBuf,
    },
    /// Print the SPKI pin of an existing certificate (PEM).
    Pin {
        /// The certificate file.
        #[arg(long)]
        cert: PathBuf,
    },
    /// Ask a running tunneld for its status (JSON) or metrics (Prometheus text).
    Status {
        /// The config of the running tunnel (its control_socket is used).
        #[arg(
            short,
            long,
            conflicts_with = "socket",
            required_unless_present = "socket"
        )]
        config: Option<PathBuf>,
        /// The control socket path, instead of --config.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Print Prometheus metrics instead of JSON status.
        #[arg(long)]
        prometheus: bool,
    },
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    if let Err(e) = dispatch(cli.command) {
        eprintln!("tunneld: {e:#}");
        std::process::exit(1);
    }
}

fn dispatch(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Run { config } => run(&config),
        Cmd::Check { config } => {
            let cfg = config::load(&config)?;
            println!(
                "{}: ok (interface {}, {} peer(s), cipher {})",
                config.display(),
                cfg.interface.name,
                cfg.peers.len(),
                cipher_name(cfg.cipher)
            );
            Ok(())
        }
        Cmd::Genkey => {
            println!("{}", PrivateKey::generate()?.to_base64());
            Ok(())
        }
        Cmd::Pubkey => {
            let mut text = String::new();
            std::io::stdin()
                .take(1024)
                .read_to_string(&mut text)
                .context("reading the private key from stdin")?;
            let key = PrivateKey::from_base64(&text).context("stdin is not a private key")?;
            println!("{}", key.public());
            Ok(())
        }
        Cmd::Gencert { cert, key } => {
            let (cert_pem, key_pem, pin) = quic::generate_cert()?;
            write_new(&key, key_pem.as_bytes(), 0o600)?;
            write_new(&cert, cert_pem.as_bytes(), 0o644)?;
            println!("{pin}");
            Ok(())
        }
        Cmd::Pin { cert } => {
            println!("{}", quic::pin_of_cert_file(&cert)?);
            Ok(())
        }
        Cmd::Status {
            config,
            socket,
            prometheus,
        } => {
            let path = match (socket, config) {
                (Some(s), _) => s,
                (None, Some(c)) => config::load(&c)?.control_socket,
                (None, None) => bail!("give --config or --socket"),
            };
            let answer = control::query(&path, if prometheus { "metrics" } else { "status" })?;
            print!("{answer}");
            Ok(())
        }
    }
}

/// Writes a new file with `mode`; refuses to overwrite.
fn write_new(path: &std::path::Path, data: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(data)
        .with_context(|| format!("writing {}", path.display()))
}

/// The transports the peers need: plain UDP alone (the fast path, as
/// before), or a [`MultiTransport`] over the kinds in use.
fn transports(cfg: &Config) -> Result<Box<dyn Transport>> {
    let dp = cfg.dataplane;
    let uses = |k: TransportKind| cfg.peers.iter().any(|p| p.transport == k);
    let udp = || {
        UdpTransport::bind_flows(
            cfg.listen,
            cfg.socket_buffer,
            dp.offload,
            dp.batch,
            dp.flows,
        )
        .with_context(|| format!("binding UDP {} ({} flow(s))", cfg.listen, dp.flows))
    };
    if dp.flows > 1 {
        // flows spread UDP only; a TCP connection or QUIC connection is one
        // outer flow by nature.
        let others: Vec<&str> = cfg
            .peers
            .iter()
            .filter(|p| p.transport != TransportKind::Udp)
            .map(|p| p.name.as_str())
            .collect();
        if !others.is_empty() {
            log::warn!(
                "dataplane.flows {} applies to UDP peers only; ignored for {}",
                dp.flows,
                others.join(", ")
            );
        }
    }
    if !uses(TransportKind::Tcp) && !uses(TransportKind::Quic) {
        return Ok(Box::new(udp()?));
    }
    let udp = if uses(TransportKind::Udp) {
        Some(udp()?)
    } else {
        None
    };
    let tcp = if uses(TransportKind::Tcp) {
        let dial = cfg
            .peers
            .iter()
            .filter(|p| p.transport == TransportKind::Tcp)
            .filter_map(|p| p.endpoint)
            .collect();
        Some(
            TcpTransport::start(cfg.listen, dial, cfg.socket_buffer)
                .with_context(|| format!("listening on TCP {}", cfg.listen))?,
        )
    } else {
        None
    };
    let quic = match &cfg.quic {
        Some(q) => {
            let peers = cfg
                .peers
                .iter()
                .filter(|p| p.transport == TransportKind::Quic)
                .filter_map(|p| {
                    Some(QuicPeer {
                        name: p.name.clone(),
                        endpoint: p.endpoint,
                        spki_sha256: p.quic_pin?,
                    })
                })
                .collect();
            let settings = QuicSettings {
                listen: q.listen,
                cert_file: q.cert_file.clone(),
                key_file: q.key_file.clone(),
                peers,
                tun_mtu: cfg.interface.mtu,
                idle_timeout: q.idle_timeout,
                keepalive: q.keepalive,
                socket_buffer: cfg.socket_buffer,
            };
            Some(
                QuicTransport::start(settings)
                    .with_context(|| format!("starting the QUIC endpoint on {}", q.listen))?,
            )
        }
        None => None,
    };
    Ok(Box::new(MultiTransport::new(udp, tcp, quic)?))
}

fn cipher_name(c: CipherKind) -> &'static str {
    match c {
        CipherKind::Aes256Gcm => "aes-256-gcm",
        CipherKind::ChaCha20Poly1305 => "chacha20-poly1305",
        CipherKind::None => "none (insecure, lab only)",
    }
}

fn run(path: &std::path::Path) -> Result<()> {
    let cfg = config::load(path)?;
    if cfg.cipher == CipherKind::None {
        log::warn!(
            "cipher none: traffic is neither encrypted nor authenticated (insecure_lab_only)"
        );
    }
    let shutdown = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, shutdown.clone()).context("installing signal handlers")?;
    }
    let dp = cfg.dataplane;
    let transport = transports(&cfg)?;
    let tun = Tun::create(&cfg.interface.name, dp.offload)?;
    tun.configure(cfg.interface.mtu, &cfg.interface.addresses, &[])?;
    // Allowed prefixes are routed by the route manager (`routes:`), which
    // follows peer health in `on-session` mode and restores what it replaced.
    let routes = RouteWorker::start(RouteManager::from_config(&cfg)?)
        .context("starting the routes thread")?;
    let status = Arc::new(StatusCell::new(Status {
        interface: cfg.interface.name.clone(),
        listen: transport
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default(),
        cipher: cipher_name(cfg.cipher).to_string(),
        ..Status::default()
    }));
    let _control = ControlServer::start(&cfg.control_socket, status.clone())?;
    log::info!(
        "tunnel {} up: listening on {}, {} peer(s), cipher {}, mtu {}",
        cfg.interface.name,
        cfg.listen,
        cfg.peers.len(),
        cipher_name(cfg.cipher),
        cfg.interface.mtu
    );
    for p in &cfg.peers {
        log::info!(
            "peer {}: transport {}, {}",
            p.name,
            p.transport,
            match p.endpoint {
                Some(e) => format!("dialing {e}"),
                None => "waiting for it to connect".to_string(),
            }
        );
    }
    let device = Device::new(&cfg);
    let ran = tunneld::dataplane::run_with_events(
        device,
        &tun,
        transport.as_ref(),
        dp,
        usize::from(cfg.interface.mtu),
        &status,
        &shutdown,
        routes.sender(),
    );
    if let Err(e) = routes.stop() {
        log::error!("withdrawing routes: {e}");
    }
    ran.context("data path failed")?;
    log::info!("shutting down: removing {}", cfg.interface.name);
    Ok(())
}
