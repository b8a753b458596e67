"""``torch.compile(model, backend="fx2fpga", options={...})``: a TorchDynamo backend for inference.

Registered through the ``torch_dynamo_backends`` entry point (``pyproject.toml``), so PyTorch finds it
by name once fx2fpga is installed. Dynamo hands over each graph it captures, with the model's
parameters and buffers as graph inputs; the backend keeps those on chip (they become the kernel's
parameters, loaded again whenever PyTorch changes one of them) and compiles the graph with
``fx2fpga.compile`` at its first call, for the shapes of that call (outside Dynamo's own tracing,
whose shape environment a trace inside the backend would disturb). The compiled function runs the
kernel on the simulator ``options["sim"]`` (default ``"emu"``), so its results are the emulator's.

Options: ``sim`` and any keyword of ``fx2fpga.compile`` (``target``, ``precision``, ``lanes``,
``outputs``, ``name``, ``out_dir``). A graph fx2fpga cannot compile raises the compiler's own error
(``UnsupportedOpError`` with the op and the supported set) at that first call. The kernel computes no gradients: use it
for inference (``model.eval()``, ``torch.no_grad()``), and ``fx2fpga.compile(..., train=...)`` to train.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from .errors import UnsupportedOpError

_COMPILE_OPTIONS = {"target", "precision", "lanes", "outputs", "name", "out_dir"}


def fx2fpga_backend(gm: torch.fx.GraphModule, example_inputs, options: dict | None = None, **unused):
    """The Dynamo backend: the function Dynamo calls in place of ``gm``, an fx2fpga kernel."""
    options = dict(options or {})
    sim = options.pop("sim", "emu")
    unknown = set(options) - _COMPILE_OPTIONS
    if unknown:
        raise ValueError(f"fx2fpga backend: unknown options {sorted(unknown)}; it takes 'sim' and "
                         f"{sorted(_COMPILE_OPTIONS)}")
    return _KernelCall(_GraphWithState(gm, list(example_inputs)), sim, options)


def _state_name(placeholder: str) -> str | None:
    """``fc1_weight`` for Dynamo's placeholder of a module parameter or buffer
    (``L_self_modules_fc1_parameters_weight_``); None for a data input (``L_x_``)."""
    m = re.fullmatch(r"[lL]_[^\W_]+_((?:modules_\w+?_)*)(?:parameters|buffers)_(\w+?)_", placeholder)
    if m is None:
        return None
    return (m.group(1).replace("modules_", "") + m.group(2)).strip("_")


def _user_line(gm: torch.fx.GraphModule, source: str) -> str | None:
    """The user's source line (``model.py:12: code``) of a place ``<eval_with_key>.N:L: ...`` in the code of
    Dynamo's graph ``gm``, from the stack trace Dynamo recorded on its node; None if not found."""
    m = re.match(r"<eval_with_key>\.\d+:(\d+)", source or "")
    lines = gm.code.split("\n")
    head = next((i + 1 for i, line in enumerate(lines) if line.startswith("def forward")), None)
    index = m and head and (getattr(gm, "_lineno_map", None) or {}).get(int(m.group(1)) - head)
    if index is None:
        return None
    trace = list(gm.graph.nodes)[index].meta.get("stack_trace") or ""
    frames = re.findall(r'File "([^"]+)", line (\d+), in \w+\n\s*(.*)', trace)
    if not frames:
        return None
    path, line, code = frames[-1]
    return f"{path.rsplit('/', 1)[-1]}:{line}: {code.strip()}"


class _GraphWithState(nn.Module):
    """Dynamo's graph as a module: the graph inputs that are the model's parameters and buffers are
    this module's parameters (so they stay on chip); the others are its ``forward``'s inputs."""

    def __init__(self, gm: torch.fx.GraphModule, example_inputs: list):
        super().__init__()
        self.gm = gm
        names = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
        self.state: dict[int, str] = {}  # graph input position -> parameter name in this module
        for i, (name, value) in enumerate(zip(names, example_inputs, strict=True)):
            state = _state_name(name)
            if state is None and not isinstance(value, nn.Parameter):
                continue
            key = state or re.sub(r"\W", "_", name)
            self.register_parameter(key, nn.Parameter(value.detach().clone(), requires_grad=False))
            self.state[i] = key
        self.data_positions = [i for i in range(len(names)) if i not in self.state]
        self.sources = {i: example_inputs[i] for i in self.state}  # the model's own tensors, to watch

    def forward(self, *data):
        args = [None] * (len(self.state) + len(data))
        for i, key in self.state.items():
            args[i] = getattr(self, key)
        for i, value in zip(self.data_positions, data, strict=True):
            args[i] = value
        out = self.gm(*args)
        return out[0] if isinstance(out, (tuple, list)) and len(out) == 1 else out


class _KernelCall:
    """What Dynamo calls in place of the graph: the kernel's ``infer`` on the data inputs (compiled at
    the first call), after loading the model's parameters again if PyTorch changed any of them."""

    def __init__(self, graph: _GraphWithState, sim: str, options: dict):
        self.graph, self.sim, self.options = graph, sim, options
        self.runner = None
        self.versions = self._versions()

    def _versions(self) -> dict[int, int]:
        return {i: t._version for i, t in self.graph.sources.items()}

    def _compile(self, data: list) -> None:
        import fx2fpga

        try:
            design = fx2fpga.compile(self.graph, tuple(data), **self.options)
        except UnsupportedOpError as e:
            source = _user_line(self.graph.gm, e.source)
            if source is None:
                raise
            raise UnsupportedOpError(e.op, source, e.supported, e.detail) from None
        self.design, self.runner = design, design.load(self.sim)

    def __call__(self, *args):
        data = [args[i].detach().cpu() for i in self.graph.data_positions]
        if self.runner is None:
            self._compile(data)
        if self._versions() != self.versions:
            self.runner.set_params({key: args[i] for i, key in self.graph.state.items()})
            self.versions = self._versions()
        data = [d.numpy() for d in data]
        out = self.runner.infer(*data)
        outs = out if isinstance(out, tuple) else (out,)
        return tuple(torch.from_numpy(o).to(torch.get_default_dtype()) for o in outs)
