"""Small pipeline helpers shared by the arrays and the sequencers."""

from amaranth.hdl import Signal

__all__ = ["delayed", "fpga_family", "timing_registers"]


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


def timing_registers(platform):
    """Whether to add the register stages that serve only an FPGA's clock rate (queues in front of streams, a
    registered read-modify-write): everywhere, simulation included, except on an iCE40, whose clock other paths
    hold to about 20 MHz and whose logic cells are what a design there runs short of."""
    return fpga_family(platform) != "ice40"


def fpga_family(platform):
    """The platform's FPGA family in lower case (``"ecp5"``, ``"ice40"``; Amaranth's SiliconBlue platforms say
    ``"iCE40"``), or ``""`` when elaborating for simulation."""
    return str(getattr(platform, "family", "")).lower()
