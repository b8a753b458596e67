"""A LeNet-style CNN on sklearn's 8x8 digits, trained on the FPGA kernel (or its simulation).

    fx2fpga compile examples/cnn_digits.py --target pynq-z1 --train     # the project folder
    python examples/cnn_digits.py [--sim emu|csim|rtl] [--steps 300]    # train it here

Conv2d 1->4 3x3 pad 1, ReLU, MaxPool 2, Conv2d 4->8 3x3 pad 1, ReLU, MaxPool 2, Flatten,
Linear 32->10. The module-level names are what ``fx2fpga compile`` reads: ``model``,
``example_inputs``, ``loss_fn``, ``example_targets``, ``lr``. The data helpers are the MLP
example's (``mlp_digits.py``, next to this file).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `fx2fpga compile` runs this file by path
from mlp_digits import BATCH, digits, train_on_kernel  # noqa: E402


class DigitsCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 8, 3, padding=1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = F.max_pool2d(torch.relu(self.conv1(x)), 2)  # 4 x 4 x 4
        x = F.max_pool2d(torch.relu(self.conv2(x)), 2)  # 8 x 2 x 2
        return self.fc(torch.flatten(x, 1))


def images(x: np.ndarray) -> np.ndarray:
    """Flat 64-pixel rows -> (N, 1, 8, 8) images."""
    return x.reshape(-1, 1, 8, 8)


torch.manual_seed(0)
model = DigitsCNN()
_x_train, _y_train, _, _ = digits()
example_inputs = (torch.from_numpy(images(_x_train[:BATCH])),)
example_targets = torch.from_numpy(_y_train[:BATCH])
loss_fn = F.cross_entropy
lr = 0.25


if __name__ == "__main__":
    train_on_kernel("cnn_digits", model, example_inputs, loss_fn, example_targets, lr, prepare=images)
