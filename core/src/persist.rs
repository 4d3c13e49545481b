//! Persisting the learned last layer to NOR flash so that it survives a reboot and a
//! power cut at any moment.
//!
//! Two slots of `slot_size` bytes each (a multiple of the flash's erase size) take
//! turns. A slot is a 16-byte header — magic, sequence number, payload length, CRC-32
//! of sequence, length and payload — followed by the payload. A save erases the older
//! slot, writes the payload, then the header's last three words, and the magic last:
//! the magic is the commit mark. A power cut before it leaves the slot without a valid
//! magic; a cut inside a word leaves a CRC that does not match (torn NOR writes are
//! undefined only inside the word being written). On boot the valid slot with the
//! newest sequence number wins, so the device always finds either the previous or the
//! new weights, never a mixture.

use embedded_storage::nor_flash::NorFlash;

use crate::crc::crc32_update;
use crate::error::Error;
use crate::learn::LastLayer;

/// Marks a committed slot ("TRLL").
const MAGIC: u32 = u32::from_le_bytes(*b"TRLL");
/// Header bytes at the start of a slot.
const HEADER: usize = 16;
/// Bytes moved per flash operation; must be a multiple of the flash's read and write
/// sizes (checked).
const CHUNK: usize = 256;

/// Which slot holds what.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SlotState {
    /// Slot index, 0 or 1.
    pub slot: u32,
    /// Its sequence number.
    pub sequence: u32,
}

/// Two alternating slots in a flash region.
#[derive(Debug)]
pub struct LayerStore<Flash> {
    flash: Flash,
    base: u32,
    slot_size: u32,
}

impl<Flash: NorFlash> LayerStore<Flash> {
    /// Uses `2 · slot_size` bytes of `flash` from `base`. Both must be multiples of the
    /// erase size, and the flash's read and write sizes must divide 256.
    pub fn new(flash: Flash, base: u32, slot_size: u32) -> Result<Self, Error> {
        let erase = Flash::ERASE_SIZE as u32;
        let aligned = |n: u32| erase != 0 && n % erase == 0;
        if !aligned(base) || !aligned(slot_size) || slot_size as usize <= HEADER {
            return Err(Error::Misaligned {
                what: "flash slot (base and size must be multiples of the erase size)",
            });
        }
        if CHUNK % Flash::WRITE_SIZE.max(1) != 0
            || CHUNK % Flash::READ_SIZE.max(1) != 0
            || Flash::WRITE_SIZE > 4
        {
            return Err(Error::Unsupported {
                what: "flash read/write sizes must divide 256 and writes be at most one word",
            });
        }
        let end = u64::from(base) + 2 * u64::from(slot_size);
        if end > flash.capacity() as u64 {
            return Err(Error::OutOfBounds {
                what: "flash slots",
                index: 0,
            });
        }
        Ok(LayerStore {
            flash,
            base,
            slot_size,
        })
    }

    /// Gives the flash back.
    pub fn release(self) -> Flash {
        self.flash
    }

    /// The newest valid slot, if any.
    pub fn newest(&mut self) -> Result<Option<SlotState>, Error> {
        let mut newest: Option<SlotState> = None;
        for slot in 0..2 {
            if let Some(sequence) = self.valid_sequence(slot)? {
                let newer = newest.is_none_or(|n| (sequence.wrapping_sub(n.sequence) as i32) > 0);
                if newer {
                    newest = Some(SlotState { slot, sequence });
                }
            }
        }
        Ok(newest)
    }

    /// Restores `layer` from the newest valid slot; returns which, or `None` (and leaves
    /// `layer` as it is: the blob's original classifier) when no slot is valid.
    pub fn load<const F: usize, const C: usize>(
        &mut self,
        layer: &mut LastLayer<F, C>,
    ) -> Result<Option<SlotState>, Error> {
        let Some(state) = self.newest()? else {
            return Ok(None);
        };
        let len = self.header(state.slot)?.2 as usize;
        let mut offset = self.slot_base(state.slot) + HEADER as u32;
        let mut chunk = [0u8; CHUNK];
        let (mut pos, mut filled, mut unread) = (0, 0, len);
        // Payload words never straddle a chunk: both start 16-byte aligned and CHUNK
        // is a multiple of 4.
        layer.restore(len, || {
            if pos == filled {
                filled = unread.min(CHUNK);
                if filled < 4 {
                    return Err(Error::Truncated {
                        needed: 4,
                        available: filled,
                    });
                }
                self.read_padded(offset, &mut chunk[..filled])?;
                offset += filled as u32;
                unread -= filled;
                pos = 0;
            }
            let word = [chunk[pos], chunk[pos + 1], chunk[pos + 2], chunk[pos + 3]];
            pos += 4;
            Ok(word)
        })?;
        Ok(Some(state))
    }

    /// Saves `layer` into the older slot with the next sequence number; returns it.
    pub fn save<const F: usize, const C: usize>(
        &mut self,
        layer: &LastLayer<F, C>,
    ) -> Result<SlotState, Error> {
        let len = layer.saved_len();
        if HEADER + len > self.slot_size as usize {
            return Err(Error::Capacity {
                what: "flash slot",
                needed: HEADER + len,
                capacity: self.slot_size as usize,
            });
        }
        let (slot, sequence) = match self.newest()? {
            Some(n) => (1 - n.slot, n.sequence.wrapping_add(1)),
            None => (0, 1),
        };
        let start = self.slot_base(slot);
        self.flash
            .erase(start, start + self.slot_size)
            .map_err(|_| Error::Storage { operation: "erase" })?;

        let mut crc = crc32_update(0, &sequence.to_le_bytes());
        crc = crc32_update(crc, &(len as u32).to_le_bytes());
        let mut chunk = [0xFFu8; CHUNK];
        let mut filled = 0;
        let mut at = start + HEADER as u32;
        layer.save(|mut bytes| {
            crc = crc32_update(crc, bytes);
            while !bytes.is_empty() {
                let n = bytes.len().min(CHUNK - filled);
                chunk[filled..filled + n].copy_from_slice(&bytes[..n]);
                filled += n;
                bytes = &bytes[n..];
                if filled == CHUNK {
                    self.flash
                        .write(at, &chunk)
                        .map_err(|_| Error::Storage { operation: "write" })?;
                    at += CHUNK as u32;
                    chunk = [0xFF; CHUNK];
                    filled = 0;
                }
            }
            Ok(())
        })?;
        if filled > 0 {
            let padded = filled.next_multiple_of(Flash::WRITE_SIZE.max(1));
            self.flash
                .write(at, &chunk[..padded])
                .map_err(|_| Error::Storage { operation: "write" })?;
        }
        let mut header = [0u8; HEADER];
        header[4..8].copy_from_slice(&sequence.to_le_bytes());
        header[8..12].copy_from_slice(&(len as u32).to_le_bytes());
        header[12..16].copy_from_slice(&crc.to_le_bytes());
        self.flash
            .write(start + 4, &header[4..])
            .map_err(|_| Error::Storage { operation: "write" })?;
        self.flash
            .write(start, &MAGIC.to_le_bytes())
            .map_err(|_| Error::Storage { operation: "write" })?;
        Ok(SlotState { slot, sequence })
    }

    fn slot_base(&self, slot: u32) -> u32 {
        self.base + slot * self.slot_size
    }

    /// `(magic, sequence, payload length, crc)` of a slot.
    fn header(&mut self, slot: u32) -> Result<(u32, u32, u32, u32), Error> {
        let mut h = [0u8; HEADER];
        self.read_padded(self.slot_base(slot), &mut h)?;
        let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        Ok((word(0), word(4), word(8), word(12)))
    }

    /// The slot's sequence number if it holds a committed, intact payload.
    fn valid_sequence(&mut self, slot: u32) -> Result<Option<u32>, Error> {
        let (magic, sequence, len, stored_crc) = self.header(slot)?;
        if magic != MAGIC || len as usize > self.slot_size as usize - HEADER {
            return Ok(None);
        }
        let mut crc = crc32_update(0, &sequence.to_le_bytes());
        crc = crc32_update(crc, &len.to_le_bytes());
        let mut chunk = [0u8; CHUNK];
        let mut at = self.slot_base(slot) + HEADER as u32;
        let mut left = len as usize;
        while left > 0 {
            let n = left.min(CHUNK);
            self.read_padded(at, &mut chunk[..n])?;
            crc = crc32_update(crc, &chunk[..n]);
            at += n as u32;
            left -= n;
        }
        Ok((crc == stored_crc).then_some(sequence))
    }

    /// Reads `out.len()` bytes at `offset`, rounding the flash read up to its read size.
    fn read_padded(&mut self, offset: u32, out: &mut [u8]) -> Result<(), Error> {
        let read = Flash::READ_SIZE.max(1);
        let mut chunk = [0u8; CHUNK];
        let mut done = 0;
        while done < out.len() {
            let n = (out.len() - done).min(CHUNK);
            let padded = n.next_multiple_of(read);
            self.flash
                .read(offset + done as u32, &mut chunk[..padded])
                .map_err(|_| Error::Storage { operation: "read" })?;
            out[done..done + n].copy_from_slice(&chunk[..n]);
            done += n;
        }
        Ok(())
    }
}
