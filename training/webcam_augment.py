"""What a webcam does to a face that FER2013's faces rarely show, as a tf.data batch transform.

FER2013's faces are upright, frontal, stretched to the full grey range and mostly unobstructed.
A webcam brings a hand over the mouth or eyes, motion blur, a dim room with sensor noise and a
head turned away from the lens. `webcam_batch` applies each of those, independently and with its
own probability, to the faces of a batch (uint8-range float32 [B, 48, 48, 1]), before the
network's own in-model augmentation (flip, rotation, zoom, shift, contrast, erasing).

The occluder is the one measured in issue 19: a flat grey box of 12-28 px a side on about half
the faces, which took "happy" on a crying face covered by her hand from 8 % of the frames to 0 %.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import tensorflow as tf

from fer_async.labels import FACE_SIZE


@dataclass(frozen=True)
class WebcamAugment:
    occluder: float = 0.5  # probability of a flat box over part of the face
    occluder_sides: tuple[int, int] = (12, 28)  # px, each side drawn independently
    blur: float = 0.15  # probability of motion blur
    blur_lengths: tuple[int, int] = (3, 5)  # px of travel
    low_light: float = 0.15  # probability of a dim, noisy exposure
    low_light_gain: tuple[float, float] = (0.12, 0.5)
    low_light_noise: tuple[float, float] = (1.5, 6.0)  # grey levels of sensor noise after the gain
    turn: float = 0.25  # probability of a head turned sideways (a perspective squeeze)
    turn_strength: float = 0.35  # the far side shrinks by up to this share of its height

    def describe(self) -> str:
        low, high = self.occluder_sides
        return (
            f"webcam conditions on the batch: occluding grey box {low}-{high} px ({self.occluder:.0%}), "
            f"motion blur {self.blur_lengths[0]}-{self.blur_lengths[1]} px ({self.blur:.0%}), "
            f"dim + sensor noise ({self.low_light:.0%}), head turned ({self.turn:.0%})"
        )


def _chosen(batch: tf.Tensor, probability: float) -> tf.Tensor:
    return tf.random.uniform([batch, 1, 1, 1]) < probability


def _occlude(x: tf.Tensor, spec: WebcamAugment) -> tf.Tensor:
    batch = tf.shape(x)[0]
    low, high = spec.occluder_sides
    height = tf.random.uniform([batch], low, high + 1, tf.int32)
    width = tf.random.uniform([batch], low, high + 1, tf.int32)
    top = tf.cast(tf.random.uniform([batch]) * tf.cast(FACE_SIZE - height + 1, tf.float32), tf.int32)
    left = tf.cast(tf.random.uniform([batch]) * tf.cast(FACE_SIZE - width + 1, tf.float32), tf.int32)
    rows = tf.range(FACE_SIZE)[None, :]
    cols = tf.range(FACE_SIZE)[None, :]
    inside_rows = (rows >= top[:, None]) & (rows < (top + height)[:, None])
    inside_cols = (cols >= left[:, None]) & (cols < (left + width)[:, None])
    box = (inside_rows[:, :, None] & inside_cols[:, None, :])[..., None]
    level = tf.random.uniform([batch, 1, 1, 1], 40.0, 220.0)
    return tf.where(box & _chosen(batch, spec.occluder), level, x)


def _blur(x: tf.Tensor, spec: WebcamAugment) -> tf.Tensor:
    # One direction and length per batch (a kernel per face would need a per-face convolution);
    # which faces are blurred is drawn per face.
    low, high = spec.blur_lengths
    length = tf.random.uniform([], low, high + 1, tf.int32)
    angle = tf.random.uniform([], 0.0, math.pi)
    steps = tf.cast(tf.range(length), tf.float32) - tf.cast(length - 1, tf.float32) / 2.0
    dy = tf.cast(tf.round(steps * tf.sin(angle)), tf.int32)
    dx = tf.cast(tf.round(steps * tf.cos(angle)), tf.int32)
    shifted = tf.map_fn(
        lambda d: tf.roll(x, shift=[d[0], d[1]], axis=[1, 2]),
        tf.stack([dy, dx], axis=1),
        fn_output_signature=tf.float32,
    )
    blurred = tf.reduce_mean(shifted, axis=0)
    return tf.where(_chosen(tf.shape(x)[0], spec.blur), blurred, x)


def _low_light(x: tf.Tensor, spec: WebcamAugment) -> tf.Tensor:
    batch = tf.shape(x)[0]
    gain = tf.random.uniform([batch, 1, 1, 1], *spec.low_light_gain)
    sigma = tf.random.uniform([batch, 1, 1, 1], *spec.low_light_noise)
    # Quantised after the gain, as a sensor delivers it: the network's FaceContrast stretches the
    # few grey levels left back to the full range, noise and banding included.
    dim = tf.round(tf.clip_by_value(x * gain + tf.random.normal(tf.shape(x)) * sigma, 0.0, 255.0))
    return tf.where(_chosen(batch, spec.low_light), dim, x)


def _turn(x: tf.Tensor, spec: WebcamAugment) -> tf.Tensor:
    """A perspective squeeze about the vertical axis: one side of the face recedes, as in a yaw."""
    batch = tf.shape(x)[0]
    strength = tf.random.uniform([batch], -spec.turn_strength, spec.turn_strength)
    strength = tf.where(tf.random.uniform([batch]) < spec.turn, strength, tf.zeros_like(strength))
    # Output pixel (x, y) samples input ((a0 x + a1 y + a2) / k, (b0 x + b1 y + b2) / k) with
    # k = c0 x + c1 y + 1. About the centre (cx, cy) the sampled offsets are the output's divided by
    # 1 + c (x - cx): the scale changes from one side of the face to the other, the centre stays.
    c = strength / float(FACE_SIZE)
    cx = cy = FACE_SIZE / 2.0
    m = 1.0 - c * cx  # > 0 for |strength| < 1
    zeros = tf.zeros_like(c)
    transforms = tf.stack(
        [(1.0 + c * cx) / m, zeros, -c * cx * cx / m, cy * c / m, 1.0 / m, -cy * c * cx / m, c / m, zeros], axis=1
    )
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=x,
        transforms=transforms,
        output_shape=tf.constant([FACE_SIZE, FACE_SIZE]),
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="NEAREST",
    )


def webcam_batch(x: tf.Tensor, spec: WebcamAugment) -> tf.Tensor:
    """The batch with each condition applied to the faces its probability picks."""
    x = tf.cast(x, tf.float32)
    if spec.turn > 0:
        x = _turn(x, spec)
    if spec.occluder > 0:
        x = _occlude(x, spec)
    if spec.blur > 0:
        x = _blur(x, spec)
    if spec.low_light > 0:
        x = _low_light(x, spec)
    return x
