"""Exports torchvision's own ResNet-18 and ResNet-50 (randomly initialised, with batch
norm statistics that are not the identity) at 224x224 with both of PyTorch's exporters,
for the compile test `torchvision_resnets_at_224_match_onnxruntime` (45 to 100 MB each:
not committed).

usage: python3 tests/models/torchvision_export.py DIR   (needs torch, torchvision, onnxscript)
"""
import os
import sys

import torch
import torchvision

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
torch.manual_seed(0)
for name in ["resnet18", "resnet50"]:
    net = getattr(torchvision.models, name)(weights=None).eval()
    # Non-trivial batch norm statistics, so that folding is exercised.
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1); m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5); m.bias.data.uniform_(-0.1, 0.1)
    for exporter in ["torchscript", "dynamo"]:
        path = f"{out}/{name}_{exporter}.onnx"
        torch.onnx.export(net, (torch.zeros(1, 3, 224, 224),), path, input_names=["input"], output_names=["logits"],
                          opset_version=18, dynamo=exporter == "dynamo", external_data=False)
        print(path, os.path.getsize(path))
