//! A checked reader of FlatBuffers, the container format of `.tflite` files.
//!
//! Every offset and length is checked against the file before it is followed, as the
//! blob parser checks a `.trm`: a corrupt or hostile file gives an [`Error`] naming
//! what is wrong, never a read outside the bytes. Only what TFLite's schema uses is
//! read: tables, their scalar fields, and vectors of scalars, strings and tables.

use std::fmt;

/// What is wrong with a flatbuffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

fn fail<T>(msg: String) -> Result<T, Error> {
    Err(Error(msg))
}

/// `N` bytes at `at`, or an error naming `what`.
fn bytes_at<const N: usize>(buf: &[u8], at: usize, what: &str) -> Result<[u8; N], Error> {
    match at.checked_add(N).and_then(|end| buf.get(at..end)) {
        Some(b) => Ok(b.try_into().expect("the slice has N bytes")),
        None => fail(format!(
            "{what} at byte {at} runs past the end of the file ({} bytes)",
            buf.len()
        )),
    }
}

fn u32_at(buf: &[u8], at: usize, what: &str) -> Result<u32, Error> {
    bytes_at::<4>(buf, at, what).map(u32::from_le_bytes)
}

/// Follows the unsigned offset stored at `at` (relative to `at` itself).
fn follow(buf: &[u8], at: usize, what: &str) -> Result<usize, Error> {
    let relative = u32_at(buf, at, what)? as usize;
    match at.checked_add(relative) {
        Some(target) if target < buf.len() => Ok(target),
        _ => fail(format!(
            "{what}: the offset at byte {at} points past the end of the file"
        )),
    }
}

/// A table: a record whose fields are found through its vtable.
#[derive(Clone, Copy, Debug)]
pub struct Table<'a> {
    buf: &'a [u8],
    at: usize,
    /// Bytes of the table's inline part.
    len: usize,
    vtable: usize,
    vtable_len: usize,
    what: &'static str,
}

/// The table the file's root offset points to, after checking the file identifier.
pub fn root<'a>(buf: &'a [u8], identifier: &[u8; 4]) -> Result<Table<'a>, Error> {
    let found = bytes_at::<4>(buf, 4, "the file identifier")?;
    if &found != identifier {
        return fail(format!(
            "the file identifier is {:?}, not {:?}",
            String::from_utf8_lossy(&found),
            String::from_utf8_lossy(identifier)
        ));
    }
    let at = follow(buf, 0, "the root table")?;
    Table::new(buf, at, "the root table")
}

impl<'a> Table<'a> {
    fn new(buf: &'a [u8], at: usize, what: &'static str) -> Result<Self, Error> {
        let soffset = i32::from_le_bytes(bytes_at::<4>(buf, at, what)?);
        let vtable = at as i64 - i64::from(soffset);
        if vtable < 0 || vtable as u64 > buf.len() as u64 {
            return fail(format!(
                "{what} at byte {at}: its vtable lies outside the file"
            ));
        }
        let vtable = vtable as usize;
        let vtable_len = usize::from(u16::from_le_bytes(bytes_at::<2>(buf, vtable, what)?));
        let len = usize::from(u16::from_le_bytes(bytes_at::<2>(buf, vtable + 2, what)?));
        if vtable_len < 4 || vtable_len % 2 != 0 || vtable + vtable_len > buf.len() {
            return fail(format!(
                "{what} at byte {at}: its vtable of {vtable_len} bytes is malformed"
            ));
        }
        if len < 4 || at + len > buf.len() {
            return fail(format!(
                "{what} at byte {at}: its {len} bytes run past the end of the file"
            ));
        }
        Ok(Table {
            buf,
            at,
            len,
            vtable,
            vtable_len,
            what,
        })
    }

    /// Where field `id`'s value lies, `None` when the field is absent, after checking
    /// that its `size` bytes lie inside the table.
    fn field(&self, id: usize, size: usize) -> Result<Option<usize>, Error> {
        let slot = 4 + 2 * id;
        if slot + 2 > self.vtable_len {
            return Ok(None);
        }
        let offset = usize::from(u16::from_le_bytes(bytes_at::<2>(
            self.buf,
            self.vtable + slot,
            self.what,
        )?));
        if offset == 0 {
            return Ok(None);
        }
        if offset + size > self.len {
            return fail(format!(
                "{} at byte {}: field {id} lies outside the table",
                self.what, self.at
            ));
        }
        Ok(Some(self.at + offset))
    }

    fn scalar<const N: usize>(&self, id: usize) -> Result<Option<[u8; N]>, Error> {
        self.field(id, N)?
            .map(|at| bytes_at::<N>(self.buf, at, self.what))
            .transpose()
    }

    /// A `ubyte`/`byte`/`bool` field.
    pub fn u8(&self, id: usize, default: u8) -> Result<u8, Error> {
        Ok(self.scalar::<1>(id)?.map_or(default, |b| b[0]))
    }

    /// An `int` field.
    pub fn i32(&self, id: usize, default: i32) -> Result<i32, Error> {
        Ok(self.scalar::<4>(id)?.map_or(default, i32::from_le_bytes))
    }

    /// A `uint` field.
    pub fn u32(&self, id: usize, default: u32) -> Result<u32, Error> {
        Ok(self.scalar::<4>(id)?.map_or(default, u32::from_le_bytes))
    }

    /// A `ulong` field.
    pub fn u64(&self, id: usize, default: u64) -> Result<u64, Error> {
        Ok(self.scalar::<8>(id)?.map_or(default, u64::from_le_bytes))
    }

    /// A `float` field.
    pub fn f32(&self, id: usize, default: f32) -> Result<f32, Error> {
        Ok(self.scalar::<4>(id)?.map_or(default, f32::from_le_bytes))
    }

    /// Where the offset field `id` points, `None` when absent.
    fn target(&self, id: usize) -> Result<Option<usize>, Error> {
        self.field(id, 4)?
            .map(|at| follow(self.buf, at, self.what))
            .transpose()
    }

    /// A table field.
    pub fn table(&self, id: usize, what: &'static str) -> Result<Option<Table<'a>>, Error> {
        self.target(id)?
            .map(|at| Table::new(self.buf, at, what))
            .transpose()
    }

    /// A vector field whose elements are `element_size` bytes.
    pub fn vector(
        &self,
        id: usize,
        element_size: usize,
        what: &'static str,
    ) -> Result<Option<Vector<'a>>, Error> {
        self.target(id)?
            .map(|at| Vector::new(self.buf, at, element_size, what))
            .transpose()
    }

    /// A string field (invalid UTF-8 is replaced).
    pub fn string(&self, id: usize, what: &'static str) -> Result<Option<String>, Error> {
        Ok(self
            .vector(id, 1, what)?
            .map(|v| String::from_utf8_lossy(v.bytes()).into_owned()))
    }
}

/// A vector: a length, then its elements.
#[derive(Clone, Copy, Debug)]
pub struct Vector<'a> {
    buf: &'a [u8],
    start: usize,
    len: usize,
    element_size: usize,
    what: &'static str,
}

impl<'a> Vector<'a> {
    fn new(
        buf: &'a [u8],
        at: usize,
        element_size: usize,
        what: &'static str,
    ) -> Result<Self, Error> {
        let len = u32_at(buf, at, what)? as usize;
        let start = at + 4;
        let end = len
            .checked_mul(element_size)
            .and_then(|bytes| start.checked_add(bytes));
        match end {
            Some(end) if end <= buf.len() => Ok(Vector {
                buf,
                start,
                len,
                element_size,
                what,
            }),
            _ => fail(format!(
                "{what} at byte {at}: {len} elements of {element_size} bytes run past the end of the file"
            )),
        }
    }

    /// Elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The elements' bytes.
    pub fn bytes(&self) -> &'a [u8] {
        &self.buf[self.start..self.start + self.len * self.element_size]
    }

    /// The elements as little-endian `N`-byte values.
    fn chunks<const N: usize>(&self) -> impl Iterator<Item = [u8; N]> + 'a {
        debug_assert_eq!(N, self.element_size);
        self.bytes()
            .chunks_exact(N)
            .map(|c| c.try_into().expect("chunks of N bytes"))
    }

    /// An `[int]`.
    pub fn i32s(&self) -> Vec<i32> {
        self.chunks::<4>().map(i32::from_le_bytes).collect()
    }

    /// A `[long]`.
    pub fn i64s(&self) -> Vec<i64> {
        self.chunks::<8>().map(i64::from_le_bytes).collect()
    }

    /// A `[float]`.
    pub fn f32s(&self) -> Vec<f32> {
        self.chunks::<4>().map(f32::from_le_bytes).collect()
    }

    /// Element `i` of a vector of tables.
    pub fn table(&self, i: usize, what: &'static str) -> Result<Table<'a>, Error> {
        if i >= self.len {
            return fail(format!("{}: no element {i} of {}", self.what, self.len));
        }
        let at = follow(self.buf, self.start + 4 * i, self.what)?;
        Table::new(self.buf, at, what)
    }
}
