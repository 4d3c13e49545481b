"""Checks an ONNX file from `tinyres export` with onnx.checker and onnxruntime.

usage: onnx_check.py MODEL.onnx INPUT.f32 LOGITS.f32

INPUT.f32 holds the normalised NCHW batch and LOGITS.f32 burn's logits for it, both
little-endian float32. Exit 0: they agree within 1e-4 of the logit range; 3: the
Python packages are missing; 1: anything else.
"""

import json
import sys

try:
    import numpy as np
    import onnx
    import onnxruntime as ort
except ImportError as error:
    print(f"missing Python package: {error.name}")
    sys.exit(3)

BUDGET = 1e-4

model_path, input_path, logits_path = sys.argv[1:4]
model = onnx.load(model_path)
onnx.checker.check_model(model, full_check=True)
metadata = {p.key: p.value for p in model.metadata_props}
for key in ("tinyres.mean", "tinyres.std", "tinyres.class_names", "tinyres.layout"):
    assert key in metadata, f"metadata lacks {key}"
assert [i.name for i in model.graph.input] == ["input"], model.graph.input
assert [o.name for o in model.graph.output] == ["logits"], model.graph.output

session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
channels = len(json.loads(metadata["tinyres.mean"]))
pixels = np.fromfile(input_path, dtype="<f4")
batch = pixels.reshape(-1, channels, 32, 32)
expected = np.fromfile(logits_path, dtype="<f4").reshape(batch.shape[0], -1)
(got,) = session.run(["logits"], {"input": batch})
diff = float(np.abs(got - expected).max())
span = float(expected.max() - expected.min())
print(
    f"onnx.checker: ok; onnxruntime {ort.__version__} vs burn on {batch.shape[0]} images: "
    f"max |diff| {diff:.2e} over a logit range of {span:.2f} ({diff / span:.1e} relative)"
)
if diff > BUDGET * span:
    sys.exit(1)
