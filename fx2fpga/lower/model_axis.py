"""Models of one architecture stacked on a model axis: one datapath for all of them.

When every model of a list lowers to the same kernel structure (the same stages over buffers
of the same shapes; only parameter values, profiled ranges and constants such as the learning
rate differ), the kernel is model 0's with

- a leading dim of size N on every buffer that belongs to one model (parameters, optimizer
  state, temporaries, outputs, and constants whose values differ between models, such as a
  learning rate per model);
- an outermost loop ``MODEL_VAR`` over the models in every stage, indexing those buffers;
- the programs' inputs (the batch) and the constants every model shares left as they are:
  one buffer read by all models, so a batch crosses the bus once.

The tile step may then run lanes over the model loop (``Stage.model_lanes``): each model's
rows sit in banks of their own. One buffer has one format, so a buffer whose profiled range or
constant values differ between models gets the format covering all of them; ``unified_formats``
lists those buffers, and ``report.md`` says so. Each model computes what it computes alone with
the stacked kernel's formats, bit for bit (``tests/feature/test_models.py``).
"""

from __future__ import annotations

from dataclasses import asdict, replace

from fx2fpga_runtime.ir import MODEL_VAR, Access, Affine, Kernel, Loop, Program, Stage

from ..handoffs import LOWERING_KEY, UNIFIED_KEY, LoweringFacts, lowering_facts
from .models import MODELS_KEY, ModelEntry, ModelMergeError


def structure(kernel: Kernel) -> tuple:
    """What must be equal for two kernels to share one datapath: every buffer's shape, role and
    kind, every stage (op, loops, accesses, attributes) and the programs' inputs and outputs;
    not the parameter values, profiled ranges or constant values."""
    buffers = tuple(sorted((b.name, tuple(b.shape), b.role, b.kind) for b in kernel.buffers.values()))
    programs = tuple((p, tuple(prog.inputs), tuple(prog.outputs),
                      tuple(_stage_structure(s) for s in prog.stages)) for p, prog in sorted(kernel.programs.items()))
    return buffers, programs, tuple(kernel.params), tuple(sorted(kernel.param_names.items()))


def _stage_structure(st: Stage) -> str:
    d = asdict(st)
    d.pop("source")
    d.pop("origin")
    return repr(d)


def stackable(kernels: list[Kernel]) -> bool:
    """Whether the kernels (each one model, lowered alone) can share one datapath."""
    first = structure(kernels[0])
    uses_var = any(lp.var == MODEL_VAR for st in kernels[0].stages() for lp in st.loops)
    return not uses_var and all(structure(k) == first for k in kernels[1:])


def stack(kernels: list[Kernel], name: str, entries: list[ModelEntry]) -> Kernel:
    """One kernel computing every model of ``kernels`` (one architecture) on a model axis."""
    if not stackable(kernels):
        raise ModelMergeError("the models differ in structure; a list of different architectures runs one "
                              "model after another (stack_models=False)")
    first, n = kernels[0], len(kernels)
    facts = [lowering_facts(k) for k in kernels]
    shared = {b for prog in first.programs.values() for b in prog.inputs}
    shared |= {b for b, buf in first.buffers.items()
               if buf.role == "const" and all(list(f.const_values[b]) == list(facts[0].const_values[b]) for f in facts)}
    per_model = set(first.buffers) - shared
    buffers = {b: replace(buf, shape=(n, *buf.shape)) if b in per_model else replace(buf, shape=tuple(buf.shape))
               for b, buf in first.buffers.items()}
    programs = {p: Program(p, list(prog.inputs), list(prog.outputs), [_stacked_stage(s, per_model, n)
                                                                         for s in prog.stages])
                for p, prog in first.programs.items()}
    meta = {k: v for k, v in first.meta.items() if k != LOWERING_KEY}
    classes = [k.meta.get("num_classes", {}) for k in kernels]
    meta["num_classes"] = {b: min(c[b] for c in classes) for b in classes[0]}
    stacked = Kernel(name, buffers, programs, list(first.params), dict(first.param_names), meta)
    merged = _stack_facts(facts, per_model)
    for i, (k, entry) in enumerate(zip(kernels, entries, strict=True)):
        entry.prefix, entry.index, entry.params = "", i, list(first.params)
        entry.outputs = {p: list(prog.outputs) for p, prog in first.programs.items()}
        entry.values = sum(k.buffers[b].size for b in k.params if k.buffers[b].kind != "hyper")  # not the lr
    stacked.meta[MODELS_KEY] = [asdict(e) for e in entries]
    stacked.meta[UNIFIED_KEY] = []  # filled by passes.quantize
    stacked.meta[LOWERING_KEY] = merged
    return stacked


def _stacked_stage(st: Stage, per_model: set[str], n: int) -> Stage:
    def acc(a: Access) -> Access:
        return replace(a, index=(Affine.var(MODEL_VAR), *a.index)) if a.buffer in per_model else a

    return replace(st, loops=(Loop(MODEL_VAR, n), *st.loops), out=acc(st.out), ins=tuple(acc(a) for a in st.ins),
                   attrs=dict(st.attrs))


def _stack_facts(facts: list[LoweringFacts], per_model: set[str]) -> LoweringFacts:
    """The stacked kernel's facts: ranges the widest, values model after model, and each model's own
    facts (``passes.quantize`` notes the buffers whose format alone would differ between models)."""
    merged = LoweringFacts(per_model=facts)
    for b in facts[0].absmax:
        merged.absmax[b] = max(f.absmax.get(b, 0.0) for f in facts)
    for b in facts[0].param_init:
        merged.param_init[b] = [v for f in facts for v in f.param_init[b]]
    for b in facts[0].const_values:
        merged.const_values[b] = (tuple(v for f in facts for v in f.const_values[b]) if b in per_model
                                  else facts[0].const_values[b])
    return merged
