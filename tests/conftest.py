"""Shared fixtures: small Keras models and representative data."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(__file__))

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def residual_cnn(seed: int = 0, pool: str = "max"):
    """Conv, BN, ReLU6, depthwise, pointwise, residual Add, pooling, Flatten, Dense (12x12x1)."""
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((12, 12, 1))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="c1")(inp)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(6.0, name="r1")(x)
    y = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    y = keras.layers.ReLU(name="r2")(y)
    y = keras.layers.Conv2D(8, 1, name="pw")(y)
    x = keras.layers.Add(name="add")([x, y])
    if pool == "max":
        x = keras.layers.MaxPooling2D(2, name="pool")(x)
        x = keras.layers.Flatten(name="flat")(x)
    elif pool == "avg":
        x = keras.layers.ZeroPadding2D(1, name="zpad")(x)
        x = keras.layers.AveragePooling2D(2, name="pool")(x)
        x = keras.layers.Flatten(name="flat")(x)
    else:
        x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dropout(0.1, name="drop")(x)
    x = keras.layers.Dense(10, name="fc")(x)
    return keras.Model(inp, x)


@pytest.fixture(scope="session")
def calib():
    rng = np.random.default_rng(0)
    return [rng.random((1, 12, 12, 1)).astype(np.float32) for _ in range(24)]


@pytest.fixture(scope="session")
def residual_model():
    return residual_cnn()
