//! The `tunbench` command line: `server`, `client` and `lab` (plus the hidden
//! `wan-emu` the lab runs in its wan namespace), `sweep`, `tune` and `report`.

mod cli_lab;
mod cli_sweep;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;
use tunbench::engine::{
    self, Direction, LatencyParams, Protocol, TestParams, TestSpec, DEFAULT_PORT,
};
use tunneld::units::{parse_duration, parse_rate, parse_size, UnitError};

/// Measure IP tunnels honestly: throughput, loss, jitter and latency.
#[derive(Debug, Parser)]
#[command(name = "tunbench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve tests to clients, one at a time.
    Server(ServerArgs),
    /// Run one test against a server and print the result.
    Client(Box<ClientArgs>),
    /// Build the WAN testbed, compare raw / IPsec / WireGuard / tunneld, write results.
    Lab(cli_lab::LabArgs),
    /// Walk a grid of tunneld and traffic settings; one JSON line per cell (resumable).
    Sweep(cli_sweep::SweepArgs),
    /// Pick the best sweep cell under latency and CPU limits; write a tunneld profile.
    Tune(cli_sweep::TuneArgs),
    /// Capacity-planning report (Markdown or self-contained HTML) from sweep/lab results.
    Report(cli_sweep::ReportArgs),
    /// The userspace WAN emulator (run by `tunbench lab` inside its wan namespace).
    #[command(hide = true)]
    WanEmu(cli_lab::WanEmuArgs),
}

#[derive(Debug, Args)]
struct ServerArgs {
    /// Address to listen on (control and TCP data).
    #[arg(long, default_value = "0.0.0.0")]
    bind: IpAddr,
    /// TCP port to listen on.
    #[arg(short, long, default_value_t = DEFAULT_PORT)]
    port: u16,
    /// Print one JSON object per finished test instead of a summary line.
    #[arg(long)]
    json: bool,
    /// Exit after one test (exit status 1 if it failed).
    #[arg(short = '1', long)]
    one_off: bool,
    /// Highest rate the server sends at, all streams together (e.g. 1G):
    /// UDP tests asking for more are refused, TCP streams the server sends
    /// are paced to it. Default: no limit.
    #[arg(long, value_parser = rate)]
    max_rate: Option<u64>,
    /// Longest test accepted (warm-up + time + idle latency phase).
    #[arg(long, default_value = "1h", value_parser = dur)]
    max_duration: Duration,
    /// Accept clients from this network only (repeatable; e.g.
    /// 198.18.0.0/15). Default: any.
    #[arg(long = "allow", value_name = "CIDR")]
    allow: Vec<tunneld::prefix::Prefix>,
    /// Require clients to prove they hold the shared key in FILE (HMAC
    /// challenge on the control connection; at least 16 bytes).
    #[arg(long, value_name = "FILE")]
    auth_key: Option<std::path::PathBuf>,
}

fn size(s: &str) -> Result<u64, UnitError> {
    parse_size(s)
}
fn rate(s: &str) -> Result<u64, UnitError> {
    parse_rate(s)
}
fn dur(s: &str) -> Result<Duration, UnitError> {
    parse_duration(s)
}

#[derive(Debug, Args)]
struct ClientArgs {
    /// Server host name or address.
    server: String,
    /// Server control port.
    #[arg(short, long, default_value_t = DEFAULT_PORT)]
    port: u16,
    /// Use UDP at a fixed rate instead of TCP.
    #[arg(short, long)]
    udp: bool,
    /// Parallel streams (per direction).
    #[arg(short = 'P', long, default_value_t = 1)]
    parallel: u32,
    /// Measured time, after the warm-up (e.g. 10s, 500ms).
    #[arg(short, long, default_value = "10s", value_parser = dur)]
    time: Duration,
    /// Warm-up sent before the measured window and not counted (e.g. 2s).
    #[arg(short = 'O', long, default_value = "0s", value_parser = dur)]
    omit: Duration,
    /// Reporting interval.
    #[arg(short, long, default_value = "1s", value_parser = dur)]
    interval: Duration,
    /// Server sends, client receives.
    #[arg(short = 'R', long, conflicts_with = "bidir")]
    reverse: bool,
    /// Both directions at once.
    #[arg(long)]
    bidir: bool,
    /// Socket buffer size, SO_SNDBUF and SO_RCVBUF (e.g. 256K, 8M).
    #[arg(short, long, value_parser = size)]
    window: Option<u64>,
    /// TCP maximum segment size (TCP_MAXSEG), bytes.
    #[arg(short = 'M', long, value_parser = size)]
    mss: Option<u64>,
    /// TCP write size, or UDP datagram payload size (default 128K for TCP, 1400 for UDP).
    #[arg(short = 'l', long, alias = "size", value_parser = size)]
    write_size: Option<u64>,
    /// UDP target rate per stream in bit/s (e.g. 100M, 1G); iperf3's
    /// `-b`/`--bitrate` are accepted too.
    #[arg(short, long, short_alias = 'b', alias = "bitrate", value_parser = rate)]
    rate: Option<u64>,
    /// TCP congestion control (e.g. cubic, bbr).
    #[arg(short = 'C', long)]
    congestion: Option<String>,
    /// Disable Nagle's algorithm on TCP data sockets.
    #[arg(short = 'N', long)]
    no_delay: bool,
    /// Run UDP ping-pong latency probes, idle first and then during the load.
    #[arg(long)]
    latency: bool,
    /// How long to probe the idle path before the load.
    #[arg(long, default_value = "2s", value_parser = dur)]
    latency_idle: Duration,
    /// Gap between latency probes.
    #[arg(long, default_value = "10ms", value_parser = dur)]
    latency_interval: Duration,
    /// Print the result as JSON (schema tunbench.result/1, see docs/tunbench-json.md);
    /// iperf3's `-J` is accepted too.
    #[arg(long, short_alias = 'J')]
    json: bool,
    /// Give up connecting to the server after this long.
    #[arg(long, default_value = "5s", value_parser = dur)]
    connect_timeout: Duration,
    /// Local source address for all client sockets.
    #[arg(short = 'B', long)]
    bind: Option<IpAddr>,
    /// Local device for all client sockets (SO_BINDTODEVICE).
    #[arg(long)]
    bind_dev: Option<String>,
    /// Shared key for a server started with --auth-key.
    #[arg(long, value_name = "FILE")]
    auth_key: Option<std::path::PathBuf>,
}

fn spec_from(a: &ClientArgs) -> anyhow::Result<TestSpec> {
    let protocol = if a.udp { Protocol::Udp } else { Protocol::Tcp };
    if !a.udp && a.rate.is_some() {
        anyhow::bail!("--rate (-b) applies to --udp only (TCP runs as fast as the path allows)");
    }
    let direction = if a.bidir {
        Direction::Bidir
    } else if a.reverse {
        Direction::Reverse
    } else {
        Direction::Forward
    };
    let default_len = match protocol {
        Protocol::Tcp => engine::spec::DEFAULT_TCP_WRITE,
        Protocol::Udp => engine::spec::DEFAULT_UDP_SIZE,
    } as u64;
    // Values that do not fit in u32 are clamped to u32::MAX so validation reports them.
    let u32c = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
    let params = TestParams {
        protocol,
        parallel: a.parallel,
        time: a.time,
        omit: a.omit,
        interval: a.interval,
        direction,
        window: a.window,
        mss: a.mss.map(u32c),
        length: u32c(a.write_size.unwrap_or(default_len)),
        congestion: a.congestion.clone(),
        rate: a.rate.unwrap_or(engine::spec::DEFAULT_UDP_RATE),
        no_delay: a.no_delay,
        latency: a.latency.then(|| LatencyParams {
            idle: a.latency_idle,
            interval: a.latency_interval,
            ..Default::default()
        }),
    };
    Ok(TestSpec {
        server: a.server.clone(),
        port: a.port,
        connect_timeout: a.connect_timeout,
        bind: a.bind,
        bind_dev: a.bind_dev.clone(),
        params,
        auth_key: a
            .auth_key
            .as_deref()
            .map(engine::auth::AuthKey::load)
            .transpose()?,
    })
}

fn client(a: &ClientArgs) -> anyhow::Result<ExitCode> {
    let spec = spec_from(a)?;
    let result = engine::run_client(&spec)?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&result).context("serialize result")?
        );
    } else {
        print!("{}", engine::output::render(&result));
    }
    if !result.complete {
        eprintln!(
            "tunbench: test incomplete: {}",
            result.error.as_deref().unwrap_or("unknown reason")
        );
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}

fn server(a: &ServerArgs) -> anyhow::Result<ExitCode> {
    let addr = SocketAddr::new(a.bind, a.port);
    let opts = engine::ServerOptions {
        max_rate: a.max_rate,
        max_duration: a.max_duration,
        allow: a.allow.clone(),
        auth_key: a
            .auth_key
            .as_deref()
            .map(engine::auth::AuthKey::load)
            .transpose()?,
        ..Default::default()
    };
    if a.max_rate == Some(0) {
        anyhow::bail!("--max-rate 0 would refuse every test; leave it out for no limit");
    }
    let handle = engine::Server::bind_with(addr, opts)?.spawn();
    eprintln!("tunbench server listening on {}", handle.local_addr());
    loop {
        let Some(rec) = handle.next_record(Duration::from_secs(3600)) else {
            continue;
        };
        if a.json {
            println!(
                "{}",
                serde_json::to_string(&rec).context("serialize record")?
            );
        } else {
            let secs = rec
                .params
                .as_ref()
                .map(|p| (p.omit + p.time).as_secs_f64())
                .unwrap_or(0.0);
            let sent: u64 = rec.sent.iter().map(|s| s.bytes).sum();
            match &rec.error {
                None => println!(
                    "{}: test done over {:.1} s: received {} B, sent {} B",
                    rec.peer,
                    secs,
                    rec.bytes_received(),
                    sent
                ),
                Some(e) => println!("{}: test failed: {e}", rec.peer),
            }
        }
        if a.one_off {
            return Ok(if rec.error.is_none() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let r = match &cli.command {
        Command::Server(a) => server(a),
        Command::Client(a) => client(a),
        Command::Lab(a) => cli_lab::lab_cmd(a),
        Command::WanEmu(a) => cli_lab::wan_emu_cmd(a),
        Command::Sweep(a) => cli_sweep::sweep_cmd(a),
        Command::Tune(a) => cli_sweep::tune_cmd(a),
        Command::Report(a) => cli_sweep::report_cmd(a),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tunbench: error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each cause once: errors whose message already
/// quotes their source (`"{path}: {source}"`) would otherwise print it
/// twice in anyhow's `{:#}` chain.
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("profile.yaml: cannot read: {0}")]
    struct Quoting(#[source] std::io::Error);

    #[test]
    fn each_cause_is_printed_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let e = anyhow::Error::new(Quoting(io)).context("loading the sweep");
        assert_eq!(
            error_chain(&e),
            "loading the sweep: profile.yaml: cannot read: No such file"
        );
    }

    #[test]
    fn iperf3_spellings_are_accepted() {
        let cli = Cli::try_parse_from([
            "tunbench",
            "client",
            "198.18.2.2",
            "-u",
            "-b",
            "200M",
            "-J",
            "-t",
            "1s",
        ])
        .expect("iperf3 flags");
        let Command::Client(a) = cli.command else {
            panic!("not a client command")
        };
        assert_eq!(a.rate, Some(200_000_000));
        assert!(a.json);
        let cli = Cli::try_parse_from(["tunbench", "client", "h", "-u", "--bitrate", "1G"])
            .expect("--bitrate");
        let Command::Client(a) = cli.command else {
            panic!("not a client command")
        };
        assert_eq!(a.rate, Some(1_000_000_000));
    }
}
