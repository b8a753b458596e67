"""``KernelRunner``: floats in, floats out, over any backend that moves 32-bit words.

A backend has one method, ``call(command, in_words) -> out_words`` (see ``interface.py``),
so the emulator, the C simulation, the Verilator model and the board all sit behind the
same float API. A backend may also take raw buffers directly, without the words: ``call_raw(command,
raw_inputs) -> raw_outputs``, ``call_quantized`` (the same, on inputs the runner quantized: their ranges are
not checked again) and ``call_steps(command, raw_inputs, steps)`` (the emulator has all three; the runner uses
them where they exist).
"""

from __future__ import annotations

import numpy as np

from . import interface
from .emulator import Emulator
from .errors import (
    KernelBackendError,
    KernelCapabilityError,
    KernelClosedError,
    KernelInputError,
    KernelParamError,
)
from .fixed import Fixed, FormatError, quantizer
from .ir import LR_PARAM, Kernel


def _real_array(value, what: str, name: str) -> np.ndarray:
    """``value`` (an array, a list or a torch tensor) as float64, or an integer array as it is (the checks and the
    quantization read it as its float64 values), refusing what is not real numbers."""
    if hasattr(value, "detach"):  # a torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    a = np.asarray(value)
    if a.dtype.kind not in "biuf":
        raise KernelInputError(f"{what}: input {name} must hold real numbers (a float array; integers for indices "
                               f"and class targets), got dtype {a.dtype}")
    return a if a.dtype.kind in "iu" else a.astype(np.float64, copy=False)


def _check_finite(values: np.ndarray, what: str, label: str) -> None:
    """A ``KernelInputError`` naming the first NaN or Inf of ``values`` (fixed point has neither); ``label``
    says which array (``input x``, ``parameter fc.weight``)."""
    if values.dtype.kind in "iu" or np.isfinite(values).all():
        return
    bad = ~np.isfinite(values)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise KernelInputError(f"{what}: {label} holds {int(bad.sum())} NaN or Inf value(s), the first "
                               f"{values[first]} at index {first}; fixed-point numbers have neither: replace them "
                               f"(e.g. np.nan_to_num) before the call")


def _quantize(fmt: Fixed, values: np.ndarray, what: str, label: str) -> np.ndarray:
    """``values`` as raw integers of ``fmt`` (``fixed.quantizer``); a NaN or an infinity, which it refuses, named
    by ``_check_finite``."""
    try:
        return quantizer(fmt)(values)
    except FormatError:
        _check_finite(values, what, label)
        raise


def _out_of_range(values: np.ndarray, classes: int) -> str:
    """The first value that is not a class index in ``0..classes - 1``, and where it is."""
    bad = ~((values >= 0) & (values < classes) & (np.floor(values) == values))
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    return f"{values[first]:g} at index {first}"


def _class_indices(values: np.ndarray, classes: int) -> bool:
    """Whether every value is a whole number in ``0..classes - 1`` (NaN is not)."""
    if not values.size:
        return True
    lo, hi = np.minimum.reduce(values, axis=None), np.maximum.reduce(values, axis=None)
    whole = values.dtype.kind in "iu" or not np.not_equal(np.floor(values), values).any()
    return bool(0 <= lo and hi < classes) and whole


class EmuBackend:
    """The bit-exact numpy emulator behind the word interface."""

    name = "emu"

    def __init__(self, kernel: Kernel):
        self.kernel = kernel
        self.emulator = Emulator(kernel)

    def call(self, command: str, in_words: np.ndarray) -> np.ndarray:
        """``call_raw`` behind the word interface: the words unpacked into raw buffers, the outputs packed."""
        ins, outs = interface.command_buffers(self.kernel, command)
        return interface.pack(self.kernel, outs, self.call_raw(command, interface.unpack(self.kernel, ins, in_words)))

    def call_raw(self, command: str, raw_inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``call`` without the round trip through 32-bit words: raw buffers in, raw buffers out."""
        return self._call(command, raw_inputs, self.emulator.write)

    def call_quantized(self, command: str, raw_inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``call_raw`` on inputs known to lie in their buffers' formats (the runner quantized them): their ranges
        are not checked again."""
        return self._call(command, raw_inputs, self.emulator.write_in_range)

    def _call(self, command: str, raw_inputs: dict[str, np.ndarray], write) -> dict[str, np.ndarray]:
        """``call_raw``, each input written by ``write(name, raw)``."""
        ins, outs = interface.command_buffers(self.kernel, command)
        for name in ins:
            write(name, raw_inputs[name])
        if command in self.kernel.programs:
            return self.emulator.run(command)  # (its outputs are ``outs``)
        return {n: self.emulator.read(n) for n in outs}

    def call_steps(self, command: str, raw_inputs: dict[str, np.ndarray], steps: int) -> dict[str, np.ndarray]:
        """``call_raw`` ``steps`` times on a program, step ``i`` on row ``i`` of every input; the outputs
        stacked the same way (``Emulator.run_steps``)."""
        ins, _ = interface.command_buffers(self.kernel, command)
        return self.emulator.run_steps(command, {n: raw_inputs[n] for n in ins}, steps)

    def read_saturation(self) -> dict[str, int]:
        """The emulator's exact saturation counts since the last read, reset (``saturation.py``)."""
        return self.emulator.read_saturation()

    def close(self) -> None:
        pass


class KernelRunner:
    """Drive a compiled kernel: ``infer``, ``train_step``, ``get_params``, ``set_params``."""

    def __init__(self, kernel: Kernel, backend):
        self.kernel = kernel
        self.backend = backend
        self.closed = False

    def _require_open(self) -> None:
        """A ``KernelClosedError`` once ``close`` ran (the backend's simulator or board is gone)."""
        if self.closed:
            sim = getattr(self.backend, "name", "the backend")
            raise KernelClosedError(f"this {sim} kernel of {self.kernel.name} is closed (by close() or the end of "
                                    f"its with block): call it inside the with block, or load it again "
                                    f"(design.load({sim!r}))")

    # ----- raw level ------------------------------------------------------------------------
    def call_raw(self, command: str, raw_inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run a command on raw integer buffers; returns raw outputs."""
        self._require_open()
        direct = getattr(self.backend, "call_raw", None)
        if direct is not None:
            return direct(command, raw_inputs)
        ins, outs = interface.command_buffers(self.kernel, command)
        words = self.backend.call(command, interface.pack(self.kernel, ins, raw_inputs))
        expected = interface.word_count(self.kernel, outs)
        if len(words) != expected:
            raise KernelBackendError(f"{self.backend.name}: {command} returned {len(words)} words, "
                                     f"expected {expected}")
        return interface.unpack(self.kernel, outs, words)

    def _call_quantized(self, command: str, raw_inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``call_raw`` on the inputs ``_quantize_inputs`` made (in their formats): the backend's ``call_quantized``
        where it has one (it skips their range checks)."""
        self._require_open()
        quantized = getattr(self.backend, "call_quantized", None)
        return quantized(command, raw_inputs) if quantized is not None else self.call_raw(command, raw_inputs)

    def _quantize_inputs(self, program: str, arrays, steps: int | None = None) -> dict[str, np.ndarray]:
        """The inputs of ``program`` as raw integers, checked against the shapes it was compiled for
        (``steps``: each array holds ``steps`` of them, stacked on a leading axis, for ``train_steps``)."""
        prog = self.kernel.programs[program]
        what = program if steps is None else "train_steps"
        if len(arrays) != len(prog.inputs):
            raise KernelInputError(f"{what} takes {len(prog.inputs)} arrays ({', '.join(prog.inputs)}), "
                                   f"got {len(arrays)}")
        raw = {}
        for name, arr in zip(prog.inputs, arrays, strict=True):
            buf = self.kernel.buffers[name]
            a = _real_array(arr, what, name)
            if steps is None and a.shape != buf.shape:
                raise KernelInputError(f"{program}: input {name} must have shape {buf.shape} (compiled for it), "
                                       f"got {a.shape}")
            if steps is not None and a.shape != (steps, *buf.shape):
                raise KernelInputError(f"train_steps: input {name} must have shape {(steps, *buf.shape)} (steps, "
                                       f"then the shape {buf.shape} compiled for it), got {a.shape}")
            classes = self.kernel.meta.get("num_classes", {}).get(name)
            if classes is not None and not _class_indices(a, classes):
                raise KernelInputError(f"{what}: {name} must hold class indices in 0..{classes - 1} (the kernel "
                                       f"was compiled for {classes} classes), got {_out_of_range(a, classes)}")
            if classes is not None and buf.fmt.frac_bits == 0 and classes - 1 <= buf.fmt.raw_max:
                raw[name] = a.astype(np.int64)  # whole numbers in the format's range (checked): their raw values
                continue
            if buf.kind == "integer":
                _check_finite(a, what, f"input {name}")
                if np.not_equal(np.floor(a), a).any():
                    raise KernelInputError(f"{what}: input {name} holds integers (indices), got fractions such as "
                                           f"{a[np.not_equal(np.floor(a), a)].flat[0]}: pass whole numbers")
            raw[name] = _quantize(buf.fmt, a, what, f"input {name}")
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
        out = self._to_float(self._call_quantized("infer", self._quantize_inputs("infer", inputs)))
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
        self._require_training()
        out = self._to_float(self._call_quantized("train_step", self._quantize_inputs("train_step", inputs)))
        groups = self._per_model("train_step")
        losses = [float(self._row(out[names[0]], i).reshape(())) for i, names in enumerate(groups)]
        return losses[0] if self.models is None else np.array(losses)

    def train_steps(self, *inputs, steps: int | None = None) -> np.ndarray:
        """Many training steps in one call: each input holds one ``train_step`` input per step, stacked
        on a leading axis (shape ``(steps, *its train_step shape)``); returns the losses, shape ``(steps,)``
        (a kernel of N models: ``(steps, N)``), the same as calling ``train_step`` on each step in turn.
        ``steps`` is needed only when ``train_step`` takes no inputs."""
        self._require_open()
        self._require_training()
        prog = self.kernel.programs["train_step"]
        steps = self._steps_of(inputs, steps)
        raw = self._quantize_inputs("train_step", inputs, steps=steps)
        many = getattr(self.backend, "call_steps", None)
        if many is not None:
            out = many("train_step", raw, steps)
        else:
            per_step = [self.call_raw("train_step", {n: v[i] for n, v in raw.items()}) for i in range(steps)]
            out = {n: np.array([o[n] for o in per_step], dtype=np.int64).reshape((steps, *self.kernel.buffers[n].shape))
                   for n in prog.outputs}
        out = self._to_float(out)
        groups = self._per_model("train_step")
        losses = [(out[names[0]] if self._index(i) is None else out[names[0]][:, self._index(i)]).reshape(steps)
                  for i, names in enumerate(groups)]
        return losses[0] if self.models is None else np.stack(losses, axis=-1).reshape(steps, len(groups))

    def _steps_of(self, inputs, steps: int | None) -> int:
        """How many steps ``train_steps`` runs: ``steps``, else the length of its inputs' leading axis."""
        if steps is None:
            if not inputs:
                raise KernelInputError("train_steps: this kernel's train_step takes no inputs: pass steps=N")
            shape = np.shape(inputs[0])
            if not shape:
                names = self.kernel.programs["train_step"].inputs
                raise KernelInputError(f"train_steps: input {names[0] if names else 0} must have a leading axis "
                                       "of steps (one train_step input per step), got a scalar")
            steps = shape[0]
        if int(steps) != steps or steps < 0:
            raise KernelInputError(f"train_steps: steps must be a whole number >= 0, got {steps}")
        return int(steps)

    def _require_training(self) -> None:
        if "train_step" not in self.kernel.programs:
            raise KernelCapabilityError("this kernel was compiled for inference only: pass "
                                        "train=fx2fpga.SGD(...) to compile")

    def get_params_raw(self) -> dict[str, np.ndarray]:
        return self.call_raw("read_params", {})

    def set_params_raw(self, raw: dict[str, np.ndarray]) -> None:
        self.call_raw("load_params", raw)

    def get_params(self) -> dict[str, np.ndarray] | list[dict[str, np.ndarray]]:
        """The parameters on chip, as floats, keyed by the model's parameter names (a kernel of N
        models: a list of N such dicts, in model order); the optimizer's velocities too
        (``momentum:<name>``), not the learning rate (``get_lr``)."""
        raw = self.get_params_raw()
        names = self.kernel.param_names
        groups = [{names.get(b, b): self._row(self.kernel.buffers[b].fmt.to_float(raw[b]), i) for b in group
                   if names.get(b) != LR_PARAM}
                  for i, group in enumerate(self._param_groups())]
        return groups[0] if self.models is None else groups

    def set_params(self, params: dict | list[dict], *, partial: bool = False) -> None:
        """Quantize and load parameters (keys: the model's names, e.g. ``fc1.weight``; a kernel of
        N models takes a list of N such dicts, in model order).

        Every parameter of the model must be named unless ``partial=True`` (then the ones not named
        keep their values on chip); buffers (BatchNorm's running stats), the optimizer's states
        (``momentum:<name>``) and dropout's generator states may be left out: they keep theirs. A name
        the kernel does not have is an error (``KernelParamError``, a ``KeyError``)."""
        groups = self._param_groups()
        if self.models is None:
            params = [params]
        elif not isinstance(params, (list, tuple)) or len(params) != len(groups):
            got = f"{len(params)} dicts" if isinstance(params, (list, tuple)) else type(params).__name__
            raise KernelInputError(f"this kernel holds {len(groups)} models: set_params takes a list of "
                                   f"{len(groups)} dicts (one per model, in model order), got {got}")
        self._check_param_names(groups, params, partial)
        current = self.get_params_raw()
        for i, (group, values) in enumerate(zip(groups, params, strict=True)):
            self._quantize_params(group, values, current, i)
        self.set_params_raw(current)

    # ----- the learning rate register ------------------------------------------------------
    def get_lr(self) -> float | np.ndarray:
        """The learning rate on chip (a kernel of N models: an array of N), as the register holds it."""
        raw = self.get_params_raw()
        values = [float(self._row(self.kernel.buffers[b].fmt.to_float(raw[b]), i))
                  for i, b in enumerate(self._lr_buffers())]
        return values[0] if self.models is None else np.array(values)

    def _lr_buffers(self) -> list[str]:
        """Each model's learning rate register."""
        self._require_training()
        found = [[b for b in group if self.kernel.param_names.get(b) == LR_PARAM] for group in self._param_groups()]
        if not all(found):
            raise KernelCapabilityError("this kernel has no learning rate register (compiled before it existed): "
                                        "recompile")
        return [b[0] for b in found]

    def set_lr(self, lr) -> None:
        """Write the learning rate register: the next training steps use ``lr``, without a recompile (a
        kernel of N models: one value for all, or a list of N). The register's range reaches 4-8x the
        compiled learning rate (compile with a rate near the largest a schedule reaches); a rate outside
        it, or one it would round to zero, is an error."""
        groups, registers = self._param_groups(), self._lr_buffers()
        values = np.asarray(lr, dtype=np.float64).reshape(-1)
        if values.size == 1:
            values = np.repeat(values, len(groups))
        if np.ndim(lr) > 1 or len(values) != len(groups):
            raise KernelInputError(f"set_lr takes one value{f' or a list of {len(groups)}' if self.models else ''}, "
                                   f"got {lr}")
        raw = self.get_params_raw()
        for i, (group, register, value) in enumerate(zip(groups, registers, values, strict=True)):
            self._check_lr(register, value, i)
            self._quantize_params(group, {LR_PARAM: value}, raw, i)
        self.set_params_raw(raw)

    def _check_lr(self, register: str, value: float, model: int) -> None:
        """A learning rate the register holds: positive, within its format's range, not rounded to 0."""
        fmt = self.kernel.buffers[register].fmt
        where = "" if self.models is None else f"model {model}: "
        if not value > 0 or value > fmt.max_value or fmt.quantize(np.array(value)) == 0:
            raise KernelInputError(f"{where}learning rate {value} is outside its register's range {fmt}: "
                                   f"({fmt.ulp:g}, {fmt.max_value:g}]; compile with a learning rate near the "
                                   f"largest one you will set")

    def _check_param_names(self, groups: list[list[str]], params: list[dict], partial: bool) -> None:
        """Every name known (in any model: checked first), and, unless ``partial``, every parameter of the
        model named (``kind`` weight: buffers and states may be left out)."""
        names = self.kernel.param_names
        where = (lambda i: "") if self.models is None else (lambda i: f"model {i}: ")
        for i, (group, values) in enumerate(zip(groups, params, strict=True)):
            known = {names.get(b, b) for b in group}
            unknown = set(values) - known
            if unknown:
                raise KernelParamError(f"{where(i)}unknown parameters {sorted(unknown)}; this kernel has "
                                       f"{sorted(known - {LR_PARAM})}")
        if partial:
            return
        for i, (group, values) in enumerate(zip(groups, params, strict=True)):
            missing = [names.get(b, b) for b in group if self.kernel.buffers[b].kind == "weight"
                       and names.get(b, b) not in values]
            if missing:
                raise KernelParamError(f"{where(i)}set_params is missing parameters {missing}: name every parameter "
                                       f"of the model, or pass partial=True to keep the ones not named")

    def _quantize_params(self, group: list[str], params: dict, raw: dict[str, np.ndarray], model: int) -> None:
        """Quantize model ``model``'s ``params`` (keyed by its names) into ``raw`` (keyed by buffer)."""
        where = "" if self.models is None else f"model {model}: "
        index = self._index(model)
        by_model_name = {self.kernel.param_names.get(b, b): b for b in group}
        for name, value in params.items():
            b = by_model_name[name]
            buf = self.kernel.buffers[b]
            if hasattr(value, "detach"):  # a torch tensor, without importing torch
                value = value.detach().cpu().numpy()
            a = np.asarray(value, dtype=np.float64)
            shape = buf.shape if index is None else buf.shape[1:]
            if a.shape != shape:
                raise KernelInputError(f"{where}parameter {name} must have shape {shape}, got {a.shape}")
            _check_finite(a, "set_params", f"{where}parameter {name}")
            if index is None:
                raw[b] = buf.fmt.quantize(a)
            else:
                raw[b] = raw[b].copy()
                raw[b][index] = buf.fmt.quantize(a)

    def saturation(self) -> dict[str, int]:
        """How many assignments to each buffer saturated (or wrapped) since the last call: {buffer: count}
        (every buffer a stage writes; docs/saturation.md)."""
        from . import saturation

        self._require_open()
        return saturation.read(self.kernel, self.backend)

    def close(self) -> None:
        """Stop the backend (its simulator process, the board); later calls raise ``KernelClosedError``."""
        if not self.closed:
            self.closed = True
            self.backend.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
