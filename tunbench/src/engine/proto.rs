//! The control protocol, sans I/O apart from a bounded line reader.
//!
//! Control messages are JSON objects, one per line, each carrying `"v": 1` and a
//! `"type"`. Exchange (iperf3's model with explicit states):
//! ```text
//! client                                server
//!   hello {params}        ───────────►    (with a shared key: challenge {nonce} ◄── , auth {mac} ──►)
//!                                         validate, reserve the test slot
//!                         ◄───────────    accept {cookie, udp_port, echo_port} | error
//!   data connections: [DATA_MAGIC, cookie(16), stream u16, role u8] on the same port
//!                         ◄───────────    start            (t0 on both sides)
//!   stop_sending          ◄──────────►    (receiver's window closed: sender stops)
//!   sender_report         ◄──────────►    (after the local senders finished)
//!   receiver_report       ◄──────────►    (after the local receivers drained)
//!   error {message}       ◄──────────►    (either side, any time: abort)
//! ```
//! Anything else (garbage, an unknown type, a line over [`MAX_MESSAGE`] bytes, another
//! version) is a [`ProtoError`], answered with `error` and a closed connection.

use crate::engine::spec::TestParams;
use crate::engine::stats::UdpBucket;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};

/// Protocol version spoken by this build.
pub const PROTOCOL_VERSION: u32 = 1;
/// Longest control line: reports for 128 streams x 3600 intervals stay well below;
/// anything longer is refused rather than buffered.
pub const MAX_MESSAGE: usize = 16 << 20;
/// Longest first line from a new connection (a hello is a few hundred bytes).
pub const MAX_HELLO: usize = 64 * 1024;
/// First bytes of a data connection (followed by cookie, stream and role).
pub const DATA_MAGIC: [u8; 4] = *b"TBD\x01";
/// Length of the data connection preamble.
pub const DATA_HELLO_LEN: usize = 4 + 16 + 2 + 1;

/// Role of a TCP data connection, seen from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The client writes, the server reads.
    ClientSends = 0,
    /// The server writes, the client reads.
    ServerSends = 1,
}

/// What a sender knows about one stream at the end.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SenderStreamReport {
    /// Stream index.
    pub id: u16,
    /// Bytes handed to the socket over the whole test.
    pub bytes: u64,
    /// Datagrams sent (UDP).
    pub packets: u64,
    /// Bytes written per bucket (sender's clock).
    pub buckets: Vec<u64>,
    /// TCP_INFO total retransmits at each window boundary (k = 0..=n), then at the end.
    pub retrans_samples: Vec<u64>,
    /// TCP_INFO at the end: smoothed RTT, µs.
    pub rtt_us: Option<u32>,
    /// TCP_INFO at the end: congestion window, segments.
    pub snd_cwnd: Option<u32>,
    /// TCP_INFO at the end: send MSS, bytes.
    pub snd_mss: Option<u32>,
    /// Send errors that ended the stream early.
    pub error: Option<String>,
}

/// What a receiver measured on one stream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReceiverStreamReport {
    /// Stream index.
    pub id: u16,
    /// Bytes read over the whole test (warm-up, window and tail).
    pub bytes: u64,
    /// Bytes per bucket (receiver's clock).
    pub buckets: Vec<u64>,
    /// UDP statistics per bucket.
    pub udp: Option<Vec<UdpBucket>>,
    /// Datagrams received in total (UDP).
    pub packets: u64,
    /// Receive errors that ended the stream early.
    pub error: Option<String>,
}

/// A control message (the `"v"` field is added on the wire).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Msg {
    /// Client → server: the test it asks for.
    Hello {
        /// The parameters.
        params: TestParams,
        /// Client software, for logs.
        client: String,
    },
    /// Server → client, in answer to a hello when the server requires a
    /// shared key ([`crate::engine::auth`]): prove you hold it.
    Challenge {
        /// Hex random nonce.
        nonce: String,
    },
    /// Client → server: HMAC-SHA256 of the challenge under the shared key.
    Auth {
        /// Hex MAC.
        mac: String,
    },
    /// Server → client: test accepted.
    Accept {
        /// Hex cookie binding data connections to this test.
        cookie: String,
        /// UDP data port (UDP tests).
        udp_port: Option<u16>,
        /// UDP echo port (latency probes).
        echo_port: Option<u16>,
    },
    /// Server → client: all data connections are in; the clock starts.
    Start,
    /// Receiver → sender: the measured window closed, stop sending.
    StopSending,
    /// Final sender statistics.
    SenderReport {
        /// Per stream.
        streams: Vec<SenderStreamReport>,
    },
    /// Final receiver statistics.
    ReceiverReport {
        /// Per stream.
        streams: Vec<ReceiverStreamReport>,
    },
    /// Abort with a reason.
    Error {
        /// Human-readable reason.
        message: String,
    },
}

/// A control message that could not be read or understood.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// The peer closed the connection before a full message.
    #[error("control connection closed by peer")]
    Closed,
    /// A line longer than the limit.
    #[error("control message longer than {0} bytes")]
    Oversized(usize),
    /// Not JSON, or not an object.
    #[error("malformed control message: {0}")]
    Malformed(String),
    /// No `"v"` field or not a number.
    #[error("control message without a protocol version")]
    MissingVersion,
    /// A version this build does not speak.
    #[error("unsupported protocol version {0} (this side speaks {PROTOCOL_VERSION})")]
    Version(u64),
    /// A JSON object that is not one of our messages.
    #[error("unknown or invalid control message: {0}")]
    Unknown(String),
    /// Socket error (including read timeout).
    #[error("control connection: {0}")]
    Io(#[from] std::io::Error),
}

/// The wire name of a message's type, for error messages.
pub fn msg_name(m: &Msg) -> &'static str {
    match m {
        Msg::Hello { .. } => "hello",
        Msg::Challenge { .. } => "challenge",
        Msg::Auth { .. } => "auth",
        Msg::Accept { .. } => "accept",
        Msg::Start => "start",
        Msg::StopSending => "stop_sending",
        Msg::SenderReport { .. } => "sender_report",
        Msg::ReceiverReport { .. } => "receiver_report",
        Msg::Error { .. } => "error",
    }
}

/// Encodes a message as one line (with `"v"` and a trailing newline).
pub fn encode(msg: &Msg) -> Vec<u8> {
    let mut value = serde_json::to_value(msg).unwrap_or(serde_json::Value::Null);
    if let Some(obj) = value.as_object_mut() {
        obj.insert("v".into(), PROTOCOL_VERSION.into());
    }
    let mut out = serde_json::to_vec(&value).unwrap_or_default();
    out.push(b'\n');
    out
}

/// Decodes one line (without its newline).
pub fn decode(line: &[u8]) -> Result<Msg, ProtoError> {
    let mut value: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| ProtoError::Malformed(e.to_string()))?;
    let obj = value
        .as_object_mut()
        .ok_or_else(|| ProtoError::Malformed("not a JSON object".into()))?;
    let v = obj
        .remove("v")
        .and_then(|v| v.as_u64())
        .ok_or(ProtoError::MissingVersion)?;
    if v != PROTOCOL_VERSION as u64 {
        return Err(ProtoError::Version(v));
    }
    serde_json::from_value(value).map_err(|e| ProtoError::Unknown(e.to_string()))
}

/// Reads one line of at most `max` bytes and decodes it.
pub fn read_msg(r: &mut impl BufRead, max: usize) -> Result<Msg, ProtoError> {
    let mut line = Vec::new();
    loop {
        let buf = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ProtoError::Io(e)),
        };
        if buf.is_empty() {
            return Err(ProtoError::Closed);
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if line.len() + take > max + 1 {
            return Err(ProtoError::Oversized(max));
        }
        line.extend_from_slice(&buf[..take]);
        r.consume(take);
        if done {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return decode(&line);
        }
    }
}

/// Writes one message and flushes.
pub fn write_msg(w: &mut impl Write, msg: &Msg) -> std::io::Result<()> {
    w.write_all(&encode(msg))?;
    w.flush()
}

/// Builds a data connection preamble.
pub fn data_hello(cookie: &[u8; 16], stream: u16, role: Role) -> [u8; DATA_HELLO_LEN] {
    let mut out = [0u8; DATA_HELLO_LEN];
    out[..4].copy_from_slice(&DATA_MAGIC);
    out[4..20].copy_from_slice(cookie);
    out[20..22].copy_from_slice(&stream.to_be_bytes());
    out[22] = role as u8;
    out
}

/// Parses a data connection preamble: (cookie, stream, role).
pub fn parse_data_hello(b: &[u8; DATA_HELLO_LEN]) -> Result<([u8; 16], u16, Role), ProtoError> {
    if b[..4] != DATA_MAGIC {
        return Err(ProtoError::Malformed("bad data connection magic".into()));
    }
    let mut cookie = [0u8; 16];
    cookie.copy_from_slice(&b[4..20]);
    let stream = u16::from_be_bytes([b[20], b[21]]);
    let role = match b[22] {
        0 => Role::ClientSends,
        1 => Role::ServerSends,
        r => {
            return Err(ProtoError::Malformed(format!(
                "bad data connection role {r}"
            )))
        }
    };
    Ok((cookie, stream, role))
}

/// Hex text of a cookie.
pub fn cookie_hex(c: &[u8; 16]) -> String {
    c.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses a hex cookie.
pub fn parse_cookie(s: &str) -> Result<[u8; 16], ProtoError> {
    let bad = || ProtoError::Malformed(format!("bad cookie '{s}'"));
    if s.len() != 32 || !s.is_ascii() {
        return Err(bad());
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// The 32-bit test id carried in UDP headers: the cookie's first bytes.
pub fn test_id(cookie: &[u8; 16]) -> u32 {
    u32::from_be_bytes([cookie[0], cookie[1], cookie[2], cookie[3]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufReader;

    fn read_all(input: &[u8], max: usize) -> Result<Msg, ProtoError> {
        read_msg(&mut BufReader::with_capacity(7, input), max)
    }

    #[test]
    fn roundtrip_every_message() {
        let msgs = vec![
            Msg::Hello {
                params: TestParams::default(),
                client: "t".into(),
            },
            Msg::Accept {
                cookie: "00".repeat(16),
                udp_port: Some(9),
                echo_port: None,
            },
            Msg::Start,
            Msg::StopSending,
            Msg::SenderReport {
                streams: vec![SenderStreamReport {
                    id: 2,
                    bytes: 9,
                    ..Default::default()
                }],
            },
            Msg::ReceiverReport {
                streams: vec![ReceiverStreamReport {
                    id: 1,
                    udp: Some(vec![UdpBucket {
                        packets: 3,
                        ..Default::default()
                    }]),
                    ..Default::default()
                }],
            },
            Msg::Error {
                message: "x".into(),
            },
        ];
        for m in msgs {
            let line = encode(&m);
            assert_eq!(line.last(), Some(&b'\n'));
            assert!(line.starts_with(b"{"));
            assert_eq!(read_all(&line, MAX_HELLO).expect("decodes"), m);
        }
    }

    #[test]
    fn two_messages_on_one_stream() {
        let mut input = encode(&Msg::Start);
        input.extend(encode(&Msg::StopSending));
        let mut r = BufReader::with_capacity(5, &input[..]);
        assert_eq!(read_msg(&mut r, 100).expect("first"), Msg::Start);
        assert_eq!(read_msg(&mut r, 100).expect("second"), Msg::StopSending);
        assert!(matches!(read_msg(&mut r, 100), Err(ProtoError::Closed)));
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(
            read_all(b"\x00\xff garbage\n", 100),
            Err(ProtoError::Malformed(_))
        ));
        assert!(matches!(
            read_all(b"[1,2]\n", 100),
            Err(ProtoError::Malformed(_))
        ));
        assert!(matches!(
            read_all(b"{\"type\":\"start\"}\n", 100),
            Err(ProtoError::MissingVersion)
        ));
        assert!(matches!(
            read_all(b"{\"v\":\"1\",\"type\":\"start\"}\n", 100),
            Err(ProtoError::MissingVersion)
        ));
        assert!(matches!(
            read_all(b"{\"v\":1,\"type\":\"launch\"}\n", 100),
            Err(ProtoError::Unknown(_))
        ));
        // Extra fields on a field-less message are tolerated (serde limitation for tagged
        // unit variants); the hello's params reject unknown fields (next check).
        assert_eq!(
            read_all(b"{\"v\":1,\"type\":\"start\",\"x\":1}\n", 100).ok(),
            Some(Msg::Start)
        );
        assert!(matches!(
            read_all(b"{\"v\":1,\"type\":\"hello\",\"params\":{\"protocol\":\"sctp\"},\"client\":\"\"}\n", 1000),
            Err(ProtoError::Unknown(_))
        ));
        assert!(matches!(
            read_all(b"{\"v\":1,\"type\":\"sta", 100),
            Err(ProtoError::Closed)
        ));
        assert!(matches!(read_all(b"", 100), Err(ProtoError::Closed)));
    }

    #[test]
    fn rejects_version_mismatch() {
        let err = read_all(b"{\"v\":2,\"type\":\"start\"}\n", 100)
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("unsupported protocol version 2 (this side speaks 1)")
        );
    }

    #[test]
    fn rejects_oversized_without_buffering_it_all() {
        let mut big = vec![b'{'; 10_000];
        big.push(b'\n');
        assert!(matches!(
            read_all(&big, 1000),
            Err(ProtoError::Oversized(1000))
        ));
        // Exactly at the limit is fine (the limit excludes the newline).
        let mut line = encode(&Msg::Start);
        let max = line.len() - 1;
        assert!(read_all(&line, max).is_ok());
        line.insert(0, b' ');
        assert!(matches!(
            read_all(&line, max),
            Err(ProtoError::Oversized(_))
        ));
    }

    #[test]
    fn data_hello_roundtrip_and_garbage() {
        let c = [7u8; 16];
        let h = data_hello(&c, 513, Role::ServerSends);
        let (c2, s, r) = parse_data_hello(&h).expect("parses");
        assert_eq!((c2, s, r), (c, 513, Role::ServerSends));
        let mut bad = h;
        bad[22] = 9;
        assert!(parse_data_hello(&bad).is_err());
        bad[0] = b'X';
        assert!(parse_data_hello(&bad).is_err());
    }

    #[test]
    fn cookie_text() {
        let c: [u8; 16] = core::array::from_fn(|i| i as u8 * 17);
        assert_eq!(parse_cookie(&cookie_hex(&c)).expect("parses"), c);
        assert!(parse_cookie("zz").is_err());
        assert!(parse_cookie(&"g".repeat(32)).is_err());
        assert!(parse_cookie(&"é".repeat(16)).is_err());
    }
}
