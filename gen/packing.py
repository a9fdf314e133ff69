"""Packing Python values into the bit layouts of :mod:`tessera.hw.layouts` and back.

Testbenches and the host driver build stream payloads with these, from the same layout objects the RTL is
elaborated from, so a field moved in the hardware moves here too.
"""

from amaranth.hdl import Shape
from amaranth.lib import data

__all__ = ["pack", "unpack", "pack_array", "unpack_array"]


def pack(layout, value):
    """Return the integer whose bits hold ``value`` laid out as ``layout``.

    ``value`` is an int for a plain shape, a sequence for an :class:`~amaranth.lib.data.ArrayLayout` and a
    mapping for a :class:`~amaranth.lib.data.StructLayout` (missing fields are zero).
    """
    if isinstance(layout, data.ArrayLayout):
        if len(value) != layout.length:
            raise ValueError(f"expected {layout.length} elements, got {len(value)}")
        width = Shape.cast(layout.elem_shape).width
        bits = 0
        for i, element in enumerate(value):
            bits |= pack(layout.elem_shape, element) << (i * width)
        return bits
    if isinstance(layout, data.StructLayout):
        unknown = set(value) - {name for name, _ in layout}
        if unknown:
            raise ValueError(f"unknown field(s) {sorted(unknown)}; layout has {[n for n, _ in layout]}")
        bits = 0
        for name, field in layout:
            if name in value:
                try:
                    bits |= pack(field.shape, value[name]) << field.offset
                except ValueError as error:   # say which field, as the layouts nest
                    raise ValueError(f"{name}: {error}") from None
        return bits
    shape = Shape.cast(layout)
    value = int(value)
    low, high = (-(1 << shape.width - 1), (1 << shape.width - 1) - 1) if shape.signed else (0, (1 << shape.width) - 1)
    if not low <= value <= high:
        raise ValueError(f"{value} does not fit {shape} (accepted: {low} to {high})")
    return value & ((1 << shape.width) - 1)


def unpack(layout, bits):
    """Inverse of :func:`pack`: ints, lists and dicts from an integer."""
    bits = int(bits)
    if isinstance(layout, data.ArrayLayout):
        width = Shape.cast(layout.elem_shape).width
        return [unpack(layout.elem_shape, bits >> (i * width)) for i in range(layout.length)]
    if isinstance(layout, data.StructLayout):
        return {name: unpack(field.shape, bits >> field.offset) for name, field in layout}
    shape = Shape.cast(layout)
    bits &= (1 << shape.width) - 1
    if shape.signed and bits >> (shape.width - 1):
        bits -= 1 << shape.width
    return bits


def pack_array(values, width):
    """Pack a 1-D sequence of two's complement integers of ``width`` bits, element 0 in the low bits (fast
    path for wide vectors)."""
    mask = (1 << width) - 1
    bits = 0
    for i, v in enumerate(values):
        bits |= (int(v) & mask) << (i * width)
    return bits


def unpack_array(bits, width, length, signed=True):
    """Unpack ``length`` elements of ``width`` bits (inverse of :func:`pack_array`)."""
    mask = (1 << width) - 1
    out = []
    for i in range(length):
        v = (bits >> (i * width)) & mask
        if signed and v >> (width - 1):
            v -= 1 << width
        out.append(v)
    return out
