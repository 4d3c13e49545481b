//! A NOR flash whose contents live in a host file, reached through semihosting: under
//! QEMU the learned head survives a reboot exactly as it would in real flash (the same
//! file is the "flash image" of the next boot). Erase sets bytes to 0xFF; a write may
//! only clear bits, as on NOR.

use embedded_storage::nor_flash::{
    ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
};
use semihosting::fs::File;
use semihosting::io::{Read, Seek, SeekFrom, Write};

/// Bytes one erase clears.
pub const ERASE_SIZE: usize = 1024;

/// The flash file.
pub struct SemihostingFlash {
    file: File,
    capacity: usize,
}

/// A failed flash operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlashError(NorFlashErrorKind);

impl NorFlashError for FlashError {
    fn kind(&self) -> NorFlashErrorKind {
        self.0
    }
}

impl SemihostingFlash {
    /// Opens an existing flash image of `capacity` bytes for reading and writing.
    pub fn open(path: &core::ffi::CStr, capacity: usize) -> Result<Self, FlashError> {
        let file = File::options()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|_| FlashError(NorFlashErrorKind::Other))?;
        Ok(SemihostingFlash { file, capacity })
    }

    fn at(&mut self, offset: u32, len: usize) -> Result<(), FlashError> {
        if offset as usize + len > self.capacity {
            return Err(FlashError(NorFlashErrorKind::OutOfBounds));
        }
        self.file
            .seek(SeekFrom::Start(u64::from(offset)))
            .map(|_| ())
            .map_err(|_| FlashError(NorFlashErrorKind::Other))
    }
}

impl ErrorType for SemihostingFlash {
    type Error = FlashError;
}

impl ReadNorFlash for SemihostingFlash {
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), FlashError> {
        self.at(offset, bytes.len())?;
        self.file
            .read_exact(bytes)
            .map_err(|_| FlashError(NorFlashErrorKind::Other))
    }

    fn capacity(&self) -> usize {
        self.capacity
    }
}

impl NorFlash for SemihostingFlash {
    const WRITE_SIZE: usize = 4;
    const ERASE_SIZE: usize = ERASE_SIZE;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), FlashError> {
        if from % ERASE_SIZE as u32 != 0 || to % ERASE_SIZE as u32 != 0 || from > to {
            return Err(FlashError(NorFlashErrorKind::NotAligned));
        }
        self.at(from, (to - from) as usize)?;
        let ones = [0xFFu8; 256];
        for _ in 0..(to - from) as usize / ones.len() {
            self.file
                .write_all(&ones)
                .map_err(|_| FlashError(NorFlashErrorKind::Other))?;
        }
        Ok(())
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), FlashError> {
        if offset % 4 != 0 || bytes.len() % 4 != 0 {
            return Err(FlashError(NorFlashErrorKind::NotAligned));
        }
        // NOR semantics: programming clears bits only.
        let mut merged = [0u8; 256];
        let mut done = 0;
        while done < bytes.len() {
            let n = (bytes.len() - done).min(merged.len());
            let at = offset + done as u32;
            self.read(at, &mut merged[..n])?;
            for (m, b) in merged[..n].iter_mut().zip(&bytes[done..done + n]) {
                *m &= b;
            }
            self.at(at, n)?;
            self.file
                .write_all(&merged[..n])
                .map_err(|_| FlashError(NorFlashErrorKind::Other))?;
            done += n;
        }
        Ok(())
    }
}
