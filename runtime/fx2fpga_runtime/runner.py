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

    # ----- float level ----------------------------------------------------------------------
    def infer(self, *inputs) -> np.ndarray | tuple[np.ndarray, ...]:
        """Run the inference program; returns the output array (a tuple if several)."""
        out = self._to_float(self.call_raw("infer", self._quantize_inputs("infer", inputs)))
        vals = [out[n] for n in self.kernel.programs["infer"].outputs]
        return vals[0] if len(vals) == 1 else tuple(vals)

    def train_step(self, *inputs) -> float:
        """One training step on chip (forward, backward, update); returns the loss."""
        if "train_step" not in self.kernel.programs:
            raise RuntimeError("this kernel was compiled for inference only: pass train=fx2fpga.SGD(...) to compile")
        out = self._to_float(self.call_raw("train_step", self._quantize_inputs("train_step", inputs)))
        return float(out[self.kernel.programs["train_step"].outputs[0]].reshape(()))

    def get_params_raw(self) -> dict[str, np.ndarray]:
        return self.call_raw("read_params", {})

    def set_params_raw(self, raw: dict[str, np.ndarray]) -> None:
        self.call_raw("load_params", raw)

    def get_params(self) -> dict[str, np.ndarray]:
        """The parameters on chip, as floats, keyed by the model's parameter names."""
        raw = self.get_params_raw()
        names = self.kernel.param_names
        return {names.get(b, b): self.kernel.buffers[b].fmt.to_float(raw[b]) for b in self.kernel.params}

    def set_params(self, params: dict) -> None:
        """Quantize and load parameters (keys: the model's names, e.g. ``fc1.weight``)."""
        by_model_name = {self.kernel.param_names.get(b, b): b for b in self.kernel.params}
        unknown = set(params) - set(by_model_name)
        if unknown:
            raise KeyError(f"unknown parameters {sorted(unknown)}; this kernel has {sorted(by_model_name)}")
        current = self.get_params_raw()
        for name, value in params.items():
            b = by_model_name[name]
            buf = self.kernel.buffers[b]
            if hasattr(value, "detach"):  # a torch tensor, without importing torch
                value = value.detach().cpu().numpy()
            a = np.asarray(value, dtype=np.float64)
            if a.shape != buf.shape:
                raise ValueError(f"parameter {name} must have shape {buf.shape}, got {a.shape}")
            current[b] = buf.fmt.quantize(a)
        self.set_params_raw(current)

    def close(self) -> None:
        self.backend.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
