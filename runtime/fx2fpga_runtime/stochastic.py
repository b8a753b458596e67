"""Stochastic rounding (``SR``): the random bits every backend adds before dropping low bits.

A stage whose output format rounds ``SR`` (``fixed<8,2,SR,SAT>``) assigns its exact value ``raw`` (at
``frac`` fraction bits) to the output's ``frac - shift`` as ``floor((raw + R) / 2**shift)``: rounded up with
probability equal to the dropped fraction, so the rounding is unbiased on average (Gupta et al. 2015). ``R``
(``shift`` bits) comes from a counter-based generator, the same in emu, csim and rtl, bit for bit:

- ``p``: the assignment's *point*, the row-major position over the stage's kept loops (all loops of an
  elementwise stage, the non-reduced loops of a reduction) leaving out the model loop ``MODEL_VAR``: every
  model of a stacked kernel draws the numbers it draws compiled alone, and lanes or tiles do not change them;
- ``t``: how many times the stage's program (``train_step``, ``infer``) has run on this kernel (0 at the first
  call; every group of models of one call shares it);
- ``key``: the stage's key, from the kernel's seed (``Precision.sr_seed``, chosen at compile time) and the name
  of the buffer the stage writes;
- ``x = (t * STEP + key + p) mod 2**32``, three rounds of Marsaglia's xorshift32 (13, 17, 5): ``y = mix(x)``;
- ``R``: the top ``shift`` bits of ``y`` (``shift <= 32``), or ``y`` followed by ``shift - 32`` zero bits.

``mix`` is a bijection of 32-bit words, so for a fixed point the numbers repeat after ``2**32`` calls (``t``'s
Weyl sequence, ``STEP`` odd): the generator's period. In gates, ``mix`` of the bits ``R`` needs is an XOR
network (no multiplier), ``t * STEP + key`` one register per program that steps by ``STEP`` per call.
"""

from __future__ import annotations

import zlib

import numpy as np

from .ir import MODEL_VAR, Affine, Stage

MASK32 = (1 << 32) - 1
STEP = 0x9E3779B9  # odd (the golden ratio's 32-bit Weyl constant): t * STEP runs through every residue
SEED_SPREAD = 0x85EBCA6B  # odd: spreads the seed over the key's bits
XORSHIFT = (13, 17, 5)
ROUNDS = 3  # two leave consecutive calls of a point correlated (tests/unit/test_stochastic.py)
PERIOD = 1 << 32  # calls of a program before a point's numbers repeat
SEED_KEY = "sr_seed"  # kernel.meta: the seed chosen at compile time


def stage_key(seed: int, buffer: str) -> int:
    """The key of the stage that writes ``buffer`` in a kernel compiled with ``seed``."""
    return (zlib.crc32(buffer.encode()) + (seed * SEED_SPREAD)) & MASK32


def point_affine(stage: Stage) -> Affine:
    """A stage's point over its loop variables: row-major over the kept loops, the model loop left out."""
    terms, stride = [], 1
    for lp in reversed([lp for lp in stage.loops if lp.var not in stage.reduce and lp.var != MODEL_VAR]):
        terms.append((lp.var, stride))
        stride *= lp.extent
    return Affine(tuple(reversed(terms)), 0)


def rounds_stochastic(stage: Stage, kernel) -> bool:
    """Whether ``stage``'s output format rounds SR."""
    return kernel.buffers[stage.out.buffer].fmt.rounding == "SR"


def call_offset(key: int, call: int) -> int:
    """``t * STEP + key`` mod 2**32: what call ``t`` of a stage adds to its points."""
    return (call * STEP + key) & MASK32


def mix(x: np.ndarray) -> np.ndarray:
    """``ROUNDS`` rounds of xorshift32 on 32-bit words held in int64 (or uint64) arrays."""
    y = np.asarray(x, dtype=np.uint64) & np.uint64(MASK32)
    a, b, c = (np.uint64(k) for k in XORSHIFT)
    m = np.uint64(MASK32)
    for _ in range(ROUNDS):
        y ^= (y << a) & m
        y ^= y >> b
        y ^= (y << c) & m
    return y


def random_bits(points: np.ndarray, offset: int, shift: int) -> np.ndarray:
    """``R`` (int64, in ``[0, 2**shift)``) for the assignments at ``points`` of a call with ``offset``."""
    y = mix((np.asarray(points, dtype=np.int64) + offset) & MASK32)
    r = y >> np.uint64(32 - shift) if shift <= 32 else y << np.uint64(shift - 32)
    return r.astype(np.int64)


def round_stochastic(raw, shift: int, bits: np.ndarray) -> np.ndarray:
    """``floor((raw + R) / 2**shift)`` (``shift > 0``; ``bits``: ``R``, broadcast against ``raw``)."""
    return (np.asarray(raw, dtype=np.int64) + bits) >> np.int64(shift)


def describe(seed: int) -> str:
    """One line for the report: the generator, its seed and period."""
    return (f"counter-based, {ROUNDS} rounds of xorshift32 {XORSHIFT} of (call * {STEP:#x} + key + point) mod "
            f"2**32, key = crc32(output buffer) + seed * {SEED_SPREAD:#x}, seed {seed}; period 2**32 calls of a "
            "program at each point")
