"""The order of a resident model's commands: which unit's work goes into the instruction stream when, and the
WAITs and setups between them.

A resident program is a list of :class:`Task`, each the commands of one step for one image (or for the whole
batch) on one unit: the PE array (GEMM) or the vector unit (POOL, ADD). The two units run side by side; the
controller issues commands in stream order, and each unit completes its own in order. So a task waits (a
``WAIT`` on its unit's count, :class:`tessera.hw.isa.WaitUnit`) only for the tasks it depends on in the other
unit, or in the array (whose next command may read before the last one's rows are stored); the vector unit starts
a command only once the one before has written its results. Setups (CONV_SETUP, POOL_SETUP, VEC_SETUP,
STORE_SETUP) go into the stream only where they change.

The order is a list schedule over estimated cycles: of the two units' next tasks whose dependencies are in the
stream, the one that could start first goes next. The array takes its tasks step by step (a CONV_SETUP drains
it); the vector unit image by image, so that an image's add and pool follow its conv while the array goes on
with the next image.
"""

import dataclasses

import numpy as np

from tessera.hw.isa import Opcode, WaitUnit
from tessera.sw_driver.isa_encode import instruction

__all__ = ["Task", "schedule"]

#: Setup opcodes a task may carry: each sets state that later commands read, so it is sent only where it changes.
SETUPS = (Opcode.CONV_SETUP, Opcode.POOL_SETUP, Opcode.VEC_SETUP, Opcode.STORE_SETUP)


@dataclasses.dataclass
class Task:
    """The commands of step ``op`` of a resident model for ``image`` (None: the whole batch) on ``unit``.

    ``items`` are ``(opcode, words)`` in order: setups and commands. ``cost`` is an estimate of its cycles;
    ``deps`` the indices of the tasks it must follow (their results it reads, or the words it overwrites).
    ``spans`` are the words it reads or writes of a tensor, ``{(tensor, buffer): (first, past the last)}``, where
    it is one band of its step's work (by default all its image's words)."""
    op: int
    image: int | None
    unit: WaitUnit
    items: list
    cost: int
    deps: set = dataclasses.field(default_factory=set)
    spans: dict = dataclasses.field(default_factory=dict)

    @property
    def commands(self):
        return sum(opcode not in SETUPS for opcode, _ in self.items)


def schedule(cfg, tasks, first, barriers=()):
    """The program sections of ``tasks``: one per task of ``first`` (the first step's, image by image: the host
    loads each image before RUNning its section), then the other tasks in a list-schedule order, in a new section
    from each op of ``barriers`` on (the host sends something between, once every earlier op's array commands
    are done: a streamed layer's weights). Returns the sections, arrays of link words, and the section each
    barrier op starts."""
    emitter = _Emitter(cfg, tasks)
    # (the run before may still be reading or writing these feature maps)
    sections = [[instruction(cfg, Opcode.WAIT, pending=0)]] + [[] for _ in first[1:]]
    for section, index in zip(sections, first, strict=True):
        section += emitter.emit(index)
    rest = [i for i in range(len(tasks)) if i not in set(first)]
    barriers, starts, words = sorted(barriers), {}, []
    while rest:
        before = [i for i in rest if not barriers or tasks[i].op < barriers[0]]
        if not before:      # every op before the barrier is in the stream: a new section
            sections.append(words + [emitter.drain(WaitUnit.ARRAY)])
            words, starts[barriers.pop(0)] = [], len(sections)
            continue
        index = emitter.next_task(before)
        rest.remove(index)
        words += emitter.emit(index)
    # the next inputs may overwrite the maps only once every command that reads them is done
    sections.append(words + [instruction(cfg, Opcode.WAIT, pending=0)])
    return [np.concatenate(section) for section in sections], starts


class _Emitter:
    """The stream so far: what each unit has been given and is known to have finished, the setups in force, and
    the estimated time at which each emitted task finishes."""

    def __init__(self, cfg, tasks):
        self.cfg, self.tasks = cfg, tasks
        self.issued = {WaitUnit.ARRAY: 0, WaitUnit.VECTOR: 0}     # commands given to each unit
        self.done = {WaitUnit.ARRAY: -1, WaitUnit.VECTOR: -1}     # commands known finished (by a WAIT)
        self.last_command = {}        # task: its last command's index in its unit
        self.setups = {}              # opcode: the words in force
        self.free = {WaitUnit.ARRAY: 0, WaitUnit.VECTOR: 0}       # estimated cycle each unit is free
        self.finish = {}              # task: estimated cycle it finishes

    def start(self, index):
        task = self.tasks[index]
        return max([self.free[task.unit]] + [self.finish[d] for d in task.deps])

    def next_task(self, remaining):
        """Of each unit's next task whose dependencies are in the stream (the array's by step, the vector unit's
        by image), the one that could start first."""
        ready = [i for i in remaining if self.tasks[i].deps <= self.finish.keys()]
        candidates = []
        for unit, key in ((WaitUnit.ARRAY, lambda i: (self.tasks[i].op, self.tasks[i].image or 0)),
                          (WaitUnit.VECTOR, lambda i: (self.tasks[i].image or 0, self.start(i), self.tasks[i].op))):
            mine = [i for i in ready if self.tasks[i].unit == unit]
            if mine:
                candidates.append(min(mine, key=key))
        return min(candidates, key=self.start)

    def drain(self, unit):
        """A WAIT until every command given to ``unit`` is finished."""
        self.done[unit] = self.issued[unit] - 1
        return instruction(self.cfg, Opcode.WAIT, unit=int(unit), pending=0)

    def emit(self, index):
        """The words of task ``index``: the WAITs its dependencies need, then its setups that change and its
        commands."""
        cfg, task = self.cfg, self.tasks[index]
        words = []
        for dep in sorted(task.deps, key=lambda d: self.last_command[d]):
            unit = self.tasks[dep].unit
            # the vector unit finishes each command, its results written, before it starts the next
            if unit == task.unit == WaitUnit.VECTOR or self.last_command[dep] <= self.done[unit]:
                continue
            words.append(instruction(cfg, Opcode.WAIT, unit=int(unit),
                                     pending=self.issued[unit] - 1 - self.last_command[dep]))
            self.done[unit] = self.last_command[dep]
        for opcode, item in task.items:
            if opcode in SETUPS:
                if self.setups.get(opcode) is not None and np.array_equal(self.setups[opcode], item):
                    continue
                self.setups[opcode] = item
            else:
                self.issued[task.unit] += 1
            words.append(item)
        self.last_command[index] = self.issued[task.unit] - 1
        self.finish[index] = self.start(index) + task.cost
        self.free[task.unit] = self.finish[index]
        return words
