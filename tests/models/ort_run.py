"""Runs an ONNX model with onnxruntime: the compile tests' independent reader.

usage: ort_run.py MODEL.onnx INPUT.f32 OUTPUT.f32

INPUT.f32 holds a batch of inputs in the model's own layout (little-endian float32),
OUTPUT.f32 receives its first output (a model of fixed batch size runs in slices of
it). Exit 3: onnx or onnxruntime is not installed.
"""

import sys

try:
    import numpy as np
    import onnx
    import onnxruntime as ort
except ImportError as error:
    print(f"missing Python package: {error.name}")
    sys.exit(3)

model_path, input_path, output_path = sys.argv[1:4]
onnx.checker.check_model(onnx.load(model_path), full_check=True)
session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
meta = session.get_inputs()[0]
# A fixed batch size (PyTorch's default export has batch 1) is run in slices of it.
fixed = meta.shape[0] if isinstance(meta.shape[0], int) else None
shape = [-1] + [d if isinstance(d, int) else -1 for d in meta.shape[1:]]
batch = np.fromfile(input_path, dtype="<f4").reshape(shape)
step = fixed or len(batch)
output = np.concatenate([
    session.run([session.get_outputs()[0].name], {meta.name: batch[i:i + step]})[0]
    for i in range(0, len(batch), step)
])
output.astype("<f4").tofile(output_path)
print(f"onnxruntime {ort.__version__}: {batch.shape[0]} inputs")
