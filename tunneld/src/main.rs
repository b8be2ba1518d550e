//! The `tunneld` command: run a tunnel, check a config, make keys, query status.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use tunneld::config::{self, CipherKind};
use tunneld::control::{self, ControlServer, Status, StatusCell};
use tunneld::device::Device;
use tunneld::keys::PrivateKey;
use tunneld::transport::{Transport, UdpTransport};
use tunneld::tun::Tun;

/// Userspace site-to-site IP tunnel on Linux TUN devices (Noise IK + AES-256-GCM over UDP).
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
    let transport = UdpTransport::bind(cfg.listen, cfg.socket_buffer, dp.offload, dp.batch)
        .with_context(|| format!("binding UDP {}", cfg.listen))?;
    let tun = Tun::create(&cfg.interface.name, dp.offload)?;
    let routes: Vec<_> = cfg
        .peers
        .iter()
        .flat_map(|p| p.allowed_prefixes.iter().copied())
        .collect();
    tun.configure(cfg.interface.mtu, &cfg.interface.addresses, &routes)?;
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
    let device = Device::new(&cfg);
    tunneld::dataplane::run(device, &tun, &transport, dp, &status, &shutdown)
        .context("data path failed")?;
    log::info!("shutting down: removing {}", cfg.interface.name);
    Ok(())
}
