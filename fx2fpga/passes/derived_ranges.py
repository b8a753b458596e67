"""Formats that hold their range: values whose range follows from their inputs' formats.

Profiling (``quantize._decide_format``) sizes an activation or gradient to the range it took on the
example data, plus ``Precision.range_margin_bits``. Some values have a range that follows from the
formats of their inputs, whatever the data: a sum over ``n`` points of values in ``[lo, hi]`` lies in
``[n lo, n hi]``, a mean in ``[lo, hi]``, a difference of a prediction and a target in the difference of
their ranges. For those this pass derives the range by interval arithmetic over the lowered stages, in
program order, from the operands' representable ranges (each buffer holds only values of its format:
an assignment saturates or wraps into it), and widens the format (integer bits added, the fraction
kept) to hold it:

- **the loss** and every value that only the loss reads (``loss_cone``: an MSE loss's difference, square,
  sum and mean) always get their derived range, so that the example values are never the only thing that
  keeps the loss from saturating; up to ``DERIVED_MAX_WIDTH`` bits: where the derived range needs more (a
  loss of a function of wide parameters), the format keeps its fraction and gets the integer bits the cap
  leaves, and its note says that it may saturate;
- **sums, means and counts** of the forward pass elsewhere (``sum`` reductions into an activation or integer
  buffer, and such a sum scaled by a constant) get it where it costs at most ``DERIVED_MAX_EXTRA_BITS``
  integer bits more than the profiled format. Gradients keep their profiled formats: their derived range
  (a bias gradient: the batch size times its operand's range) is a worst case far beyond what training
  reaches, it would widen the weight-sized buffers and the update's multipliers, and ``fit`` warns when a
  gradient saturates;
- a float **target** holds at least what the values it is compared with hold (``hold_targets``): example
  targets of zeros say nothing of the real targets' range, and a target beyond its prediction's format
  is one the kernel cannot predict anyway.

Everything else keeps its profiled format, as do the user's formats (overrides), a folded update's scaled
operand (``quantize._hold_lr_scaled``) and a function table's input (the table spreads its segments over its
input format's range: a wider input would make it coarser; the softmax's sum of exponentials is one). A sum
or mean whose widened format would be wider than ``DERIVED_MAX_WIDTH`` keeps its profiled one. ``run``
returns one note per format it changed, or left short of its derived range, for the report.
"""

from __future__ import annotations

from fx2fpga_runtime.emu_compile import output_interval, sum_interval
from fx2fpga_runtime.fixed import Fixed
from fx2fpga_runtime.ir import Kernel, Stage
from fx2fpga_runtime.ops import OPS_TABLE

from ..handoffs import LR_SCALED_KEY
from ..lower.models import MODELS_KEY

DERIVED_MAX_EXTRA_BITS = 4  # a sum, mean or count outside the loss gets its derived range for at most this many bits
DERIVED_MAX_WIDTH = 31  # widened formats at most this wide (or their profiled width): a product of two stays
# within quantize.MAX_ACC_WIDTH, and a loss within the host's port
SUMS = ("sum",)  # reductions whose range follows from their operands' (a mac's also follows, but from weights)
INTERVAL_OPS = ("copy", "neg", "relu", "abs", "add", "sub", "mul", "select")  # bounded by emu_compile._bounds
LOSS_KINDS = ("activation", "gradient", "integer")  # the loss's values widened (all forward values in practice)
FORWARD_KINDS = ("activation", "integer")  # sums, means and counts widened elsewhere


def run(kernel: Kernel, fixed: set[str]) -> list[str]:
    """Widen the targets, the loss's values, and the sums, means and counts whose derived range costs a few
    bits (module docstring); ``fixed`` names buffers whose format is the user's. Returns notes for the report."""
    notes = hold_targets(kernel, fixed)
    cone, kept = loss_cone(kernel), _kept(kernel, fixed)
    sums: set[str] = set()
    for stage in kernel.stages():
        out = kernel.buffers[stage.out.buffer]
        if stage.op in SUMS:
            sums.add(out.name)
        if out.name in kept or out.role not in ("temp", "output") or not out.fmt.signed:
            continue
        if stage.name in cone and out.kind in LOSS_KINDS:
            notes += _hold(stage, kernel, None, "the loss")
        elif (stage.op in SUMS or _is_mean(stage, kernel, sums)) and out.kind in FORWARD_KINDS:
            notes += _hold(stage, kernel, DERIVED_MAX_EXTRA_BITS, "a sum" if stage.op in SUMS else "a mean")
    return notes


def loss_buffers(kernel: Kernel) -> list[str]:
    """The training step's loss output of each model (none without a training step)."""
    program = kernel.programs.get("train_step")
    if program is None or not program.outputs:
        return []
    models = kernel.meta.get(MODELS_KEY)
    return [program.outputs[0]] if models is None else [m["outputs"]["train_step"][0] for m in models]


def loss_cone(kernel: Kernel) -> set[str]:
    """The stages that compute only the loss: its own, and back from it every stage whose output is read by
    cone stages alone (an MSE loss: the mean, the sum, the square, the difference; not the prediction, which
    the backward pass reads too)."""
    program = kernel.programs.get("train_step")
    if program is None:
        return set()
    writers: dict[str, list[Stage]] = {}
    readers: dict[str, set[str]] = {}
    for stage in program.stages:
        writers.setdefault(stage.out.buffer, []).append(stage)
        for a in stage.ins:
            readers.setdefault(a.buffer, set()).add(stage.name)
    cone: set[str] = set()
    todo, seen = [b for b in loss_buffers(kernel) if b in writers], set()
    while todo:
        buffer = todo.pop()
        if buffer in seen:
            continue
        seen.add(buffer)
        cone.update(s.name for s in writers[buffer])
        for stage in writers[buffer]:  # an input joins once every stage that reads it is in the cone
            todo += [a.buffer for a in stage.ins if a.buffer in writers and readers[a.buffer] <= cone]
    return cone


def hold_targets(kernel: Kernel, fixed: set[str]) -> list[str]:
    """A float target's format gets at least the integer bits of every value an elementwise stage compares
    it with (an MSE target: the prediction's). Example targets of zeros would otherwise leave it at the
    default activation format, whatever the prediction's range."""
    notes = []
    for name, buf in kernel.buffers.items():
        if buf.role != "target" or buf.kind != "activation" or name in fixed:
            continue
        partners = [kernel.buffers[a.buffer] for s in kernel.stages() if not s.reduce
                    and any(a.buffer == name for a in s.ins) for a in s.ins if a.buffer != name]
        need = max((p.fmt.int_bits for p in partners if p.kind == buf.kind and p.role != "const"), default=0)
        if need > buf.fmt.int_bits:
            notes.append(f"{name}: {_widened(buf.fmt, need)} (was {buf.fmt}: it holds what it is compared with)")
            buf.fmt = _widened(buf.fmt, need)
    return notes


def derived_int_bits(stage: Stage, kernel: Kernel, frac_bits: int) -> int | None:
    """The fewest integer bits of a signed format with ``frac_bits`` fraction bits that holds every value
    ``stage`` can assign from operands within their formats, after rounding (None: not derived for its op)."""
    if stage.reduce and stage.op in ("sum", "mac"):
        (lo, hi), frac = sum_interval(stage, kernel)
    elif not stage.reduce and stage.op in INTERVAL_OPS:
        iv, frac = output_interval(stage, kernel)
        if iv is None:
            return None
        lo, hi = iv
    else:
        return None
    shift = frac - frac_bits  # rounded to frac_bits: between the floor and the ceiling of the exact value
    if shift > 0:
        lo, hi = lo >> shift, -((-hi) >> shift)
    else:
        lo, hi = lo << -shift, hi << -shift
    width = max(hi.bit_length(), max(-lo - 1, 0).bit_length()) + 1  # two's complement: -2**(w-1) .. 2**(w-1)-1
    return width - frac_bits


def _hold(stage: Stage, kernel: Kernel, max_extra: int | None, what: str) -> list[str]:
    """Widen ``stage``'s output to its derived range where that costs at most ``max_extra`` integer bits and
    ``DERIVED_MAX_WIDTH`` bits (None: any number, up to the width the cap allows beside the fraction); a note
    for each change, or for a derived range left out."""
    buf = kernel.buffers[stage.out.buffer]
    need = derived_int_bits(stage, kernel, buf.fmt.frac_bits)
    if need is None or need <= buf.fmt.int_bits:
        return []
    extra = need - buf.fmt.int_bits
    if max_extra is not None and extra > max_extra:
        return [f"{buf.name}: {buf.fmt} kept ({what}; its derived range needs {extra} more integer bits, "
                f"more than {max_extra})"]
    fmt, cap = _widened(buf.fmt, need), max(DERIVED_MAX_WIDTH, buf.fmt.width)
    if fmt.width > cap and max_extra is not None:
        return [f"{buf.name}: {buf.fmt} kept ({what}; its derived range would make it {fmt}, wider than {cap} bits)"]
    if fmt.width > cap:  # the loss keeps its fraction (its precision) and gets the integer bits the cap leaves
        fmt = _widened(buf.fmt, max(buf.fmt.int_bits, cap - buf.fmt.frac_bits))
    short = (f"; beside its {fmt.frac_bits} fraction bits, {cap} bits hold {fmt.int_bits}: it may saturate"
             if need > fmt.int_bits else "")
    note = f"{buf.name}: {fmt} (was {buf.fmt}; {what}: its derived range needs {need} integer bits{short})"
    buf.fmt = fmt
    return [note]


def _widened(fmt: Fixed, int_bits: int) -> Fixed:
    """``fmt`` with ``int_bits`` integer bits and its fraction kept."""
    extra = int_bits - fmt.int_bits
    return Fixed(fmt.width + extra, int_bits, fmt.signed, fmt.rounding, fmt.overflow)


def _kept(kernel: Kernel, fixed: set[str]) -> set[str]:
    """The buffers that keep their format whatever their derived range: the user's (``fixed``), a folded
    update's scaled operands, and the inputs of function tables."""
    tables = {s.ins[0].buffer for s in kernel.stages() if s.op == "table"}
    return set(fixed) | set(kernel.meta.get(LR_SCALED_KEY, {})) | tables


def _is_mean(stage: Stage, kernel: Kernel, sums: set[str]) -> bool:
    """A sum scaled by a constant (a mean: the sum times 1/n)."""
    if stage.reduce or stage.op != "mul" or OPS_TABLE[stage.op].arity != len(stage.ins):
        return False
    names = [a.buffer for a in stage.ins]
    return any(n in sums for n in names) and any(kernel.buffers[n].role == "const" for n in names)
