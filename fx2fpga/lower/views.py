"""Tensor views as index maps: how permute / reshape / expand / slice cost no data movement.

A ``View`` says that a tensor of ``shape`` is ``buffer[index[0](d0, d1, ...)]...``: one
``Affine`` per buffer dimension over the view's own dimension variables ``d0, d1, ...``.
Stages substitute their loop variables for ``d0, d1, ...`` to get their ``Access``es.
"""

from __future__ import annotations

from dataclasses import dataclass

from fx2fpga_runtime.ir import Access, Affine

from ..backends.common import affine_range


def dim_var(i: int) -> str:
    return f"d{i}"


class NotAffine(Exception):
    """The composed index would need nested division: materialize a copy instead."""


@dataclass(frozen=True)
class View:
    buffer: str
    shape: tuple[int, ...]
    index: tuple[Affine, ...]

    @classmethod
    def identity(cls, buffer: str, shape: tuple[int, ...]) -> View:
        return cls(buffer, tuple(shape), tuple(Affine.var(dim_var(i)) for i in range(len(shape))))

    def is_identity(self) -> bool:
        return self == View.identity(self.buffer, self.shape)

    def remap(self, shape: tuple[int, ...], old_dims: dict[str, Affine], extents: dict[str, int]) -> View:
        """New view of ``shape`` whose old dim variables are ``old_dims[d_j]`` (over new vars)."""
        return View(self.buffer, tuple(shape), tuple(substitute(a, old_dims, extents) for a in self.index))

    def access(self, loop_of_dim: dict[str, Affine], extents: dict[str, int]) -> Access:
        """The Access for a stage whose loop expressions for this view's dims are given."""
        return Access(self.buffer, tuple(substitute(a, loop_of_dim, extents) for a in self.index))


def substitute(a: Affine, mapping: dict[str, Affine], extents: dict[str, int]) -> Affine:
    """``a`` with each variable replaced by an Affine; raises NotAffine when not expressible."""
    if a.div == 1 and a.mod == 0 and len(a.terms) == 1 and a.terms[0][1] == 1 and a.const == 0:
        return mapping[a.terms[0][0]]  # plain pass-through of one variable
    terms: dict[str, int] = {}
    const = a.const
    for var, coeff in a.terms:
        m = mapping[var]
        if m.div != 1 or m.mod:
            raise NotAffine(f"cannot compose {a.c_expr()} with {m.c_expr()}")
        const += coeff * m.const
        for v, c in m.terms:
            terms[v] = terms.get(v, 0) + coeff * c
    plain = Affine(tuple((v, c) for v, c in terms.items() if c != 0), const)
    return simplify(Affine(plain.terms, plain.const, a.div, a.mod), extents)


def simplify(a: Affine, extents: dict[str, int]) -> Affine:
    """Remove a division or modulo that cannot change the value for vars in their ranges."""
    terms, const, div, mod = list(a.terms), a.const, a.div, a.mod
    if mod:
        terms = [(v, c) for v, c in terms if c % (div * mod) != 0]
        const %= div * mod
    if div != 1:
        high = [(v, c // div) for v, c in terms if c % div == 0]
        low = [(v, c) for v, c in terms if c % div != 0]
        lo_min = min(0, const) + sum(min(0, c * (extents[v] - 1)) for v, c in low)
        lo_max = const + sum(max(0, c * (extents[v] - 1)) for v, c in low)
        if not low and const % div == 0:
            terms, const, div = high, const // div, 1
        elif lo_min >= 0 and lo_max < div and const >= 0:
            terms, const, div = high, 0, 1
    if mod and div == 1:
        vmin, vmax = affine_range(Affine(tuple(terms), const), extents)
        if vmin >= 0 and vmax < mod:
            mod = 0
    return Affine(tuple(terms), const, div, mod)


# ----- the view ops ---------------------------------------------------------------------

def _extents(shape) -> dict[str, int]:
    return {dim_var(i): n for i, n in enumerate(shape)}


def permute(v: View, dims: list[int]) -> View:
    nd = len(v.shape)
    dims = [d % nd for d in dims]
    shape = tuple(v.shape[d] for d in dims)
    old = {dim_var(d): Affine.var(dim_var(k)) for k, d in enumerate(dims)}
    return v.remap(shape, old, _extents(shape))


def reshape(v: View, shape: list[int]) -> View:
    """Row-major reshape: each old index is a div/mod of the new flat index."""
    shape = list(shape)
    total = 1
    for n in v.shape:
        total *= n
    if -1 in shape:
        known = 1
        for n in shape:
            if n != -1:
                known *= n
        shape[shape.index(-1)] = total // known
    shape = tuple(shape)
    new_strides = _strides(shape)
    flat = tuple((dim_var(k), s) for k, s in enumerate(new_strides) if shape[k] != 1)
    old_strides = _strides(v.shape)
    ext = _extents(shape)
    old = {}
    for j, (n, s) in enumerate(zip(v.shape, old_strides, strict=True)):
        old[dim_var(j)] = Affine(()) if n == 1 else simplify(Affine(flat, 0, s, n), ext)
    return v.remap(shape, old, ext)


def expand(v: View, shape: list[int]) -> View:
    shape = tuple(n if n != -1 else v.shape[i - (len(shape) - len(v.shape))] for i, n in enumerate(shape))
    lead = len(shape) - len(v.shape)
    old = {}
    for j, n in enumerate(v.shape):
        old[dim_var(j)] = Affine(()) if n == 1 and shape[j + lead] != 1 else Affine.var(dim_var(j + lead))
    return v.remap(shape, old, _extents(shape))


def unsqueeze(v: View, dim: int) -> View:
    dim = dim % (len(v.shape) + 1)
    shape = v.shape[:dim] + (1,) + v.shape[dim:]
    old = {dim_var(j): Affine.var(dim_var(j if j < dim else j + 1)) for j in range(len(v.shape))}
    return v.remap(shape, old, _extents(shape))


def squeeze(v: View, dims: list[int] | None) -> View:
    nd = len(v.shape)
    drop = {d % nd for d in dims} if dims is not None else {i for i, n in enumerate(v.shape) if n == 1}
    drop = {d for d in drop if v.shape[d] == 1}
    keep = [j for j in range(nd) if j not in drop]
    shape = tuple(v.shape[j] for j in keep)
    old = {dim_var(j): Affine(()) for j in drop}
    old.update({dim_var(j): Affine.var(dim_var(k)) for k, j in enumerate(keep)})
    return v.remap(shape, old, _extents(shape))


def slice_(v: View, dim: int, start: int, end: int, step: int) -> View:
    nd = len(v.shape)
    dim %= nd
    n = v.shape[dim]
    start = max(0, min(n, start + n if start < 0 else start))
    end = max(start, min(n, end + n if end < 0 else end))
    shape = v.shape[:dim] + ((end - start + step - 1) // step,) + v.shape[dim + 1:]
    old = {dim_var(j): Affine.var(dim_var(j)) for j in range(nd)}
    old[dim_var(dim)] = Affine(((dim_var(dim), step),), start)
    return v.remap(shape, old, _extents(shape))


def select(v: View, dim: int, index: int) -> View:
    nd = len(v.shape)
    dim %= nd
    index = index % v.shape[dim]
    shape = v.shape[:dim] + v.shape[dim + 1:]
    old = {dim_var(j): Affine.var(dim_var(j if j < dim else j - 1)) for j in range(nd) if j != dim}
    old[dim_var(dim)] = Affine((), index)
    return v.remap(shape, old, _extents(shape))


def broadcast_to(v: View, shape: tuple[int, ...]) -> View:
    """Numpy broadcasting of ``v`` to ``shape`` (leading dims added, size-1 dims stretched)."""
    if v.shape == tuple(shape):
        return v
    return expand(v, list(shape))


def _strides(shape) -> tuple[int, ...]:
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= n
    return tuple(reversed(strides))
