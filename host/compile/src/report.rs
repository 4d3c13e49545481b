//! What a model blob holds, layer by layer: the report `tinyres inspect` and
//! `tinyres plan` print, as a text table or JSON.

use std::fmt::Write as _;
use std::ops::RangeInclusive;

use anyhow::Result;
use serde::Serialize;
use tinyres_core::{DType, Layer, Model, Weights};

/// One layer of a model.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LayerReport {
    /// Position in the layer list.
    pub index: usize,
    /// Short description: `conv3x3/2`, `conv1x1 +add(A)`, `gap`, `dense`.
    pub op: String,
    /// Input `[height, width, channels]`.
    pub input: [usize; 3],
    /// Output `[height, width, channels]`.
    pub output: [usize; 3],
    /// Multiply-accumulates.
    pub macs: u64,
    /// Weights and biases.
    pub params: u64,
    /// Bytes of weights, biases, requantization data and Winograd filters in the blob.
    pub weight_bytes: u64,
    /// Bytes of the output activation buffer.
    pub activation_bytes: u64,
    /// Offset of the output buffer in the arena.
    pub arena_offset: u64,
    /// Rows the output buffer holds when it is a row window of a streamed group
    /// (`None`: the whole tensor).
    pub window_rows: Option<usize>,
    /// The first layer of the streamed group this layer runs in, if any.
    pub group: Option<usize>,
    /// Arena bytes in use while the layer runs (its inputs, its output and whatever
    /// later layers still need; a streamed group's buffers for all of its layers).
    pub live_bytes: u64,
}

/// A whole model.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ModelReport {
    /// `f32`, `f16` or `int8`.
    pub dtype: String,
    /// Input `[height, width, channels]`.
    pub input: [usize; 3],
    /// Number of classes.
    pub classes: usize,
    /// Class names, if the blob has them.
    pub class_names: Vec<String>,
    /// Per-layer rows.
    pub layers: Vec<LayerReport>,
    /// Total weights and biases.
    pub params: u64,
    /// Total multiply-accumulates per inference.
    pub macs: u64,
    /// Bytes of the blob (what goes to flash).
    pub flash_bytes: u64,
    /// Bytes of the activation arena (the memory plan's peak).
    pub arena_bytes: u64,
    /// The layer where the most arena bytes are in use.
    pub peak_layer: usize,
    /// The image is not copied into the arena: the first layer reads its rows from
    /// the caller's pixels.
    pub streamed_image: bool,
}

/// Reads the structure of a validated model.
pub fn describe(model: &Model<'_>) -> Result<ModelReport> {
    let dtype = model.dtype();
    let shape = |t: u16| -> Result<[usize; 3]> {
        let t = model.tensor(t)?;
        Ok([t.height, t.width, t.channels])
    };
    let groups = streamed_groups(model)?;
    let live = live_bytes(model, &groups)?;
    let mut layers = Vec::new();
    for i in 0..model.num_layers() {
        let layer = model.layer(i)?;
        let (input, _) = layer.inputs();
        let in_shape = shape(input)?;
        let out_t = model.tensor(layer.output())?;
        let out_shape = [out_t.height, out_t.width, out_t.channels];
        let out_len = out_t.len() as u64;
        let parameter_bytes = |weights: Weights<'_>, bias: usize, requant: bool| {
            (weights.byte_len() + 4 * bias + if requant { 8 * bias } else { 0 }) as u64
        };
        let (op, macs, params, weight_bytes) = match layer {
            Layer::Conv(c) => {
                let mut op = format!("conv{}x{}", c.kernel_h, c.kernel_w);
                if c.stride != 1 {
                    write!(op, "/{}", c.stride)?;
                }
                if c.winograd.is_some() {
                    op.push_str(" winograd");
                }
                if c.relu {
                    op.push_str(" relu");
                }
                if let Some(r) = c.residual {
                    let option = if r.stride != 1 || r.channel_offset != 0 {
                        "A"
                    } else {
                        "id"
                    };
                    write!(op, " +add({option}) t{}", r.tensor)?;
                    if r.relu {
                        op.push_str(" relu");
                    }
                }
                let macs = out_len * (c.kernel_h * c.kernel_w * in_shape[2]) as u64;
                let n = (c.weights.len() + c.bias.len()) as u64;
                let bytes = parameter_bytes(c.weights, c.bias.len(), c.requant.is_some())
                    + c.winograd.map_or(0, <[u8]>::len) as u64;
                (op, macs, n, bytes)
            }
            Layer::MaxPool(p) => (
                format!("maxpool {}x{}/{}", p.kernel_h, p.kernel_w, p.stride),
                out_len * (p.kernel_h * p.kernel_w) as u64,
                0,
                0,
            ),
            Layer::GlobalAvgPool { .. } => (
                "gap".to_string(),
                (in_shape.iter().product::<usize>()) as u64,
                0,
                0,
            ),
            Layer::Dense(d) => {
                let op = if d.relu { "dense relu" } else { "dense" }.to_string();
                let n = (d.weights.len() + d.bias.len()) as u64;
                let bytes = parameter_bytes(d.weights, d.bias.len(), d.requant.is_some());
                (op, d.weights.len() as u64, n, bytes)
            }
            Layer::Softmax(_) => ("softmax".to_string(), out_len, 0, 0),
            Layer::Mean(_) => (
                "mean".to_string(),
                (in_shape.iter().product::<usize>()) as u64,
                0,
                0,
            ),
        };
        // An int8 model's classifier head runs in f32 (see `Network::f32_head`).
        let op = if dtype == DType::Int8 && out_t.float {
            op + " (f32)"
        } else {
            op
        };
        layers.push(LayerReport {
            index: usize::from(i),
            op,
            input: in_shape,
            output: out_shape,
            macs,
            params,
            weight_bytes,
            activation_bytes: out_len * out_t.element_bytes() as u64,
            arena_offset: out_t.arena_offset as u64,
            window_rows: out_t.is_window().then_some(out_t.rows_held),
            group: groups
                .iter()
                .find(|g| g.contains(&usize::from(i)))
                .map(|g| *g.start()),
            live_bytes: live[usize::from(i)],
        });
    }
    let (h, w, c) = model.input_shape();
    Ok(ModelReport {
        dtype: dtype_name(dtype).to_string(),
        input: [h, w, c],
        classes: model.num_classes(),
        class_names: (0..model.num_classes())
            .filter_map(|i| model.class_name(i).map(str::to_string))
            .collect(),
        params: layers.iter().map(|l| l.params).sum(),
        macs: layers.iter().map(|l| l.macs).sum(),
        flash_bytes: model.blob_size() as u64,
        arena_bytes: model.arena_size() as u64,
        peak_layer: layers
            .iter()
            .max_by_key(|l| (l.live_bytes, std::cmp::Reverse(l.index)))
            .map_or(0, |l| l.index),
        streamed_image: model.tensor(0)?.is_window(),
        layers,
    })
}

/// The streamed groups of a model, as layer ranges.
fn streamed_groups(model: &Model<'_>) -> Result<Vec<RangeInclusive<usize>>> {
    let mut groups = Vec::new();
    let mut i = 0;
    while i < model.num_layers() {
        if model.starts_group(i)? {
            let mut last = i;
            while model.tensor(last + 1)?.is_window() {
                last += 1;
            }
            groups.push(usize::from(i)..=usize::from(last));
            i = last + 1;
        } else {
            i += 1;
        }
    }
    Ok(groups)
}

/// Arena bytes in use while each layer runs: the union of the buffers of the tensors
/// alive then. A tensor lives from the layer that writes it (the image: from the
/// start) to the last that reads it (the logits and the features: to the end); in a
/// streamed group, every buffer the group touches lives through all of its layers.
fn live_bytes(model: &Model<'_>, groups: &[RangeInclusive<usize>]) -> Result<Vec<u64>> {
    let layers = usize::from(model.num_layers());
    // Steps: layer k runs at step k + 1; step 0 writes the image.
    let mut lifetime: Vec<(usize, usize)> = (0..=layers).map(|t| (t, t)).collect();
    for k in 0..layers {
        let (a, b) = model.layer(k as u16)?.inputs();
        for t in std::iter::once(a).chain(b) {
            let t = usize::from(t);
            lifetime[t].1 = lifetime[t].1.max(k + 1);
            if let Some(g) = groups.iter().find(|g| g.contains(&k)) {
                lifetime[t].1 = lifetime[t].1.max(g.end() + 1);
                if t > *g.start() {
                    lifetime[t].0 = g.start() + 1;
                }
            }
        }
    }
    lifetime[layers].1 = layers + 1;
    if let Some(f) = model.features_tensor() {
        lifetime[usize::from(f)].1 = layers + 1;
    }
    let mut live = Vec::with_capacity(layers);
    for step in 1..=layers {
        let mut ranges: Vec<(usize, usize)> = Vec::new();
        for (t, &(first, last)) in lifetime.iter().enumerate() {
            if first <= step && step <= last {
                let info = model.tensor(t as u16)?;
                ranges.push((info.arena_offset, info.arena_offset + info.buffer_bytes()));
            }
        }
        ranges.sort_unstable();
        let (mut total, mut reach) = (0, 0);
        for (start, end) in ranges {
            let start = start.max(reach);
            if end > start {
                total += end - start;
                reach = end;
            }
        }
        live.push(total as u64);
    }
    Ok(live)
}

/// The lower-case name of a dtype, as the command line spells it.
pub fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::Int8 => "int8",
    }
}

/// Bytes as `12,345 B (12.1 KiB)`.
pub fn bytes(n: u64) -> String {
    format!("{} B ({:.1} KiB)", thousands(n), n as f64 / 1024.0)
}

/// `12345678` as `12,345,678`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

impl ModelReport {
    /// The report as an aligned text table with totals.
    pub fn to_table(&self) -> String {
        let mut s = String::new();
        let dims = |d: &[usize; 3]| format!("{}x{}x{}", d[0], d[1], d[2]);
        let _ = writeln!(
            s,
            "{:>3}  {:<28} {:>10} {:>10} {:>12} {:>9} {:>10} {:>9} {:>8} {:>10}",
            "#",
            "op",
            "input",
            "output",
            "MACs",
            "params",
            "weight B",
            "out rows",
            "offset",
            "live B"
        );
        for l in &self.layers {
            let rows = match l.window_rows {
                Some(r) => format!("{r} of {}", l.output[0]),
                None => "all".to_string(),
            };
            let group = match l.group {
                Some(g) => format!(" [{g}]"),
                None => String::new(),
            };
            let peak = if l.index == self.peak_layer {
                " <- peak"
            } else {
                ""
            };
            let _ = writeln!(
                s,
                "{:>3}  {:<28} {:>10} {:>10} {:>12} {:>9} {:>10} {:>9} {:>8} {:>10}{peak}",
                l.index,
                format!("{}{group}", l.op),
                dims(&l.input),
                dims(&l.output),
                thousands(l.macs),
                thousands(l.params),
                thousands(l.weight_bytes),
                rows,
                l.arena_offset,
                thousands(l.live_bytes),
            );
        }
        let _ = writeln!(s);
        let _ = writeln!(s, "dtype        {}", self.dtype);
        let _ = writeln!(
            s,
            "input        {}, {} classes",
            dims(&self.input),
            self.classes
        );
        let _ = writeln!(s, "parameters   {}", thousands(self.params));
        let _ = writeln!(s, "MACs         {}", thousands(self.macs));
        let _ = writeln!(s, "flash        {}", bytes(self.flash_bytes));
        let _ = writeln!(
            s,
            "arena peak   {}, at layer {}",
            bytes(self.arena_bytes),
            self.peak_layer
        );
        let groups = self
            .layers
            .iter()
            .filter(|l| l.group == Some(l.index))
            .count();
        if groups > 0 {
            let image = if self.streamed_image {
                "; the image is read row by row from the caller's buffer"
            } else {
                ""
            };
            let _ = writeln!(
                s,
                "streamed     {groups} groups run row by row ([n]: the group's first layer){image}"
            );
        }
        s
    }
}

/// One step of an inference as the device profiled it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct StepProfile {
    /// `input` (quantizing the pixels), or the layer's op as in [`LayerReport::op`].
    pub op: String,
    /// The layer's index (a streamed group's first layer), `None` for the input
    /// step.
    pub layer: Option<usize>,
    /// A streamed group's last layer: its layers run interleaved, row by row, and are
    /// one step (`None` for a single layer).
    pub group_end: Option<usize>,
    /// Multiply-accumulates of the step.
    pub macs: u64,
    /// Instructions the step took (including one counter read, a few instructions).
    pub instructions: u64,
    /// The step's cycles as the board's cycle model estimates them, where it has one.
    pub cycles: Option<u64>,
    /// `macs / instructions`.
    pub macs_per_instruction: f64,
    /// Share of the whole inference's instructions.
    pub share: f64,
}

/// The device's per-step counts (`steps[0]` the input, `steps[i + 1]` layer `i`), and
/// their estimated cycles where the board has a cycle model, joined with the model's
/// layers; an error if the counts do not cover every layer. A streamed group's layers
/// are one row: the device counts the group at its first layer (its other layers read
/// a few instructions, the counter's own).
pub fn profile(
    model: &ModelReport,
    steps: &[u64],
    cycles: Option<&[u64]>,
) -> Result<Vec<StepProfile>> {
    anyhow::ensure!(
        steps.len() == model.layers.len() + 1,
        "the device profiled {} steps; the model has {} layers and the input",
        steps.len(),
        model.layers.len()
    );
    anyhow::ensure!(
        cycles.is_none_or(|c| c.len() == steps.len()),
        "cycles for {} steps, instructions for {}",
        cycles.map_or(0, <[u64]>::len),
        steps.len()
    );
    let cycles_of = |step: usize| cycles.map(|c| c[step]);
    let total: u64 = steps.iter().sum();
    let row = |op: String, layer: Option<usize>, macs: u64, step: usize| StepProfile {
        op,
        layer,
        group_end: None,
        macs,
        instructions: steps[step],
        cycles: cycles_of(step),
        macs_per_instruction: 0.0,
        share: 0.0,
    };
    let mut rows = vec![row("input".to_string(), None, 0, 0)];
    for (step, l) in (1..).zip(&model.layers) {
        match rows.last_mut() {
            Some(group) if l.group.is_some() && group.layer == l.group => {
                group.op = format!("{} + {}", group.op, l.op);
                group.group_end = Some(l.index);
                group.macs += l.macs;
                group.instructions += steps[step];
                group.cycles = group.cycles.zip(cycles_of(step)).map(|(a, b)| a + b);
            }
            _ => rows.push(row(l.op.clone(), Some(l.index), l.macs, step)),
        }
    }
    for r in &mut rows {
        r.macs_per_instruction = r.macs as f64 / r.instructions.max(1) as f64;
        r.share = r.instructions as f64 / total.max(1) as f64;
    }
    Ok(rows)
}

/// A profile as an aligned text table with its total; with estimated cycles and MACs
/// per cycle where the rows have them.
pub fn profile_table(rows: &[StepProfile]) -> String {
    let estimated = rows.iter().all(|r| r.cycles.is_some());
    let mut s = String::new();
    let _ = write!(
        s,
        "{:>5}  {:<28} {:>12} {:>14} {:>9} {:>7}",
        "layer", "op", "MACs", "instructions", "MAC/inst", "share"
    );
    if estimated {
        let _ = write!(s, " {:>14} {:>10}", "cycles (est.)", "MAC/cycle");
    }
    let _ = writeln!(s);
    let line = |s: &mut String,
                layer: String,
                op: &str,
                macs: u64,
                instructions: u64,
                share: f64,
                cycles: Option<u64>| {
        let _ = write!(
            s,
            "{layer:>5}  {op:<28} {:>12} {:>14} {:>9.2} {:>6.1}%",
            thousands(macs),
            thousands(instructions),
            macs as f64 / instructions.max(1) as f64,
            100.0 * share
        );
        if let (true, Some(c)) = (estimated, cycles) {
            let _ = write!(
                s,
                " {:>14} {:>10.2}",
                thousands(c),
                macs as f64 / c.max(1) as f64
            );
        }
        let _ = writeln!(s);
    };
    for r in rows {
        let layer = match (r.layer, r.group_end) {
            (None, _) => "-".to_string(),
            (Some(i), None) => i.to_string(),
            (Some(i), Some(end)) => format!("{i}-{end}"),
        };
        line(
            &mut s,
            layer,
            &r.op,
            r.macs,
            r.instructions,
            r.share,
            r.cycles,
        );
    }
    let macs: u64 = rows.iter().map(|r| r.macs).sum();
    let instructions: u64 = rows.iter().map(|r| r.instructions).sum();
    let cycles = rows.iter().map(|r| r.cycles).sum::<Option<u64>>();
    line(
        &mut s,
        String::new(),
        "total",
        macs,
        instructions,
        1.0,
        cycles,
    );
    s
}
