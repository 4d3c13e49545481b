//! The host side of RTT (SEGGER's Real-Time Transfer, which `defmt-rtt` writes), read
//! through QEMU's gdbstub the way a debug probe reads it on a board: find the control
//! block (`_SEGGER_RTT`) in target memory, set the up channel to blocking mode (as
//! probe-rs does, so the firmware waits instead of dropping frames), and repeatedly
//! copy the bytes between the read and write offsets, then advance the read offset.
//!
//! QEMU answers memory requests only while the guest is stopped, so every poll is
//! interrupt, read, write back, continue: the guest's virtual clock (`-icount`) stands
//! still meanwhile, and instruction counts are the same as with semihosting.
//!
//! The guest first runs to a breakpoint on `main`, where the control block has just
//! been initialised and nothing has been logged: the reader switches the channel to
//! blocking there. Polling alone could miss that moment: a firmware that fails within
//! its first poll interval logs its error in non-blocking mode, finds no host attached,
//! and exits before anyone has read it (CI saw exactly that on a busy machine).

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use object::{Object, ObjectSymbol};

/// The control block's symbol (`defmt-rtt`, like every RTT implementation).
const CONTROL_BLOCK: &str = "_SEGGER_RTT";
/// What the control block starts with once the firmware's `.data` is initialised.
const CONTROL_BLOCK_ID: &[u8; 10] = b"SEGGER RTT";
/// The firmware's entry point after the runtime's `.data` and `.bss` initialisation
/// (`cortex-m-rt`'s `#[entry]` exports it under this name).
const ENTRY: &str = "main";
/// Up-channel mode bits of the channel's flags word, and the blocking mode.
const MODE_MASK: u32 = 0b11;
const MODE_BLOCK_IF_FULL: u32 = 2;
/// Wall time the guest runs between two polls.
const POLL_INTERVAL: Duration = Duration::from_millis(5);
/// Bytes one memory read asks for (QEMU's packets hold 4 KiB of hex).
const READ_CHUNK: u32 = 1024;

/// Where RTT lives in a firmware image: its control block, and the entry point at
/// which the reader attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RttSymbols {
    /// Address of `_SEGGER_RTT`.
    pub control_block: u64,
    /// Address of the first instruction of `main` (Thumb bit cleared).
    pub entry: u64,
}

/// The RTT control block and the entry point of `elf`.
pub fn symbols(elf: &Path) -> Result<RttSymbols> {
    let bytes = std::fs::read(elf).with_context(|| format!("cannot read {}", elf.display()))?;
    let file = object::File::parse(&*bytes)
        .with_context(|| format!("{}: not an ELF file", elf.display()))?;
    let address = |name: &str| {
        file.symbols()
            .find(|s| s.name() == Ok(name))
            .map(|s| s.address())
    };
    let control_block = address(CONTROL_BLOCK).with_context(|| {
        format!(
            "{} has no {CONTROL_BLOCK}: not built with the RTT transport",
            elf.display()
        )
    })?;
    let entry =
        address(ENTRY).with_context(|| format!("{} has no `{ENTRY}` symbol", elf.display()))?;
    Ok(RttSymbols {
        control_block,
        // A Thumb function's symbol carries the mode in bit 0; the instruction is at the
        // even address.
        entry: entry & !1,
    })
}

/// Where the up channel's fields are, for the target's pointer width: the control
/// block is a 16-byte id, two `i32` channel counts, then the channels, each a name
/// and a buffer pointer followed by `u32` size, write, read and flags.
#[derive(Clone, Copy, Debug)]
struct UpChannel {
    pointer_bytes: u32,
    buffer: u64,
    size: u64,
    write: u64,
    read: u64,
    flags: u64,
}

impl UpChannel {
    fn at(control_block: u64, pointer_bytes: u64) -> Self {
        let channel = control_block + 24;
        let size = channel + 2 * pointer_bytes;
        UpChannel {
            pointer_bytes: pointer_bytes as u32,
            buffer: channel + pointer_bytes,
            size,
            write: size + 4,
            read: size + 8,
            flags: size + 12,
        }
    }
}

/// Reads RTT up channel 0 of the guest behind the gdbstub at `socket` (QEMU started
/// with `-S`, waiting for it) until the guest exits; returns every byte it wrote.
/// `pointer_bytes` is the target's pointer width (4 on Cortex-M).
pub fn read_up_channel(
    socket: &Path,
    symbols: RttSymbols,
    pointer_bytes: u64,
    timeout: Duration,
) -> Result<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut remote = Remote::connect(socket, deadline)?;
    let control_block = symbols.control_block;
    let channel = UpChannel::at(control_block, pointer_bytes);
    let mut received = Vec::new();
    let mut blocking = false;
    if !remote.run_to(symbols.entry)? {
        return Ok(received); // exited before its entry point: nothing was logged
    }
    loop {
        // Stopped here: at `main` (`run_to`) or by the interrupt below.
        match poll(
            &mut remote,
            control_block,
            &channel,
            &mut blocking,
            &mut received,
        ) {
            Ok(()) => {}
            // QEMU went away (killed on a timeout): the caller reports that.
            Err(_) if remote.closed => return Ok(received),
            Err(e) => return Err(e),
        }
        if !remote.resume()? {
            return Ok(received);
        }
        std::thread::sleep(POLL_INTERVAL);
        if Instant::now() > deadline || !remote.interrupt()? {
            return Ok(received);
        }
    }
}

/// One poll of a stopped guest: once its control block is initialised, switch the
/// channel to blocking, then take what it wrote since the last poll.
fn poll(
    remote: &mut Remote,
    control_block: u64,
    channel: &UpChannel,
    blocking: &mut bool,
    received: &mut Vec<u8>,
) -> Result<()> {
    if !*blocking {
        if remote.read_memory(control_block, CONTROL_BLOCK_ID.len() as u32)? != CONTROL_BLOCK_ID {
            return Ok(()); // .data not initialised yet
        }
        let flags = remote.read_u32(channel.flags)?;
        remote.write_u32(channel.flags, (flags & !MODE_MASK) | MODE_BLOCK_IF_FULL)?;
        *blocking = true;
    }
    // The buffer pointer, little-endian, of the target's width.
    let buffer = remote
        .read_memory(channel.buffer, channel.pointer_bytes)?
        .iter()
        .rev()
        .fold(0u64, |pointer, &byte| (pointer << 8) | u64::from(byte));
    let size = remote.read_u32(channel.size)?;
    let write = remote.read_u32(channel.write)?;
    let read = remote.read_u32(channel.read)?;
    if write >= size || read >= size {
        bail!("RTT channel offsets out of range: read {read}, write {write}, size {size}");
    }
    if write == read {
        return Ok(());
    }
    // The bytes from `read` up to `write`, wrapping at the buffer's end.
    let spans = if write > read {
        [(read, write), (0, 0)]
    } else {
        [(read, size), (0, write)]
    };
    for (start, end) in spans {
        let mut at = start;
        while at < end {
            let n = (end - at).min(READ_CHUNK);
            received.extend(remote.read_memory(buffer + u64::from(at), n)?);
            at += n;
        }
    }
    remote.write_u32(channel.read, write)
}

/// A client of the GDB remote serial protocol, as much of it as RTT needs.
struct Remote {
    stream: UnixStream,
    /// The guest has gone (QEMU exited, the socket closed).
    closed: bool,
}

impl Remote {
    /// Connects to the socket QEMU creates as it starts.
    fn connect(path: &Path, deadline: Instant) -> Result<Self> {
        loop {
            match UnixStream::connect(path) {
                Ok(stream) => {
                    return Ok(Remote {
                        stream,
                        closed: false,
                    })
                }
                Err(e) if Instant::now() > deadline => {
                    bail!(
                        "cannot connect to QEMU's gdbstub at {}: {e}",
                        path.display()
                    )
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    fn byte(&mut self) -> Result<Option<u8>> {
        let mut byte = [0u8];
        match self.stream.read(&mut byte) {
            Ok(0) => Ok(None),
            Ok(_) => Ok(Some(byte[0])),
            Err(e) if is_gone(&e) => Ok(None),
            Err(e) => Err(e).context("reading from QEMU's gdbstub"),
        }
    }

    /// Writes raw bytes; false if the guest has gone.
    fn send_raw(&mut self, bytes: &[u8]) -> Result<bool> {
        match self.stream.write_all(bytes) {
            Ok(()) => Ok(true),
            Err(e) if is_gone(&e) => {
                self.closed = true;
                Ok(false)
            }
            Err(e) => Err(e).context("writing to QEMU's gdbstub"),
        }
    }

    /// Sends `$body#checksum` and waits for its acknowledgement; false if the guest
    /// has gone.
    fn send(&mut self, body: &str) -> Result<bool> {
        let sum = body.bytes().fold(0u8, u8::wrapping_add);
        if !self.send_raw(format!("${body}#{sum:02x}").as_bytes())? {
            return Ok(false);
        }
        loop {
            match self.byte()? {
                Some(b'+') => return Ok(true),
                Some(b'-') => {
                    if !self.send_raw(format!("${body}#{sum:02x}").as_bytes())? {
                        return Ok(false);
                    }
                }
                Some(_) => {}
                None => {
                    self.closed = true;
                    return Ok(false);
                }
            }
        }
    }

    /// The next packet's body (acknowledged); `None` if the guest has gone.
    fn receive(&mut self) -> Result<Option<String>> {
        loop {
            match self.byte()? {
                Some(b'$') => break,
                Some(_) => {}
                None => {
                    self.closed = true;
                    return Ok(None);
                }
            }
        }
        let mut body = Vec::new();
        loop {
            match self.byte()? {
                Some(b'#') => break,
                Some(b) => body.push(b),
                None => {
                    self.closed = true;
                    return Ok(None);
                }
            }
        }
        // The two checksum digits; a local socket does not corrupt bytes.
        for _ in 0..2 {
            if self.byte()?.is_none() {
                self.closed = true;
                return Ok(None);
            }
        }
        if !self.send_raw(b"+")? {
            return Ok(None);
        }
        String::from_utf8(body)
            .map(Some)
            .context("QEMU's gdbstub sent a packet that is not text")
    }

    /// A request whose reply must arrive now; an error if the guest has gone.
    fn request(&mut self, body: &str) -> Result<String> {
        let gone = || anyhow::anyhow!("QEMU exited during an RTT read");
        if !self.send(body)? {
            return Err(gone());
        }
        let reply = self.receive()?.ok_or_else(gone)?;
        if reply.starts_with('E') {
            bail!("QEMU's gdbstub refused `{body}`: {reply}");
        }
        Ok(reply)
    }

    fn read_memory(&mut self, address: u64, len: u32) -> Result<Vec<u8>> {
        let reply = self.request(&format!("m{address:x},{len:x}"))?;
        let bytes = decode_hex(&reply)
            .with_context(|| format!("bad memory reply from QEMU's gdbstub: {reply:?}"))?;
        if bytes.len() != len as usize {
            bail!(
                "QEMU's gdbstub returned {} of {len} bytes at {address:#x}",
                bytes.len()
            );
        }
        Ok(bytes)
    }

    fn read_u32(&mut self, address: u64) -> Result<u32> {
        let b = self.read_memory(address, 4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn write_u32(&mut self, address: u64, value: u32) -> Result<()> {
        let hex: String = value
            .to_le_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let reply = self.request(&format!("M{address:x},4:{hex}"))?;
        if reply != "OK" {
            bail!("QEMU's gdbstub did not write {address:#x}: {reply:?}");
        }
        Ok(())
    }

    /// Lets the guest run; false if it has gone.
    fn resume(&mut self) -> Result<bool> {
        self.send("c")
    }

    /// Runs the stopped guest to the instruction at `address` (a breakpoint, removed
    /// once hit); false if the guest exited instead.
    fn run_to(&mut self, address: u64) -> Result<bool> {
        // Kind 2: a 16-bit Thumb breakpoint; QEMU's breakpoints do not patch memory.
        let reply = self.request(&format!("Z0,{address:x},2"))?;
        if reply != "OK" {
            bail!("QEMU's gdbstub set no breakpoint at {address:#x}: {reply:?}");
        }
        if !self.resume()? || !self.wait_for_stop()? {
            return Ok(false);
        }
        let reply = self.request(&format!("z0,{address:x},2"))?;
        if reply != "OK" {
            bail!("QEMU's gdbstub kept its breakpoint at {address:#x}: {reply:?}");
        }
        Ok(true)
    }

    /// Stops the running guest and waits for the stop reply; false if it exited
    /// instead (`W`/`X` reply, or the socket closed).
    fn interrupt(&mut self) -> Result<bool> {
        if !self.send_raw(&[0x03])? {
            return Ok(false);
        }
        self.wait_for_stop()
    }

    /// Waits until the guest stops (true) or exits (false).
    fn wait_for_stop(&mut self) -> Result<bool> {
        loop {
            match self.receive()? {
                None => return Ok(false),
                Some(reply) if reply.starts_with('W') || reply.starts_with('X') => {
                    return Ok(false)
                }
                Some(reply) if reply.starts_with('T') || reply.starts_with('S') => return Ok(true),
                Some(_) => {} // console output and other notifications
            }
        }
    }
}

fn is_gone(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::BrokenPipe | ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
    )
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn up_channel_fields_follow_the_pointer_width() {
        let arm = UpChannel::at(0x2000_0000, 4);
        assert_eq!(
            (arm.buffer, arm.size, arm.write, arm.read, arm.flags),
            (
                0x2000_001c,
                0x2000_0020,
                0x2000_0024,
                0x2000_0028,
                0x2000_002c
            )
        );
        let aarch64 = UpChannel::at(0x4000_0000, 8);
        assert_eq!(
            (aarch64.buffer, aarch64.size, aarch64.flags),
            (0x4000_0020, 0x4000_0028, 0x4000_0034)
        );
    }

    #[test]
    fn hex_replies_decode() {
        assert_eq!(decode_hex("00ff7a"), Some(vec![0, 255, 0x7a]));
        assert_eq!(decode_hex("0"), None);
        assert_eq!(decode_hex("zz"), None);
        assert_eq!(decode_hex("E01"), None);
    }
}
