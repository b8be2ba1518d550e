//! `ipsec`: the IPsec baseline, AES-256-GCM in tunnel mode between the
//! gateways. Kernel ESP with static `ip xfrm` SAs where the kernel has ESP
//! (found by trying); otherwise strongSwan (IKEv2, PSK) with its
//! kernel-libipsec plugin, i.e. userspace ESP on a TUN device, one charon per
//! gateway namespace with its own /run (bind mount inside the private mount
//! namespace of `ip netns exec`), vici socket and log.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::{ip_quiet, raw, which, Ctx, NotRun, Running};
use crate::topo::{DcPair, GW_A_WAN_V4, GW_B_WAN_V4, LAN_A_V4, LAN_B_V4};

/// charon from strongswan-charon.
const CHARON: &str = "/usr/lib/ipsec/charon";
/// The kernel-libipsec plugin from libcharon-extra-plugins.
const LIBIPSEC_PLUGIN: &str = "/usr/lib/ipsec/plugins/libstrongswan-kernel-libipsec.so";
/// AES-GCM and SHA-2 via OpenSSL, from libstrongswan-standard-plugins.
const OPENSSL_PLUGIN: &str = "/usr/lib/ipsec/plugins/libstrongswan-openssl.so";
/// X25519 for IKE, from libstrongswan-extra-plugins.
const X25519_PLUGIN: &str = "/usr/lib/ipsec/plugins/libstrongswan-curve25519.so";
/// Plugins charon loads (5.9.8 needs `kdf` listed explicitly).
const CHARON_LOAD: &str = "random nonce openssl aesni aes gcm sha1 sha2 hmac kdf pem pkcs1 \
x509 pubkey curve25519 kernel-libipsec kernel-netlink socket-default vici";
/// How [`KernelEsp::start`]'s error begins when the kernel has no ESP (as
/// opposed to a set-up that failed half-way).
const NO_KERNEL_ESP: &str = "no kernel ESP";
/// The routing table strongSwan installs its routes in.
const TABLE: &str = "220";

/// Starts kernel ESP if the kernel has it, else strongSwan.
pub fn start(ctx: &Ctx) -> Result<Box<dyn Running>, NotRun> {
    match KernelEsp::start(ctx) {
        Ok(k) => Ok(Box::new(k)),
        Err(why) => {
            let mut s = Strongswan::start(ctx)?;
            s.kernel_note = why;
            Ok(Box::new(s))
        }
    }
}

/// Kernel ESP only (the `ipsec-kernel` reference row): where the kernel has
/// no ESP the row is skipped with the kernel's answer as the reason.
pub fn start_kernel(ctx: &Ctx) -> Result<Box<dyn Running>, NotRun> {
    KernelEsp::start(ctx)
        .map(|k| Box::new(k) as Box<dyn Running>)
        .map_err(|why| {
            if why.starts_with(NO_KERNEL_ESP) {
                NotRun::NotInstalled(format!(
                    "{why}: a reference row where the kernel has ESP with rfc4106(gcm(aes)) \
                     (modules esp4, xfrm_user, aesni_intel/gcm)"
                ))
            } else {
                NotRun::Failed(why)
            }
        })
}

fn random_hex(n: usize) -> Result<String, NotRun> {
    let mut b = vec![0u8; n];
    getrandom::getrandom(&mut b).map_err(|e| NotRun::Failed(format!("random key: {e}")))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Static SAs and policies in both gateways' kernels.
#[derive(Debug)]
pub struct KernelEsp;

impl KernelEsp {
    /// Err(reason) if the kernel cannot do rfc4106(gcm(aes)) ESP.
    fn start(ctx: &Ctx) -> Result<KernelEsp, String> {
        let dc = ctx.dc;
        let (a, b) = (GW_A_WAN_V4.to_string(), GW_B_WAN_V4.to_string());
        let k1 = format!("0x{}", random_hex(36).map_err(|e| e.to_string())?);
        let k2 = format!("0x{}", random_hex(36).map_err(|e| e.to_string())?);
        let state = |src: &str, dst: &str, spi: &str, reqid: &str, key: &str| -> Vec<String> {
            [
                "xfrm",
                "state",
                "add",
                "src",
                src,
                "dst",
                dst,
                "proto",
                "esp",
                "spi",
                spi,
                "reqid",
                reqid,
                "mode",
                "tunnel",
                "aead",
                "rfc4106(gcm(aes))",
                key,
                "128",
            ]
            .map(String::from)
            .to_vec()
        };
        let policy =
            |sel_src: &str, sel_dst: &str, dir: &str, src: &str, dst: &str, reqid: &str| {
                [
                    "xfrm", "policy", "add", "src", sel_src, "dst", sel_dst, "dir", dir, "tmpl",
                    "src", src, "dst", dst, "proto", "esp", "reqid", reqid, "mode", "tunnel",
                ]
                .map(String::from)
                .to_vec()
            };
        // Error texts carry the failed command line; the SA keys are cut out
        // so that they never reach logs or reports.
        let keys = [k1.clone(), k2.clone()];
        let run = |ns: &str, args: Vec<String>| -> Result<(), String> {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            dc.lab.ip(ns, &refs).map(|_| ()).map_err(|e| {
                keys.iter()
                    .fold(e.to_string(), |msg, k| msg.replace(k.as_str(), "<key>"))
            })
        };
        // The probe: the first SA. Failure = no kernel ESP.
        if let Err(e) = run(&dc.gw_a, state(&a, &b, "0x1001", "1", &k1)) {
            return Err(format!(
                "{NO_KERNEL_ESP} (`ip xfrm state add ... aead rfc4106(gcm(aes))`: {})",
                super::answer(&e)
            ));
        }
        let rest = || -> Result<(), String> {
            run(&dc.gw_a, state(&b, &a, "0x1002", "2", &k2))?;
            run(&dc.gw_b, state(&a, &b, "0x1001", "1", &k1))?;
            run(&dc.gw_b, state(&b, &a, "0x1002", "2", &k2))?;
            run(&dc.gw_a, policy(LAN_A_V4, LAN_B_V4, "out", &a, &b, "1"))?;
            run(&dc.gw_a, policy(LAN_B_V4, LAN_A_V4, "in", &b, &a, "2"))?;
            run(&dc.gw_a, policy(LAN_B_V4, LAN_A_V4, "fwd", &b, &a, "2"))?;
            run(&dc.gw_b, policy(LAN_B_V4, LAN_A_V4, "out", &b, &a, "2"))?;
            run(&dc.gw_b, policy(LAN_A_V4, LAN_B_V4, "in", &a, &b, "1"))?;
            run(&dc.gw_b, policy(LAN_A_V4, LAN_B_V4, "fwd", &a, &b, "1"))?;
            dc.route_lans_directly().map_err(|e| e.to_string())
        };
        if let Err(e) = rest() {
            KernelEsp.stop(dc);
            return Err(format!("kernel ESP set-up failed ({e})"));
        }
        Ok(KernelEsp)
    }
}

impl Running for KernelEsp {
    fn variant(&self) -> String {
        "kernel ESP (ip xfrm static SAs, AES-256-GCM, tunnel mode)".into()
    }
    fn pids(&self) -> Vec<u32> {
        Vec::new()
    }
    fn cpu_note(&self) -> Option<String> {
        Some("kernel".into())
    }
    fn stop(&mut self, dc: &DcPair) {
        for ns in [&dc.gw_a, &dc.gw_b] {
            ip_quiet(dc, ns, &["xfrm", "policy", "flush"]);
            ip_quiet(dc, ns, &["xfrm", "state", "flush"]);
        }
        raw::unroute(dc);
    }
}

/// One charon per gateway.
#[derive(Debug)]
pub struct Strongswan {
    pids: Vec<u32>,
    kernel_note: String,
}

struct Side<'a> {
    name: &'a str,
    ns: &'a str,
    local: String,
    remote: String,
    local_ts: &'a str,
    remote_ts: &'a str,
}

fn write(path: &Path, text: &str) -> Result<(), NotRun> {
    std::fs::write(path, text)
        .map_err(|e| NotRun::Failed(format!("writing {}: {e}", path.display())))
}

impl Strongswan {
    fn start(ctx: &Ctx) -> Result<Strongswan, NotRun> {
        let swanctl = which("swanctl");
        let missing: Vec<&str> = [
            (!Path::new(CHARON).exists()).then_some("strongswan-charon"),
            swanctl.is_none().then_some("strongswan-swanctl"),
            (!Path::new(LIBIPSEC_PLUGIN).exists()).then_some("libcharon-extra-plugins"),
            (!Path::new(OPENSSL_PLUGIN).exists()).then_some("libstrongswan-standard-plugins"),
            (!Path::new(X25519_PLUGIN).exists()).then_some("libstrongswan-extra-plugins"),
        ]
        .into_iter()
        .flatten()
        .collect();
        let Some(swanctl) = swanctl.filter(|_| missing.is_empty()) else {
            return Err(NotRun::NotInstalled(format!(
                "no kernel ESP here, and the userspace IPsec fallback needs the Debian \
                 package(s) {} (see tests/bench/install-baselines.sh)",
                missing.join(", ")
            )));
        };
        let dc = ctx.dc;
        let psk = random_hex(32)?;
        let base = dc.lab.dir().join(format!("ipsec-{}", ctx.instance));
        let sides = [
            Side {
                name: "a",
                ns: &dc.gw_a,
                local: GW_A_WAN_V4.to_string(),
                remote: GW_B_WAN_V4.to_string(),
                local_ts: LAN_A_V4,
                remote_ts: LAN_B_V4,
            },
            Side {
                name: "b",
                ns: &dc.gw_b,
                local: GW_B_WAN_V4.to_string(),
                remote: GW_A_WAN_V4.to_string(),
                local_ts: LAN_B_V4,
                remote_ts: LAN_A_V4,
            },
        ];
        let mut me = Strongswan {
            pids: Vec::new(),
            kernel_note: String::new(),
        };
        let mut vicis = Vec::new();
        for s in &sides {
            let dir = base.join(s.name);
            let run = dir.join("run");
            std::fs::create_dir_all(&run)
                .map_err(|e| NotRun::Failed(format!("creating {}: {e}", run.display())))?;
            let vici = dir.join("charon.vici");
            let conf = dir.join("strongswan.conf");
            write(&conf, &strongswan_conf(&vici, &dir.join("charon.log")))?;
            let swan = dir.join("swanctl.conf");
            write(&swan, &swanctl_conf(s, &psk))?;
            let mut cmd = Command::new("sh");
            cmd.arg("-c")
                .arg("mount --bind \"$1\" /run && exec \"$2\"")
                .arg("sh")
                .arg(&run)
                .arg(CHARON)
                .env("STRONGSWAN_CONF", &conf);
            let pid = dc
                .lab
                .spawn(s.ns, cmd)
                .map_err(|e| NotRun::Failed(format!("starting charon: {e}")))?;
            me.pids.push(pid);
            if let Err(e) = wait_file(dc, pid, &vici) {
                me.stop(dc);
                return Err(NotRun::Failed(format!(
                    "{e}; charon log:\n{}",
                    super::tail(
                        &std::fs::read_to_string(dir.join("charon.log")).unwrap_or_default(),
                        20
                    )
                )));
            }
            vicis.push((vici, swan, conf, dir));
        }
        for (vici, swan, conf, _) in &vicis {
            let uri = format!("unix://{}", vici.display());
            if let Err(e) = swanctl_run(
                &swanctl,
                conf,
                &[
                    "--load-all",
                    "--noprompt",
                    "--uri",
                    &uri,
                    "--file",
                    &swan.to_string_lossy(),
                ],
            ) {
                me.stop(dc);
                return Err(NotRun::Failed(e));
            }
        }
        let (vici_a, _, conf_a, dir_a) = &vicis[0];
        let uri = format!("unix://{}", vici_a.display());
        if let Err(e) = swanctl_run(
            &swanctl,
            conf_a,
            &[
                "--initiate",
                "--child",
                "lan",
                "--timeout",
                "10",
                "--uri",
                &uri,
            ],
        ) {
            let log = std::fs::read_to_string(dir_a.join("charon.log")).unwrap_or_default();
            me.stop(dc);
            return Err(NotRun::Failed(format!(
                "{e}\ncharon (gw-a) log:\n{}",
                super::tail(&log, 20)
            )));
        }
        Ok(me)
    }
}

fn swanctl_run(swanctl: &Path, conf: &Path, args: &[&str]) -> Result<(), String> {
    let out = Command::new(swanctl)
        .args(args)
        .env("STRONGSWAN_CONF", conf)
        .output()
        .map_err(|e| format!("running swanctl: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "swanctl {} failed ({}): {}{}",
            args.first().copied().unwrap_or(""),
            out.status,
            super::tail(&String::from_utf8_lossy(&out.stdout), 10),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn wait_file(dc: &DcPair, pid: u32, path: &Path) -> Result<(), String> {
    let start = Instant::now();
    loop {
        if path.exists() {
            return Ok(());
        }
        if let Ok(Some(st)) = dc.lab.try_wait(pid) {
            return Err(format!(
                "charon exited during start-up ({st}): {}",
                super::tail(&dc.lab.log(pid), 10)
            ));
        }
        if start.elapsed() > Duration::from_secs(10) {
            return Err(format!(
                "charon did not open {} within 10 s",
                path.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn strongswan_conf(vici: &Path, log: &Path) -> String {
    format!(
        "charon {{\n  load = {CHARON_LOAD}\n  install_routes = yes\n  routing_table = {TABLE}\n  \
         plugins {{\n    vici {{\n      socket = unix://{}\n    }}\n  }}\n  \
         filelog {{\n    lab {{\n      path = {}\n      default = 1\n      flush_line = yes\n    }}\n  }}\n}}\n\
         swanctl {{\n  load = pem pkcs1 x509 pubkey curve25519 random nonce openssl\n}}\n",
        vici.display(),
        log.display()
    )
}

fn swanctl_conf(s: &Side, psk: &str) -> String {
    format!(
        "connections {{\n  lab {{\n    version = 2\n    local_addrs = {local}\n    remote_addrs = {remote}\n    \
         proposals = aes256gcm16-prfsha256-x25519\n    \
         local {{\n      auth = psk\n      id = gw-{me}\n    }}\n    \
         remote {{\n      auth = psk\n      id = gw-{peer}\n    }}\n    \
         children {{\n      lan {{\n        local_ts = {lts}\n        remote_ts = {rts}\n        \
         esp_proposals = aes256gcm16\n        mode = tunnel\n      }}\n    }}\n  }}\n}}\n\
         secrets {{\n  ike-lab {{\n    id-a = gw-a\n    id-b = gw-b\n    secret = 0x{psk}\n  }}\n}}\n",
        local = s.local,
        remote = s.remote,
        me = s.name,
        peer = if s.name == "a" { "b" } else { "a" },
        lts = s.local_ts,
        rts = s.remote_ts,
    )
}

impl Running for Strongswan {
    fn variant(&self) -> String {
        format!(
            "strongSwan IKEv2 + kernel-libipsec (userspace ESP, AES-256-GCM, ESP-in-UDP); {}",
            self.kernel_note
        )
    }
    fn pids(&self) -> Vec<u32> {
        self.pids.clone()
    }
    fn stop(&mut self, dc: &DcPair) {
        for pid in self.pids.drain(..) {
            let _ = dc.lab.stop(pid);
        }
        for ns in [&dc.gw_a, &dc.gw_b] {
            ip_quiet(dc, ns, &["route", "flush", "table", TABLE]);
            while dc.lab.ip(ns, &["rule", "del", "table", TABLE]).is_ok() {}
        }
    }
}
