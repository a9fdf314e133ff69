"""Small pipeline helpers shared by the arrays and the sequencers."""

from amaranth.hdl import Signal

__all__ = ["delayed"]


def delayed(m, value, cycles, *, name, domain="sync"):
    """Return ``value`` delayed by ``cycles`` registers (``cycles`` may be 0).

    Used for the systolic skew and de-skew triangles and for tags that travel beside the array's data, so
    their latency is derived from the same structure instead of being counted by hand.
    """
    stage = value
    for i in range(cycles):
        reg = Signal(value.shape(), name=f"{name}_d{i + 1}")
        m.d[domain] += reg.eq(stage)
        stage = reg
    return stage
