"""Writes small int8 TensorFlow Lite ResNets with the flatbuffers package alone (no
TensorFlow): the TFLite import's own test models and the `tflite_import` fuzz seeds.

usage: make_tflite.py OUT_DIR

- `tiny_resnet_int8.tflite`: 8x8x3 int8 input (scale 1, zero point -128); a ReLU
  convolution, a residual block (CONV_2D, CONV_2D, ADD with ReLU), a PAD folded into a
  stride-2 VALID convolution with a fused RELU6, MAX_POOL_2D, a global
  AVERAGE_POOL_2D, RESHAPE, FULLY_CONNECTED, SOFTMAX. Weights are seeded random,
  per-channel symmetric; every activation's scale and zero point come from its range
  over 64 seeded random images (float64 forward pass of the dequantized weights), as
  TFLite's converter calibrates.
- `tiny_float_io_int8.tflite`: the same network behind a float32 input (QUANTIZE) and
  output (DEQUANTIZE).
- `tiny_mean_int8.tflite`: the global AVERAGE_POOL_2D and RESHAPE replaced by a MEAN
  over height and width (what newer converters emit for GlobalAveragePooling2D) whose
  output has a quantization of its own.
- `tiny_with_tanh.tflite`: a TANH after the first convolution (refused: no engine
  equivalent).
- `tiny_int16_activations.tflite`: the first convolution's output typed INT16
  (refused).
"""

import os
import sys

import flatbuffers
import numpy as np

# TensorType, BuiltinOperator, BuiltinOptions (union index) and Padding codes of
# TFLite's schema.fbs.
FLOAT32, INT32, INT8, INT16 = 0, 2, 9, 7
ADD, AVERAGE_POOL_2D, CONV_2D, DEQUANTIZE = 0, 1, 3, 6
FULLY_CONNECTED, MAX_POOL_2D, RESHAPE, SOFTMAX = 9, 17, 22, 25
TANH, PAD, MEAN, QUANTIZE = 28, 34, 40, 114
OPT_CONV, OPT_POOL, OPT_FC, OPT_SOFTMAX, OPT_ADD, OPT_RESHAPE = 1, 5, 8, 9, 11, 17
SAME, VALID = 0, 1
NONE, RELU, RELU6 = 0, 1, 3

rng = np.random.default_rng(7)


class Graph:
    def __init__(self):
        self.tensors = []  # (name, shape, type, data bytes or None, scales, zero points, dim)
        self.ops = []  # (code, inputs, outputs, options (union type, builder fn))

    def tensor(self, name, shape, ttype, data=None, scales=None, zps=None, dim=0):
        self.tensors.append((name, shape, ttype, data, scales, zps, dim))
        return len(self.tensors) - 1

    def op(self, code, inputs, outputs, options=None):
        self.ops.append((code, inputs, outputs, options))


def quant_params(lo, hi):
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = np.float32((hi - lo) / 255.0 if hi > lo else 1.0)
    zp = int(np.clip(round(-128 - lo / float(scale)), -128, 127))
    return scale, zp


def conv_weights(out_c, k, in_c):
    w = rng.normal(0, (2.0 / (k * k * in_c)) ** 0.5, (out_c, k, k, in_c))
    scales = (np.abs(w).reshape(out_c, -1).max(1) / 127).astype(np.float32)
    q = np.clip(np.round(w / scales[:, None, None, None]), -127, 127).astype(np.int8)
    b = rng.normal(0, 0.1, out_c)
    return q, scales, b


def conv_float(x, q, scales, b, stride, pads):
    """x: HWC float; pads: (top, left, bottom, right)."""
    w = q.astype(np.float64) * scales[:, None, None, None]
    x = np.pad(x, ((pads[0], pads[2]), (pads[1], pads[3]), (0, 0)))
    out_c, k = w.shape[0], w.shape[1]
    oh = (x.shape[0] - k) // stride + 1
    ow = (x.shape[1] - k) // stride + 1
    y = np.zeros((oh, ow, out_c))
    for i in range(oh):
        for j in range(ow):
            patch = x[i * stride:i * stride + k, j * stride:j * stride + k, :]
            y[i, j] = np.tensordot(w, patch, axes=([1, 2, 3], [0, 1, 2])) + b
    return y


def build(variant):
    g = Graph()
    images = rng.integers(0, 256, (64, 8, 8, 3)).astype(np.float64)
    float_io = variant == "float_io"
    if float_io:
        x_in = g.tensor("input_float", [1, 8, 8, 3], FLOAT32)
        x = g.tensor("input", [1, 8, 8, 3], INT8, scales=[1.0], zps=[-128])
        g.op(QUANTIZE, [x_in], [x])
    else:
        x = g.tensor("input", [1, 8, 8, 3], INT8, scales=[1.0], zps=[-128])
    in_scale = np.float32(1.0)
    acts = images

    def conv(name, src, src_scale, acts, out_c, k, stride, padding, act, pads=(1, 1, 1, 1),
             out_type=INT8):
        q, scales, b = conv_weights(out_c, k, acts.shape[-1])
        bias_scales = (np.float32(src_scale) * scales).astype(np.float32)
        qb = np.round(b / bias_scales).astype(np.int32)
        b_real = qb * bias_scales.astype(np.float64)
        ys = np.stack([conv_float(a, q, scales, b_real, stride, pads) for a in acts])
        if act in (RELU, RELU6):
            ys = np.maximum(ys, 0)
        if act == RELU6:
            lo, hi = 0.0, 6.0
        else:
            lo, hi = ys.min(), ys.max()
        s, z = quant_params(lo, hi)
        w = g.tensor(name + "/w", list(q.shape), INT8, q.tobytes(), list(scales), [0] * out_c)
        bt = g.tensor(name + "/b", [out_c], INT32, qb.tobytes(), list(bias_scales), [0] * out_c)
        out = g.tensor(name, [1, ys.shape[1], ys.shape[2], out_c], out_type, scales=[s], zps=[z])
        g.op(CONV_2D, [src, w, bt], [out], (OPT_CONV, ("conv", padding, stride, act)))
        return out, s, z, ys

    a, sa, za, ya = conv("conv0", x, in_scale, acts, 8, 3, 1, SAME, RELU,
                         out_type=INT16 if variant == "int16" else INT8)
    if variant == "tanh":
        t = g.tensor("tanh", [1, 8, 8, 8], INT8, scales=[np.float32(1 / 128)], zps=[0])
        g.op(TANH, [a], [t])
        a = t
    bq, sb, zb, yb = conv("block/conv", a, sa, ya, 8, 3, 1, SAME, NONE)
    ysum = np.maximum(ya + yb, 0)
    s, z = quant_params(0.0, ysum.max())
    c = g.tensor("block/add", [1, 8, 8, 8], INT8, scales=[s], zps=[z])
    g.op(ADD, [a, bq], [c], (OPT_ADD, ("add", RELU)))
    pad_shape = g.tensor("pads", [4, 2], INT32, np.array([[0, 0], [1, 1], [1, 1], [0, 0]], np.int32).tobytes())
    p = g.tensor("padded", [1, 10, 10, 8], INT8, scales=[s], zps=[z])
    g.op(PAD, [c, pad_shape], [p])
    d, sd, zd, yd = conv("down", p, s, np.pad(ysum, ((0, 0), (1, 1), (1, 1), (0, 0))), 16, 3, 2,
                         VALID, RELU6, pads=(0, 0, 0, 0))
    m = g.tensor("maxpool", [1, 2, 2, 16], INT8, scales=[sd], zps=[zd])
    g.op(MAX_POOL_2D, [d], [m], (OPT_POOL, ("pool", VALID, 2, 2)))
    ym = yd.reshape(-1, 2, 2, 2, 2, 16).max(axis=(2, 4))
    yg = ym.mean(axis=(1, 2))
    if variant == "mean":
        sg, zg = quant_params(yg.min(), yg.max())
        axes = g.tensor("axes", [2], INT32, np.array([1, 2], np.int32).tobytes())
        r = g.tensor("mean", [1, 16], INT8, scales=[sg], zps=[zg])
        g.op(MEAN, [m, axes], [r])
        sd = sg
    else:
        gp = g.tensor("gap", [1, 1, 1, 16], INT8, scales=[sd], zps=[zd])
        g.op(AVERAGE_POOL_2D, [m], [gp], (OPT_POOL, ("pool", VALID, 2, 2)))
        shape = g.tensor("shape", [2], INT32, np.array([1, 16], np.int32).tobytes())
        r = g.tensor("flat", [1, 16], INT8, scales=[sd], zps=[zd])
        g.op(RESHAPE, [gp, shape], [r], (OPT_RESHAPE, ("reshape", [1, 16])))
    wf = rng.normal(0, 0.05, (4, 16))
    swf = np.float32(np.abs(wf).max() / 127)
    qwf = np.clip(np.round(wf / swf), -127, 127).astype(np.int8)
    bias_scale = np.float32(np.float32(sd) * swf)
    qbf = np.round(rng.normal(0, 0.1, 4) / bias_scale).astype(np.int32)
    yf = yg @ (qwf.astype(np.float64) * swf).T + qbf * float(bias_scale)
    sf, zf = quant_params(yf.min(), yf.max())
    wt = g.tensor("fc/w", [4, 16], INT8, qwf.tobytes(), [swf], [0])
    bt = g.tensor("fc/b", [4], INT32, qbf.tobytes(), [bias_scale], [0])
    f = g.tensor("logits", [1, 4], INT8, scales=[sf], zps=[zf])
    g.op(FULLY_CONNECTED, [r, wt, bt], [f], (OPT_FC, ("fc",)))
    sm = g.tensor("probabilities", [1, 4], INT8, scales=[np.float32(1 / 256)], zps=[-128])
    g.op(SOFTMAX, [f], [sm], (OPT_SOFTMAX, ("softmax", 1.0)))
    if float_io:
        out = g.tensor("output", [1, 4], FLOAT32)
        g.op(DEQUANTIZE, [sm], [out])
        return g, x_in, out
    return g, x, sm


def serialize(g, graph_input, graph_output):
    b = flatbuffers.Builder(1024)

    def int_vector(values, width=4):
        b.StartVector(width, len(values), width)
        for v in reversed(values):
            (b.PrependInt32 if width == 4 else b.PrependInt64)(int(v))
        return b.EndVector()

    def float_vector(values):
        b.StartVector(4, len(values), 4)
        for v in reversed(values):
            b.PrependFloat32(float(v))
        return b.EndVector()

    def offset_vector(offsets):
        b.StartVector(4, len(offsets), 4)
        for o in reversed(offsets):
            b.PrependUOffsetTRelative(o)
        return b.EndVector()

    def table(fields):
        """fields: (slot, kind, value) with kind 'i32', 'u32', 'u8', 'f32', 'off'."""
        b.StartObject(max(s for s, _, _ in fields) + 1 if fields else 0)
        for slot, kind, value in fields:
            {"i32": b.PrependInt32Slot, "u32": b.PrependUint32Slot, "u8": b.PrependUint8Slot,
             "f32": b.PrependFloat32Slot, "off": b.PrependUOffsetTRelativeSlot}[kind](
                slot, value, 0)
        return b.EndObject()

    buffers = [table([])]  # buffer 0: empty, by convention
    tensors = []
    for name, shape, ttype, data, scales, zps, dim in g.tensors:
        buffer = 0
        if data is not None:
            b.StartVector(1, len(data), 16)
            for byte in reversed(data):
                b.PrependUint8(byte)
            buffers.append(table([(0, "off", b.EndVector())]))
            buffer = len(buffers) - 1
        quant = None
        if scales is not None:
            quant = table([(2, "off", float_vector(scales)), (3, "off", int_vector(zps, 8)),
                           (6, "i32", dim)])
        fields = [(0, "off", int_vector(shape)), (1, "u8", ttype), (2, "u32", buffer),
                  (3, "off", b.CreateString(name))]
        if quant is not None:
            fields.append((4, "off", quant))
        tensors.append(table(fields))
    codes = sorted({op[0] for op in g.ops})
    opcode_tables = [table([(0, "u8", min(c, 127)), (2, "i32", 1), (3, "i32", c)]) for c in codes]
    operators = []
    for code, inputs, outputs, options in g.ops:
        fields = [(0, "u32", codes.index(code)), (1, "off", int_vector(inputs)),
                  (2, "off", int_vector(outputs))]
        if options is not None:
            union, spec = options
            kind = spec[0]
            if kind == "conv":
                _, padding, stride, act = spec
                opt = table([(0, "u8", padding), (1, "i32", stride), (2, "i32", stride),
                             (3, "u8", act), (4, "i32", 1), (5, "i32", 1)])
            elif kind == "pool":
                _, padding, size, stride = spec
                opt = table([(0, "u8", padding), (1, "i32", stride), (2, "i32", stride),
                             (3, "i32", size), (4, "i32", size)])
            elif kind == "add":
                opt = table([(0, "u8", spec[1])])
            elif kind == "fc":
                opt = table([])
            elif kind == "softmax":
                opt = table([(0, "f32", spec[1])])
            elif kind == "reshape":
                opt = table([(0, "off", int_vector(spec[1]))])
            fields += [(3, "u8", union), (4, "off", opt)]
        operators.append(table(fields))
    subgraph = table([(0, "off", offset_vector(tensors)), (1, "off", int_vector([graph_input])),
                      (2, "off", int_vector([graph_output])),
                      (3, "off", offset_vector(operators)), (4, "off", b.CreateString("main"))])
    model = table([(0, "u32", 3), (1, "off", offset_vector(opcode_tables)),
                   (2, "off", offset_vector([subgraph])),
                   (3, "off", b.CreateString("tinyres tests/models/make_tflite.py")),
                   (4, "off", offset_vector(buffers))])
    b.Finish(model, file_identifier=b"TFL3")
    return bytes(b.Output())


out_dir = sys.argv[1]
os.makedirs(out_dir, exist_ok=True)
for variant, name in [("plain", "tiny_resnet_int8"), ("float_io", "tiny_float_io_int8"),
                      ("mean", "tiny_mean_int8"), ("tanh", "tiny_with_tanh"), ("int16", "tiny_int16_activations")]:
    rng = np.random.default_rng(7)
    graph, graph_input, graph_output = build(variant)
    with open(os.path.join(out_dir, name + ".tflite"), "wb") as f:
        f.write(serialize(graph, graph_input, graph_output))
