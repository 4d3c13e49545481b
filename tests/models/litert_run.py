"""Runs a TensorFlow Lite model with LiteRT's reference kernels: the oracle of the
TFLite import's tests.

usage: litert_run.py MODEL.tflite INPUT.bin OUTPUT.bin

INPUT.bin holds a batch of inputs of the model's input type and shape, one after the
other (raw little-endian bytes: int8 for an int8 input); OUTPUT.bin receives the
model's output for each, in its own type. The interpreter uses the BUILTIN_REF op
resolver: TFLite's reference kernels, which TFLite Micro runs too (the default
resolver's XNNPACK rounds differently). Exit 3: ai-edge-litert or numpy is not
installed.
"""

import sys

try:
    import numpy as np
    from ai_edge_litert import __version__ as litert_version
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
except ImportError as error:
    print(f"missing Python package: {error.name}")
    sys.exit(3)

model_path, input_path, output_path = sys.argv[1:4]
interpreter = Interpreter(
    model_path=model_path,
    experimental_op_resolver_type=OpResolverType.BUILTIN_REF,
)
interpreter.allocate_tensors()
source = interpreter.get_input_details()[0]
sink = interpreter.get_output_details()[0]
shape = list(source["shape"])
batch = np.fromfile(input_path, dtype=source["dtype"]).reshape([-1] + shape[1:])
outputs = []
for item in batch:
    interpreter.set_tensor(source["index"], item[np.newaxis])
    interpreter.invoke()
    outputs.append(interpreter.get_tensor(sink["index"]).copy())
np.concatenate(outputs).tofile(output_path)
print(f"LiteRT {litert_version} (BUILTIN_REF): {len(batch)} inputs")
