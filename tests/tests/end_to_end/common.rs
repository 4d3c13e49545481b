//! Mocks shared by the end-to-end tests: pins and an in-memory NOR flash.

use std::cell::{Cell, RefCell};
use std::convert::Infallible;
use std::rc::Rc;

use embedded_hal::digital::{ErrorType, InputPin, OutputPin};
use embedded_storage::nor_flash::{self, NorFlash, NorFlashErrorKind, ReadNorFlash};

/// A button whose state the test sets.
#[derive(Clone, Default)]
pub struct Button(pub Rc<Cell<bool>>);

impl ErrorType for Button {
    type Error = Infallible;
}

impl InputPin for Button {
    fn is_high(&mut self) -> Result<bool, Infallible> {
        Ok(self.0.get())
    }
    fn is_low(&mut self) -> Result<bool, Infallible> {
        Ok(!self.0.get())
    }
}

/// An LED whose state the test reads.
#[derive(Clone, Default)]
pub struct Led(pub Rc<Cell<bool>>);

impl ErrorType for Led {
    type Error = Infallible;
}

impl OutputPin for Led {
    fn set_low(&mut self) -> Result<(), Infallible> {
        self.0.set(false);
        Ok(())
    }
    fn set_high(&mut self) -> Result<(), Infallible> {
        self.0.set(true);
        Ok(())
    }
}

/// NOR flash in memory with the firmware's geometry (4-byte writes, 1 KiB erases).
#[derive(Clone)]
pub struct MemFlash(pub Rc<RefCell<Vec<u8>>>);

impl MemFlash {
    pub fn erased(bytes: usize) -> Self {
        MemFlash(Rc::new(RefCell::new(vec![0xFF; bytes])))
    }
}

impl nor_flash::ErrorType for MemFlash {
    type Error = NorFlashErrorKind;
}

impl ReadNorFlash for MemFlash {
    const READ_SIZE: usize = 1;
    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), NorFlashErrorKind> {
        let m = self.0.borrow();
        let src = m
            .get(offset as usize..offset as usize + bytes.len())
            .ok_or(NorFlashErrorKind::OutOfBounds)?;
        bytes.copy_from_slice(src);
        Ok(())
    }
    fn capacity(&self) -> usize {
        self.0.borrow().len()
    }
}

impl NorFlash for MemFlash {
    const WRITE_SIZE: usize = 4;
    const ERASE_SIZE: usize = 1024;
    fn erase(&mut self, from: u32, to: u32) -> Result<(), NorFlashErrorKind> {
        self.0.borrow_mut()[from as usize..to as usize].fill(0xFF);
        Ok(())
    }
    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), NorFlashErrorKind> {
        let mut m = self.0.borrow_mut();
        for (d, s) in m[offset as usize..offset as usize + bytes.len()]
            .iter_mut()
            .zip(bytes)
        {
            *d &= s;
        }
        Ok(())
    }
}
