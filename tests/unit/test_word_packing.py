"""interface.py's word packing: several narrow input values in one unit of one or two 32-bit words, along a
banked dim.

The host packs (``interface.pack``) and every backend unpacks the same layout: the emulator through
``interface.unpack``, the HLS kernel's unpack functions, the RTL's unpack phase with one lane per field (the
backends' equality with the emulator is checked by every csim and rtl test; here the layout itself).
"""

from __future__ import annotations

import numpy as np
from fx2fpga_runtime import interface
from fx2fpga_runtime.fixed import Fixed
from fx2fpga_runtime.ir import Buffer, Kernel, Program
from hypothesis import given, settings
from hypothesis import strategies as st

from fx2fpga.passes import schedule


def _kernel(shape, fmt, packing):
    x = Buffer("x", tuple(shape), fmt, "input")
    y = Buffer("y", (3,), Fixed(8, 8), "input")
    meta = {"word_packing": {"x": list(packing)}} if packing else {}
    return Kernel("k", {"x": x, "y": y}, {"infer": Program("infer", ["x", "y"], [], [])}, [], {}, meta)


@st.composite
def packed_buffers(draw):
    rank = draw(st.integers(1, 3))
    dim = draw(st.integers(0, rank - 1))
    width = draw(st.integers(2, 16))
    per_word = draw(st.sampled_from([k for k in (2, 3, 4, 8, 16, 32) if k * width <= 64] or [1]))
    shape = [draw(st.integers(1, 4)) for _ in range(rank)]
    shape[dim] *= per_word
    fmt = Fixed(width, draw(st.integers(-4, width + 4)), signed=draw(st.booleans()))
    lo, hi = (-(1 << (width - 1)), (1 << (width - 1)) - 1) if fmt.signed else (0, (1 << width) - 1)
    values = np.array(draw(st.lists(st.integers(lo, hi), min_size=int(np.prod(shape)), max_size=int(np.prod(shape)))),
                      dtype=np.int64).reshape(shape)
    return shape, fmt, (dim, per_word), values


@settings(max_examples=200, deadline=None)
@given(packed_buffers())
def test_pack_then_unpack_gives_every_value_back(case):
    shape, fmt, (dim, per_word), values = case
    k = _kernel(shape, fmt, (dim, per_word))
    y = np.array([-3, 0, 127], dtype=np.int64)
    words = interface.pack(k, ["x", "y"], {"x": values, "y": y})
    unit = 1 if per_word * fmt.width <= 32 else 2  # words a unit takes
    assert words.dtype == np.int32 and len(words) == values.size // per_word * unit + 3 == interface.word_count(
        k, ["x", "y"])
    back = interface.unpack(k, ["x", "y"], words)
    assert np.array_equal(back["x"], values) and np.array_equal(back["y"], y)


def test_the_layout_is_fields_along_the_dim_in_row_major_words():
    """x (2 x 4) of 8-bit values packed four to a word along dim 1: word r holds x[r, 0..3], value l in bits
    8l..8l+7; along dim 0, two to a word: word c holds x[0, c] and x[1, c]."""
    x = np.array([[1, -2, 3, -4], [5, 6, -7, 8]], dtype=np.int64)
    u8 = x & 0xFF
    rows = interface.pack(_kernel((2, 4), Fixed(8, 4), (1, 4)), ["x"], {"x": x})
    assert rows.astype(np.int64).tolist() == [
        int(np.int32(np.uint32(sum(int(u8[r, c]) << (8 * c) for c in range(4))))) for r in range(2)]
    cols = interface.pack(_kernel((2, 4), Fixed(8, 4), (0, 2)), ["x"], {"x": x})
    assert (cols.astype(np.int64) & 0xFFFF).tolist() == [int(u8[0, c]) | int(u8[1, c]) << 8 for c in range(4)]


def test_a_unit_wider_than_a_word_is_two_words_low_first():
    """x (4 x 2) of 16-bit values packed four to a unit along dim 0: unit c holds x[0..3, c], values 0 and 1 in
    its first word, 2 and 3 in its second."""
    x = np.array([[1, -2], [3, -4], [5, 6], [-7, 8]], dtype=np.int64)
    u16 = x & 0xFFFF
    k = _kernel((4, 2), Fixed(16, 8), (0, 4))
    words = interface.pack(k, ["x"], {"x": x}).astype(np.int64) & 0xFFFFFFFF
    assert words.tolist() == [int(u16[2 * h, c]) | int(u16[2 * h + 1, c]) << 16 for c in range(2) for h in range(2)]
    assert interface.buffer_words(k, "x") == 4 and np.array_equal(interface.unpack(k, ["x"], words)["x"], x)


def test_the_schedule_packs_a_narrow_input_along_a_dim_with_enough_banks():
    """As many values as fit a unit of two words and divide both the dim and its banks; wide inputs and parameters
    stay one value per word."""
    k = _kernel((4, 6), Fixed(10, 2), None)

    class Banked:
        def __init__(self, factors):
            self.factors = factors

    assert schedule.word_packing(k, {"x": Banked((1, 6)), "y": Banked((1,))}) == {"x": [1, 6]}  # 60 bits: two words
    assert schedule.word_packing(k, {"x": Banked((1, 3)), "y": Banked((1,))}) == {"x": [1, 3]}
    assert schedule.word_packing(k, {"x": Banked((4, 6)), "y": Banked((3,))}) == {"x": [1, 6], "y": [0, 3]}
    assert schedule.word_packing(k, {"x": Banked((2, 1)), "y": Banked((1,))}) == {"x": [0, 2]}
    assert schedule.word_packing(k, {"x": Banked((1, 1)), "y": Banked((1,))}) == {}
    wide = _kernel((4, 6), Fixed(17, 2), None)
    assert schedule.word_packing(wide, {"x": Banked((4, 6)), "y": Banked((1,))}) == {}
