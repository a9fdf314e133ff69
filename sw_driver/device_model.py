"""The device's arithmetic without its RTL: what a Tessera device of a configuration answers, from the golden model.

For a device with exact multipliers this is onnxruntime's answer (the golden model's ``run_graph``); a device
built with an approximate PE multiplier (`tessera.hw.pe_multipliers`) answers differently on the layers its PE
array runs, and bit for bit like :class:`DeviceModel` everywhere: ``--check`` and the demo compare such a device
with this model, and with onnxruntime only to show what the approximation costs.
"""

import numpy as np

from tessera.hw.isa import COUNTERS
from tessera.sw_driver import golden
from tessera.sw_driver.compiler import compile_conv, compile_gemm, raw_results
from tessera.sw_driver.model_runner import run_graph_on
from tessera.sw_driver.runtime import Device, LayerRun, ignored_requant

__all__ = ["DeviceModel", "device_model_outputs"]


class DeviceModel(Device):
    """A device of ``cfg`` computed by the golden model: the PE array's layers (GEMM, convolution) with the
    configuration's multiplier, after compiling them (so a layer that does not tile falls to the host, as on the
    device); vector-unit layers are declined, so the host computes them, exactly, as the device's vector unit does.
    Its runs carry no counters (all zero): it models the answers, not the cost."""

    DECLINED = "the vector unit is exact: the host computes the layer as the device does"

    def __init__(self, cfg):
        super().__init__(cfg, transport=None)

    def multiplier(self):
        """The multiplier of the next array layer (the configuration's; a study may vary it layer by layer)."""
        return self.cfg.multiplier

    def gemm(self, x, w, bias, scale, y_zp):
        program = compile_gemm(self.cfg, x, w, bias, scale, y_zp)
        return golden.gemm_hw(x, w, bias, scale, y_zp, self.multiplier()), self._run(program)

    def conv(self, x, w, bias, scale, y_zp, *, strides=(1, 1), pads=(0, 0, 0, 0), pad_value=0, **attrs):
        program = compile_conv(self.cfg, x, w, bias, scale, y_zp, strides=strides, pads=pads, pad_value=pad_value,
                               skip_zero_tiles=self.skip_zero_tiles, **attrs)
        batch = x if x.ndim == 4 else x[None]
        y = golden.conv_hw(batch, w, bias, scale, y_zp, strides=strides, pads=pads, pad_value=pad_value,
                           multiplier=self.multiplier())
        return (y if x.ndim == 4 else y[0]), self._run(program)

    def gemm_acc(self, x, w):
        program = raw_results(self.cfg, compile_gemm(self.cfg, x, w, *ignored_requant(w.shape[1])))
        return golden.gemm_acc_hw(x, w, self.multiplier()), self._run(program)

    def conv_acc(self, x, w, *, strides=(1, 1), pads=(0, 0, 0, 0), pad_value=0, **attrs):
        program = compile_conv(self.cfg, x, w, *ignored_requant(w.shape[0]), strides=strides, pads=pads,
                               pad_value=pad_value, skip_zero_tiles=self.skip_zero_tiles, **attrs)
        batch = x if x.ndim == 4 else x[None]
        y = golden.conv_acc_hw(batch, w, strides=strides, pads=pads, pad_value=pad_value,
                               multiplier=self.multiplier())
        return (y if x.ndim == 4 else y[0]), self._run(raw_results(self.cfg, program))

    def maxpool(self, *args, **kwargs):
        raise ValueError(self.DECLINED)

    def add(self, *args, **kwargs):
        raise ValueError(self.DECLINED)

    def run(self, program):
        raise ValueError(self.DECLINED)

    def _run(self, program):
        return LayerRun(macs=program.macs, counters={name: 0 for name, _ in COUNTERS}, pes=self.cfg.pes,
                        macs_skipped=program.macs_skipped)


def device_model_outputs(graph, inputs, cfg):
    """``{output name: array}``: what a device of ``cfg`` answers for ``inputs`` (see :class:`DeviceModel`)."""
    outputs, _ = run_graph_on(graph, {name: np.asarray(value) for name, value in inputs.items()}, DeviceModel(cfg))
    return outputs
