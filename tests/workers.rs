//! `dataplane.workers: auto` on a real kernel: a gateway namespace with two
//! outer links, veths made with 1 and 4 RX queues, and the daemon limited
//! to two CPUs. Auto must follow the link the peer's endpoint is routed
//! through (1 worker over the 1-queue veth; over the 4-queue one, the CPUs
//! cap it), a hub without endpoints the device owning `listen`'s address,
//! and an unroutable endpoint must be counted and logged, never fatal. An
//! explicit count is kept and only noted. Each case reads the status JSON
//! and `tunneld show`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};
use tunbench::topo::Lab;

use e2e::{bin, genkey, pubkey, require_root, tunnel_config, wait_for, write_key, Side};

/// How long a freshly started daemon gets to answer `status`.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// The CPUs the daemon is limited to (with `taskset`), so the CPU cap is
/// known on any machine with at least two.
const CPUS: usize = 2;

/// A gateway namespace `gw` with veth `q1` (1 RX queue, 198.18.71.1/30)
/// and `q4` (4 RX queues, 198.18.72.1/30) to a namespace `far`.
struct Gateway {
    lab: Lab,
    gw: String,
    q1: String,
    q4: String,
    tun: String,
    sock: PathBuf,
    keys: Vec<String>,
}

impl Gateway {
    fn new() -> anyhow::Result<Gateway> {
        let lab = Lab::new("e2e-workers-auto")?;
        let gw = lab.add_ns("gw")?;
        let far = lab.add_ns("far")?;
        let mut names = Vec::new();
        for (n, net) in [(1, 71), (4, 72)] {
            let (mine, theirs) = (lab.ifname(&format!("q{n}"))?, lab.ifname(&format!("r{n}"))?);
            let q = n.to_string();
            lab.ip(
                &gw,
                &[
                    "link",
                    "add",
                    &mine,
                    "numrxqueues",
                    &q,
                    "numtxqueues",
                    &q,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &theirs,
                    "numrxqueues",
                    &q,
                    "numtxqueues",
                    &q,
                    "netns",
                    &far,
                ],
            )?;
            lab.ip(
                &gw,
                &["addr", "add", &format!("198.18.{net}.1/30"), "dev", &mine],
            )?;
            lab.ip(&gw, &["link", "set", &mine, "up"])?;
            lab.ip(
                &far,
                &["addr", "add", &format!("198.18.{net}.2/30"), "dev", &theirs],
            )?;
            lab.ip(&far, &["link", "set", &theirs, "up"])?;
            names.push(mine);
        }
        let dir = lab.dir().to_path_buf();
        write_key(&dir.join("a.key"), &genkey()?)?;
        let keys = (0..2)
            .map(|_| pubkey(&genkey()?))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let tun = lab.ifname("ta")?;
        let q4 = names.pop().context("q4")?;
        let q1 = names.pop().context("q1")?;
        Ok(Gateway {
            gw,
            q1,
            q4,
            tun,
            sock: dir.join("a.sock"),
            keys,
            lab,
        })
    }

    /// A config listening on `listen` with a peer at each of `endpoints`
    /// (`None`: no static endpoint) and `workers`.
    fn config(&self, listen: &str, endpoints: &[Option<&str>], workers: Value) -> Value {
        let mut cfg = tunnel_config(Side::A, &self.tun, &self.sock, &self.keys[0]);
        cfg["listen"] = json!(listen);
        let proto = cfg["peers"][0].clone();
        let peers: Vec<Value> = endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let mut p = proto.clone();
                p["name"] = json!(format!("p{i}"));
                p["public_key"] = json!(self.keys[i]);
                p["allowed_prefixes"] = json!([format!("198.19.{}.0/24", 10 + i)]);
                match e {
                    Some(e) => p["endpoint"] = json!(e),
                    None => {
                        if let Some(o) = p.as_object_mut() {
                            o.remove("endpoint");
                            o.remove("keepalive");
                        }
                    }
                }
                p
            })
            .collect();
        cfg["peers"] = json!(peers);
        cfg["dataplane"] = json!({ "workers": workers });
        cfg
    }

    /// Starts the daemon with `cfg` on [`CPUS`] CPUs, reads its status
    /// JSON, `tunneld show` and log, and stops it.
    fn run(&self, cfg: &Value) -> anyhow::Result<(Value, String, String)> {
        let path = self.lab.dir().join("a.yaml");
        std::fs::write(&path, serde_norway::to_string(cfg)?)?;
        let cpus = (0..CPUS).map(|c| c.to_string()).collect::<Vec<_>>();
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", &cpus.join(",")])
            .arg(bin("tunneld"))
            .args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info");
        let pid = self.lab.spawn(&self.gw, cmd)?;
        let status = wait_for(START_TIMEOUT, "tunneld status to answer", || {
            if let Some(st) = self.lab.try_wait(pid)? {
                bail!("tunneld exited ({st}); log:\n{}", self.lab.log(pid));
            }
            Ok(self.tunneld("status", &path).ok())
        });
        let show = self.tunneld("show", &path);
        let stopped = self.lab.stop(pid);
        let log = self.lab.log(pid);
        let status: Value = serde_json::from_str(&status.with_context(|| log.clone())?)
            .with_context(|| format!("status JSON; log:\n{log}"))?;
        stopped?;
        Ok((status, show?, log))
    }

    fn tunneld(&self, sub: &str, config: &Path) -> anyhow::Result<String> {
        let out = self.lab.exec(
            &self.gw,
            &bin("tunneld").to_string_lossy(),
            &[sub, "--config", &config.to_string_lossy()],
        )?;
        if !out.status.success() {
            bail!("tunneld {sub}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// The CPUs the daemon may use under `taskset` on this machine.
fn usable() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(CPUS)
}

#[test]
fn auto_follows_the_routed_nic_queues_and_the_cpus() {
    if !require_root() {
        return;
    }
    let g = Gateway::new().expect("gateway lab");
    let cpus = usable();
    let s = if cpus == 1 { "" } else { "s" };

    // Over the 1-queue veth, with a second peer nothing routes to: one
    // worker, the unroutable endpoint counted and logged.
    let cfg = g.config(
        "198.18.71.1:51820",
        &[Some("198.18.71.2:51820"), Some("198.19.250.1:51820")],
        json!("auto"),
    );
    let (st, show, log) = g.run(&cfg).expect("auto over 1 queue");
    let dp = &st["dataplane"];
    let why = format!(
        "{cpus} usable CPU{s}, {} has 1 RX queue, 1 endpoint on no NIC",
        g.q1
    );
    assert_eq!(dp["workers"], 1, "{st}\n{log}");
    assert_eq!(dp["workers_auto"], json!(why), "{st}");
    assert!(log.contains(&format!("workers auto: 1 ({why})")), "{log}");
    assert!(
        log.contains("peer p1 (198.19.250.1:51820): no route: Network is unreachable"),
        "{log}"
    );
    assert!(
        show.contains(&format!("  workers auto: 1 ({why})\n")),
        "{show}"
    );
    // `check` tells what the daemon would decide on this host.
    let check = g
        .tunneld("check", &g.lab.dir().join("a.yaml"))
        .expect("check");
    assert!(
        check.contains("workers auto: 1 on this host (")
            && check.contains(&format!("{} has 1 RX queue", g.q1)),
        "{check}"
    );

    // Over the 4-queue veth: the CPUs cap it.
    let cfg = g.config(
        "198.18.72.1:51820",
        &[Some("198.18.72.2:51820")],
        json!("auto"),
    );
    let (st, _, log) = g.run(&cfg).expect("auto over 4 queues");
    let want = cpus.min(4);
    assert_eq!(st["dataplane"]["workers"], want, "{st}\n{log}");
    assert_eq!(
        st["dataplane"]["workers_auto"],
        json!(format!("{cpus} usable CPU{s}, {} has 4 RX queues", g.q4)),
        "{st}"
    );

    // A hub without static endpoints: the device owning `listen`.
    let cfg = g.config("198.18.71.1:51820", &[None], json!("auto"));
    let (st, _, log) = g.run(&cfg).expect("hub");
    assert_eq!(st["dataplane"]["workers"], 1, "{st}\n{log}");
    // ... and a wildcard `listen`: no NIC to cap by.
    let cfg = g.config("0.0.0.0:51820", &[None], json!("auto"));
    let (st, _, log) = g.run(&cfg).expect("wildcard hub");
    assert_eq!(st["dataplane"]["workers"], cpus, "{st}\n{log}");
    assert!(
        st["dataplane"]["workers_auto"]
            .as_str()
            .is_some_and(|w| w.contains("no NIC cap: no peer has a static endpoint")),
        "{st}"
    );

    // An explicit count over a 1-queue NIC is kept, with a note.
    let cfg = g.config("198.18.71.1:51820", &[Some("198.18.71.2:51820")], json!(3));
    let (st, show, log) = g.run(&cfg).expect("explicit 3");
    assert_eq!(st["dataplane"]["workers"], 3, "{st}\n{log}");
    assert_eq!(st["dataplane"]["workers_auto"], Value::Null, "{st}");
    assert!(!show.contains("workers auto"), "{show}");
    assert!(
        log.contains(&format!(
            "dataplane.workers 3 is more than the NIC's RX queues ({} has 1 RX queue); kept",
            g.q1
        )),
        "{log}"
    );
}
