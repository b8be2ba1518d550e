//! The TCP transport's stream codec: each tunnel frame is sent as a
//! big-endian u16 length followed by that many bytes. A length of zero or
//! above [`MAX_FRAME`] is a protocol error that closes the connection (a
//! stream cannot resynchronise after garbage).

/// Largest frame carried: an inner packet of the largest TUN MTU (9000)
/// plus our frame overhead (32), rounded up.
pub const MAX_FRAME: usize = 9216;
/// Bytes of the length prefix.
pub const PREFIX: usize = 2;

/// Why a stream was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// A length prefix of zero: never sent by a tunneld.
    #[error("zero-length frame")]
    ZeroLength,
    /// A length prefix above [`MAX_FRAME`].
    #[error("frame length {0} exceeds the maximum of {MAX_FRAME}")]
    TooLong(usize),
}

/// Appends `frame` with its length prefix to `out`. Frames of zero bytes or
/// above [`MAX_FRAME`] are refused.
pub fn encode(frame: &[u8], out: &mut Vec<u8>) -> Result<(), FramingError> {
    match frame.len() {
        0 => Err(FramingError::ZeroLength),
        n if n > MAX_FRAME => Err(FramingError::TooLong(n)),
        n => {
            out.extend_from_slice(&(n as u16).to_be_bytes());
            out.extend_from_slice(frame);
            Ok(())
        }
    }
}

/// Reassembles frames from reads of any size. Holds at most one partial
/// frame (`PREFIX + MAX_FRAME` bytes) between reads.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    /// A decoder with no bytes pending.
    pub fn new() -> Decoder {
        Decoder {
            buf: Vec::with_capacity(PREFIX + MAX_FRAME),
        }
    }

    /// Feeds `data` and calls `frame` for each complete frame. On a bad
    /// prefix, stops and returns the error; the stream must be closed.
    pub fn feed(
        &mut self,
        mut data: &[u8],
        mut frame: impl FnMut(&[u8]),
    ) -> Result<(), FramingError> {
        // Complete a frame held from earlier reads first.
        while !self.buf.is_empty() && !data.is_empty() {
            if self.buf.len() < PREFIX {
                let take = (PREFIX - self.buf.len()).min(data.len());
                self.buf.extend_from_slice(&data[..take]);
                data = &data[take..];
                if self.buf.len() < PREFIX {
                    return Ok(());
                }
            }
            let len = check_len(u16::from_be_bytes([self.buf[0], self.buf[1]]) as usize)?;
            let take = (PREFIX + len - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == PREFIX + len {
                frame(&self.buf[PREFIX..]);
                self.buf.clear();
            }
        }
        // Whole frames straight from `data`, without copying.
        while data.len() >= PREFIX {
            let len = check_len(u16::from_be_bytes([data[0], data[1]]) as usize)?;
            if data.len() < PREFIX + len {
                break;
            }
            frame(&data[PREFIX..PREFIX + len]);
            data = &data[PREFIX + len..];
        }
        // Here either `data` is empty or nothing was held: keep the rest.
        self.buf.extend_from_slice(data);
        if self.buf.len() >= PREFIX {
            check_len(u16::from_be_bytes([self.buf[0], self.buf[1]]) as usize)?;
        }
        Ok(())
    }

    /// True while part of a frame is held (a close now truncates it).
    pub fn in_frame(&self) -> bool {
        !self.buf.is_empty()
    }
}

fn check_len(len: usize) -> Result<usize, FramingError> {
    match len {
        0 => Err(FramingError::ZeroLength),
        n if n > MAX_FRAME => Err(FramingError::TooLong(n)),
        n => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(n: usize) -> (Vec<Vec<u8>>, Vec<u8>) {
        let mut list = Vec::new();
        let mut wire = Vec::new();
        for i in 0..n {
            let len = [1, 2, 3, 100, 1400, MAX_FRAME, 7][i % 7];
            let f: Vec<u8> = (0..len).map(|j| (i * 31 + j) as u8).collect();
            encode(&f, &mut wire).expect("encode");
            list.push(f);
        }
        (list, wire)
    }

    fn decode_in_chunks(wire: &[u8], chunk: usize) -> Result<Vec<Vec<u8>>, FramingError> {
        let mut d = Decoder::new();
        let mut got = Vec::new();
        for c in wire.chunks(chunk) {
            d.feed(c, |f| got.push(f.to_vec()))?;
        }
        assert!(!d.in_frame(), "nothing left over at a frame boundary");
        Ok(got)
    }

    #[test]
    fn any_read_size_yields_the_same_frames() {
        let (list, wire) = frames(30);
        for chunk in [1, 2, 3, 5, 64, 1401, 9218, 65536, wire.len()] {
            assert_eq!(
                decode_in_chunks(&wire, chunk).expect("decode"),
                list,
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn partial_frame_is_held_until_complete() {
        let mut wire = Vec::new();
        encode(&[7u8; 50], &mut wire).expect("encode");
        let mut d = Decoder::new();
        let mut got = Vec::new();
        d.feed(&wire[..1], |f| got.push(f.to_vec()))
            .expect("half prefix");
        assert!(d.in_frame());
        d.feed(&wire[1..30], |f| got.push(f.to_vec()))
            .expect("part body");
        assert!(got.is_empty());
        d.feed(&wire[30..], |f| got.push(f.to_vec())).expect("rest");
        assert_eq!(got, vec![vec![7u8; 50]]);
        assert!(!d.in_frame());
    }

    #[test]
    fn zero_and_oversized_lengths_are_errors() {
        let mut d = Decoder::new();
        assert_eq!(d.feed(&[0, 0, 1], |_| {}), Err(FramingError::ZeroLength));
        let mut d = Decoder::new();
        assert_eq!(
            d.feed(&[0xff, 0xff], |_| {}),
            Err(FramingError::TooLong(65535))
        );
        // Split across reads: one byte of prefix, then the other.
        let mut d = Decoder::new();
        d.feed(&[0x24], |_| {}).expect("one prefix byte");
        assert_eq!(
            d.feed(&[0x01, 9], |_| {}),
            Err(FramingError::TooLong(0x2401))
        );
        // A bad prefix after good frames: the good ones are delivered first.
        let mut wire = Vec::new();
        encode(b"ok", &mut wire).expect("encode");
        wire.extend_from_slice(&[0, 0]);
        let mut got = Vec::new();
        let mut d = Decoder::new();
        assert_eq!(
            d.feed(&wire, |f| got.push(f.to_vec())),
            Err(FramingError::ZeroLength)
        );
        assert_eq!(got, vec![b"ok".to_vec()]);
        assert_eq!(encode(&[], &mut wire), Err(FramingError::ZeroLength));
        assert_eq!(
            encode(&vec![0u8; MAX_FRAME + 1], &mut wire),
            Err(FramingError::TooLong(MAX_FRAME + 1))
        );
    }
}
