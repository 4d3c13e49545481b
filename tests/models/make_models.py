"""Makes the small foreign ONNX models that the compile tests read (committed beside
this script, so the tests need neither torch nor a download).

- torch_option_a.onnx, torch_option_b.onnx: NCHW ResNets exported by
  `torch.onnx.export` (PyTorch's spelling: BatchNormalization nodes, option A as a
  strided Slice + channel Pad, Gemm), widths 8/16/32, one basic block per stage,
  inputs normalised with mean 0.5 and std 0.25.
- torch_imagenet_{basic,bottleneck}_{torchscript,dynamo}.onnx: the ImageNet layout
  (torchvision's ResNet: 7x7/2 stem, 3x3/2 max pool, option B) at 32x32 with narrow
  stages, basic and bottleneck blocks, from both of PyTorch's exporters; ImageNet's
  mean and std.
- keras_nhwc.onnx: an NHWC network spelled as tf2onnx writes Keras models (raw 0..255
  input, Transpose to NCHW, Conv with folded batch norm, Relu, Add, ReduceMean over
  rows and columns, MatMul + Add, Softmax), built with onnx.helper.
- bad_*.onnx: what `compile` must refuse (an unsupported op, a symbolic image size,
  a graph that is not a classifier).

usage: python3 tests/models/make_models.py   (needs torch, torchvision, onnxscript, onnx, numpy)
"""

import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
rng = np.random.default_rng(7)


def randomize_batch_norm(net):
    """Batch norm with statistics that are not the identity, so that folding shows."""
    import torch.nn as nn

    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)


def torch_models():
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    torch.manual_seed(3)

    class Block(nn.Module):
        def __init__(self, cin, cout, stride, option):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.option, self.stride, self.pad = option, stride, cout - cin
            self.proj = None
            if option == "B" and (stride != 1 or cin != cout):
                self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
            if self.proj is not None:
                s = self.proj(x)
            elif self.pad or self.stride != 1:
                s = x[:, :, :: self.stride, :: self.stride]
                s = F.pad(s, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
            else:
                s = x
            return F.relu(y + s)

    class Net(nn.Module):
        def __init__(self, option):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
            self.bn = nn.BatchNorm2d(8)
            self.blocks = nn.Sequential(Block(8, 8, 1, option), Block(8, 16, 2, option), Block(16, 32, 2, option))
            self.fc = nn.Linear(32, 10)

        def forward(self, x):
            x = self.blocks(F.relu(self.bn(self.conv(x))))
            return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))

    for option in "AB":
        net = Net(option)
        randomize_batch_norm(net)
        net.eval()
        path = os.path.join(HERE, f"torch_option_{option.lower()}.onnx")
        torch.onnx.export(
            net, torch.zeros(1, 3, 32, 32), path, input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}}, opset_version=13, dynamo=False,
            # Keep BatchNormalization nodes (eval mode would fold them into the convolutions).
            training=torch.onnx.TrainingMode.PRESERVE,
        )
        model = onnx.load(path)
        for key, value in [("tinyres.input_range", "0..1"), ("tinyres.mean", "[0.5, 0.5, 0.5]"),
                           ("tinyres.std", "[0.25, 0.25, 0.25]")]:
            model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
        onnx.save(model, path)


def torch_imagenet_models():
    """The ImageNet ResNets' layout (torchvision's `ResNet`: 7x7/2 stem, batch norm, ReLU,
    3x3/2 max pool, four stages, option-B 1x1 projections, global average pool, Linear)
    at MCU size: 32x32 inputs (CIFAR-10 size), narrow stages, one block each; basic and bottleneck
    blocks, exported by the TorchScript exporter and by the dynamo exporter."""
    import torch
    import torch.nn as nn
    from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1

    class SmallResNet(nn.Module):
        """torchvision's ResNet with stage widths of our choosing (its own are fixed at
        64-128-256-512): the same modules, in the same order."""

        def __init__(self, block, widths, num_classes=10):
            super().__init__()
            self.inplanes = widths[0]
            self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(widths[0])
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            self.layer1 = self._make_layer(block, widths[0], 1)
            self.layer2 = self._make_layer(block, widths[1], 2)
            self.layer3 = self._make_layer(block, widths[2], 2)
            self.layer4 = self._make_layer(block, widths[3], 2)
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(widths[3] * block.expansion, num_classes)

        def _make_layer(self, block, planes, stride):
            downsample = None
            if stride != 1 or self.inplanes != planes * block.expansion:
                downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                           nn.BatchNorm2d(planes * block.expansion))
            layer = block(self.inplanes, planes, stride, downsample)
            self.inplanes = planes * block.expansion
            return nn.Sequential(layer)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    torch.manual_seed(5)
    for kind, block, widths in [("basic", BasicBlock, [4, 8, 16, 32]), ("bottleneck", Bottleneck, [2, 4, 8, 16])]:
        net = SmallResNet(block, widths)
        randomize_batch_norm(net)
        net.eval()
        for exporter in ["torchscript", "dynamo"]:
            path = os.path.join(HERE, f"torch_imagenet_{kind}_{exporter}.onnx")
            torch.onnx.export(
                net, (torch.zeros(1, 3, 32, 32),), path, input_names=["input"], output_names=["logits"],
                opset_version=18, dynamo=exporter == "dynamo", external_data=False,
                # TorchScript: BatchNormalization nodes kept (the spelling that failed
                # in the lowering before); dynamo folds them.
                **({} if exporter == "dynamo" else {"training": torch.onnx.TrainingMode.PRESERVE}),
            )
            model = onnx.load(path)
            for key, value in [("tinyres.input_range", "0..1"), ("tinyres.mean", "[0.485, 0.456, 0.406]"),
                               ("tinyres.std", "[0.229, 0.224, 0.225]")]:
                model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
            onnx.save(model, path)


def const(name, array):
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def keras_nhwc():
    """tf2onnx's spelling of a small Keras ResNet (TF 'same' padding, raw pixels)."""
    nodes, inits = [], []

    def conv(x, cin, cout, k, stride, name, pads):
        w = rng.normal(0, np.sqrt(2 / (cin * k * k)) / 16, (cout, cin, k, k))
        inits.extend([const(f"{name}_w", w), const(f"{name}_b", rng.normal(0, 0.1, cout))])
        nodes.append(helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [name], kernel_shape=[k, k],
                                      strides=[stride, stride], pads=pads, dilations=[1, 1]))
        return name

    def relu(x, name):
        nodes.append(helper.make_node("Relu", [x], [name]))
        return name

    nodes.append(helper.make_node("Transpose", ["input_1"], ["nchw"], perm=[0, 3, 1, 2]))
    x = relu(conv("nchw", 3, 8, 3, 1, "stem", [1, 1, 1, 1]), "stem_relu")
    y = relu(conv(x, 8, 16, 3, 2, "b1c1", [0, 0, 1, 1]), "b1c1_relu")
    y = conv(y, 16, 16, 3, 1, "b1c2", [1, 1, 1, 1])
    s = conv(x, 8, 16, 1, 2, "b1proj", [0, 0, 0, 0])
    nodes.append(helper.make_node("Add", [s, y], ["b1add"]))
    x = relu("b1add", "b1_relu")
    nodes.append(helper.make_node("ReduceMean", [x], ["pooled"], axes=[2, 3], keepdims=0))
    inits.extend([const("dense_w", rng.normal(0, 0.3, (16, 10))), const("dense_b", rng.normal(0, 0.1, 10))])
    nodes.append(helper.make_node("MatMul", ["pooled", "dense_w"], ["dense"]))
    nodes.append(helper.make_node("Add", ["dense", "dense_b"], ["logits"]))
    nodes.append(helper.make_node("Softmax", ["logits"], ["Identity"], axis=1))
    graph = helper.make_graph(
        nodes, "keras_nhwc",
        [helper.make_tensor_value_info("input_1", TensorProto.FLOAT, ["unk__1", 32, 32, 3])],
        [helper.make_tensor_value_info("Identity", TensorProto.FLOAT, ["unk__1", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="tf2onnx")
    onnx.checker.check_model(model)
    onnx.save(model, os.path.join(HERE, "keras_nhwc.onnx"))


def bad_models():
    def save(name, nodes, inputs, outputs, inits):
        graph = helper.make_graph(nodes, name, inputs, outputs, inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        onnx.checker.check_model(model)
        onnx.save(model, os.path.join(HERE, f"{name}.onnx"))

    image = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])
    w = const("w", rng.normal(0, 0.1, (8, 3, 3, 3)))
    dense = const("d", rng.normal(0, 0.1, (8, 10)))
    save("bad_sigmoid", [
        helper.make_node("Conv", ["input", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("MaxPool", ["c"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Sigmoid", ["p"], ["s"]),
        helper.make_node("GlobalAveragePool", ["s"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("MatMul", ["f", "d"], ["logits"]),
    ], [image], [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], [w, dense])
    save("bad_symbolic_size", [
        helper.make_node("Conv", ["input", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("MatMul", ["f", "d"], ["logits"]),
    ], [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 10])], [w, dense])
    save("bad_not_classifier", [
        helper.make_node("Conv", ["input", "w"], ["features"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    ], [image], [helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, 8, 32, 32])], [w])


if __name__ == "__main__":
    torch_models()
    torch_imagenet_models()
    keras_nhwc()
    bad_models()
    for name in sorted(os.listdir(HERE)):
        if name.endswith(".onnx"):
            print(f"{name}: {os.path.getsize(os.path.join(HERE, name))} bytes")
