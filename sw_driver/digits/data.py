"""scikit-learn's bundled 8x8 digits (no download), split the same way on every run."""

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

TEST_SIZE = 0.2
SPLIT_SEED = 0
PIXEL_MAX = 16.0  # the digits' pixels are counts 0..16 of set pixels in a 4x4 block of the 32x32 original


def load_digits_split():
    """The digits as float32 NCHW images in [0, 1] and int64 labels, split 80/20 stratified by class.

    Returns
    -------
    x_train, y_train, x_test, y_test : numpy.ndarray
        Images of shape ``(N, 1, 8, 8)`` and labels of shape ``(N,)``: 1437 training and 360 test digits.
    """
    digits = load_digits()
    images = (digits.images / PIXEL_MAX).astype(np.float32)[:, np.newaxis]
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(images, labels, test_size=TEST_SIZE, stratify=labels,
                                                        random_state=SPLIT_SEED)
    return x_train, y_train, x_test, y_test
