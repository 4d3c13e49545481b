"""Training throughput of PyTorch on the CPU, for comparison with `tinyres train`.

The same networks (ResNet-8 of MLPerf Tiny with 1x1 projections; the paper's ResNet-20
with option-A shortcuts), batch 128, SGD momentum 0.9, weight decay 1e-4, 32x32x3 input,
on a fixed number of threads. Prints one JSON line per network.

usage: python3 host/benches/torch_train.py [--threads 2] [--steps 20] [--batch 128]
(`pip install torch` first; it is not needed by anything else.)
"""

import argparse
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


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


class ResNet(nn.Module):
    def __init__(self, blocks_per_stage, option):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16))
        layers, cin = [], 16
        for stage, width in enumerate([16, 32, 64]):
            for b in range(blocks_per_stage):
                layers.append(Block(cin, width, 2 if stage > 0 and b == 0 else 1, option))
                cin = width
        self.blocks = nn.Sequential(*layers)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.blocks(F.relu(self.stem(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def measure(name, model, batch, steps):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    for _ in range(3):  # warm-up
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    start = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    seconds = time.perf_counter() - start
    return {"framework": f"pytorch {torch.__version__}", "arch": name, "batch": batch,
            "threads": torch.get_num_threads(), "steps": steps,
            "images_per_second": round(batch * steps / seconds, 1)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    for name, model in [("resnet8", ResNet(1, "B")), ("resnet20", ResNet(3, "A"))]:
        print(json.dumps(measure(name, model.train(), args.batch, args.steps)), flush=True)


if __name__ == "__main__":
    main()
