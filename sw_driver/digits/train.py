"""Train the digits CNN with Adam in NumPy and write it as ``digits_cnn.onnx``.

``python -m tessera.sw_driver.digits.train`` retrains from a fixed seed and rewrites the model next to this file;
with the same NumPy, BLAS and BLAS thread count the result is the same bit for bit (OpenBLAS splits
its sums by thread, so another thread count rounds differently and lands on slightly different weights).
"""

import argparse
import numbers
import time
from pathlib import Path

import numpy as np
import onnx

from . import cnn
from .data import load_digits_split
from .export import to_onnx

MODEL_PATH = Path(__file__).with_name("digits_cnn.onnx")
SEED = 0
EPOCHS = 40
BATCH_SIZE = 32
LEARNING_RATE = 3e-3


class Adam:
    """Adam (Kingma and Ba) over a dict of float32 parameters, updated in place."""

    def __init__(self, params, *, learning_rate=LEARNING_RATE, beta1=0.9, beta2=0.999, eps=1e-8):
        self.learning_rate, self.beta1, self.beta2, self.eps = learning_rate, beta1, beta2, eps
        self.moment1 = {name: np.zeros_like(value) for name, value in params.items()}
        self.moment2 = {name: np.zeros_like(value) for name, value in params.items()}
        self.steps = 0

    def step(self, params, grads):
        self.steps += 1
        correction1 = 1 - self.beta1 ** self.steps
        correction2 = 1 - self.beta2 ** self.steps
        for name, grad in grads.items():
            self.moment1[name] = self.beta1 * self.moment1[name] + (1 - self.beta1) * grad
            self.moment2[name] = self.beta2 * self.moment2[name] + (1 - self.beta2) * grad * grad
            update = (self.moment1[name] / correction1) / (np.sqrt(self.moment2[name] / correction2) + self.eps)
            params[name] -= (self.learning_rate * update).astype(np.float32)


def accuracy(params, images, labels):
    """Fraction of ``images`` whose largest logit is the label."""
    return float((cnn.forward(params, images).argmax(axis=1) == labels).mean())


def magnitude_masks(params, fraction, block=None):
    """Per layer, 1 for the weights kept and 0 for the ``fraction`` smallest by absolute value (biases stay).

    ``fraction`` is one number for every layer or ``{weight name: fraction}`` (the layers it names only).
    With ``block`` = (rows, cols), whole tiles go instead: per filter tap, ``rows`` input channels by ``cols``
    output channels (the weight tile a PE array of that shape holds, which the compiler can skip), ranked by
    their mean absolute weight.
    """
    masks = {}
    for name, value in params.items():
        if not name.endswith(".weight") or (isinstance(fraction, dict) and name not in fraction):
            continue
        layer_fraction = fraction[name] if isinstance(fraction, dict) else fraction
        if block is None:
            threshold = np.quantile(np.abs(value), layer_fraction)
            masks[name] = (np.abs(value) > threshold).astype(np.float32)
        else:
            masks[name] = _tile_mask(value, layer_fraction, *block)
    return masks


def _tile_mask(weight, fraction, rows, cols):
    """Mask of ``weight`` (O, C[, KH, KW]) keeping all but the ``fraction`` of its rows x cols tiles with the
    smallest mean absolute weight."""
    w = np.abs(weight.reshape(weight.shape[0], weight.shape[1], -1))           # (O, C, taps)
    o_tiles, c_tiles = -(-w.shape[0] // cols), -(-w.shape[1] // rows)
    padded = np.full((o_tiles * cols, c_tiles * rows, w.shape[2]), np.nan, np.float32)
    padded[:w.shape[0], :w.shape[1]] = w
    score = np.nanmean(padded.reshape(o_tiles, cols, c_tiles, rows, -1), axis=(1, 3))    # (o_tiles, c_tiles, taps)
    pruned = np.zeros(score.size, bool)
    pruned[np.argsort(score, axis=None, kind="stable")[:round(fraction * score.size)]] = True
    keep = np.repeat(np.repeat(~pruned.reshape(score.shape), cols, axis=0), rows, axis=1)
    return keep[:w.shape[0], :w.shape[1]].reshape(weight.shape).astype(np.float32)


#: Layers kept dense when pruning: the first conv (one input channel, 4% of the MACs, and what every later
#: layer sees) and the classifier (0.1% of the MACs). Pruning them costs most of the accuracy lost.
DENSE_LAYERS = ("conv1.weight", "fc.weight")


def prune(params, x_train, y_train, fraction, *, block=None, steps=3, epochs=10, learning_rate=LEARNING_RATE,
          seed=SEED, dense=DENSE_LAYERS, log=None):
    """Gradual magnitude pruning with fine-tuning: in ``steps`` equal steps up to ``fraction``, zero the
    smallest weights (or ``block`` tiles, see :func:`magnitude_masks`) of every layer but ``dense``, then
    train the rest for ``epochs`` with the pruned weights held at zero. Returns new parameters.

    ``fraction`` is one number for every layer, or ``{weight name: fraction}``, each layer's own target
    (``energy_prune`` allocates them); each step goes the same share of the way to every target.
    """
    targets = fraction if isinstance(fraction, dict) else {name: fraction for name in params
                                                           if name.endswith(".weight")}
    for name, target in targets.items():
        if name not in params or not name.endswith(".weight"):
            raise ValueError(f"prune fraction for {name!r}: not a weight of the model; accepted: "
                             + ", ".join(n for n in params if n.endswith(".weight")))
        if isinstance(target, bool) or not isinstance(target, numbers.Real) or not 0.0 <= target < 1.0:
            raise ValueError(f"prune fraction {target} is out of range; accepted: 0 <= fraction < 1")
    for step in range(1, steps + 1):
        masks = {name: mask for name, mask in magnitude_masks(
                     params, {name: target * step / steps for name, target in targets.items()}, block).items()
                 if name not in dense}
        start = {name: value * masks.get(name, 1.0) for name, value in params.items()}
        params, _ = train(x_train, y_train, epochs=epochs, learning_rate=learning_rate, seed=seed, log=log,
                          initial=start, masks=masks)
    return params


def train(x_train, y_train, *, epochs=EPOCHS, batch_size=BATCH_SIZE, learning_rate=LEARNING_RATE, seed=SEED,
          log=None, initial=None, masks=None):
    """Fit a fresh ``cnn`` to the training images; returns the parameters and the mean loss of each epoch.

    Parameters
    ----------
    x_train, y_train : numpy.ndarray
        float32 images (N, 1, 8, 8) and int labels (N,).
    learning_rate : float
        Adam's peak rate, decayed to zero over the run along a half cosine.
    seed : int
        Seeds both the weight initialisation and the order of the minibatches.
    log : callable, optional
        Called with one line of text per epoch.
    initial : dict, optional
        Start from these parameters (copied) instead of a fresh initialisation.
    masks : dict, optional
        Multiplied into the named parameters after every step (pruned weights stay zero).
    """
    rng = np.random.default_rng(seed)
    params = cnn.init_params(rng)
    if initial is not None:
        params = {name: value.copy() for name, value in initial.items()}
    optimizer = Adam(params, learning_rate=learning_rate)
    steps_per_epoch = -(-len(x_train) // batch_size)
    total_steps = epochs * steps_per_epoch
    epoch_losses = []
    for epoch in range(epochs):
        order = rng.permutation(len(x_train))
        total = 0.0
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            # Cosine decay to zero: a constant rate leaves the last weights hopping around the minimum.
            step = epoch * steps_per_epoch + start // batch_size
            optimizer.learning_rate = learning_rate * 0.5 * (1 + np.cos(np.pi * step / total_steps))
            logits, cache = cnn.forward(params, x_train[batch], keep=True)
            loss, d_logits = cnn.softmax_cross_entropy(logits, y_train[batch])
            optimizer.step(params, cnn.backward(params, cache, d_logits))
            for name, mask in (masks or {}).items():
                params[name] *= mask
            total += loss * len(batch)
        epoch_losses.append(total / len(order))
        if log:
            log(f"epoch {epoch + 1:3d}/{epochs}  loss {epoch_losses[-1]:.4f}")
    return params, epoch_losses


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--output", type=Path, default=MODEL_PATH, help="where to write the float ONNX model")
    args = parser.parse_args(argv)

    x_train, y_train, x_test, y_test = load_digits_split()
    started = time.perf_counter()
    params, _ = train(x_train, y_train, epochs=args.epochs, seed=args.seed, log=print)
    elapsed = time.perf_counter() - started
    print(f"trained in {elapsed:.1f} s; train accuracy {accuracy(params, x_train, y_train):.4f}, "
          f"test accuracy {accuracy(params, x_test, y_test):.4f}")
    macs = cnn.macs_per_image(params)
    print("MACs per image: " + ", ".join(f"{name} {count}" for name, count in macs.items())
          + f", total {sum(macs.values())}")
    onnx.save(to_onnx(params), args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
