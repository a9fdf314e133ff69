"""Random test layers with their golden answers, shared by the model-level and RTL-level tests."""

import numpy as np

from tessera.hw.isa import INSTRUCTION_WORDS, BufferId, Opcode, load_link_words
from tessera.hw.layouts import depthwise_positions, store_addr_shape
from tessera.sw_driver import golden
from tessera.sw_driver.isa_encode import instruction, load

__all__ = ["random_gemm", "random_conv", "random_depthwise_program", "random_instruction_stream", "ExpectErrors"]


def random_gemm(rng, m, k, n):
    """Operands that reach the extremes: all -128 operands (largest sums), saturation both ways, zero points
    at both ends of the range, as well as plain random values."""
    kind = rng.choice(["random", "random", "extreme", "saturate"])
    if kind == "extreme":
        x = np.full((m, k), -128, np.int8)
        w = rng.choice(np.array([-128, 127], np.int8), size=(k, n))
    else:
        x = rng.integers(-128, 128, size=(m, k), dtype=np.int8)
        w = rng.integers(-128, 128, size=(k, n), dtype=np.int8)
    bias = rng.integers(-2**20, 2**20, size=n, dtype=np.int32)
    # Scales that put the typical |acc| (~ 128*128*sqrt(k)/2) around the int8 range, spread over a few octaves;
    # "saturate" makes many outputs clip at both ends.
    typical = 128 * 128 * np.sqrt(k) / 2 + 1
    octaves = rng.uniform(-4, 2 if kind != "saturate" else 6, size=n)
    scale = (64.0 / typical * 2.0 ** octaves).astype(np.float32)
    y_zp = int(rng.choice([-128, 127, int(rng.integers(-128, 128))]))
    return x, w, bias, scale, y_zp


def random_conv(rng, *, channels, out_channels, size, kernel, stride, pad, zero_tiles=None, multiplier="exact"):
    """Random int8 conv operands (one image) with the input zero point folded into the bias.

    ``zero_tiles`` = (rows, cols, fraction) zeroes about that fraction of the weight tiles of a rows x cols
    array (per filter tap: a block of rows input channels by cols output channels), as a pruned model has.
    Returns ``(operands, attrs, expected)``: ``compile_conv(cfg, *operands, **attrs)`` must produce
    ``expected`` (O, out_h, out_w), which the golden model computes with the zero point unfolded (with the
    device's arithmetic, ``golden.conv_hw``, for an approximate ``multiplier``).
    """
    x = rng.integers(-128, 128, (channels, size, size), dtype=np.int8)
    w = rng.integers(-128, 128, (out_channels, channels, kernel, kernel), dtype=np.int8)
    if zero_tiles:
        rows, cols, fraction = zero_tiles
        keep = rng.random((-(-out_channels // cols), -(-channels // rows), kernel, kernel)) >= fraction
        w *= np.repeat(np.repeat(keep, cols, axis=0), rows, axis=1)[:out_channels, :channels].astype(np.int8)
    x_zp = int(rng.integers(-128, 128))
    bias = rng.integers(-2**16, 2**16, out_channels, dtype=np.int32)
    scale = (rng.uniform(0.5, 2, out_channels) / (64 * np.sqrt(channels * kernel * kernel))).astype(np.float32)
    y_zp = int(rng.integers(-128, 128))
    pads = (pad, pad, pad, pad)
    folded = golden.fold_input_zero_point(bias, x_zp, w, output_axis=0)
    if multiplier == "exact":
        acc = golden.conv2d_int(x[None], x_zp, w, 0, strides=(stride, stride), pads=pads)[0] + bias[:, None, None]
        expected = golden.requantize(acc, scale, y_zp, axis=0)
    else:
        expected = golden.conv_hw(x[None], w, folded, scale, y_zp, strides=(stride, stride), pads=pads,
                                  pad_value=x_zp, multiplier=multiplier)[0]
    return (x, w, folded, scale, y_zp), {"strides": (stride, stride), "pads": pads, "pad_value": x_zp}, expected


def random_depthwise_program(cfg, rng, commands=6):
    """A random depthwise geometry (stride 1 or 2), its feature map and ``commands`` compute commands on it:
    depthwise ones over random lane groups and spans of outputs (rows started and left part way), with plain GEMMs
    among them, so the array switches between the two kinds of vector back to back. Returns ``(words, [m of each
    command])``; the device's result rows must equal :func:`tessera.verif.core_model.run_program`'s. Needs cols <=
    rows."""
    R, C = cfg.rows, cfg.cols
    taps, kernel_h, stride = int(rng.integers(1, min(R, 5) + 1)), int(rng.integers(1, 5)), int(rng.integers(1, 3))
    pad_top, pad_left, pad_right = (int(rng.integers(0, k)) for k in (kernel_h, taps, taps))
    blocks = int(rng.integers(1, 3))
    min_h, min_w = max(1, kernel_h - pad_top), max(1, taps - pad_left - pad_right)   # a row, a column of outputs
    in_h, in_w = int(rng.integers(min_h, 8)), int(rng.integers(min_w, 9))
    budget = cfg.act_depth // 2                          # the map in half the buffer, plain GEMMs' words after it
    while in_h * in_w * blocks > budget and (blocks, in_h, in_w) != (1, min_h, min_w):
        if blocks > 1:
            blocks -= 1
        elif in_h > min_h:
            in_h -= 1
        else:
            in_w -= 1
    if in_h * in_w * blocks > budget:
        raise ValueError(f"random_depthwise_program: a {min_h}x{min_w} map needs {min_h * min_w} activation words, "
                         f"more than half of act_depth={cfg.act_depth}")
    out_w = (in_w + pad_left + pad_right - taps) // stride + 1
    out_h = (in_h + pad_top - kernel_h) // stride + 1
    positions = depthwise_positions(out_w, taps, stride)
    map_words = in_h * in_w * blocks
    gemm_base = map_words                            # plain GEMMs read the words after the map
    words = [instruction(cfg, Opcode.CONV_SETUP, in_h=in_h, in_w=in_w, out_w=positions, channel_blocks=blocks,
                         kernel_h=kernel_h, kernel_w=1, stride=stride, pad_top=pad_top, pad_left=pad_left,
                         pad_value=int(rng.integers(-128, 128))),
             load(cfg, BufferId.ACT, 0, rng.integers(-128, 128, (cfg.act_depth, R), dtype=np.int8))]
    ms, w_base = [], 0
    for p_base in range(min(commands, cfg.param_depth)):
        bias = rng.integers(-2**12, 2**12, (1, C), dtype=np.int32)
        plain = rng.random() < 0.3
        folds = int(rng.integers(1, 3)) if plain else kernel_h
        fold_words = R if plain else taps
        if w_base + folds * fold_words > cfg.weight_depth:      # each command its own weights, none overwritten
            break
        weights = rng.integers(-128, 128, (folds * fold_words, C), dtype=np.int8)
        weights[rng.random(weights.shape) < 0.3] = 0  # zero weights, for the gated multiplies
        scale = np.full((1, C), 1 / (64 * np.sqrt(fold_words * folds)), np.float32)
        words += [load(cfg, BufferId.WEIGHT, w_base, weights), load(cfg, BufferId.PARAM, p_base, (bias, scale))]
        common = dict(k=folds, w_base=w_base, p_base=p_base, y_zp=int(rng.integers(-128, 128)))
        if plain:
            m = int(rng.integers(1, min(8, (cfg.act_depth - gemm_base) // folds) + 1))
            words.append(instruction(cfg, Opcode.GEMM, m=m, x_base=gemm_base, **common))
        else:
            first = int(rng.integers(0, out_h * out_w))
            m = int(rng.integers(1, min(cfg.acc_half_depth, out_h * out_w - first) + 1))
            words.append(instruction(cfg, Opcode.GEMM, m=m, x_base=int(rng.integers(0, blocks)), conv=1,
                                     out_y=first // out_w, out_x=first % out_w, taps=taps,
                                     lane_group=int(rng.integers(0, R // C)), **common))
        ms.append(m)
        w_base += len(weights)
    return np.concatenate(words), ms


def random_instruction_stream(cfg, rng, count):
    """``count`` mostly well-formed instructions with random operands (``rng`` a `random.Random`), some garbage
    words and truncations: link words for the robustness tests (the device must answer and recover)."""
    words = []
    for _ in range(count):
        choice = rng.random()
        if choice < 0.1:
            words += [rng.getrandbits(32) for _ in range(rng.randint(1, 6))]   # garbage, possibly mid-way
            continue
        opcode = rng.choice(list(Opcode) + [0x7F, 0xFF])
        instr = [rng.getrandbits(32) for _ in range(INSTRUCTION_WORDS)]
        instr[0] = (instr[0] & ~0xFF) | int(opcode)
        data = []
        if opcode == Opcode.LOAD:
            # short loads, so that the stream is not all data, into any buffer id (5 to 7 name none); a program
            # stored in the program memory is itself such a stream (random words there could pool for hours)
            buffer, count = rng.randrange(8), rng.randint(0, 8)
            addr = rng.randrange(cfg.program_depth + 8) if buffer == BufferId.PROGRAM else rng.getrandbits(16)
            # some packed (lanes: into the activation buffer up to its rows; elsewhere, or more, refused)
            lanes = rng.choice([0, 0, 0, rng.randint(1, cfg.rows + 2)])
            instr = [int(w) for w in instruction(cfg, Opcode.LOAD, buffer=buffer, addr=addr, words=count,
                                                 lanes=lanes)]
            link_words = load_link_words(cfg, BufferId.ACT, count, lanes) if lanes else count
            data = (random_instruction_stream(cfg, rng, 3) if buffer == BufferId.PROGRAM and count else [])[:count]
            data += [rng.getrandbits(32) for _ in range(link_words - len(data))]
            if rng.random() < 0.1:
                data = data[:rng.randint(0, count)]   # truncated: the next instruction's words complete it
        if opcode == Opcode.RUN:
            # mostly within the program memory (what earlier loads stored, or the NOPs it starts with)
            instr = [int(w) for w in instruction(cfg, Opcode.RUN, base=rng.randrange(cfg.program_depth + 4),
                                                 words=rng.randint(0, 40))]
        if opcode == Opcode.WAIT:
            instr[0] &= 0xFF  # small pending counts, so some waits really wait
            instr[0] |= rng.randint(0, 3) << 8
        if opcode == Opcode.POOL:
            # few pixels: a random geometry may pool 7x7 taps of 255 channel blocks per pixel, and 65535
            # such pixels would run for most of a billion cycles (long, not hung)
            # (stored into either buffer, or sent)
            instr = [int(w) for w in instruction(cfg, Opcode.POOL, x_base=rng.getrandbits(16), m=rng.randint(0, 16),
                                                 out_y=rng.getrandbits(10), out_x=rng.getrandbits(10),
                                                 store=rng.randrange(4),
                                                 d_base=rng.getrandbits(store_addr_shape(cfg).width))]
        words += instr + data
    return words


class ExpectErrors:
    """An empty program for ``Device.run``: just the counters, so that the ERROR packets of ``errors`` bad
    instructions sent before it come back (and ``run`` raises ``DeviceError`` naming them)."""
    words = np.zeros(0, np.uint32)
    commands = 0
    macs = 0
    macs_skipped = 0

    def __init__(self, errors):
        self.errors = errors

    def reply_words(self, cfg):
        return 2 * self.errors     # ERROR packets: a header and one word each

    def assemble(self, results, cols):
        return None


def random_chain(rng, in_shape, specs, multiplier="exact"):
    """A random chain of conv layers for a resident model: ``specs`` of ``{"out_channels", "kernel", "stride",
    "pad"}`` each (kernel an int or (KH, KW); a 1x1 kernel over a 1x1 map is a fully connected layer), and
    optionally ``"zero_tiles": [rows, cols, fraction]`` as :func:`random_conv` takes it (pruned weights). Each
    layer's input zero point is the output zero point of the layer before (folded into its bias, read as
    padding), as a quantized model chains them. Returns ``(x, layers, expected)``: the int8 input (C, H, W),
    :class:`~tessera.sw_driver.resident.DeviceLayer` s and the golden model's output of the last layer."""
    from tessera.sw_driver.resident import DeviceLayer
    x = rng.integers(-128, 128, in_shape, dtype=np.int8)
    x_zp = int(rng.integers(-128, 128))
    layers, y = [], x
    for spec in specs:
        kh, kw = (spec["kernel"],) * 2 if isinstance(spec["kernel"], int) else spec["kernel"]
        channels = y.shape[0]
        w = rng.integers(-128, 128, (spec["out_channels"], channels, kh, kw), dtype=np.int8)
        if spec.get("zero_tiles"):
            rows, cols, fraction = spec["zero_tiles"]
            keep = rng.random((-(-len(w) // cols), -(-channels // rows), kh, kw)) >= fraction
            w *= np.repeat(np.repeat(keep, cols, axis=0), rows, axis=1)[:len(w), :channels].astype(np.int8)
        bias = rng.integers(-2**14, 2**14, spec["out_channels"], dtype=np.int32)
        # about a quarter of the outputs' range from a typical sum, so the next layer sees varied values
        scale = (rng.uniform(0.5, 2, spec["out_channels"]) / (16 * np.sqrt(channels * kh * kw * 64 * 64))
                 * 64).astype(np.float32)
        y_zp = int(rng.integers(-64, 64))
        stride, pad = spec.get("stride", 1), spec.get("pad", 0)
        layer = DeviceLayer(w=w, bias=golden.fold_input_zero_point(bias, x_zp, w, output_axis=0), scale=scale,
                            y_zp=y_zp, strides=(stride, stride), pads=(pad,) * 4, pad_value=x_zp)
        y = golden.conv_hw(y[None], w, layer.bias, scale, y_zp, strides=layer.strides, pads=layer.pads,
                           pad_value=x_zp, multiplier=multiplier)[0]
        layers.append(layer)
        x_zp = y_zp
    return x, layers, y


def random_graph(rng, in_shape, spec, multiplier="exact"):
    """A random resident model that keeps the vector unit busy too: a stem conv, a residual block (two convs and
    the Add of their output and the stem's, so the stem's map is read by both units), a max pool, then maybe a
    conv, then maybe a window over the whole map (a global pool's shape) and a fully connected layer. ``spec``:
    ``{"channels", "pool": [kernel, stride, pad], "end": "pool" | "conv" | "head"}`` (where the model ends: after
    the pool, the conv after it, or the whole-map and fully connected layers after that). Returns ``(x, steps,
    golden_of)``: an int8 input (C, H, W), the :class:`~tessera.sw_driver.resident.Step` s and the golden model of
    one image."""
    from tessera.sw_driver.layers import QuantParams
    from tessera.sw_driver.resident import AddStep, PoolStep, Step
    from tessera.sw_driver.vector_compiler import add_params_for

    def conv(source, out_channels, kernel, pad):
        _, layers, _ = random_chain(rng, shapes[source], [{"out_channels": out_channels, "kernel": kernel,
                                                           "pad": pad}], multiplier)
        steps.append(Step(layers[0], (source,)))
        shapes.append(layers[0].output_shape(shapes[source]))

    steps, shapes = [], [tuple(in_shape)]
    channels = spec["channels"]
    conv(0, channels, 3, 1)
    conv(1, channels, 3, 1)
    conv(2, channels, 1, 0)
    while True:    # an add the device reproduces exactly
        params = [QuantParams(float(np.float32(10 ** rng.uniform(-2, -1))), int(rng.integers(-20, 20)), np.int8)
                  for _ in range(3)]
        try:
            steps.append(Step(AddStep(add_params_for(*params)), (3, 1)))
            break
        except ValueError:
            continue
    add_params = params
    shapes.append(shapes[3])
    kernel, stride, pad = spec["pool"]
    pool = PoolStep(kernel=(kernel, kernel), strides=(stride, stride), pads=(pad,) * 4)
    steps.append(Step(pool, (4,)))
    shapes.append(pool.output_shape(shapes[4]))
    if spec.get("end") != "pool":     # (else the pool's maps are the model's output, sent as VECTOR packets)
        conv(5, int(rng.integers(1, 2 * channels + 1)), 3, 1)
    if spec.get("end") == "head":
        conv(6, int(rng.integers(2, 9)), shapes[6][1:], 0)     # a window over the whole map
        conv(7, int(rng.integers(2, 11)), 1, 0)                # fully connected
    x = rng.integers(-128, 128, in_shape, dtype=np.int8)
    return x, steps, lambda image: graph_golden(image, steps, add_params, multiplier)


def graph_golden(x, steps, add_params, multiplier="exact"):
    """The golden model's output of resident ``steps`` (as :func:`random_graph` makes them) for one image ``x``;
    ``add_params`` the QuantParams (a, b, y) of its add."""
    from tessera.sw_driver.resident import AddStep, PoolStep
    tensors = [x]
    for step in steps:
        op, inputs = step.op, [tensors[t] for t in step.inputs]
        if isinstance(op, AddStep):
            pa, pb, py = add_params
            y = golden.qlinear_add(inputs[0], pa.scale, pa.zero_point, inputs[1], pb.scale, pb.zero_point,
                                   py.scale, py.zero_point)
        elif isinstance(op, PoolStep):
            y = golden.maxpool(inputs[0][None], op.kernel, op.strides, op.pads)[0]
        else:
            y = golden.conv_hw(inputs[0][None], op.w, op.bias, op.scale, op.y_zp, strides=op.strides,
                               pads=op.pads, pad_value=op.pad_value, multiplier=multiplier)[0]
        tensors.append(y)
    return tensors[-1]
