"""A 64-32-10 MLP on sklearn's 8x8 digits, trained on the FPGA kernel (or its simulation).

    fx2fpga compile examples/mlp_digits.py --target pynq-z1 --train     # the project folder
    python examples/mlp_digits.py [--sim emu|csim|rtl] [--steps 300]    # train it here

The module-level names are what ``fx2fpga compile`` reads: ``model``, ``example_inputs``,
``loss_fn``, ``example_targets``, ``lr``.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

BATCH = 16


class DigitsMLP(nn.Module):
    def __init__(self, hidden: int = 32):
        super().__init__()
        self.fc1 = nn.Linear(64, hidden)
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def digits(seed: int = 0):
    """(x_train, y_train, x_test, y_test): pixels scaled to [0, 1], a fixed 75/25 split."""
    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    n_train = int(0.75 * len(x))
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


torch.manual_seed(0)
model = DigitsMLP()
_x_train, _y_train, _, _ = digits()
example_inputs = (torch.from_numpy(_x_train[:BATCH]),)
example_targets = torch.from_numpy(_y_train[:BATCH])
loss_fn = F.cross_entropy
lr = 0.1


def batches(x, y, steps: int, seed: int = 1):
    """``steps`` minibatches of BATCH samples, reshuffled every epoch."""
    rng = np.random.default_rng(seed)
    order = np.array([], dtype=np.int64)
    for _ in range(steps):
        if len(order) < BATCH:
            order = np.concatenate([order, rng.permutation(len(x))])
        idx, order = order[:BATCH], order[BATCH:]
        yield x[idx], y[idx]


def accuracy(predict, x, y) -> float:
    """Share of samples classified right, predicting in compiled-size batches."""
    correct = 0
    for i in range(0, len(x) - BATCH + 1, BATCH):
        logits = predict(x[i:i + BATCH])
        correct += int((np.argmax(logits, axis=1) == y[i:i + BATCH]).sum())
    return correct / (len(x) // BATCH * BATCH)


def train_on_kernel(name: str, model, example_inputs, loss_fn, example_targets, lr: float,
                    prepare=lambda x: x) -> None:
    """The examples' command line: compile ``model``, train it on a simulator, print accuracy.

    ``prepare`` turns rows of 64 pixels into the model's input layout.
    """
    import fx2fpga

    ap = argparse.ArgumentParser(description=sys.modules["__main__"].__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sim", default="emu", choices=["emu", "csim", "rtl"],
                    help="what runs the kernel: emu (numpy), csim (g++ on the HLS C++), rtl (Verilator)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--out", default=f"{name}_pynq-z1")
    args = ap.parse_args()

    x_train, y_train, x_test, y_test = digits()
    design = fx2fpga.compile(model, example_inputs, target="pynq-z1",
                             train=fx2fpga.SGD(loss_fn, example_targets, lr=lr), out_dir=args.out)
    print(f"wrote {args.out}/ ({design})")
    with design.load(args.sim) as kernel:
        for step, (xb, yb) in enumerate(batches(x_train, y_train, args.steps), 1):
            loss = kernel.train_step(prepare(xb), yb)
            if step % 50 == 0 or step == 1:
                print(f"step {step:4d}  loss {loss:.4f}")
        acc = accuracy(lambda xb: kernel.infer(prepare(xb)), x_test, y_test)
    print(f"held-out accuracy after {args.steps} steps on {args.sim}: {100 * acc:.1f}%")


if __name__ == "__main__":
    train_on_kernel("mlp_digits", model, example_inputs, loss_fn, example_targets, lr)
