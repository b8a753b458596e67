"""Replay a traced graph in float64 on the emulator's own values, layer by layer.

Each node whose value the kernel stores in a buffer takes the emulator's value (so every
layer sees exactly the inputs the kernel saw); the layer ops (convolution, pooling and their
backward) are computed by PyTorch in float64 from those inputs and compared with the
kernel's buffer. The kernel's accumulators are exact and float64 holds these sums exactly,
so the kernel must equal PyTorch's result assigned to the output format, bit for bit.
"""

from __future__ import annotations

import operator

import numpy as np
import torch
import torch.fx
from fx2fpga_runtime.ir import Kernel

from fx2fpga.handoffs import graph_info, placeholder

aten = torch.ops.aten
LAYER_OPS = {
    aten.convolution.default, aten.convolution_backward.default, aten.max_pool2d_with_indices.default,
    aten.max_pool2d_with_indices_backward.default, aten.avg_pool2d.default, aten.avg_pool2d_backward.default,
    aten._adaptive_avg_pool2d.default, aten._adaptive_avg_pool2d_backward.default, aten.constant_pad_nd.default,
}
SUFFIXES = {aten.convolution_backward.default: ("_dx", "_dw", "_db"), aten.max_pool2d_with_indices.default: ("",)}


class _Replay(torch.fx.Interpreter):
    def __init__(self, gm, kernel: Kernel, mem: dict, prefix: str):
        super().__init__(gm)
        self.kernel, self.mem, self.prefix = kernel, mem, prefix
        self.checked: dict[str, int] = {}  # buffer -> values compared
        self.mismatch: dict[str, float] = {}  # buffer -> largest difference in ulps

    def _buffer(self, n: torch.fx.Node) -> str | None:
        if n.target is operator.getitem:
            suffixes = SUFFIXES.get(n.args[0].target, ())
            if n.args[1] >= len(suffixes):
                return None
            name = f"{self.prefix}{n.args[0].name}{suffixes[n.args[1]]}"
        else:
            name = f"{self.prefix}{n.name}"
        buf = self.kernel.buffers.get(name)
        return name if buf is not None and buf.role == "temp" and buf.kind in ("activation", "gradient") else None

    def run_node(self, n):
        out = super().run_node(n)
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            out = out.double()
        name = self._buffer(n) if n.op == "call_function" and isinstance(out, torch.Tensor) else None
        if name is None:
            return out
        fmt = self.kernel.buffers[name].fmt
        mine = torch.from_numpy(np.asarray(fmt.to_float(self.mem[name]))).reshape(out.shape)
        layer = n.args[0].target if n.target is operator.getitem else n.target
        if layer in LAYER_OPS or self._fused_relu(n):
            want = fmt.quantize(out.numpy())
            self.checked[name] = int(want.size)
            diff = np.abs(want - self.mem[name].reshape(want.shape))
            if diff.max() > 0:
                self.mismatch[name] = int(diff.max())
        return mine  # downstream nodes see what the kernel stored


    def _fused_relu(self, n) -> bool:
        """``n`` is the ReLU of a convolution whose output the kernel never stores (passes/fuse.py computes the
        ReLU as the convolution's result is written): its buffer holds the layer's result through the ReLU."""
        src = n.args[0] if n.target in RELUS else None
        return isinstance(src, torch.fx.Node) and src.target in LAYER_OPS and self._buffer(src) is None


RELUS = {aten.relu.default, aten.relu_.default}


def replay_layers(kernel: Kernel, gm: torch.fx.GraphModule, args: list, mem: dict) -> _Replay:
    """Run ``gm`` on ``args`` (float, already quantized) with the emulator's values substituted;
    ``.checked`` lists the layer buffers compared, ``.mismatch`` those that differ (in ulps)."""
    prefix = graph_info(gm).prefix + "_"
    replay = _Replay(gm, kernel, mem, prefix)
    with torch.no_grad():
        replay.run(*[a.double() if a.is_floating_point() else a for a in args])
    return replay


def graph_args(kernel: Kernel, gm: torch.fx.GraphModule, x: torch.Tensor, y: torch.Tensor | None = None,
               quantized: bool = True, params: dict | None = None) -> list:
    """The placeholders' values: parameters, buffers and the learning rate (``params`` by model name, else
    the model's values from the trace), then ``x`` and ``y``; with ``quantized``, as the kernel
    holds them (in their formats)."""
    by_model_name = {v: k for k, v in kernel.param_names.items()}
    program = kernel.programs[graph_info(gm).program]
    x_fmt = kernel.buffers[program.inputs[0]].fmt
    out = []
    for n in gm.graph.nodes:
        if n.op != "placeholder":
            continue
        ph = placeholder(n)
        role = ph.role
        if role in ("param", "buffer", "hyper"):  # hyper: the learning rate register
            v, fmt = ph.value, kernel.buffers[by_model_name[ph.name]].fmt
            if params is not None and ph.name in params:
                v = torch.as_tensor(params[ph.name]).to(v.dtype).reshape(v.shape)
            out.append(_q(v, fmt) if quantized and v.is_floating_point() else v)
        elif role == "input":
            out.append(_q(x, x_fmt) if quantized else x)
        else:
            out.append(y)
    return out


def _q(t: torch.Tensor, fmt) -> torch.Tensor:
    return torch.from_numpy(np.asarray(fmt.to_float(fmt.quantize(t.detach().double().numpy()))))
