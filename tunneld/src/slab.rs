//! Packet buffers as numbered slots ([`Slots`]), and the data path's send
//! buffer, [`Slab`]: equal slots back to back in one allocation.
//!
//! A TUN read lands packet `i` in slot `i` at the headroom offset; sealing
//! writes the header in front and the tag behind, in place, so a sealed
//! frame starts at its slot's first byte. A slot is exactly as long as the
//! largest frame (headroom + MTU + tag), so full-size frames sealed in
//! consecutive slots already lie back to back: a GSO train, sent from
//! where it was sealed without being copied into a send buffer
//! ([`Slab::train`]). Runs that are not (a short frame inside, frames of
//! other peers between) are copied, as every run was before.

/// Numbered packet buffers a TUN read or a super-packet split fills.
pub trait Slots {
    /// How many slots there are.
    fn count(&self) -> usize;
    /// Slot `i` (`i < count()`), all of it.
    fn slot(&mut self, i: usize) -> &mut [u8];
}

impl<B: AsMut<[u8]>> Slots for [B] {
    fn count(&self) -> usize {
        self.len()
    }
    fn slot(&mut self, i: usize) -> &mut [u8] {
        self[i].as_mut()
    }
}

impl<B: AsMut<[u8]>> Slots for Vec<B> {
    fn count(&self) -> usize {
        self.len()
    }
    fn slot(&mut self, i: usize) -> &mut [u8] {
        self[i].as_mut()
    }
}

/// `count` slots of `stride` bytes back to back in one allocation.
#[derive(Debug, Clone)]
pub struct Slab {
    mem: Vec<u8>,
    stride: usize,
}

impl Slab {
    /// A zeroed slab of `count` slots of `stride` bytes (`stride` ≥ 1).
    pub fn new(count: usize, stride: usize) -> Slab {
        let stride = stride.max(1);
        Slab {
            mem: vec![0u8; count * stride],
            stride,
        }
    }

    /// Bytes per slot.
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Slot `i`, read-only.
    pub fn get(&self, i: usize) -> &[u8] {
        &self.mem[i * self.stride..(i + 1) * self.stride]
    }

    /// Slots `from..` as [`Slots`] numbered from 0.
    pub fn tail(&mut self, from: usize) -> Tail<'_> {
        let start = (from * self.stride).min(self.mem.len());
        Tail {
            mem: &mut self.mem[start..],
            stride: self.stride,
        }
    }

    /// The frames at slots `positions`, every one `seg` bytes but the
    /// last (`last` bytes, at most `seg`), as one contiguous slice, when
    /// they lie back to back: consecutive slots, and a frame that is not
    /// the last fills its slot. `None` otherwise.
    pub fn train(&self, positions: &[usize], seg: usize, last: usize) -> Option<&[u8]> {
        let (&first, &end) = (positions.first()?, positions.last()?);
        let full = positions.len() == 1 || seg == self.stride;
        if !full || last > self.stride || positions.windows(2).any(|w| w[1] != w[0] + 1) {
            return None;
        }
        self.mem.get(first * self.stride..end * self.stride + last)
    }
}

impl Slots for Slab {
    fn count(&self) -> usize {
        self.mem.len() / self.stride
    }
    fn slot(&mut self, i: usize) -> &mut [u8] {
        &mut self.mem[i * self.stride..(i + 1) * self.stride]
    }
}

/// The slots of a [`Slab`] from some slot on ([`Slab::tail`]).
#[derive(Debug)]
pub struct Tail<'a> {
    mem: &'a mut [u8],
    stride: usize,
}

impl Slots for Tail<'_> {
    fn count(&self) -> usize {
        self.mem.len() / self.stride
    }
    fn slot(&mut self, i: usize) -> &mut [u8] {
        &mut self.mem[i * self.stride..(i + 1) * self.stride]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_disjoint_and_numbered_from_the_tail() {
        let mut s = Slab::new(4, 10);
        assert_eq!((s.count(), s.stride()), (4, 10));
        for i in 0..4 {
            s.slot(i).fill(i as u8 + 1);
        }
        let mut t = s.tail(2);
        assert_eq!(t.count(), 2);
        assert_eq!(t.slot(0), &[3u8; 10]);
        t.slot(1)[0] = 9;
        assert_eq!(s.get(3)[..2], [9, 4]);
        assert_eq!(s.get(1), &[2u8; 10]);
        // Past the end: an empty tail, not a panic.
        assert_eq!(s.tail(7).count(), 0);
    }

    #[test]
    fn a_train_is_consecutive_full_slots_and_a_last_that_fits() {
        let mut s = Slab::new(6, 10);
        for i in 0..6 {
            s.slot(i).fill(i as u8);
        }
        let t = s.train(&[1, 2, 3], 10, 4).expect("back to back");
        assert_eq!(t.len(), 24);
        assert_eq!((t[0], t[10], t[20], t[23]), (1, 2, 3, 3));
        assert_eq!(
            t.as_ptr(),
            s.get(1).as_ptr(),
            "the slab's memory, not a copy"
        );
        assert_eq!(s.train(&[5], 7, 7).map(<[u8]>::len), Some(7));
        assert_eq!(s.train(&[5], 10, 10).map(<[u8]>::len), Some(10));
        // A gap, frames shorter than a slot, a frame past its slot, a
        // last frame past its slot, out of order, nothing at all: not a
        // train.
        assert!(s.train(&[1, 3], 10, 10).is_none());
        assert!(s.train(&[1, 2, 3], 9, 9).is_none());
        assert!(s.train(&[1, 2], 11, 11).is_none());
        assert!(s.train(&[1, 2], 10, 11).is_none());
        assert!(s.train(&[3, 2], 10, 10).is_none());
        assert!(s.train(&[2, 2], 10, 10).is_none());
        assert!(s.train(&[], 10, 10).is_none());
        // The last slot of the slab.
        assert_eq!(s.train(&[4, 5], 10, 10).map(<[u8]>::len), Some(20));
    }
}
