//! Row-streamed groups of convolutions (FORMAT.md, "Streamed groups").
//!
//! A group is a run of consecutive convolution layers whose outputs, except the
//! last's, are *row windows*: buffers that hold a few rows of a tensor, not all of
//! it. The group's last layer writes a whole tensor a few rows at a time (as many as
//! its windows hold the inputs of); each step pulls the rows it needs through the
//! windows, computing a window row once, when it is first needed, and dropping the rows
//! no later row needs. A residual block so needs
//! its input, a few rows of its intermediate tensors and its output, and the output
//! may be written over input rows that nothing reads any more (in place for an
//! identity block, packed towards the start for a stride-2 block). The input image can
//! be a window too: its rows are then normalised from the caller's pixels when the
//! first layer needs them, and the image is never copied whole into the arena.
//!
//! [`Group::run`] produces the steps in order; the engine executes them, and
//! [`crate::Model::parse`] replays them without data to prove that no step reads bytes
//! an earlier step of the group overwrote. Both follow this one schedule.

use core::ops::Range;

use crate::error::Error;
use crate::format::MAX_STREAM_GROUP as MAX_GROUP;
use crate::model::{Conv, Layer, Model, TensorInfo};

/// Where a group's layer reads a tensor from.
#[derive(Clone, Copy, Debug)]
enum Source {
    /// The group's window `k` (the output of its layer `k − 1`, or the image for 0).
    Window(usize),
    /// A whole tensor written before the group.
    Whole(TensorInfo),
}

/// A layer of the group and where its inputs come from.
#[derive(Clone, Copy, Debug)]
struct Member<'m> {
    conv: Conv<'m>,
    input: Source,
    residual: Option<Source>,
}

/// What a window holds now: rows `first..first + rows` of its tensor, in order from
/// the start of its buffer.
#[derive(Clone, Copy, Debug)]
struct Window {
    tensor: TensorInfo,
    first: usize,
    rows: usize,
}

impl Window {
    /// Arena bytes of tensor rows `rows`, which the window holds (or is being given).
    fn bytes(&self, rows: Range<usize>) -> Range<usize> {
        let row = self.tensor.row_bytes();
        let start = self.tensor.arena_offset + (rows.start - self.first) * row;
        start..start + rows.len() * row
    }
}

/// One step of a streamed group, in the order the group runs them; it borrows what
/// it describes for the step's duration (`'s`).
#[derive(Clone, Debug)]
pub(crate) enum Step<'s, 'm> {
    /// Copy arena bytes `from` down to offset `to` (a window dropping its first rows).
    Shift { from: Range<usize>, to: usize },
    /// Normalise (and quantize) rows `rows` of the input image into `output`.
    ImageRows {
        rows: Range<usize>,
        output: Range<usize>,
    },
    /// Compute one output row of a convolution.
    ConvRow(ConvRow<'s, 'm>),
}

/// Output rows of a convolution of a group, computed in one kernel call.
#[derive(Clone, Debug)]
pub(crate) struct ConvRow<'s, 'm> {
    /// The layer's index.
    pub layer: u16,
    /// The layer.
    pub conv: &'s Conv<'m>,
    /// Its input tensor (for the kernel's shape: width, channels, zero point).
    pub input_tensor: &'s TensorInfo,
    /// Arena bytes of the contiguous input rows the output rows read.
    pub input: Range<usize>,
    /// How many rows that is.
    pub input_rows: usize,
    /// How many output rows.
    pub output_rows: usize,
    /// Zero rows above them in the kernel window (the layer's top padding at its
    /// first rows, otherwise 0).
    pub pad_top: usize,
    /// Arena bytes of the rows written.
    pub output: Range<usize>,
    /// The tensor the rows belong to.
    pub output_tensor: &'s TensorInfo,
    /// The shortcut rows a residual layer adds (every row from the first one the
    /// output rows read to the last), and their tensor.
    pub residual: Option<(Range<usize>, &'s TensorInfo)>,
}

/// A streamed group, decoded once per run.
pub(crate) struct Group<'m> {
    /// Index of its first layer.
    first: u16,
    /// Its layers, `first` on.
    members: [Option<Member<'m>>; MAX_GROUP],
    /// Number of layers.
    len: usize,
    /// Window `k`: tensor `first + k` (the image, when the group starts at layer 0 and
    /// the plan streams it, then the outputs of all its layers but the last).
    windows: [Option<Window>; MAX_GROUP],
    /// The whole tensor its last layer writes.
    output: TensorInfo,
}

impl<'m> Group<'m> {
    /// No group yet: [`Self::decode`] fills it.
    pub(crate) const EMPTY: Self = Group {
        first: 0,
        members: [None; MAX_GROUP],
        len: 0,
        windows: [None; MAX_GROUP],
        output: TensorInfo::EMPTY,
    };

    /// The group that layer `first` starts ([`Model::starts_group`] says whether it
    /// does).
    pub(crate) fn new(model: &Model<'m>, first: u16) -> Result<Self, Error> {
        let mut group = Self::EMPTY;
        group.decode(model, first)?;
        Ok(group)
    }

    /// Makes this the group that layer `first` starts, in place: the engine keeps one
    /// group (a kilobyte) for the whole run, where a returned group would take a
    /// second kilobyte of the stack while it is moved.
    pub(crate) fn decode(&mut self, model: &Model<'m>, first: u16) -> Result<(), Error> {
        let fail = |what| Error::StreamConflict { layer: first, what };
        *self = Self::EMPTY;
        self.first = first;
        self.output = model.tensor(first)?;
        let group = self;
        let image = model.tensor(first)?;
        if image.is_window() {
            if first != 0 {
                return Err(fail("only the image may be a window before a group"));
            }
            group.windows[0] = Some(Window {
                tensor: image,
                first: 0,
                rows: 0,
            });
        }
        for k in 0..MAX_GROUP {
            let i = first + k as u16;
            if i >= model.num_layers() {
                break;
            }
            let Layer::Conv(conv) = model.layer(i)? else {
                return Err(fail("a streamed group holds convolutions only"));
            };
            let source = |t: u16| -> Result<Source, Error> {
                match t.checked_sub(first).map(usize::from) {
                    Some(slot) if slot <= k && group.windows[slot].is_some() => {
                        Ok(Source::Window(slot))
                    }
                    _ => {
                        let info = model.tensor(t)?;
                        if info.is_window() {
                            Err(fail("a layer reads a window of another group"))
                        } else {
                            Ok(Source::Whole(info))
                        }
                    }
                }
            };
            group.members[k] = Some(Member {
                conv,
                input: source(conv.input)?,
                residual: conv.residual.map(|r| source(r.tensor)).transpose()?,
            });
            group.len = k + 1;
            let out = model.tensor(i + 1)?;
            if !out.is_window() {
                group.output = out;
                return group.check_single_readers();
            }
            if k + 1 < MAX_GROUP {
                group.windows[k + 1] = Some(Window {
                    tensor: out,
                    first: 0,
                    rows: 0,
                });
            }
        }
        Err(fail(
            "a streamed group must end within 4 layers in a layer writing a whole tensor",
        ))
    }

    /// Each window is read exactly once in the group (by one layer, as its input or
    /// its shortcut): its rows are then needed in increasing order.
    fn check_single_readers(&self) -> Result<(), Error> {
        for (slot, window) in self.windows.iter().enumerate() {
            if window.is_none() {
                continue;
            }
            let reads = self
                .members
                .iter()
                .flatten()
                .flat_map(|m| [Some(m.input), m.residual])
                .flatten()
                .filter(|s| matches!(s, Source::Window(k) if *k == slot))
                .count();
            if reads != 1 {
                return Err(Error::StreamConflict {
                    layer: self.first + slot as u16,
                    what: "a row window must have exactly one reader",
                });
            }
        }
        Ok(())
    }

    /// Index of the group's first layer.
    pub(crate) fn first(&self) -> u16 {
        self.first
    }

    /// The group's windows, with their tensor indices.
    pub(crate) fn windows(&self) -> [Option<(u16, TensorInfo)>; MAX_GROUP] {
        let mut out = [None; MAX_GROUP];
        for (k, w) in self.windows.iter().enumerate() {
            out[k] = w.map(|w| (self.first + k as u16, w.tensor));
        }
        out
    }

    /// The whole tensors the group reads (each layer's input and shortcut that is not
    /// a window), with their indices.
    pub(crate) fn whole_inputs(&self) -> [Option<(u16, TensorInfo)>; 2 * MAX_GROUP] {
        let mut out = [None; 2 * MAX_GROUP];
        for (k, m) in self.members.iter().enumerate() {
            let Some(m) = m else { continue };
            if let Source::Whole(t) = m.input {
                out[2 * k] = Some((m.conv.input, t));
            }
            if let (Some(Source::Whole(t)), Some(r)) = (m.residual, m.conv.residual) {
                out[2 * k + 1] = Some((r.tensor, t));
            }
        }
        out
    }

    /// Whether the group quantizes the image's rows itself (its first window is the
    /// image).
    pub(crate) fn reads_image(&self) -> bool {
        self.windows[0].is_some()
    }

    /// Whether a layer of the group adds a residual.
    pub(crate) fn adds_residual(&self) -> bool {
        self.members.iter().flatten().any(|m| m.residual.is_some())
    }

    /// Index of the group's last layer.
    pub(crate) fn last(&self) -> u16 {
        self.first + self.len as u16 - 1
    }

    /// The whole tensor the group writes.
    pub(crate) fn output(&self) -> TensorInfo {
        self.output
    }

    /// Produces the group's steps: every row of its last layer's output, in order, as
    /// many rows a step as its windows allow.
    pub(crate) fn run(
        &mut self,
        exec: &mut dyn FnMut(Step<'_, 'm>) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let row = self.output.row_bytes();
        let last = self.len - 1;
        let mut r = 0;
        while r < self.output.height {
            let n = self.rows_per_step(last)?.min(self.output.height - r);
            let start = self.output.arena_offset + r * row;
            self.conv_rows(last, r..r + n, start..start + n * row, self.output, exec)?;
            r += n;
        }
        Ok(())
    }

    /// How many output rows layer `k` can compute in one step: as many as the windows
    /// it reads hold the rows of (a whole tensor does not limit it).
    fn rows_per_step(&self, k: usize) -> Result<usize, Error> {
        let member = self.member(k)?;
        let window = |source: Source| match source {
            Source::Window(j) => self.windows[j].map(|w| w.tensor),
            Source::Whole(_) => None,
        };
        let mut rows = usize::MAX;
        if let Some(t) = window(member.input).filter(|t| t.is_window()) {
            let (kernel, stride) = (member.conv.kernel_h, member.conv.stride);
            rows = rows.min(t.rows_held.saturating_sub(kernel) / stride + 1);
        }
        if let (Some(source), Some(r)) = (member.residual, member.conv.residual) {
            if let Some(t) = window(source).filter(|t| t.is_window()) {
                rows = rows.min(t.rows_held.saturating_sub(1) / r.stride + 1);
            }
        }
        Ok(rows)
    }

    fn member(&self, k: usize) -> Result<Member<'m>, Error> {
        self.members
            .get(k)
            .copied()
            .flatten()
            .ok_or(Error::StreamConflict {
                layer: self.first + k as u16,
                what: "not in the group",
            })
    }

    /// Makes window `k` hold tensor rows `rows` (dropping the rows before them,
    /// computing the missing ones) and returns their arena bytes.
    fn ensure(
        &mut self,
        k: usize,
        rows: Range<usize>,
        exec: &mut dyn FnMut(Step<'_, 'm>) -> Result<(), Error>,
    ) -> Result<Range<usize>, Error> {
        let layer = self.first + k as u16;
        let fail = |what| Error::StreamConflict { layer, what };
        let mut w = self.windows[k].ok_or(fail("not a window"))?;
        if rows.start < w.first {
            return Err(fail("a window row is needed again after it was dropped"));
        }
        let held = w.first + w.rows;
        if rows.start > w.first {
            let kept = held.saturating_sub(rows.start);
            if kept > 0 {
                exec(Step::Shift {
                    from: w.bytes(rows.start..held),
                    to: w.tensor.arena_offset,
                })?;
            }
            w.first = rows.start;
            w.rows = kept;
        }
        while w.first + w.rows < rows.end {
            if w.rows == w.tensor.rows_held {
                return Err(fail("a row window holds fewer rows than its reader needs"));
            }
            let q = w.first + w.rows;
            let producer_rows = match k {
                0 => usize::MAX,
                _ => self.rows_per_step(k - 1)?,
            };
            let n = (rows.end - q)
                .min(w.tensor.rows_held - w.rows)
                .min(producer_rows);
            let slot = w.bytes(q..q + n);
            if k == 0 {
                exec(Step::ImageRows {
                    rows: q..q + n,
                    output: slot,
                })?;
            } else {
                // Window k is written by the group's layer k − 1, which may pull rows
                // through the windows before it (never this one).
                self.conv_rows(k - 1, q..q + n, slot, w.tensor, exec)?;
            }
            w.rows += n;
        }
        self.windows[k] = Some(w);
        Ok(w.bytes(rows))
    }

    /// Computes rows `rows` of the output of the group's layer `k` into `output`.
    fn conv_rows(
        &mut self,
        k: usize,
        rows: Range<usize>,
        output: Range<usize>,
        output_tensor: TensorInfo,
        exec: &mut dyn FnMut(Step<'_, 'm>) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let layer = self.first + k as u16;
        let member = self.member(k)?;
        let conv = member.conv;
        let input_tensor = self.tensor(member.input);
        // Rows q·stride − pad_top .. + kernel_h of the padded input for each output
        // row q, clipped to it.
        let top = rows.start * conv.stride;
        let bottom = (rows.end - 1) * conv.stride + conv.kernel_h;
        let first = top.saturating_sub(conv.padding[0]);
        let end = bottom
            .saturating_sub(conv.padding[0])
            .min(input_tensor.height);
        if rows.is_empty() || first >= end {
            return Err(Error::StreamConflict {
                layer,
                what: "an output row reads only padding",
            });
        }
        let input = self.rows(member.input, first..end, exec)?;
        let residual = match (member.residual, conv.residual) {
            (Some(source), Some(r)) => {
                let shortcut_rows = rows.start * r.stride..(rows.end - 1) * r.stride + 1;
                Some((self.rows(source, shortcut_rows, exec)?, self.tensor(source)))
            }
            _ => None,
        };
        exec(Step::ConvRow(ConvRow {
            layer,
            conv: &conv,
            input_tensor: &input_tensor,
            input,
            input_rows: end - first,
            output_rows: rows.len(),
            pad_top: conv.padding[0].saturating_sub(top),
            output,
            output_tensor: &output_tensor,
            residual: residual.as_ref().map(|(bytes, t)| (bytes.clone(), t)),
        }))
    }

    /// Arena bytes of rows `rows` of a source, computing them first for a window.
    fn rows(
        &mut self,
        source: Source,
        rows: Range<usize>,
        exec: &mut dyn FnMut(Step<'_, 'm>) -> Result<(), Error>,
    ) -> Result<Range<usize>, Error> {
        match source {
            Source::Window(k) => self.ensure(k, rows, exec),
            Source::Whole(t) => {
                let row = t.row_bytes();
                Ok(t.arena_offset + rows.start * row..t.arena_offset + rows.end * row)
            }
        }
    }

    fn tensor(&self, source: Source) -> TensorInfo {
        match source {
            Source::Whole(t) => t,
            // Every window slot a member names exists (see `new`).
            Source::Window(k) => self.windows[k].map_or(self.output, |w| w.tensor),
        }
    }
}
