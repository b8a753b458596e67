"""Fixed point against float: the digits MLP and CNN trained the PyTorch way, on the kernel and in float.

    python examples/fixed_vs_float.py [--epochs 8] [--sim emu|csim|rtl]
        -> benchmarks/results/fixed_vs_float.{json,png}

Both start from the same weights and see the same batches in the same order. The kernel side is the
PyTorch path of fx2fpga: ``FPGAModule`` over the compiled design, ``fx2fpga.fit`` over a ``DataLoader``
(the learning rate register set to a StepLR schedule each epoch), ``forward`` on the held-out set. The float
side is ``torch.optim.SGD`` with ``StepLR``. The plot shows the loss of each epoch and the held-out
accuracy after it, for both.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cnn_digits  # noqa: E402
import mlp_digits  # noqa: E402

import fx2fpga  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
LR, STEP_SIZE, GAMMA = 0.2, 3, 0.5


def schedule(epoch: int) -> float:
    """StepLR(step_size=STEP_SIZE, gamma=GAMMA) as a function of the epoch."""
    return LR * GAMMA ** (epoch // STEP_SIZE)


def _data(example):
    x_train, y_train, x_test, y_test = mlp_digits.digits()
    shape = example.example_inputs[0].shape[1:]

    def as_input(x):
        return torch.from_numpy(x.reshape(-1, *shape))

    train = TensorDataset(as_input(x_train), torch.from_numpy(y_train))
    return train, as_input(x_test), torch.from_numpy(y_test)


def on_fpga(example, epochs: int, sim: str) -> dict:
    """Per epoch: the mean training loss and the held-out accuracy of the kernel."""
    train, x_test, y_test = _data(example)
    sgd = fx2fpga.SGD(example.loss_fn, example.example_targets, LR)
    fpga = fx2fpga.FPGAModule(fx2fpga.compile(copy.deepcopy(example.model), example.example_inputs, train=sgd), sim)
    loader = DataLoader(train, batch_size=len(example.example_targets), shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(0))
    history = {"loss": [], "accuracy": []}
    for epoch in range(epochs):
        fpga.set_lr(schedule(epoch))
        h = fx2fpga.fit(fpga, loader, epochs=1, progress=False)
        history["loss"].append(float(h["epoch_loss"][0]))
        history["accuracy"].append(float((fpga(x_test).argmax(1) == y_test).float().mean()))
    fpga.close()
    return history


def in_float(example, epochs: int) -> dict:
    """The same training in float: the same start, the same batches, torch's SGD and StepLR."""
    train, x_test, y_test = _data(example)
    model = copy.deepcopy(example.model)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=STEP_SIZE, gamma=GAMMA)
    loader = DataLoader(train, batch_size=len(example.example_targets), shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(0))
    history = {"loss": [], "accuracy": []}
    for _ in range(epochs):
        losses = []
        for xb, yb in loader:
            opt.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        sched.step()
        history["loss"].append(float(np.mean(losses)))
        with torch.no_grad():
            history["accuracy"].append(float((model(x_test).argmax(1) == y_test).float().mean()))
    return history


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, runs in results.items():
        for side, style in (("fixed", "-"), ("float", "--")):
            h = runs[side]
            epochs = range(1, len(h["loss"]) + 1)
            axes[0].plot(epochs, h["loss"], style, marker="o", label=f"{name} {side}")
            axes[1].plot(epochs, h["accuracy"], style, marker="o", label=f"{name} {side}")
    axes[0].set(xlabel="epoch", ylabel="mean training loss", title="loss")
    axes[1].set(xlabel="epoch", ylabel="held-out accuracy", title="accuracy")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"digits: fixed-point kernel (fx2fpga fit) vs float (torch), SGD lr {LR}, "
                 f"StepLR({STEP_SIZE}, {GAMMA})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--sim", default="emu", help="emu (default), csim or rtl")
    args = ap.parse_args(argv)
    results = {}
    for name, example in (("MLP", mlp_digits), ("CNN", cnn_digits)):
        results[name] = {"fixed": on_fpga(example, args.epochs, args.sim), "float": in_float(example, args.epochs)}
        fixed, flt = results[name]["fixed"], results[name]["float"]
        print(f"{name}: held-out accuracy fixed {fixed['accuracy'][-1]:.3f}, float {flt['accuracy'][-1]:.3f}; "
              f"last epoch loss fixed {fixed['loss'][-1]:.4f}, float {flt['loss'][-1]:.4f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"sim": args.sim, "epochs": args.epochs, "lr": LR, "step_size": STEP_SIZE, "gamma": GAMMA, "results": results}
    (RESULTS / "fixed_vs_float.json").write_text(json.dumps(out, indent=1) + "\n")
    plot(results, RESULTS / "fixed_vs_float.png")
    print(f"wrote {RESULTS / 'fixed_vs_float.json'} and .png")


if __name__ == "__main__":
    main()
