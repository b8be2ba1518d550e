//! The `tunneld` command: run a tunnel, check a config, make keys, query status.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use tunneld::cli::{error_chain, write_new};
use tunneld::config::{self, CipherKind, Config, TransportKind, Workers};
use tunneld::control::{self, ControlServer, ReloadFn, Status, StatusCell};
use tunneld::dataplane::Mailbox;
use tunneld::device::Device;
use tunneld::http::MetricsServer;
use tunneld::keys::PrivateKey;
use tunneld::reload::Reloader;
use tunneld::routes::{RouteManager, RouteWorker};
use tunneld::service;
use tunneld::transport::quic::{self, QuicPeer, QuicSettings};
use tunneld::transport::{MultiTransport, QuicTransport, TcpTransport, Transport, UdpTransport};
use tunneld::tun::Tun;
use tunneld::workers;

/// Userspace site-to-site IP tunnel on Linux TUN devices (Noise IK + AES-256-GCM over UDP, QUIC or TCP).
#[derive(Parser, Debug)]
#[command(name = "tunneld", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the tunnel in the foreground until SIGINT or SIGTERM; SIGHUP
    /// reloads the config file.
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
    /// Write a new private key and a starting config for tunnel NAME
    /// (DIR/NAME.key, mode 0600, and DIR/NAME.yaml, with no peers yet) and
    /// print the public key to give the peer gateway.
    Init {
        /// The tunnel (and TUN interface) name, e.g. tun-a.
        name: String,
        /// This gateway's address inside the tunnel, with its subnet
        /// length (e.g. 198.19.0.1/24).
        #[arg(long)]
        address: String,
        /// Where the config and key go.
        #[arg(long, default_value = "/etc/tunneld")]
        dir: PathBuf,
        /// UDP address to listen on.
        #[arg(long, default_value = "0.0.0.0:51820")]
        listen: String,
    },
    /// Ask a running tunneld to re-read its config file (as SIGHUP does):
    /// peers, prefixes, endpoints, keepalives and rekey limits change
    /// without dropping the sessions of unchanged peers.
    Reload {
        #[command(flatten)]
        daemon: Daemon,
    },
    /// Show a running tunnel for people: peers, endpoints, latest
    /// handshakes, transfer, non-zero drops, and why a peer has no session.
    Show {
        #[command(flatten)]
        daemon: Daemon,
    },
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
        #[command(flatten)]
        daemon: Daemon,
        /// Print Prometheus metrics instead of JSON status.
        #[arg(long)]
        prometheus: bool,
    },
}

/// Which running daemon to ask: by its config, or by its socket.
#[derive(clap::Args, Debug)]
struct Daemon {
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
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    if let Err(e) = dispatch(cli.command) {
        eprintln!("tunneld: {}", error_chain(e.as_ref()));
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
            if cfg.peers.is_empty() {
                println!("note: no peers yet; add one under `peers:` and reload");
            }
            if cfg.dataplane.workers == Workers::Auto {
                // What `run` would decide here; the daemon decides again
                // at its start, where it runs.
                let d = workers::decide(&workers::probe(&cfg));
                println!("workers auto: {} on this host ({})", d.workers, d.reason);
            }
            Ok(())
        }
        Cmd::Init {
            name,
            address,
            dir,
            listen,
        } => init(&name, &address, &dir, &listen),
        Cmd::Reload { daemon } => {
            let answer = control::query(&control_path(daemon)?, "reload")?;
            match answer.strip_prefix("error: ") {
                Some(why) => bail!("reload refused: {}", why.trim_end()),
                None => {
                    print!("{answer}");
                    Ok(())
                }
            }
        }
        Cmd::Show { daemon } => {
            print!("{}", control::query(&control_path(daemon)?, "show")?);
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
            write_new(&key, key_pem.as_bytes(), 0o600)
                .with_context(|| format!("writing {}", key.display()))?;
            write_new(&cert, cert_pem.as_bytes(), 0o644)
                .with_context(|| format!("writing {}", cert.display()))?;
            println!("{pin}");
            Ok(())
        }
        Cmd::Pin { cert } => {
            println!("{}", quic::pin_of_cert_file(&cert)?);
            Ok(())
        }
        Cmd::Status { daemon, prometheus } => {
            let path = control_path(daemon)?;
            let answer = control::query(&path, if prometheus { "metrics" } else { "status" })?;
            print!("{answer}");
            Ok(())
        }
    }
}

/// The control socket: given, or named by the config. A config that fails
/// its checks still names it (the daemon then says what is wrong).
fn control_path(Daemon { socket, config }: Daemon) -> Result<PathBuf> {
    Ok(match (socket, config) {
        (Some(s), _) => s,
        (None, Some(c)) => match config::load(&c) {
            Ok(cfg) => cfg.control_socket,
            Err(e) => match config::control_socket_of(&c) {
                Some(path) => path,
                None => {
                    return Err(anyhow::Error::new(e).context(
                        "cannot find the control socket in this config (the running \
                         tunnel was not asked and is unchanged)",
                    ))
                }
            },
        },
        (None, None) => bail!("give --config or --socket"),
    })
}

/// `tunneld init`: a key and a starting config that `tunneld check` passes.
fn init(name: &str, address: &str, dir: &std::path::Path, listen: &str) -> Result<()> {
    let key = PrivateKey::generate()?;
    let key_name = format!("{name}.key");
    let yaml = config::starter_config(name, address, listen, &key_name)?;
    if !dir.exists() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let key_path = dir.join(&key_name);
    let cfg_path = dir.join(format!("{name}.yaml"));
    if cfg_path.exists() {
        bail!("{} exists; not overwriting it", cfg_path.display());
    }
    write_new(
        &key_path,
        format!("{}\n", key.to_base64()).as_bytes(),
        0o600,
    )
    .with_context(|| format!("writing {}", key_path.display()))?;
    write_new(&cfg_path, yaml.as_bytes(), 0o644)
        .with_context(|| format!("writing {}", cfg_path.display()))?;
    config::load(&cfg_path).context("the config just written does not load")?;
    println!("wrote {} (private key, mode 0600)", key_path.display());
    println!("wrote {} (no peers yet)", cfg_path.display());
    println!("public key: {}", key.public());
    println!(
        "next: give the public key to the peer gateway, add the peer under `peers:` in {}, \
         then `tunneld check --config {}` and `systemctl start tunneld@{name}`",
        cfg_path.display(),
        cfg_path.display()
    );
    Ok(())
}

/// The transports the peers need, one per data-path worker that receives:
/// with only UDP peers, one UDP transport per worker on the same ports
/// (SO_REUSEPORT, [`UdpTransport::bind_workers`]); otherwise one
/// [`MultiTransport`] over the kinds in use, which the first worker
/// receives from and every worker sends on (a TCP connection or QUIC
/// connection is one ordered stream, and one receiver keeps it so).
fn transports(cfg: &Config, workers: usize) -> Result<Vec<Box<dyn Transport>>> {
    let dp = cfg.dataplane;
    let uses = |k: TransportKind| cfg.peers.iter().any(|p| p.transport == k);
    if !uses(TransportKind::Tcp) && !uses(TransportKind::Quic) {
        let all = UdpTransport::bind_workers(
            cfg.listen,
            cfg.socket_buffer,
            dp.offload,
            dp.batch,
            dp.flows,
            workers,
        )
        .with_context(|| {
            format!(
                "binding UDP {} ({} flow(s), {workers} worker(s))",
                cfg.listen, dp.flows
            )
        })?;
        return Ok(all
            .into_iter()
            .map(|t| Box::new(t) as Box<dyn Transport>)
            .collect());
    }
    if workers > 1 {
        log::info!(
            "TCP/QUIC peers: one transport for {workers} workers; the first receives, all send"
        );
    }
    Ok(vec![transports_shared(cfg)?])
}

/// The one transport of a config with TCP or QUIC peers: a
/// [`MultiTransport`] over the kinds in use.
fn transports_shared(cfg: &Config) -> Result<Box<dyn Transport>> {
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
                max_frame: usize::from(cfg.interface.mtu) + tunneld::device::OVERHEAD,
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
    let (workers, workers_auto) = resolve_workers(&cfg);
    let transport = transports(&cfg, workers)?;
    let tuns = Tun::create_queues(&cfg.interface.name, dp.offload, workers)?;
    tuns[0].configure(cfg.interface.mtu, &cfg.interface.addresses)?;
    // Allowed prefixes are routed by the route manager (`routes:`), which
    // follows peer health in `on-session` mode and restores what it replaced.
    let routes = Arc::new(
        RouteWorker::start(RouteManager::from_config(&cfg)?)
            .context("starting the routes thread")?,
    );
    let route_events = routes.sender();
    let status = Arc::new(StatusCell::new(Status {
        interface: cfg.interface.name.clone(),
        listen: transport[0]
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default(),
        cipher: cipher_name(cfg.cipher).to_string(),
        public_key: cfg.public_key.to_string(),
        ..Status::default()
    }));
    let mailbox = Arc::new(Mailbox::default());
    let reloader = Reloader::new(
        path.to_path_buf(),
        cfg.clone(),
        mailbox.clone(),
        routes.clone(),
    );
    let reload: Arc<ReloadFn> = {
        let status = status.clone();
        Arc::new(move || reload_now(&reloader, &status))
    };
    let _control = ControlServer::start(&cfg.control_socket, status.clone(), Some(reload.clone()))?;
    let _metrics = match cfg.metrics_listen {
        Some(addr) => {
            let m = MetricsServer::start(addr, status.clone())
                .with_context(|| format!("metrics.listen: binding {addr}"))?;
            log::info!(
                "serving Prometheus metrics on http://{}/metrics",
                m.local_addr()
            );
            Some(m)
        }
        None => None,
    };
    let _sighup = SighupReloads::start(reload)?;
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
    service::ready(&format!(
        "tunnel {} up, {} peer(s)",
        cfg.interface.name,
        cfg.peers.len()
    ));
    let _watchdog = service::Watchdog::start(status.clone());
    let transports: Vec<&dyn Transport> = transport.iter().map(|t| t.as_ref()).collect();
    let result = tunneld::dataplane::run(
        device,
        &tuns,
        &transports,
        dp,
        usize::from(cfg.interface.mtu),
        tunneld::dataplane::Links {
            status: &status,
            mailbox: &mailbox,
            shutdown: &shutdown,
            events: route_events.as_ref(),
            workers_auto: workers_auto.as_deref(),
        },
    )
    .context("data path failed");
    service::stopping();
    // The routes thread ends once every event sender is gone.
    drop(route_events);
    if let Err(e) = routes.stop() {
        log::error!("withdrawing routes: {e}");
    }
    result?;
    log::info!("shutting down: removing {}", cfg.interface.name);
    Ok(())
}

/// The data-path workers to run, and for `auto` why that many
/// ([`tunneld::workers`]); logged once. An explicit count is kept as given,
/// with a note when it is more than the NIC's RX queues.
fn resolve_workers(cfg: &Config) -> (usize, Option<String>) {
    match cfg.dataplane.workers {
        Workers::Auto => {
            let d = workers::decide(&workers::probe(cfg));
            log::info!("workers auto: {} ({})", d.workers, d.reason);
            (d.workers, Some(d.reason))
        }
        // One worker (the default) is never more than a NIC's queues.
        Workers::Count(1) => (1, None),
        Workers::Count(n) => {
            if let Some(note) = workers::note_explicit(n, &workers::probe(cfg)) {
                log::info!("{note}");
            }
            (n, None)
        }
    }
}

/// Reloads the config and tells the log, systemd and the status what
/// happened; the answer is for `tunneld reload`.
fn reload_now(reloader: &Reloader, status: &StatusCell) -> std::result::Result<String, String> {
    service::reloading();
    let path = reloader.path().display().to_string();
    let result = reloader.reload();
    service::ready("reloaded");
    match result {
        Ok(report) => {
            log::info!("reloaded {path}: {report}");
            status.record_reload(true, report.to_string());
            Ok(format!("reloaded {path}: {report}"))
        }
        Err(e) => {
            let why = error_chain(&e);
            log::warn!("reload of {path} refused: {why}");
            status.record_reload(false, why.clone());
            Err(why)
        }
    }
}

/// Reloads on SIGHUP until dropped.
struct SighupReloads {
    handle: signal_hook::iterator::Handle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SighupReloads {
    fn start(reload: Arc<ReloadFn>) -> Result<SighupReloads> {
        let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])
            .context("installing the SIGHUP handler")?;
        let handle = signals.handle();
        let thread = std::thread::Builder::new()
            .name("sighup".into())
            .spawn(move || {
                for _ in signals.forever() {
                    // reload_now logs and records the outcome.
                    let _ = reload();
                }
            })
            .context("starting the SIGHUP thread")?;
        Ok(SighupReloads {
            handle,
            thread: Some(thread),
        })
    }
}

impl Drop for SighupReloads {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
