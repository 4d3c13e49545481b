//! Fuzzes the decoding of the firmware's defmt log on the host
//! (`tinyres_device::qemu::decode_defmt_frames`), against the defmt table of a real
//! firmware ELF (`TINYRES_FUZZ_ELF`; host/fuzz/run builds the `classify` firmware and
//! sets it): any bytes from a board (semihosting or RTT) give log lines or an error,
//! never a panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tinyres_device::qemu::{decode_defmt_frames, defmt_table};

fn table() -> &'static defmt_decoder::Table {
    static TABLE: OnceLock<defmt_decoder::Table> = OnceLock::new();
    TABLE.get_or_init(|| {
        let elf = std::env::var_os("TINYRES_FUZZ_ELF")
            .expect("TINYRES_FUZZ_ELF names a firmware ELF (host/fuzz/run sets it)");
        defmt_table(elf.as_ref()).expect("a firmware ELF with a defmt table")
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = decode_defmt_frames(table(), data);
});
