//! Fuzzes the ONNX import with generated graphs rather than mutated bytes: the input
//! drives a small graph description (operators from what the import accepts and a few
//! it refuses, attributes, shapes and constants), which is written out with tract's own
//! protobuf types. The generator follows each value's shape, so most graphs are valid
//! ONNX and reach tract's analysis and our lowering instead of dying in protobuf
//! decoding; a `Twist` on a node bends one of its constants (the wrong rank, the wrong
//! length, a NaN) or one of its attributes, which is where the bugs were.
//!
//! As in `onnx_import`, a panic inside tract is an error of the import's (`tract_step`),
//! and any other panic aborts: it is ours.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use tinyres_compile::{import_onnx, PreprocessingFlags};
use tinyres_host_fuzz::{abort_on_panics_outside_tract, scratch_file};
use tract_onnx::pb::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto::dimension,
    tensor_shape_proto::Dimension, type_proto, AttributeProto, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto,
    ValueInfoProto,
};

/// At most this many nodes: a dozen small nodes keep one input to a millisecond.
const MAX_NODES: usize = 12;

#[derive(Arbitrary, Debug)]
struct Spec {
    /// NHWC input (then transposed to NCHW, as tf2onnx writes it), else NCHW.
    nhwc: bool,
    channels: u8,
    height: u8,
    width: u8,
    /// The opset: the import reads 9 to 18, and some operators moved attributes into
    /// inputs between them.
    opset: u8,
    nodes: Vec<NodeSpec>,
    /// Metadata the import reads (layout, normalisation, class names), as free text.
    metadata: Vec<(MetadataKey, String)>,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum MetadataKey {
    Layout,
    InputRange,
    Mean,
    Std,
    ClassNames,
    Data,
}

#[derive(Arbitrary, Debug)]
struct NodeSpec {
    op: Op,
    /// Which earlier value the node reads, counted back from the newest.
    input: u8,
    twist: Option<Twist>,
    /// Seeds the constants' values.
    values: u32,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Conv {
        out_channels: u8,
        kernel: u8,
        stride: u8,
        pads: [u8; 4],
        depthwise: bool,
        bias: bool,
    },
    BatchNormalization,
    Relu,
    Clip {
        min: i8,
        max: i8,
    },
    /// The residual add: with an earlier value of the same shape if there is one, else
    /// a constant per channel.
    Add {
        other: u8,
    },
    Mul,
    MaxPool {
        kernel: u8,
        stride: u8,
        pads: [u8; 4],
    },
    AveragePool {
        kernel: u8,
        stride: u8,
        pads: [u8; 4],
    },
    GlobalAveragePool,
    ReduceMean {
        keep_dims: bool,
    },
    Flatten,
    Gemm {
        outputs: u8,
        transposed: bool,
        bias: bool,
    },
    MatMul {
        outputs: u8,
    },
    /// Option A's subsampling: a strided Slice of rows and columns.
    Slice {
        start: u8,
        step: u8,
    },
    /// Option A's channel padding.
    PadChannels {
        before: u8,
        after: u8,
    },
    Reshape,
    /// One of the 24 permutations of four axes (a `Twist::Attribute` bends it).
    Transpose {
        permutation: u8,
    },
    Softmax {
        axis: i8,
    },
    /// An operator the engine has no equivalent for.
    Refused(RefusedOp),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum RefusedOp {
    Sigmoid,
    Tanh,
    Exp,
    Unknown,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Twist {
    /// The node's first constant gets rank 0, 1 or 5 instead of its own.
    Rank(u8),
    /// The node's first constant gets one element more or fewer on its first axis.
    Length(bool),
    /// Special values in every constant.
    Values(Special),
    /// The node's first integer attribute is replaced.
    Attribute(i64),
    /// The node reads the graph's input instead of its own.
    GraphInput,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Special {
    Nan,
    Infinity,
    Zero,
    Negative,
    Huge,
}

/// A value of the graph under construction: its name and its shape as far as the
/// generator follows it (`None`: unknown, after a twist).
struct Val {
    name: String,
    shape: Option<Vec<usize>>,
}

/// The graph under construction, and the input's choices pending for the node being
/// added: the seed of its constants' values, special values, a twist not yet applied.
struct Builder {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    values: Vec<Val>,
    rng: u32,
    special: Option<Special>,
    twist: Option<Twist>,
}

impl Builder {
    fn next_float(&mut self) -> f32 {
        // xorshift32: cheap, and the seed comes from the input.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 17;
        self.rng ^= self.rng << 5;
        match self.special {
            Some(Special::Nan) if self.rng % 7 == 0 => f32::NAN,
            Some(Special::Infinity) if self.rng % 7 == 0 => f32::INFINITY,
            Some(Special::Zero) => 0.0,
            Some(Special::Negative) => -((self.rng % 1000) as f32) / 500.0,
            Some(Special::Huge) => 3.0e38,
            _ => (self.rng % 2001) as f32 / 1000.0 - 1.0,
        }
    }

    /// A float constant of `dims`, bent by a pending `Rank` or `Length` twist.
    fn constant(&mut self, name: &str, dims: &[usize]) -> String {
        let mut dims: Vec<usize> = dims.to_vec();
        match self.twist.take() {
            Some(Twist::Rank(r)) => dims = vec![2; [0, 1, 5][usize::from(r % 3)]],
            Some(Twist::Length(longer)) if !dims.is_empty() => {
                dims[0] = if longer {
                    dims[0] + 1
                } else {
                    dims[0].saturating_sub(1)
                }
            }
            other => self.twist = other,
        }
        let count: usize = dims.iter().product();
        let float_data = (0..count).map(|_| self.next_float()).collect();
        self.initializers.push(TensorProto {
            name: name.into(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: DataType::Float as i32,
            float_data,
            ..Default::default()
        });
        name.into()
    }

    /// An int64 constant of rank 1 (the shapes, pads, starts and axes operators read).
    fn int_constant(&mut self, name: &str, values: &[i64]) -> String {
        self.initializers.push(TensorProto {
            name: name.into(),
            dims: vec![values.len() as i64],
            data_type: DataType::Int64 as i32,
            int64_data: values.to_vec(),
            ..Default::default()
        });
        name.into()
    }

    /// An integer attribute, or the pending `Attribute` twist's value instead.
    fn int(&mut self, name: &str, value: i64) -> AttributeProto {
        let value = match self.twist {
            Some(Twist::Attribute(v)) => {
                self.twist = None;
                v
            }
            _ => value,
        };
        AttributeProto {
            name: name.into(),
            r#type: AttributeType::Int as i32,
            i: value,
            ..Default::default()
        }
    }

    /// An integer list attribute, its first value replaced by a pending `Attribute` twist.
    fn ints(&mut self, name: &str, values: &[i64]) -> AttributeProto {
        let mut values = values.to_vec();
        if let (Some(Twist::Attribute(v)), Some(first)) = (self.twist, values.first_mut()) {
            self.twist = None;
            *first = v;
        }
        AttributeProto {
            name: name.into(),
            r#type: AttributeType::Ints as i32,
            ints: values,
            ..Default::default()
        }
    }

    fn node(
        &mut self,
        op: &str,
        inputs: Vec<String>,
        attribute: Vec<AttributeProto>,
        shape: Option<Vec<usize>>,
    ) {
        let name = format!("n{}", self.nodes.len());
        self.nodes.push(NodeProto {
            input: inputs,
            output: vec![name.clone()],
            name: name.clone(),
            op_type: op.into(),
            attribute,
            ..Default::default()
        });
        self.values.push(Val { name, shape });
    }
}

/// The output size of a window over `size` (`None` where the window does not fit).
fn windowed(size: usize, kernel: usize, stride: usize, pad: usize) -> Option<usize> {
    (size + pad >= kernel).then(|| (size + pad - kernel) / stride + 1)
}

fn add_node(b: &mut Builder, spec: &NodeSpec, opset: i64) {
    b.rng = spec.values | 1;
    b.special = match spec.twist {
        Some(Twist::Values(s)) => Some(s),
        _ => None,
    };
    b.twist = spec.twist;
    let index = match spec.twist {
        Some(Twist::GraphInput) => 0,
        _ => b.values.len() - 1 - usize::from(spec.input) % b.values.len(),
    };
    let x = b.values[index].name.clone();
    let shape = b.values[index].shape.clone();
    let id = b.nodes.len();
    // The image dimensions where the value is NCHW; (1, 1, 1, 1) stands in otherwise,
    // so that the node is still written, and tract or the import refuses it.
    let (c, h, w) = match shape.as_deref() {
        Some(&[_, c, h, w]) => (c, h, w),
        Some(&[_, n]) => (n, 1, 1),
        _ => (1, 1, 1),
    };
    match spec.op {
        Op::Conv {
            out_channels,
            kernel,
            stride,
            pads,
            depthwise,
            bias,
        } => {
            let k = 1 + usize::from(kernel % 7);
            let s = 1 + usize::from(stride % 3);
            let pads: Vec<usize> = pads.iter().map(|&p| usize::from(p % 4)).collect();
            let (out, group) = if depthwise {
                (c, c)
            } else {
                (1 + usize::from(out_channels % 16), 1)
            };
            let weight = b.constant(&format!("w{id}"), &[out, c / group.max(1), k, k]);
            let mut inputs = vec![x, weight];
            if bias {
                inputs.push(b.constant(&format!("b{id}"), &[out]));
            }
            let attrs = vec![
                b.ints("kernel_shape", &[k as i64, k as i64]),
                b.ints("strides", &[s as i64, s as i64]),
                b.ints("pads", &pads.iter().map(|&p| p as i64).collect::<Vec<_>>()),
                b.int("group", group as i64),
            ];
            let out_shape = windowed(h, k, s, pads[0] + pads[2])
                .zip(windowed(w, k, s, pads[1] + pads[3]))
                .map(|(oh, ow)| vec![1, out, oh, ow]);
            b.node("Conv", inputs, attrs, out_shape);
        }
        Op::BatchNormalization => {
            let stats: Vec<String> = ["scale", "bias", "mean", "var"]
                .iter()
                .map(|p| b.constant(&format!("{p}{id}"), &[c]))
                .collect();
            let attrs = vec![AttributeProto {
                name: "epsilon".into(),
                r#type: AttributeType::Float as i32,
                f: 1e-5,
                ..Default::default()
            }];
            b.node(
                "BatchNormalization",
                [vec![x], stats].concat(),
                attrs,
                shape,
            );
        }
        Op::Relu => b.node("Relu", vec![x], vec![], shape),
        Op::Clip { min, max } => {
            let mut inputs = vec![x];
            let mut attrs = vec![];
            let (min, max) = (f32::from(min) / 16.0, f32::from(max) / 16.0);
            if opset >= 11 {
                for (k, v) in [("min", min), ("max", max)] {
                    let name = format!("{k}{id}");
                    b.initializers.push(TensorProto {
                        name: name.clone(),
                        data_type: DataType::Float as i32,
                        float_data: vec![v],
                        ..Default::default()
                    });
                    inputs.push(name);
                }
            } else {
                for (k, v) in [("min", min), ("max", max)] {
                    attrs.push(AttributeProto {
                        name: k.into(),
                        r#type: AttributeType::Float as i32,
                        f: v,
                        ..Default::default()
                    });
                }
            }
            b.node("Clip", inputs, attrs, shape);
        }
        Op::Add { other } => {
            let same = b
                .values
                .iter()
                .rev()
                .skip(usize::from(other % 4))
                .find(|v| v.shape.is_some() && v.shape == shape && v.name != x)
                .map(|v| v.name.clone());
            let other = match same {
                Some(name) => name,
                None if shape.as_ref().is_some_and(|s| s.len() == 2) => {
                    b.constant(&format!("c{id}"), &[c])
                }
                None => b.constant(&format!("c{id}"), &[c, 1, 1]),
            };
            b.node("Add", vec![x, other], vec![], shape);
        }
        Op::Mul => {
            let other = b.constant(&format!("c{id}"), &[c, 1, 1]);
            b.node("Mul", vec![x, other], vec![], shape);
        }
        Op::MaxPool {
            kernel,
            stride,
            pads,
        }
        | Op::AveragePool {
            kernel,
            stride,
            pads,
        } => {
            let op = if matches!(spec.op, Op::MaxPool { .. }) {
                "MaxPool"
            } else {
                "AveragePool"
            };
            let k = 1 + usize::from(kernel % 4);
            let s = 1 + usize::from(stride % 3);
            let pads: Vec<usize> = pads.iter().map(|&p| usize::from(p % 3)).collect();
            let attrs = vec![
                b.ints("kernel_shape", &[k as i64, k as i64]),
                b.ints("strides", &[s as i64, s as i64]),
                b.ints("pads", &pads.iter().map(|&p| p as i64).collect::<Vec<_>>()),
            ];
            let out_shape = windowed(h, k, s, pads[0] + pads[2])
                .zip(windowed(w, k, s, pads[1] + pads[3]))
                .map(|(oh, ow)| vec![1, c, oh, ow]);
            b.node(op, vec![x], attrs, out_shape);
        }
        Op::GlobalAveragePool => {
            b.node("GlobalAveragePool", vec![x], vec![], Some(vec![1, c, 1, 1]))
        }
        Op::ReduceMean { keep_dims } => {
            let out = if keep_dims {
                vec![1, c, 1, 1]
            } else {
                vec![1, c]
            };
            let mut inputs = vec![x];
            let mut attrs = vec![b.int("keepdims", i64::from(keep_dims))];
            if opset >= 18 {
                inputs.push(b.int_constant(&format!("axes{id}"), &[2, 3]));
            } else {
                attrs.push(b.ints("axes", &[2, 3]));
            }
            b.node("ReduceMean", inputs, attrs, Some(out));
        }
        Op::Flatten => {
            let attrs = vec![b.int("axis", 1)];
            b.node("Flatten", vec![x], attrs, Some(vec![1, c * h * w]));
        }
        Op::Gemm {
            outputs,
            transposed,
            bias,
        } => {
            let n = c * h * w;
            let m = 1 + usize::from(outputs % 10);
            let dims = if transposed { [m, n] } else { [n, m] };
            let mut inputs = vec![x, b.constant(&format!("w{id}"), &dims)];
            if bias {
                inputs.push(b.constant(&format!("b{id}"), &[m]));
            }
            let attrs = vec![b.int("transB", i64::from(transposed))];
            b.node("Gemm", inputs, attrs, Some(vec![1, m]));
        }
        Op::MatMul { outputs } => {
            let n = c * h * w;
            let m = 1 + usize::from(outputs % 10);
            let weight = b.constant(&format!("w{id}"), &[n, m]);
            b.node("MatMul", vec![x, weight], vec![], Some(vec![1, m]));
        }
        Op::Slice { start, step } => {
            let start = i64::from(start % 2);
            let step = 1 + i64::from(step % 2);
            let (h, w) = (h as i64, w as i64);
            let starts = b.int_constant(&format!("starts{id}"), &[start, start]);
            let ends = b.int_constant(&format!("ends{id}"), &[h, w]);
            let axes = b.int_constant(&format!("axes{id}"), &[2, 3]);
            let steps = b.int_constant(&format!("steps{id}"), &[step, step]);
            let out = |n: i64| ((n - start).max(0) + step - 1) / step;
            let shape = Some(vec![1, c, out(h) as usize, out(w) as usize]);
            b.node("Slice", vec![x, starts, ends, axes, steps], vec![], shape);
        }
        Op::PadChannels { before, after } => {
            let (before, after) = (i64::from(before % 9), i64::from(after % 9));
            let pads = [0, before, 0, 0, 0, after, 0, 0];
            let pads = b.int_constant(&format!("pads{id}"), &pads);
            let shape = Some(vec![1, c + (before + after) as usize, h, w]);
            b.node("Pad", vec![x, pads], vec![], shape);
        }
        Op::Reshape => {
            let target = b.int_constant(&format!("shape{id}"), &[1, -1]);
            b.node("Reshape", vec![x, target], vec![], Some(vec![1, c * h * w]));
        }
        Op::Transpose { permutation } => {
            // The Lehmer code of `permutation % 24`.
            let mut axes = vec![0i64, 1, 2, 3];
            let mut code = usize::from(permutation % 24);
            let mut perm = Vec::with_capacity(4);
            for left in (1..=4).rev() {
                perm.push(axes.remove(code % left));
                code /= left;
            }
            let attrs = vec![b.ints("perm", &perm)];
            let perm = attrs[0].ints.clone();
            // A bent perm may name axes that do not exist: then the shape is unknown.
            let out = shape.as_ref().filter(|s| s.len() == 4).and_then(|s| {
                perm.iter()
                    .map(|&p| s.get(usize::try_from(p).ok()?).copied())
                    .collect()
            });
            b.node("Transpose", vec![x], attrs, out);
        }
        Op::Softmax { axis } => {
            let attrs = vec![b.int("axis", i64::from(axis % 5))];
            b.node("Softmax", vec![x], attrs, shape);
        }
        Op::Refused(op) => {
            let name = match op {
                RefusedOp::Sigmoid => "Sigmoid",
                RefusedOp::Tanh => "Tanh",
                RefusedOp::Exp => "Exp",
                RefusedOp::Unknown => "TinyresNoSuchOp",
            };
            b.node(name, vec![x], vec![], shape);
        }
    }
}

fn tensor_type(dims: &[i64]) -> Option<TypeProto> {
    let dim = dims
        .iter()
        .map(|&d| Dimension {
            value: Some(dimension::Value::DimValue(d)),
            ..Default::default()
        })
        .collect();
    Some(TypeProto {
        value: Some(type_proto::Value::TensorType(type_proto::Tensor {
            elem_type: DataType::Float as i32,
            shape: Some(TensorShapeProto { dim }),
        })),
        ..Default::default()
    })
}

fn model(spec: &Spec) -> ModelProto {
    let (c, h, w) = (
        1 + usize::from(spec.channels % 4),
        1 + usize::from(spec.height % 12),
        1 + usize::from(spec.width % 12),
    );
    let opset = 9 + i64::from(spec.opset % 10);
    let mut b = Builder {
        nodes: vec![],
        initializers: vec![],
        values: vec![],
        rng: 1,
        special: None,
        twist: None,
    };
    let input_dims = if spec.nhwc {
        [1, h, w, c]
    } else {
        [1, c, h, w]
    };
    b.values.push(Val {
        name: "input".into(),
        shape: Some(vec![1, c, h, w]),
    });
    if spec.nhwc {
        let perm = b.ints("perm", &[0, 3, 1, 2]);
        b.node(
            "Transpose",
            vec!["input".into()],
            vec![perm],
            Some(vec![1, c, h, w]),
        );
    }
    for node in spec.nodes.iter().take(MAX_NODES) {
        add_node(&mut b, node, opset);
    }
    let output = b
        .values
        .last()
        .map_or_else(|| "input".into(), |v| v.name.clone());
    let graph = GraphProto {
        node: b.nodes,
        name: "fuzz".into(),
        initializer: b.initializers,
        input: vec![ValueInfoProto {
            name: "input".into(),
            r#type: tensor_type(&input_dims.map(|d| d as i64)),
            ..Default::default()
        }],
        output: vec![ValueInfoProto {
            name: output,
            ..Default::default()
        }],
        ..Default::default()
    };
    let metadata_props = spec
        .metadata
        .iter()
        .map(|(key, value)| StringStringEntryProto {
            key: match key {
                MetadataKey::Layout => "tinyres.layout",
                MetadataKey::InputRange => "tinyres.input_range",
                MetadataKey::Mean => "tinyres.mean",
                MetadataKey::Std => "tinyres.std",
                MetadataKey::ClassNames => "tinyres.class_names",
                MetadataKey::Data => "tinyres.data",
            }
            .into(),
            value: value.clone(),
        })
        .collect();
    ModelProto {
        ir_version: 7,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: opset,
        }],
        graph: Some(graph),
        metadata_props,
        ..Default::default()
    }
}

fuzz_target!(
    init: {
        abort_on_panics_outside_tract();
    },
    |spec: Spec| {
        let bytes = model(&spec).encode_to_vec();
        let path = scratch_file("graph.onnx", &bytes);
        let _ = import_onnx(&path, &PreprocessingFlags::default());
    }
);
