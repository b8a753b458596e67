"""``fx2fpga.fit``: the training loop over a ``torch.utils.data.DataLoader``, with a progress bar.

    history = fx2fpga.fit(fpga_module_or_kernel, loader, epochs=5)
    history["epoch_loss"]   # mean loss of each epoch (N models: one column per model)

Each batch of the loader is one ``train_step`` on chip. The kernel trains on batches of exactly the
size it was compiled for: a shorter batch (the last one of an epoch, unless ``drop_last=True``) is
skipped and counted in ``history["skipped"]``, with one warning. When the loss or a gradient saturated
(or wrapped) during the run, one ``SaturationWarning`` names those buffers and their counts (the
emulator always counts; csim with ``compile(..., saturation_counters=True)``; docs/saturation.md).
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import torch
from tqdm.auto import tqdm

from .passes.derived_ranges import loss_buffers


class SaturationWarning(UserWarning):
    """The loss or a gradient saturated (or wrapped) on chip: its format's range is too small for it."""


def fit(model, loader, epochs: int = 1, progress: bool = True, lr_schedule=None) -> dict:
    """Train ``model`` (an ``FPGAModule`` or a runner from ``design.load``) on every batch of ``loader``
    for ``epochs`` epochs; returns the history: ``loss`` (each step's loss; N models: an array of N),
    ``epoch_loss`` (each epoch's mean), ``lr`` (each epoch's learning rate, as the register held it),
    ``steps``, ``skipped`` (short batches not trained on), ``seconds`` and ``steps_per_s``.
    ``progress`` shows a tqdm bar with the loss and steps/s. ``lr_schedule(epoch) -> lr`` (epochs count
    from 0) sets the learning rate register before each epoch, as a ``torch.optim.lr_scheduler`` stepped
    once per epoch would: ``lambda e: 0.1 * 0.5 ** (e // 2)`` is ``StepLR(step_size=2, gamma=0.5)``."""
    if epochs < 1 or int(epochs) != epochs:
        raise ValueError(f"fit: epochs must be a whole number >= 1, got {epochs}")
    batch = _compiled_batch(model)
    runner = model.kernel if isinstance(model, torch.nn.Module) else model
    counting = _start_counting(runner)
    history = {"loss": [], "epoch_loss": [], "lr": [], "steps": 0, "skipped": 0}
    start = time.perf_counter()
    total = _batches_per_epoch(loader)
    bar = tqdm(total=None if total is None else total * epochs, disable=not progress, unit="step",
               desc="fit", dynamic_ncols=True)
    try:
        for epoch in range(int(epochs)):
            if lr_schedule is not None:
                model.set_lr(lr_schedule(epoch))
            history["lr"].append(model.get_lr())
            losses = []
            for inputs in loader:
                inputs = inputs if isinstance(inputs, (list, tuple)) else (inputs,)
                if batch is not None and len(inputs[0]) != batch:
                    history["skipped"] += 1
                    bar.update()
                    continue
                loss = np.asarray(_train_step(model, inputs), dtype=np.float64)
                losses.append(loss)
                history["steps"] += 1
                bar.update()
                bar.set_postfix(epoch=epoch + 1, loss=f"{float(np.mean(loss)):.4f}", refresh=False,
                                steps_per_s=f"{history['steps'] / (time.perf_counter() - start):.1f}")
            history["loss"].extend(losses)
            history["epoch_loss"].append(np.mean(losses, axis=0) if losses else np.nan)
    finally:
        bar.close()
    if counting:
        _warn_saturation(runner)
    if history["skipped"]:
        warnings.warn(f"fit: skipped {history['skipped']} batch(es) shorter than the compiled batch of {batch} "
                      "(use DataLoader(..., drop_last=True) to drop them yourself)", stacklevel=2)
    history["seconds"] = time.perf_counter() - start
    history["steps_per_s"] = history["steps"] / history["seconds"] if history["seconds"] > 0 else float("nan")
    return history


def _start_counting(runner) -> bool:
    """Reset the runner's saturation counts; False where it has none (a simulator compiled without them)."""
    try:
        runner.saturation()
    except (AttributeError, RuntimeError):
        return False
    return True


def watched_buffers(kernel) -> list[str]:
    """The buffers ``fit`` warns about: the training step's loss outputs and its gradients."""
    program = kernel.programs["train_step"]
    losses = loss_buffers(kernel)
    written = dict.fromkeys(st.out.buffer for st in program.stages)
    return losses + [b for b in written if kernel.buffers[b].kind == "gradient" and b not in losses]


def _warn_saturation(runner) -> None:
    """One ``SaturationWarning`` naming the loss and gradient buffers that saturated since the counts' reset."""
    counts = runner.saturation()
    hit = {b: counts[b] for b in watched_buffers(runner.kernel) if counts.get(b)}
    if hit:
        listed = ", ".join(f"{b} ({n:,} times)" for b, n in sorted(hit.items()))
        warnings.warn(f"fit: values saturated (or wrapped) in {listed}; widen their formats with "
                      "precision={'overrides': {buffer: 'fixed<W,I>'}} (runner.saturation() counts every buffer)",
                      SaturationWarning, stacklevel=3)


def _compiled_batch(model) -> int | None:
    """The batch size the training kernel was compiled for (None: its step takes no inputs)."""
    runner = getattr(model, "kernel", None)
    kernel = getattr(runner, "kernel", runner)  # FPGAModule -> runner -> Kernel; runner -> Kernel
    program = kernel.programs.get("train_step")
    if program is None:
        raise RuntimeError("fit: this kernel was compiled for inference only: pass train=fx2fpga.SGD(...) to compile")
    shapes = [kernel.buffers[n].shape for n in program.inputs]
    return shapes[0][0] if shapes and shapes[0] else None


def _train_step(model, inputs):
    """One step: an ``FPGAModule`` takes tensors, a runner numpy arrays."""
    if isinstance(model, torch.nn.Module):
        return model.train_step(*inputs).numpy()
    return model.train_step(*[x.numpy() if isinstance(x, torch.Tensor) else x for x in inputs])


def _batches_per_epoch(loader) -> int | None:
    try:
        return len(loader)
    except TypeError:  # an iterable loader without a length
        return None
