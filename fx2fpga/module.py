"""``FPGAModule``: a compiled kernel as a ``torch.nn.Module``.

    design = fx2fpga.compile(model, (x,), train=fx2fpga.SGD(F.cross_entropy, y, lr=0.1))
    fpga = fx2fpga.FPGAModule(design, "emu")       # any simulator design.load takes
    logits = fpga(x_any_rows)                       # a tensor; the rows are split into compiled batches
    loss = fpga.train_step(x, y)                    # a 0-d tensor (N models: N losses)
    torch.save(fpga.state_dict(), "w.pt")           # the original model's keys, the on-chip values
    trained = fpga.to_torch()                       # a float copy of the original model, trained weights

The kernel holds the parameters; this module holds no ``nn.Parameter`` and no autograd graph: the
kernel trains itself (``train_step``), so its outputs carry no gradient.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn


class FPGAModule(nn.Module):
    """A ``Design`` loaded on the simulator (or board) ``sim`` as an ``nn.Module``.

    ``forward`` takes any number of rows; training steps take exactly the compiled batch (the batch
    size is fixed in the hardware: its loops, memories and schedule). ``state_dict`` and
    ``load_state_dict`` read and write the parameters on chip under the original model's keys (a
    kernel of N models: ``"<i>.<key>"``, as an ``nn.ModuleList`` of them would).
    """

    def __init__(self, design, sim: str = "emu"):
        super().__init__()
        self.design = design
        self.sim = sim
        self.kernel = design.load(sim)
        infer = self.kernel.kernel.programs["infer"]
        self._batch = self._leading_dim(infer.inputs)

    # ----- shapes -------------------------------------------------------------------------------
    def _leading_dim(self, names) -> int | None:
        """The compiled batch: the leading dimension shared by the program's inputs (None: no inputs)."""
        shapes = [self.kernel.kernel.buffers[n].shape for n in names]
        return shapes[0][0] if shapes and shapes[0] else None

    @property
    def batch_size(self) -> int | None:
        """The batch the kernel was compiled for (None for a kernel whose programs take no inputs)."""
        return self._batch

    @property
    def num_models(self) -> int:
        """How many models the kernel holds (1 unless compiled from a list of models)."""
        models = self.kernel.models
        return 1 if models is None else len(models)

    # ----- running ------------------------------------------------------------------------------
    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Inference on any number of rows: the rows go through the kernel one compiled batch at a
        time, the last one padded with zeros and its padding dropped from the result (a tuple for a
        model with several outputs). A kernel of N models returns ``(N, rows, ...)``."""
        arrays = [_numpy(x) for x in inputs]
        if self._batch is None:
            out = self.kernel.infer(*arrays)
            return tuple(_tensor(o) for o in out) if isinstance(out, tuple) else _tensor(out)
        rows = _rows(arrays, self._batch)
        pieces = []  # per call: a tuple of the outputs' rows
        for start in range(0, rows, self._batch):
            out = self.kernel.infer(*[_padded(a[start:start + self._batch], self._batch) for a in arrays])
            if isinstance(out, list):
                raise TypeError("FPGAModule.forward needs the models' outputs to have one shape; "
                                "use design.load(sim).infer for models whose outputs differ")
            take = min(self._batch, rows - start)
            pieces.append(tuple(o[:, :take] if self.num_models > 1 else o[:take]
                                for o in (out if isinstance(out, tuple) else (out,))))
        axis = 1 if self.num_models > 1 else 0
        outs = tuple(_tensor(np.concatenate(parts, axis=axis)) for parts in zip(*pieces, strict=True))
        return outs if len(outs) > 1 else outs[0]

    def train_step(self, *inputs: torch.Tensor) -> torch.Tensor:
        """One training step on chip; the loss as a 0-d tensor (N models: a tensor of N losses).
        The inputs must hold exactly the compiled batch."""
        arrays = [_numpy(x) for x in inputs]
        program = self.kernel.kernel.programs.get("train_step")
        if program is None:
            raise RuntimeError("this kernel was compiled for inference only: pass train=fx2fpga.SGD(...) to compile")
        for name, a in zip(program.inputs, arrays, strict=False):
            want = self.kernel.kernel.buffers[name].shape
            if a.shape[:1] != want[:1]:
                raise ValueError(f"train_step: {name} has {a.shape[0] if a.ndim else 0} rows, but the kernel trains on "
                                 f"batches of exactly {want[0]} (the batch size is compiled into the hardware): "
                                 f"drop the last partial batch (DataLoader(drop_last=True)) or recompile")
        return _tensor(self.kernel.train_step(*arrays))

    # ----- parameters ---------------------------------------------------------------------------
    def _chip_state(self) -> dict[str, np.ndarray]:
        """The model's parameters and buffers on chip as floats, under their state_dict keys (not the
        optimizer's velocities, ``momentum:<name>``, which ``design.load(sim).get_params()`` shows)."""
        params = self.kernel.get_params()
        groups = [params] if self.num_models == 1 else params
        state = [{k: v for k, v in p.items() if ":" not in k} for p in groups]
        if self.num_models == 1:
            return state[0]
        return {f"{i}.{k}": v for i, p in enumerate(state) for k, v in p.items()}

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        for key, value in self._chip_state().items():
            destination[prefix + key] = torch.from_numpy(np.array(value, dtype=np.float32))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        ours = set(self._chip_state())
        given = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        missing_keys.extend(prefix + k for k in sorted(ours - set(given)))
        unexpected_keys.extend(prefix + k for k in sorted(set(given) - ours))
        values = {k: v for k, v in given.items() if k in ours}
        if not values:
            return
        try:
            self._set_chip_state(values)
        except (KeyError, ValueError) as e:
            error_msgs.append(str(e))

    def _set_chip_state(self, values: dict) -> None:
        """Write ``values`` (state_dict keys -> tensors) on chip; the parameters not named keep their value."""
        current = self.kernel.get_params()
        if self.num_models == 1:
            self.kernel.set_params({**current, **values})
            return
        per_model = [dict(p) for p in current]
        for key, value in values.items():
            index, name = key.split(".", 1)
            per_model[int(index)][name] = value
        self.kernel.set_params(per_model)

    def get_lr(self) -> float | np.ndarray:
        """The learning rate register (N models: an array of N)."""
        return self.kernel.get_lr()

    def set_lr(self, lr) -> None:
        """Write the learning rate register (N models: one value or a list of N): no recompile."""
        self.kernel.set_lr(lr)

    def to_torch(self) -> nn.Module:
        """A float copy of the original model (N models: an ``nn.ModuleList``) holding the on-chip
        parameters; what the kernel does not hold (e.g. BatchNorm's batch counter) keeps the original's value."""
        original = self.design.context.model
        models = original if isinstance(original, list) else [original]
        if not all(isinstance(m, nn.Module) for m in models):
            raise TypeError("to_torch needs a kernel compiled from nn.Module models, not from functions")
        copies = [copy.deepcopy(m) for m in models]
        params = self.kernel.get_params()
        for m, p in zip(copies, params if isinstance(params, list) else [params], strict=True):
            state = m.state_dict()
            for key, value in ((k, v) for k, v in p.items() if ":" not in k):
                state[key] = torch.as_tensor(value, dtype=state[key].dtype).reshape(state[key].shape)
            m.load_state_dict(state)
        return copies[0] if len(copies) == 1 and not isinstance(original, list) else nn.ModuleList(copies)

    def close(self) -> None:
        """Stop the simulator (csim, rtl: their processes)."""
        self.kernel.close()

    def extra_repr(self) -> str:
        return f"{self.design.name!r} on {self.sim}, batch {self._batch}, {self.num_models} model(s)"


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _tensor(value) -> torch.Tensor:
    return torch.from_numpy(np.asarray(value, dtype=np.float32))


def _rows(arrays: list[np.ndarray], batch: int) -> int:
    """The number of rows of the inputs (their common leading dimension)."""
    rows = {a.shape[0] if a.ndim else None for a in arrays}
    if len(rows) != 1 or None in rows:
        raise ValueError(f"FPGAModule.forward: the inputs must share a leading batch dimension (compiled for {batch} "
                         f"rows at a time), got shapes {[a.shape for a in arrays]}")
    return rows.pop()


def _padded(a: np.ndarray, batch: int) -> np.ndarray:
    """``a`` with zero rows appended up to ``batch`` rows."""
    if a.shape[0] == batch:
        return a
    return np.concatenate([a, np.zeros((batch - a.shape[0], *a.shape[1:]), dtype=a.dtype)])
