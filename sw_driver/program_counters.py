"""The hardware counters a compiled ws program will produce, counted from its instruction stream without running it.

Every counter that follows from the program alone is counted the way the ws device counts it: array cycles,
buffer reads and writes, link words, register-file reads, PE-to-PE transfers. Counters of time (``cycles``,
``busy_cycles``, stalls) depend on the link's pace and are left out; ``macs_gated`` counts only the zero weights
(including a tile's padding), since zero activations are data the program does not show, so it is a lower bound.
Fed to :func:`tessera.sw_driver.energy.layer_energy`, these give a layer's energy before it runs.
"""

import numpy as np

from tessera.hw.isa import INSTRUCTION_WORDS, BufferId, Opcode
from tessera.sw_driver.isa_encode import disassemble

__all__ = ["ESTIMATED_COUNTERS", "ws_program_counters"]

#: The counters :func:`ws_program_counters` returns.
ESTIMATED_COUNTERS = ("array_cycles", "commands", "act_reads", "act_writes", "weight_reads", "weight_writes",
                      "acc_reads", "acc_writes", "param_reads", "param_writes", "link_words_in", "link_words_out",
                      "macs_gated", "rf_reads", "rf_writes", "noc_transfers", "vec_cycles", "vec_reads",
                      "vec_writes")


def ws_program_counters(cfg, program):
    """Counters of ``program`` (a :class:`~tessera.sw_driver.compiler.Program` of GEMM or conv commands) run
    alone on a ws device of ``cfg``, as :class:`~tessera.sw_driver.runtime.Device` runs it.

    Parameters
    ----------
    cfg : AcceleratorConfig
        A ``ws`` configuration (other dataflows count their arrays differently).
    program : Program
        From :func:`~tessera.sw_driver.compiler.compile_conv` or ``compile_gemm``.

    Returns
    -------
    dict
        The counters of :data:`ESTIMATED_COUNTERS`.
    """
    if cfg.dataflow != "ws":
        raise ValueError(f"counters are estimated for the ws dataflow only, not {cfg.dataflow!r}; accepted: a ws "
                         f"configuration")
    R, C = cfg.rows, cfg.cols
    counters = dict.fromkeys(ESTIMATED_COUNTERS, 0)
    # The runtime wraps a program in CLEAR_COUNTERS and READ_COUNTERS; the words after the clear are counted.
    counters["link_words_in"] = len(program.words) + INSTRUCTION_WORDS
    counters["link_words_out"] = program.reply_words(cfg)
    weights = np.zeros((cfg.weight_depth, C), np.int8)     # the weight buffer, to count the zeros commands read
    for opcode, operands, data in disassemble(cfg, program.words):
        if opcode == Opcode.LOAD:
            buffer = BufferId(operands["buffer"])
            counters[f"{buffer.name.lower()}_writes"] += operands["words"]
            if buffer == BufferId.WEIGHT:
                lanes = data.view(np.int8).reshape(operands["words"], -1)[:, :C]
                weights[operands["addr"] + np.arange(operands["words"]) % cfg.weight_depth] = lanes
        elif opcode == Opcode.GEMM:
            m, k = operands["m"], operands["k"]
            # k counts folds: each is one array cycle per row and R weight words, behind a header word when sparse
            words = R + 1 if operands["sparse"] else R
            fold_words = (operands["w_base"] + np.arange(k * words)) % cfg.weight_depth
            if operands["sparse"]:
                fold_words = fold_words.reshape(k, words)[:, 1:]
            counters["commands"] += 1
            counters["array_cycles"] += m * k
            counters["weight_reads"] += k * words
            counters["param_reads"] += 1
            counters["macs_gated"] += m * int(np.count_nonzero(weights[fold_words.reshape(-1)] == 0))
        elif opcode not in (Opcode.WAIT, Opcode.CONV_SETUP):
            raise ValueError(f"{opcode.name} instructions are not counted here; accepted: a program of LOAD, WAIT, "
                             f"CONV_SETUP and GEMM (compile_conv, compile_gemm)")
    cycles = counters["array_cycles"]
    # Per array cycle, a ws array reads one activation word and reads and writes one accumulator word, every PE
    # reads its stationary weight, and operands hop right and partial sums down (as hw/compute_ws.py counts them).
    counters.update(act_reads=cycles, acc_reads=cycles, acc_writes=cycles, rf_reads=cycles * cfg.pes,
                    noc_transfers=cycles * (R * (C - 1) + (R - 1) * C))
    return counters
