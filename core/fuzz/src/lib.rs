//! What the fuzz targets share: blobs in aligned memory with a valid CRC, and an
//! in-memory NOR flash that can lose power.

use embedded_storage::nor_flash::{
    ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
};
use tinyres_core::format::{header, CRC_START};

/// `data` copied into 16-byte aligned memory (the engine reads blobs in place from
/// aligned flash), with the blob's CRC-32 recomputed over the bytes it covers (from
/// offset 16 to the total size the header states, or the input's end): otherwise
/// nearly every input stops at the checksum.
pub fn aligned_blob_with_valid_crc(data: &[u8]) -> Vec<u128> {
    let mut words = vec![0u128; data.len().div_ceil(16)];
    let bytes = &mut bytemuck::cast_slice_mut::<u128, u8>(&mut words)[..data.len()];
    bytes.copy_from_slice(data);
    if bytes.len() >= CRC_START {
        let total = u32::from_le_bytes(
            bytes[header::TOTAL_SIZE..header::TOTAL_SIZE + 4]
                .try_into()
                .unwrap_or([0; 4]),
        ) as usize;
        let end = total.clamp(CRC_START, bytes.len());
        let crc = tinyres_core::crc32(&bytes[CRC_START..end]);
        bytes[header::CRC32..header::CRC32 + 4].copy_from_slice(&crc.to_le_bytes());
    }
    words
}

/// NOR flash in memory: erase sets bytes to 0xFF, a write can only clear bits. With a
/// budget, power is lost after that many bytes erased or written; a write cut inside
/// a 4-byte word leaves the rest of that word partly programmed, as real NOR does.
#[derive(Clone, Debug)]
pub struct MemFlash {
    /// The flash's bytes.
    pub memory: Vec<u8>,
    /// Bytes left to erase or write before the power goes (`None`: never).
    pub budget: Option<usize>,
}

/// The power went.
#[derive(Debug)]
pub struct PowerLost;

impl NorFlashError for PowerLost {
    fn kind(&self) -> NorFlashErrorKind {
        NorFlashErrorKind::Other
    }
}

impl ErrorType for MemFlash {
    type Error = PowerLost;
}

impl MemFlash {
    fn spend(&mut self) -> Result<(), PowerLost> {
        match &mut self.budget {
            Some(0) => Err(PowerLost),
            Some(n) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }
}

impl ReadNorFlash for MemFlash {
    const READ_SIZE: usize = 1;
    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), PowerLost> {
        let start = offset as usize;
        let source = self
            .memory
            .get(start..start + bytes.len())
            .ok_or(PowerLost)?;
        bytes.copy_from_slice(source);
        Ok(())
    }
    fn capacity(&self) -> usize {
        self.memory.len()
    }
}

impl NorFlash for MemFlash {
    const WRITE_SIZE: usize = 4;
    const ERASE_SIZE: usize = 256;
    fn erase(&mut self, from: u32, to: u32) -> Result<(), PowerLost> {
        for at in from..to {
            self.spend()?;
            *self.memory.get_mut(at as usize).ok_or(PowerLost)? = 0xFF;
        }
        Ok(())
    }
    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), PowerLost> {
        for (i, &b) in bytes.iter().enumerate() {
            let at = offset as usize + i;
            if self.spend().is_err() {
                // Torn word: the rest of this word keeps some of its bits.
                let word_end = ((at / 4 + 1) * 4).min(offset as usize + bytes.len());
                for j in at..word_end {
                    if let Some(m) = self.memory.get_mut(j) {
                        *m &= bytes[j - offset as usize] | 0x0F;
                    }
                }
                return Err(PowerLost);
            }
            *self.memory.get_mut(at).ok_or(PowerLost)? &= b;
        }
        Ok(())
    }
}
