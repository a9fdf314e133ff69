"""The hardware counters a compiled ws program will produce, counted from its instruction stream without running it.

Every counter that follows from the program alone is counted the way the ws device counts it: array cycles,
buffer reads and writes, link words, register-file reads, PE-to-PE transfers. Counters of time (``cycles``,
``busy_cycles``, stalls) depend on the link's pace and are left out; ``macs_gated`` counts only the zero weights
(including a tile's padding), since zero activations are data the program does not show, so it is a lower bound.
Fed to :func:`tessera.sw_driver.energy.layer_energy`, these give a layer's energy before it runs.
"""

import numpy as np

from tessera.hw.isa import INSTRUCTION_WORDS, BufferId, Opcode
from tessera.sw_driver.depthwise import fold_positions
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
    geometry = {"out_w": 0, "stride": 1}   # the last CONV_SETUP's: the positions a depthwise fold's row streams
    for opcode, operands, data in disassemble(cfg, program.words):
        if opcode == Opcode.LOAD:
            buffer = BufferId(operands["buffer"])
            counters[f"{buffer.name.lower()}_writes"] += operands["words"]
            if buffer == BufferId.WEIGHT:
                lanes = data.view(np.int8).reshape(operands["words"], -1)[:, :C]
                weights[operands["addr"] + np.arange(operands["words"]) % cfg.weight_depth] = lanes
        elif opcode == Opcode.CONV_SETUP:
            geometry = operands
        elif opcode == Opcode.GEMM:
            _count_command(cfg, counters, weights, operands, geometry)
        elif opcode != Opcode.WAIT:
            raise ValueError(f"{opcode.name} instructions are not counted here; accepted: a program of LOAD, WAIT, "
                             f"CONV_SETUP and GEMM (compile_conv, compile_gemm)")
    cycles = counters["array_cycles"]
    # Per array cycle, a ws array reads one activation word, every PE reads its stationary weight, and operands hop
    # right and partial sums down (as hw/compute_ws.py counts them); the accumulator words are counted per command.
    counters.update(act_reads=cycles, rf_reads=cycles * cfg.pes, noc_transfers=cycles * (R * (C - 1) + (R - 1) * C))
    return counters


def _count_command(cfg, counters, weights, operands, geometry):
    """Add one GEMM's counts: ``k`` folds, each streaming its positions (:func:`~tessera.sw_driver.depthwise.
    fold_positions`: ``m``, or a depthwise fold's rows of the ``geometry``'s ``out_w``) through weights read from
    ``weights``."""
    R, C = cfg.rows, cfg.cols
    m, k, taps = operands["m"], operands["k"], operands["taps"]
    positions = fold_positions(m, taps, operands["out_x"], geometry["out_w"], geometry["stride"])
    # a fold reads R weight words (behind a header word when sparse), a depthwise fold its taps (the rows below
    # them load zero, read from nowhere)
    words = taps if taps else R + 1 if operands["sparse"] else R
    fold_words = (operands["w_base"] + np.arange(k * words)) % cfg.weight_depth
    if operands["sparse"]:
        fold_words = fold_words.reshape(k, words)[:, 1:]
    zero_rows = (R - taps) * C if taps else 0
    counters["commands"] += 1
    counters["array_cycles"] += positions * k
    counters["weight_reads"] += k * words
    counters["param_reads"] += 1
    counters["macs_gated"] += positions * (int(np.count_nonzero(weights[fold_words.reshape(-1)] == 0)) + k * zero_rows)
    # each output's accumulator word is written once a fold, and read by each fold after its first and the drain
    # (a depthwise fold's positions past its row's last output write nothing)
    counters["acc_reads"] += m * k
    counters["acc_writes"] += m * k
