//! QUIC transport tests on loopback: pins, a dialer/acceptor pair moving
//! datagrams, and a wrong certificate refused.

use super::*;
use crate::keys::tests::TempDir;
use std::os::unix::fs::PermissionsExt;

fn write_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf, SpkiPin) {
    let (cert, key, pin) = generate_cert().expect("gencert");
    let c = dir.join(format!("{name}.crt"));
    let k = dir.join(format!("{name}.key"));
    std::fs::write(&c, cert).expect("write cert");
    std::fs::write(&k, key).expect("write key");
    std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    assert_eq!(pin_of_cert_file(&c).expect("pin of file"), pin);
    (c, k, pin)
}

fn settings(
    listen: &str,
    cert: &(PathBuf, PathBuf, SpkiPin),
    peer_pin: SpkiPin,
    endpoint: Option<SocketAddr>,
) -> QuicSettings {
    QuicSettings {
        listen: listen.parse().expect("addr"),
        cert_file: cert.0.clone(),
        key_file: cert.1.clone(),
        peers: vec![QuicPeer {
            name: "p".into(),
            endpoint,
            spki_sha256: peer_pin,
        }],
        max_frame: 1280 + crate::device::OVERHEAD,
        idle_timeout: Duration::from_secs(10),
        keepalive: Duration::from_secs(2),
        socket_buffer: 1 << 20,
    }
}

fn recv_one(t: &QuicTransport, timeout: Duration) -> Option<(SocketAddr, Vec<u8>)> {
    let deadline = Instant::now() + timeout;
    let mut storage = [0u8; 2000];
    let mut out = [Received::default(); 1];
    while Instant::now() < deadline {
        let mut bufs = [IoSliceMut::new(&mut storage)];
        if t.recv(&mut bufs, &mut out).is_ok() {
            return Some((out[0].from, storage[..out[0].len].to_vec()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

#[test]
fn pinned_pair_exchanges_datagrams_and_a_wrong_certificate_is_refused() {
    let dir = TempDir::new("quic");
    let a = write_cert(&dir.0, "a");
    let b = write_cert(&dir.0, "b");
    let tb = QuicTransport::start(settings("127.0.0.1:0", &b, a.2, None)).expect("b");
    let baddr = tb.local_addr().expect("addr");
    let ta = QuicTransport::start(settings("127.0.0.1:0", &a, b.2, Some(baddr))).expect("a");
    let deadline = Instant::now() + Duration::from_secs(5);
    while ta.inner.conns().get(&baddr).is_none() {
        assert!(Instant::now() < deadline, "never connected");
        std::thread::sleep(Duration::from_millis(10));
    }
    ta.send(baddr, &[5u8; 2000], 1000).expect("send");
    let (from, d) = recv_one(&tb, Duration::from_secs(5)).expect("first datagram");
    assert_eq!(d, vec![5u8; 1000]);
    assert!(recv_one(&tb, Duration::from_secs(5)).is_some());
    tb.send(from, b"back", 4).expect("reply");
    assert_eq!(
        recv_one(&ta, Duration::from_secs(5)).expect("reply"),
        (baddr, b"back".to_vec())
    );
    // c pins a certificate b does not have: b is refused by c and never
    // carries c's datagrams.
    let c = write_cert(&dir.0, "c");
    let tc = QuicTransport::start(settings("127.0.0.1:0", &c, a.2, Some(baddr))).expect("c");
    let deadline = Instant::now() + Duration::from_secs(5);
    while tc.counters().quic_handshake_failures == 0 {
        assert!(Instant::now() < deadline, "wrong certificate not refused");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(tc.inner.conns().is_empty());
}

#[test]
fn tls_key_file_gets_the_noise_key_checks() {
    let dir = TempDir::new("quic-key-checks");
    let (_, k, _) = write_cert(&dir.0, "a");
    assert!(load_key(&k).is_ok());
    std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let e = load_key(&k).expect_err("group/other readable").to_string();
    assert!(e.contains("0644"), "{e}");
    std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let link = dir.0.join("link.key");
    std::os::unix::fs::symlink(&k, &link).expect("symlink");
    let e = load_key(&link).expect_err("symlink").to_string();
    assert!(e.contains("symbolic link") || e.contains("symlink"), "{e}");
    let big = dir.0.join("big.key");
    std::fs::write(&big, vec![b'A'; 70_000]).expect("write");
    std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    assert!(load_key(&big)
        .expect_err("too large")
        .to_string()
        .contains("too large"));
}
