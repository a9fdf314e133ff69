"""The demo workload: a small residual CNN for scikit-learn's 8x8 handwritten digits.

``data`` loads the split, ``cnn`` is the network in NumPy, ``train`` fits it and ``export`` writes it as the
float ONNX model ``digits_cnn.onnx``, which ``quantize`` turns into the int8 models the device runs.
"""
