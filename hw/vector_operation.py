"""What the vector unit's operations (pool, add) share: the ports by which
:class:`~tessera.hw.vector.VectorUnit` runs a command of theirs on its buffer's read port."""

from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .isa import LINK_WIDTH
from .layouts import vec_command_layout, vec_load_layout

__all__ = ["VectorOperation"]


class VectorOperation(wiring.Component):
    """An operation of the vector unit: reads the vector buffer for one command at a time and emits its result
    words.

    Parameters
    ----------
    cfg : AcceleratorConfig
    settings : dict
        The operation's own ports before ``start``: its parameters, which hold still while a command runs.
    operands : dict
        Its own ports after ``start``: the running command's operands.

    Attributes
    ----------
    start : In(1)
        Pulse: a command is accepted.
    run, room : In(1)
        The command runs; the output queue has room for one more result word: go on reading.
    read_addr, read_data : Out, In
        The vector buffer's read port (one cycle latency).
    reading : Out(1)
        A word is read this cycle.
    started : Out(1)
        A result word's last read is this cycle: one more result word is on its way.
    done : Out(1)
        The command's last read is this cycle.
    result, result_valid : Out
        A result word.
    """

    def __init__(self, cfg, settings, operands):
        self.cfg = cfg
        super().__init__({
            **settings,
            "start": In(1),
            **operands,
            "run": In(1), "room": In(1),
            "read_addr": Out(vec_command_layout(cfg)["a_base"].shape),
            "read_data": In(vec_load_layout(cfg)["data"].shape),
            "reading": Out(1),
            "started": Out(1),
            "done": Out(1),
            "result": Out(LINK_WIDTH),
            "result_valid": Out(1),
        })
