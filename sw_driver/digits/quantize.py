"""Static int8 quantization of the digits model with onnxruntime's own quantizer, calibrated on training digits."""

import tempfile
from pathlib import Path

from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from .data import load_digits_split
from .export import INPUT_NAME

CALIBRATION_IMAGES = 200
CALIBRATION_BATCH = 50
QUANT_FORMATS = {"QOperator": QuantFormat.QOperator, "QDQ": QuantFormat.QDQ}
ACTIVATION_TYPES = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}


class DigitsCalibration(CalibrationDataReader):
    """Feeds ``images`` to onnxruntime's calibrator in batches of ``batch_size``."""

    def __init__(self, images, batch_size=CALIBRATION_BATCH):
        self._feeds = iter([{INPUT_NAME: images[start:start + batch_size]}
                            for start in range(0, len(images), batch_size)])

    def get_next(self):
        return next(self._feeds, None)


def _choice(name, value, choices):
    if isinstance(value, str):
        if value not in choices:
            raise ValueError(f"{name}={value!r}: expected one of {', '.join(map(repr, choices))}")
        return choices[value]
    if value not in choices.values():
        raise ValueError(f"{name}={value!r}: expected one of {', '.join(map(repr, choices))}")
    return value


def quantize_digits(float_path, out_path, *, quant_format="QOperator", per_channel=False, activation_type="uint8",
                    symmetric_activations=False):
    """Quantize the float digits model statically (int8 weights) and write it to ``out_path``.

    Activation ranges are the MinMax of the first ``CALIBRATION_IMAGES`` images of the training split, so the
    result is the same on every run and never sees a test image.

    Parameters
    ----------
    float_path, out_path : str or pathlib.Path
        The float model (``digits_cnn.onnx``) and where to write the quantized one.
    quant_format : {"QOperator", "QDQ"} or onnxruntime.quantization.QuantFormat
        QOperator: QLinearConv, QLinearAdd, ... nodes; QDQ: QuantizeLinear/DequantizeLinear around float ops.
    per_channel : bool
        One weight scale per output channel instead of one per tensor.
    activation_type : {"uint8", "int8"} or onnxruntime.quantization.QuantType
        Type of the quantized activations.
    symmetric_activations : bool
        Centre the activations' ranges on zero (onnxruntime's ``ActivationSymmetric``; with int8, zero point 0).

    Returns
    -------
    pathlib.Path
        ``out_path``.
    """
    quant_format = _choice("quant_format", quant_format, QUANT_FORMATS)
    activation_type = _choice("activation_type", activation_type, ACTIVATION_TYPES)
    x_train = load_digits_split()[0]
    out_path = Path(out_path)
    with tempfile.TemporaryDirectory() as scratch:
        # onnxruntime asks for this pass before quantizing: it infers every tensor's shape (the quantizer
        # needs them) and folds what its basic optimisations can; it is deterministic. ONNX's own shape
        # inference covers every op here, so the symbolic pass, which would need sympy, is skipped.
        inferred_path = Path(scratch) / "inferred.onnx"
        quant_pre_process(float_path, inferred_path, skip_symbolic_shape=True)
        quantize_static(inferred_path, out_path, DigitsCalibration(x_train[:CALIBRATION_IMAGES]),
                        quant_format=quant_format, per_channel=per_channel, activation_type=activation_type,
                        weight_type=QuantType.QInt8,
                        extra_options={"ActivationSymmetric": bool(symmetric_activations)})
    return out_path
