"""onnxruntime as the reference: running a model on its CPU provider, the CPUs where the golden model is bit-exact
against it, and random float models to quantize.

The golden model pins onnxruntime's x86-64 kernels; elsewhere onnxruntime computes some ops differently. Without VNNI
its u8s8 kernels saturate product pairs to int16 (``vpmaddubsw``), and its QLinearAdd follows MLAS's AVX2/FMA kernel,
so bit-exactness holds on x86-64 CPUs with AVX2, FMA and VNNI. The ``pytest`` marks below skip elsewhere, and
``tests/conftest.py`` turns such a skip into a failure under ``CI=true``, where the CPU is known to qualify.
"""

import platform
from pathlib import Path

import onnxruntime as ort
import pytest
from onnx import numpy_helper

from tessera.verif.onnx_models import conv_model

__all__ = ["CPU_FLAGS", "on_x86", "needs_vnni", "needs_fma", "bit_exact_cpu", "run_onnxruntime",
           "output_quantization", "random_conv"]


def _cpu_flags():
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    flags = [line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")]
    return set(flags[0]) if flags else set()


CPU_FLAGS = _cpu_flags()
on_x86 = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"),
                                reason="the golden model pins onnxruntime's x86-64 kernels")
needs_vnni = pytest.mark.skipif(
    not CPU_FLAGS & {"avx512_vnni", "avx_vnni"},
    reason="without VNNI onnxruntime's u8s8 kernels saturate product pairs to int16 (vpmaddubsw); "
           "exact only on VNNI CPUs (or /proc/cpuinfo unreadable)")
needs_fma = pytest.mark.skipif(not {"avx2", "fma"} <= CPU_FLAGS,
                               reason="golden qlinear_add follows MLAS's AVX2/FMA kernel")
bit_exact_cpu = pytest.mark.skipif(
    platform.machine() not in ("x86_64", "AMD64") or not CPU_FLAGS & {"avx512_vnni", "avx_vnni"}
    or not {"avx2", "fma"} <= CPU_FLAGS,
    reason="the golden model is bit-exact against onnxruntime's x86-64 kernels with AVX2, FMA and VNNI only")


def output_quantization(model):
    """Scale and zero point of the DequantizeLinear that produces the model's (single) output."""
    (output,) = model.graph.output
    (dq,) = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.output[0] == output.name]
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return inits[dq.input[1]], inits[dq.input[2]]


def run_onnxruntime(model, feeds, optimized_path=None):
    """Run ``model`` on the CPU provider; optionally save the graph onnxruntime actually executed."""
    options = ort.SessionOptions()
    options.log_severity_level = 3  # its notice about saving NCHWc-optimized graphs is not for us
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def random_conv(rng, *, depthwise=False, relu=False):
    """A random float Conv model (kernel 1-5, dilation, groups or depthwise, padding, batch 1-2)."""
    kernel = int(rng.integers(1, 6))
    dilation = int(rng.integers(1, 3)) if kernel > 1 and rng.random() < 0.25 else 1
    channels = int(rng.integers(1, 13))
    if depthwise:
        group, out_channels = channels, channels
    else:
        group = int(rng.choice([g for g in (1, 2, 3) if channels % g == 0]))
        out_channels = group * int(rng.integers(1, 5))
    pads = tuple(int(p) for p in rng.integers(0, kernel, 4)) if rng.random() < 0.7 else (0, 0, 0, 0)
    extent = dilation * (kernel - 1) + 1
    size = tuple(int(s) for s in rng.integers(max(extent, 3), 15, 2))
    return conv_model(rng, batch=int(rng.integers(1, 3)), in_channels=channels, out_channels=out_channels,
                      size=size, kernel=kernel, stride=int(rng.integers(1, 3)), pads=pads, group=group,
                      dilation=dilation, relu=relu)
