"""Training throughput of tinyres (burn, flex backend) beside PyTorch on the CPU, in one run.

For each network (resnet8, resnet20, resnet56 by default) it times `tinyres train` on
the synthetic set (one epoch of `steps` batches; the epoch's `images_per_second` from
metrics, which counts the training steps with their data preparation and leaves out
the test pass), then PyTorch on the same network, batch and threads
(`torch_train.py`'s `measure`: random batches, 3 warm-up steps), and prints both and
their ratio. The two never run at the same time.

usage: python3 host/benches/train_throughput.py [--tinyres target/debug/tinyres]
           [--arch resnet8 resnet20 resnet56] [--threads 2] [--batch 128] [--steps 20] [--json]
(`cargo build -p tinyres-host` and `pip install torch` first.)
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_train import ResNet, measure  # noqa: E402

# PyTorch twins of the tinyres architectures: (blocks per stage, shortcut option).
TWINS = {"resnet8": (1, "B"), "resnet20": (3, "A"), "resnet32": (5, "A"),
         "resnet44": (7, "A"), "resnet56": (9, "A")}


def tinyres(binary, arch, threads, batch, steps):
    with tempfile.TemporaryDirectory() as out:
        run = subprocess.run(
            [binary, "train", "--arch", arch, "--data", "synthetic", "--limit", str(batch * steps),
             "--epochs", "1", "--batch", str(batch), "--quiet", "--json", "--out", f"{out}/run"],
            env={**os.environ, "RAYON_NUM_THREADS": str(threads)},
            capture_output=True, text=True, check=False)
    if run.returncode != 0:
        sys.exit(f"tinyres train --arch {arch} failed:\n{run.stderr}")
    summary = json.loads(run.stdout)
    return summary["metrics"][0]["images_per_second"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tinyres", default="target/debug/tinyres", help="the tinyres binary")
    parser.add_argument("--arch", nargs="+", default=["resnet8", "resnet20", "resnet56"],
                        choices=sorted(TWINS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json", action="store_true", help="one JSON object per network")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if not args.json:
        print(f"batch {args.batch}, {args.threads} threads, {args.steps} steps; images per second")
        print(f"{'network':<10} {'tinyres':>9} {'pytorch':>9} {'ratio':>6}")
    for arch in args.arch:
        ours = tinyres(args.tinyres, arch, args.threads, args.batch, args.steps)
        blocks, option = TWINS[arch]
        theirs = measure(arch, ResNet(blocks, option).train(), args.batch, args.steps)
        ratio = ours / theirs["images_per_second"]
        if args.json:
            print(json.dumps({"arch": arch, "batch": args.batch, "threads": args.threads,
                              "steps": args.steps, "tinyres_images_per_second": round(ours, 1),
                              "pytorch": theirs["framework"],
                              "pytorch_images_per_second": theirs["images_per_second"],
                              "ratio": round(ratio, 3)}), flush=True)
        else:
            print(f"{arch:<10} {ours:>9.1f} {theirs['images_per_second']:>9.1f} {ratio:>6.3f}",
                  flush=True)


if __name__ == "__main__":
    main()
