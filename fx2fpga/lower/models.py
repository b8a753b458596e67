"""A list of models as one kernel: each model lowered alone, then the kernels merged.

Every buffer and stage of model ``i`` gets the prefix ``m<i>_``, except the programs' inputs
(``infer_x``, ``train_x``, ``train_y``): those are one buffer each, shared by every model, so a
batch crosses the bus once and feeds them all. Each program runs model 0's stages, then model
1's, ...; its outputs are the models' outputs in model order. The lowering's facts (profiled
ranges, parameter and constant values, class counts) are renamed with the buffers, so
``passes.quantize`` gives each buffer the format it gets when its model is compiled alone.

``kernel.meta["models"]`` (in ``kernel.json``: the runtime reads it) records per model its
prefix, class, parameter buffers (load/read order) and outputs per program; the models run one
after another (a datapath vectorized over a model axis is a later step).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from fx2fpga_runtime.ir import Access, Kernel, Program, Stage

from ..errors import Fx2fpgaError
from ..handoffs import ALIASES_KEY, LOWERING_KEY, LR_SCALED_KEY, UNIFIED_KEY, LoweringFacts, lowering_facts

MODELS_KEY = "models"  # kernel.meta key: one ModelEntry (as a dict) per model


class ModelMergeError(Fx2fpgaError):
    """The models of a list cannot share one kernel (their inputs differ)."""


@dataclass
class ModelEntry:
    """One model of a merged kernel (``kernel.meta["models"][i]``, JSON in ``kernel.json``)."""

    prefix: str  # "m0_": the prefix of every buffer and stage of the model (not of the shared inputs)
    model: str  # the model's class name
    params: list[str] = field(default_factory=list)  # its parameter buffers, in load/read order
    outputs: dict[str, list[str]] = field(default_factory=dict)  # program -> its output buffers
    values: int = 0  # number of parameter values (model parameters, buffers and optimizer states)
    lr: float | None = None  # its SGD settings (None: inference)
    momentum: float | None = None
    weight_decay: float | None = None
    index: int | None = None  # its row on the model axis of a stacked kernel (None: the buffers are its own)


def describe_model(module, train) -> ModelEntry:
    """What the report says of a model before it is lowered: class and SGD settings."""
    sgd = {} if train is None else {"lr": float(train.lr), "momentum": float(train.momentum),
                                    "weight_decay": float(train.weight_decay)}
    return ModelEntry("", type(module).__name__, **sgd)


def merge(kernels: list[Kernel], name: str, entries: list[ModelEntry]) -> Kernel:
    """One kernel running ``kernels`` (each one model, as lowered alone) one after another."""
    first = kernels[0]
    for i, k in enumerate(kernels[1:], 1):
        _check_same_interface(first, k, i)
    shared = {b: b for prog in first.programs.values() for b in prog.inputs}  # model 0's names for the inputs
    merged = Kernel(name, {}, {p: Program(p, list(prog.inputs), [], []) for p, prog in first.programs.items()},
                    [], {}, {"num_classes": {}})
    facts, unified = LoweringFacts(), []
    for i, (k, entry) in enumerate(zip(kernels, entries, strict=True)):
        prefix = f"m{i}_"
        names = {b: _shared_name(first, k, b) or f"{prefix}{b}" for b in k.buffers}
        _add_model(merged, k, names, shared, prefix)
        unified += _merge_facts(facts, lowering_facts(k), names, shared, merged.meta["num_classes"],
                                k.meta.get("num_classes", {}), i)
        for b, twin in k.meta.get(ALIASES_KEY, {}).items():
            merged.meta.setdefault(ALIASES_KEY, {})[f"{prefix}{b}"] = names[twin]
        for b, (source, sign, lr) in k.meta.get(LR_SCALED_KEY, {}).items():
            merged.meta.setdefault(LR_SCALED_KEY, {})[names[b]] = [names[source], sign, names[lr]]
        merged.params += [names[b] for b in k.params]
        merged.param_names.update({names[b]: n for b, n in k.param_names.items()})
        entry.prefix, entry.params = prefix, [names[b] for b in k.params]
        entry.outputs = {p: [names[b] for b in prog.outputs] for p, prog in k.programs.items()}
        entry.values = sum(k.buffers[b].size for b in k.params if k.buffers[b].kind != "hyper")  # not the lr
    merged.meta[MODELS_KEY] = [asdict(e) for e in entries]
    merged.meta[UNIFIED_KEY] = unified
    merged.meta[LOWERING_KEY] = facts
    return merged


def _check_same_interface(first: Kernel, other: Kernel, i: int) -> None:
    """Model ``i`` has the programs of model 0, taking inputs of the same shapes and kinds."""
    if set(other.programs) != set(first.programs):
        raise ModelMergeError(f"model {i} has programs {sorted(other.programs)}, model 0 {sorted(first.programs)}")
    for p, prog in first.programs.items():
        theirs = other.programs[p].inputs
        if len(theirs) != len(prog.inputs):
            raise ModelMergeError(f"{p}: model {i} takes {len(theirs)} inputs, model 0 {len(prog.inputs)}; "
                                  f"the models of one kernel share their inputs")
        for a, b in zip(prog.inputs, theirs, strict=True):
            ba, bb = first.buffers[a], other.buffers[b]
            if (ba.shape, ba.role, ba.kind) != (bb.shape, bb.role, bb.kind):
                raise ModelMergeError(f"{p}: input {b} of model {i} is {bb.kind} {bb.shape}, model 0's {a} is "
                                      f"{ba.kind} {ba.shape}; the models of one kernel share their inputs")


def _shared_name(first: Kernel, k: Kernel, buffer: str) -> str | None:
    """Model 0's name of ``buffer`` when it is an input of a program of ``k`` (shared), else None."""
    for p, prog in k.programs.items():
        if buffer in prog.inputs:
            return first.programs[p].inputs[prog.inputs.index(buffer)]
    return None


def _add_model(merged: Kernel, k: Kernel, names: dict[str, str], shared: dict[str, str], prefix: str) -> None:
    """The model's buffers (each shared input once) and its stages and outputs after the others'."""
    for b, buf in k.buffers.items():
        new = names[b]
        if new in merged.buffers and new in shared:
            continue
        if new in merged.buffers:
            raise ModelMergeError(f"buffer name {new!r} of two models")  # prefixes make this impossible
        merged.buffers[new] = replace(buf, name=new, shape=tuple(buf.shape))
    for p, prog in k.programs.items():
        target = merged.programs[p]
        target.stages += [_renamed_stage(s, names, prefix) for s in prog.stages]
        target.outputs += [names[b] for b in prog.outputs]


def _renamed_stage(stage: Stage, names: dict[str, str], prefix: str) -> Stage:
    def acc(a: Access) -> Access:
        return replace(a, buffer=names[a.buffer])

    attrs = dict(stage.attrs)
    if "table" in attrs:  # (tables are made by quantize, after the merge; kept right if one exists)
        attrs["table"] = names[attrs["table"]]
    return replace(stage, name=f"{prefix}{stage.name}", out=acc(stage.out), ins=tuple(acc(a) for a in stage.ins),
                   attrs=attrs)


def _merge_facts(facts: LoweringFacts, theirs: LoweringFacts, names: dict[str, str], shared: dict[str, str],
                 classes: dict[str, int], their_classes: dict[str, int], i: int) -> list[str]:
    """Model ``i``'s facts under the merged names; a shared input's range (or class count) that
    differs from an earlier model's is unified (the widest range, the fewest classes): returns how."""
    notes = []
    for b, absmax in theirs.absmax.items():
        if b not in names:  # a temporary lowering dropped (a parameter updated in place): no buffer, no format
            continue
        new = names[b]
        if new in shared and new in facts.absmax and facts.absmax[new] != absmax:
            notes.append(f"{new}: profiled |max| {facts.absmax[new]:g} (earlier models) and {absmax:g} (model {i}); "
                         f"the format covers the larger")
        facts.widen(new, absmax)
    facts.param_init.update({names[b]: v for b, v in theirs.param_init.items() if b in names})
    facts.const_values.update({names[b]: v for b, v in theirs.const_values.items() if b in names})
    for b, c in their_classes.items():
        new = names[b]
        if new in classes and classes[new] != c:
            notes.append(f"{new}: class indices below {classes[new]} (earlier models) and {c} (model {i}); "
                         f"the runtime accepts indices below {min(c, classes[new])}")
        classes[new] = min(c, classes.get(new, c))
    return notes
