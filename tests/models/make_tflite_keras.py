"""Writes int8 TensorFlow Lite ResNets with TensorFlow's own converter, as users make
them: the TFLite import's test models for shapes `make_tflite.py` does not write.

usage: make_tflite_keras.py OUT_DIR   (needs tensorflow-cpu 2.21; the files are
committed, so the tests need only LiteRT)

- `keras_resnet20_option_a_int8.tflite`: the paper's CIFAR ResNet-20 (three stages of
  three basic blocks, 16/32/64 channels, 32x32x3 input) with option-A shortcuts: the
  converter writes each as a STRIDED_SLICE (every second row and column) and a PAD of
  channels before the ADD.
- `keras_option_a_tiny_int8.tflite`: the same at 8x8x3 with one block per stage and
  4/8 channels (4 KB: a seed of the `tflite_import` fuzz target, in
  `host/fuzz/seeds/tflite/` too).
- `keras_bottleneck_int8.tflite`: two bottleneck blocks (1x1, 3x3, 1x1 convolutions,
  the second of stride 2) with option-B projections (1x1 convolutions) and a MEAN head.

Weights are Keras's seeded initialisation, batch-norm statistics seeded random (the
converter folds them); int8 with int8 input and output, calibrated on 64 seeded random
images (pixels / 255), as `tf.lite.Optimize.DEFAULT` with a representative data set does.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
from tensorflow import keras
from tensorflow.keras import layers


def conv_bn(x, channels, stride=1, kernel=3, relu=True):
    x = layers.Conv2D(channels, kernel, strides=stride, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    return layers.ReLU()(x) if relu else x


def option_a(x, channels):
    """The paper's option A: subsample by 2, pad the new channels with zeros."""

    def shortcut(t):
        extra = channels - t.shape[-1]
        pads = [[0, 0], [0, 0], [0, 0], [extra // 2, extra - extra // 2]]
        return tf.pad(t[:, ::2, ::2, :], pads)

    return layers.Lambda(shortcut)(x)


def resnet20_option_a(blocks=3, widths=(16, 32, 64), classes=10, side=32):
    image = keras.Input((side, side, 3))
    x = conv_bn(image, widths[0])
    for stage, channels in enumerate(widths):
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            y = conv_bn(x, channels, stride)
            y = conv_bn(y, channels, relu=False)
            shortcut = option_a(x, channels) if stride == 2 else x
            x = layers.ReLU()(layers.Add()([y, shortcut]))
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(image, layers.Softmax()(layers.Dense(classes)(x)))


def bottleneck_net(classes=10):
    image = keras.Input((32, 32, 3))
    x = conv_bn(image, 16)
    for channels, stride in ((8, 1), (16, 2)):
        y = conv_bn(x, channels, kernel=1)
        y = conv_bn(y, channels, stride)
        y = conv_bn(y, 4 * channels, kernel=1, relu=False)
        shortcut = conv_bn(x, 4 * channels, stride, kernel=1, relu=False)
        x = layers.ReLU()(layers.Add()([y, shortcut]))
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(image, layers.Softmax()(layers.Dense(classes)(x)))


rng = np.random.default_rng(3)


def randomize_batch_norm(model):
    """Seeded batch-norm statistics, and a classifier of small weights: the softmax's
    outputs then vary from image to image instead of saturating."""
    for layer in model.layers:
        if isinstance(layer, layers.Dense):
            kernel, bias = layer.get_weights()
            layer.set_weights([rng.normal(0, 0.3, kernel.shape), bias])
        if isinstance(layer, layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, c),
                    rng.normal(0, 0.2, c),
                    rng.normal(0, 0.2, c),
                    rng.uniform(0.5, 2.0, c),
                ]
            )


def convert_int8(model, path):
    side = model.input_shape[1]

    # Pixels 0..255 scaled to 0..1, black and white among them: the int8 input then
    # has scale 1/255 and zero point -128 (int8 = pixel - 128).
    def representative():
        for _ in range(64):
            pixels = rng.integers(0, 256, (1, side, side, 3))
            pixels.flat[:2] = (0, 255)
            yield [pixels.astype(np.float32) / 255.0]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    with open(path, "wb") as f:
        f.write(converter.convert())


out = sys.argv[1]
keras.utils.set_random_seed(5)
for name, model in (
    ("keras_resnet20_option_a_int8.tflite", resnet20_option_a()),
    ("keras_bottleneck_int8.tflite", bottleneck_net()),
    (
        "keras_option_a_tiny_int8.tflite",
        resnet20_option_a(blocks=1, widths=(4, 8), classes=4, side=8),
    ),
):
    randomize_batch_norm(model)
    convert_int8(model, os.path.join(out, name))
    print(f"{name}: {os.path.getsize(os.path.join(out, name))} bytes")
