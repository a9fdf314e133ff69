"""cocotb stream drivers and monitors with random pause patterns, ticked by one engine per testbench.

Every stream of the design under test is driven through these, so every test also exercises random
stalls (``valid`` low) on inputs and random backpressure (``ready`` low) on outputs. One coroutine ticks all
streams once per cycle: inputs change on the falling edge, handshakes are sampled in the read-only phase
before the rising edge, which is unambiguous whatever the simulator's event ordering.
"""

import collections

from cocotb.triggers import FallingEdge, ReadOnly

__all__ = ["StreamSource", "StreamSink", "StreamEngine"]


class StreamSource:
    """Drives ``<name>__valid`` / ``__payload`` from a queue of packed payloads.

    Parameters
    ----------
    stall : float
        Probability that ``valid`` stays low in a cycle although data is queued.
    """

    def __init__(self, dut, name, rng, *, stall=0.0):
        self.name = name
        self._valid = getattr(dut, f"{name}__valid")
        self._ready = getattr(dut, f"{name}__ready")
        self._payload = getattr(dut, f"{name}__payload")
        self._rng = rng
        self.stall = stall
        self.queue = collections.deque()
        self.sent = 0
        self._presenting = False
        self._valid.value = 0

    def send(self, payloads):
        self.queue.extend(payloads)

    @property
    def empty(self):
        return not self.queue

    def drive(self):
        present = bool(self.queue) and (self.stall == 0 or self._rng.random() >= self.stall)
        if present:
            self._payload.value = self.queue[0]
        if present != self._presenting:
            self._valid.value = int(present)
        self._presenting = present

    def halt(self):
        self._valid.value = 0
        self._presenting = False

    def sample(self):
        if self._presenting and self._ready.value:
            self.queue.popleft()
            self.sent += 1


class StreamSink:
    """Accepts beats of ``<name>__payload`` into :attr:`received`, with ``ready`` low with probability
    ``backpressure`` in each cycle."""

    def __init__(self, dut, name, rng, *, backpressure=0.0):
        self.name = name
        self._valid = getattr(dut, f"{name}__valid")
        self._ready = getattr(dut, f"{name}__ready")
        self._payload = getattr(dut, f"{name}__payload")
        self._rng = rng
        self.backpressure = backpressure
        self.received = []
        self._accepting = None

    def drive(self):
        accept = self.backpressure == 0 or self._rng.random() >= self.backpressure
        if accept != self._accepting:
            self._ready.value = int(accept)
        self._accepting = accept

    def halt(self):
        self._ready.value = 0
        self._accepting = False

    def sample(self):
        if self._accepting and self._valid.value:
            self.received.append(self._payload.value.to_unsigned())


class StreamEngine:
    """Ticks a set of sources and sinks once per clock cycle until a condition holds."""

    def __init__(self, clk, parts):
        self.clk = clk
        self.parts = list(parts)
        self.cycles = 0

    async def run_until(self, done, *, max_cycles, what):
        falling, read_only = FallingEdge(self.clk), ReadOnly()
        for _ in range(max_cycles):
            await falling
            for part in self.parts:
                part.drive()
            await read_only
            self.cycles += 1
            for part in self.parts:
                part.sample()
            if done():
                # Hold every handshake until the next call, so no beat moves while nobody samples it.
                await falling
                for part in self.parts:
                    part.halt()
                return
        raise TimeoutError(f"{what}: not done after {max_cycles} cycles")
