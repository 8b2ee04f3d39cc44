"""Reference models of the MCU training literature, built in Keras (random weights).

MobileNetV2-w0.35 comes from keras.applications; MCUNet-like and ProxylessNAS-like are
inverted-residual networks with the mixed kernel sizes (3/5/7) and expansion ratios (3/4/6) of
those NAS results, sized near the published parameter counts. They stand in for the originals,
whose exact architectures and weights are not available offline; conv indices (Conv2D,
DepthwiseConv2D, Dense from 0 at the input) line up with the MIT paper's sparse schemes in range.
"""

from __future__ import annotations


def settle_batchnorm(model, seed: int = 0):
    """Set every BatchNormalization's statistics from one random batch.

    With random weights, activations otherwise shrink layer after layer until int8 scales
    degenerate (TFLM's softmax then refuses them); real pretrained models do not need this."""
    import numpy as np
    from keras import layers as L

    bns = [lay for lay in model.layers if isinstance(lay, L.BatchNormalization)]
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.momentum = 0.0
    shape = (8,) + tuple(int(d) for d in model.inputs[0].shape[1:])
    model(np.random.default_rng(seed).uniform(0, 1, shape).astype(np.float32), training=True)
    for bn, m in zip(bns, saved):
        bn.momentum = m
    return model


def _make_divisible(v: float, divisor: int = 8) -> int:
    return max(divisor, int(v + divisor / 2) // divisor * divisor)


def _ir_block(x, expand: int, out_ch: int, kernel: int, stride: int, name: str):
    from keras import layers as L

    in_ch = int(x.shape[-1])
    h = x
    if expand != 1:
        h = L.Conv2D(in_ch * expand, 1, use_bias=False, name=f"{name}_expand")(h)
        h = L.BatchNormalization(name=f"{name}_expand_bn")(h)
        h = L.ReLU(6.0, name=f"{name}_expand_relu")(h)
    h = L.DepthwiseConv2D(kernel, stride, padding="same", use_bias=False, name=f"{name}_dw")(h)
    h = L.BatchNormalization(name=f"{name}_dw_bn")(h)
    h = L.ReLU(6.0, name=f"{name}_dw_relu")(h)
    h = L.Conv2D(out_ch, 1, use_bias=False, name=f"{name}_project")(h)
    h = L.BatchNormalization(name=f"{name}_project_bn")(h)
    if stride == 1 and in_ch == out_ch:
        h = L.Add(name=f"{name}_add")([x, h])
    return h


def _ir_net(blocks, stem: int, first: int, input_size: int, classes: int, head: int | None,
            name: str):
    import keras
    from keras import layers as L

    inp = keras.Input((input_size, input_size, 3), name="image")
    x = L.Conv2D(stem, 3, 2, padding="same", use_bias=False, name="stem")(inp)
    x = L.BatchNormalization(name="stem_bn")(x)
    x = L.ReLU(6.0, name="stem_relu")(x)
    x = _ir_block(x, 1, first, 3, 1, "block0")
    for i, (expand, out_ch, kernel, stride) in enumerate(blocks):
        x = _ir_block(x, expand, out_ch, kernel, stride, f"block{i + 1}")
    if head:
        x = L.Conv2D(head, 1, use_bias=False, name="head")(x)
        x = L.BatchNormalization(name="head_bn")(x)
        x = L.ReLU(6.0, name="head_relu")(x)
    x = L.GlobalAveragePooling2D(name="pool")(x)
    x = L.Dense(classes, name="classifier")(x)
    return settle_batchnorm(keras.Model(inp, x, name=name))


def mcunet_like(input_size: int = 128, classes: int = 10):
    """MCUNet-5FPS-like: 13 inverted-residual blocks, kernels 3/5/7, expansions 3/4/6."""
    blocks = [(3, 16, 7, 2), (3, 16, 3, 1), (4, 24, 7, 2), (3, 24, 3, 1), (4, 24, 5, 1),
              (6, 40, 7, 2), (3, 40, 5, 1), (4, 48, 5, 1), (4, 48, 3, 1), (6, 96, 5, 2),
              (3, 96, 7, 1), (4, 96, 3, 1), (6, 160, 3, 1)]
    return _ir_net(blocks, 16, 8, input_size, classes, None, "mcunet_like")


def proxyless_like(input_size: int = 128, classes: int = 10):
    """ProxylessNAS-w0.3-like: 18 inverted-residual blocks and a 1x1 head conv."""
    c = [_make_divisible(v * 0.3) for v in (16, 24, 40, 80, 96, 192, 320)]
    blocks = [(3, c[1], 5, 2), (3, c[1], 3, 1), (3, c[1], 3, 1), (3, c[1], 3, 1),
              (3, c[2], 7, 2), (3, c[2], 3, 1), (3, c[2], 5, 1), (3, c[2], 5, 1),
              (6, c[3], 7, 2), (3, c[3], 5, 1), (3, c[3], 5, 1), (3, c[3], 5, 1),
              (6, c[4], 5, 1), (3, c[4], 5, 1), (3, c[4], 5, 1), (3, c[4], 5, 1),
              (6, c[5], 7, 2), (6, c[6], 7, 1)]
    return _ir_net(blocks, 16, c[0], input_size, classes, 1280 * 3 // 10, "proxyless_like")


def mobilenetv2_w035(input_size: int = 128, classes: int = 10):
    """keras.applications.MobileNetV2(alpha=0.35), random weights."""
    import keras

    keras.utils.set_random_seed(0)
    return settle_batchnorm(keras.applications.MobileNetV2(
        alpha=0.35, input_shape=(input_size, input_size, 3), weights=None, classes=classes))
