"""``KernelRunner``: floats in, floats out, over any backend that moves 32-bit words.

A backend has one method, ``call(command, in_words) -> out_words`` (see ``interface.py``),
so the emulator, the C simulation, the Verilator model and the board all sit behind the
same float API.
"""

from __future__ import annotations

import numpy as np

from . import interface
from .emulator import Emulator
from .ir import Kernel


class EmuBackend:
    """The bit-exact numpy emulator behind the word interface."""

    name = "emu"

    def __init__(self, kernel: Kernel):
        self.kernel = kernel
        self.emulator = Emulator(kernel)

    def call(self, command: str, in_words: np.ndarray) -> np.ndarray:
        ins, outs = interface.command_buffers(self.kernel, command)
        for name, raw in interface.unpack(self.kernel, ins, in_words).items():
            self.emulator.write(name, raw)
        if command in self.kernel.programs:
            self.emulator.run(command)
        return interface.pack(self.kernel, outs, {n: self.emulator.read(n) for n in outs})

    def close(self) -> None:
        pass


class KernelRunner:
    """Drive a compiled kernel: ``infer``, ``train_step``, ``get_params``, ``set_params``."""

    def __init__(self, kernel: Kernel, backend):
        self.kernel = kernel
        self.backend = backend

    # ----- raw level ------------------------------------------------------------------------
    def call_raw(self, command: str, raw_inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run a command on raw integer buffers; returns raw outputs."""
        ins, outs = interface.command_buffers(self.kernel, command)
        words = self.backend.call(command, interface.pack(self.kernel, ins, raw_inputs))
        expected = interface.word_count(self.kernel, outs)
        if len(words) != expected:
            raise RuntimeError(f"{self.backend.name}: {command} returned {len(words)} words, expected {expected}")
        return interface.unpack(self.kernel, outs, words)

    def _quantize_inputs(self, program: str, arrays) -> dict[str, np.ndarray]:
        prog = self.kernel.programs[program]
        if len(arrays) != len(prog.inputs):
            raise ValueError(f"{program} takes {len(prog.inputs)} arrays ({', '.join(prog.inputs)}), got {len(arrays)}")
        raw = {}
        for name, arr in zip(prog.inputs, arrays, strict=True):
            buf = self.kernel.buffers[name]
            a = np.asarray(arr, dtype=np.float64)
            if a.shape != buf.shape:
                raise ValueError(f"{program}: input {name} must have shape {buf.shape} (compiled for it), "
                                 f"got {a.shape}")
            classes = self.kernel.meta.get("num_classes", {}).get(name)
            if classes is not None and a.size and (a.min() < 0 or a.max() >= classes or np.any(a != np.round(a))):
                raise ValueError(f"{program}: {name} must hold class indices in 0..{classes - 1}")
            raw[name] = buf.fmt.quantize(a)
        return raw

    def _to_float(self, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {n: self.kernel.buffers[n].fmt.to_float(v) for n, v in raw.items()}

    # ----- many models in one kernel ------------------------------------------------------------
    @property
    def models(self) -> list[dict] | None:
        """The models of a kernel compiled from a list of models (``kernel.meta["models"]``), else None."""
        return self.kernel.meta.get("models")

    def _per_model(self, program: str) -> list[list[str]]:
        """The output buffers of ``program``, grouped by model (one group for a one-model kernel)."""
        if self.models is None:
            return [list(self.kernel.programs[program].outputs)]
        return [list(m["outputs"][program]) for m in self.models]

    def _index(self, model: int) -> int | None:
        """Model ``model``'s row on the model axis of a stacked kernel (``lower/model_axis.py``); None when its
        buffers are its own."""
        return None if self.models is None else self.models[model].get("index")

    def _row(self, value: np.ndarray, model: int) -> np.ndarray:
        """Model ``model``'s part of a buffer's value: its row, or the whole buffer (the model's own)."""
        index = self._index(model)
        return value if index is None else value[index]

    def _param_groups(self) -> list[list[str]]:
        """The parameter buffers, grouped by model (one group for a one-model kernel)."""
        return [list(self.kernel.params)] if self.models is None else [list(m["params"]) for m in self.models]

    # ----- float level ----------------------------------------------------------------------
    def infer(self, *inputs) -> np.ndarray | tuple[np.ndarray, ...] | list:
        """Run the inference program; returns the output array (a tuple if several).

        A kernel of N models returns an array ``(N, batch, ...)`` when every model has one output
        of one shape, else a list of N outputs (each an array, or a tuple if several).
        """
        out = self._to_float(self.call_raw("infer", self._quantize_inputs("infer", inputs)))
        per_model = [[self._row(out[n], i) for n in names] for i, names in enumerate(self._per_model("infer"))]
        vals = [v[0] if len(v) == 1 else tuple(v) for v in per_model]
        if self.models is None:
            return vals[0]
        if all(isinstance(v, np.ndarray) for v in vals) and len({v.shape for v in vals}) == 1:
            return np.stack(vals)
        return vals

    def train_step(self, *inputs) -> float | np.ndarray:
        """One training step on chip (forward, backward, update); returns the loss (a kernel of N
        models: an array of the N losses)."""
        if "train_step" not in self.kernel.programs:
            raise RuntimeError("this kernel was compiled for inference only: pass train=fx2fpga.SGD(...) to compile")
        out = self._to_float(self.call_raw("train_step", self._quantize_inputs("train_step", inputs)))
        groups = self._per_model("train_step")
        losses = [float(self._row(out[names[0]], i).reshape(())) for i, names in enumerate(groups)]
        return losses[0] if self.models is None else np.array(losses)

    def get_params_raw(self) -> dict[str, np.ndarray]:
        return self.call_raw("read_params", {})

    def set_params_raw(self, raw: dict[str, np.ndarray]) -> None:
        self.call_raw("load_params", raw)

    def get_params(self) -> dict[str, np.ndarray] | list[dict[str, np.ndarray]]:
        """The parameters on chip, as floats, keyed by the model's parameter names (a kernel of N
        models: a list of N such dicts, in model order)."""
        raw = self.get_params_raw()
        names = self.kernel.param_names
        groups = [{names.get(b, b): self._row(self.kernel.buffers[b].fmt.to_float(raw[b]), i) for b in group}
                  for i, group in enumerate(self._param_groups())]
        return groups[0] if self.models is None else groups

    def set_params(self, params: dict | list[dict]) -> None:
        """Quantize and load parameters (keys: the model's names, e.g. ``fc1.weight``; a kernel of
        N models takes a list of N such dicts, in model order)."""
        groups = self._param_groups()
        if self.models is None:
            params = [params]
        elif not isinstance(params, (list, tuple)) or len(params) != len(groups):
            got = f"{len(params)} dicts" if isinstance(params, (list, tuple)) else type(params).__name__
            raise ValueError(f"this kernel holds {len(groups)} models: set_params takes a list of {len(groups)} "
                             f"dicts (one per model, in model order), got {got}")
        current = self.get_params_raw()
        for i, (group, values) in enumerate(zip(groups, params, strict=True)):
            self._quantize_params(group, values, current, i)
        self.set_params_raw(current)

    def _quantize_params(self, group: list[str], params: dict, raw: dict[str, np.ndarray], model: int) -> None:
        """Quantize model ``model``'s ``params`` (keyed by its names) into ``raw`` (keyed by buffer)."""
        where = "" if self.models is None else f"model {model}: "
        index = self._index(model)
        by_model_name = {self.kernel.param_names.get(b, b): b for b in group}
        unknown = set(params) - set(by_model_name)
        if unknown:
            raise KeyError(f"{where}unknown parameters {sorted(unknown)}; this kernel has {sorted(by_model_name)}")
        for name, value in params.items():
            b = by_model_name[name]
            buf = self.kernel.buffers[b]
            if hasattr(value, "detach"):  # a torch tensor, without importing torch
                value = value.detach().cpu().numpy()
            a = np.asarray(value, dtype=np.float64)
            shape = buf.shape if index is None else buf.shape[1:]
            if a.shape != shape:
                raise ValueError(f"{where}parameter {name} must have shape {shape}, got {a.shape}")
            if index is None:
                raw[b] = buf.fmt.quantize(a)
            else:
                raw[b] = raw[b].copy()
                raw[b][index] = buf.fmt.quantize(a)

    def close(self) -> None:
        self.backend.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
