"""Mixup and cutmix on a batch of faces (`training.train --mixup/--cutmix`): each face is mixed
with another face of the batch, and its target and loss weight in the same share."""

from __future__ import annotations

import tensorflow as tf


def _beta(alpha: float) -> tf.Tensor:
    first, second = tf.random.gamma([], alpha), tf.random.gamma([], alpha)
    return first / (first + second)


def _mixup(x: tf.Tensor, partner: tf.Tensor, alpha: float) -> tuple[tf.Tensor, tf.Tensor]:
    share = _beta(alpha)
    return share * x + (1.0 - share) * partner, share


def _cutmix(x: tf.Tensor, partner: tf.Tensor, alpha: float) -> tuple[tf.Tensor, tf.Tensor]:
    """Paste a box of the partner faces (area 1 - share, centre uniform, clipped at the edges)."""
    share = _beta(alpha)
    size = tf.shape(x)[1]
    side = tf.cast(tf.round(tf.sqrt(1.0 - share) * tf.cast(size, tf.float32)), tf.int32)
    centre_y = tf.random.uniform([], 0, size, tf.int32)
    centre_x = tf.random.uniform([], 0, size, tf.int32)
    top, bottom = tf.maximum(centre_y - side // 2, 0), tf.minimum(centre_y + (side + 1) // 2, size)
    left, right = tf.maximum(centre_x - side // 2, 0), tf.minimum(centre_x + (side + 1) // 2, size)
    rows, cols = tf.range(size), tf.range(size)
    inside_rows = tf.logical_and(rows >= top, rows < bottom)
    inside_cols = tf.logical_and(cols >= left, cols < right)
    box = tf.cast(tf.logical_and(inside_rows[:, None], inside_cols[None, :]), x.dtype)[None, :, :, None]
    kept = 1.0 - tf.reduce_mean(box)  # the clipped box's true area sets the label share
    return x * (1.0 - box) + partner * box, kept


def mix_batch(
    x: tf.Tensor, y: tf.Tensor, w: tf.Tensor, mixup: float, cutmix: float
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Mix each face with another of the batch: the labels and loss weights mix in the same share."""
    x = tf.cast(x, tf.float32)
    order = tf.random.shuffle(tf.range(tf.shape(x)[0]))
    partner = tf.gather(x, order)
    if mixup > 0 and cutmix > 0:
        mixed, share = tf.cond(
            tf.random.uniform([]) < 0.5, lambda: _cutmix(x, partner, cutmix), lambda: _mixup(x, partner, mixup)
        )
    elif cutmix > 0:
        mixed, share = _cutmix(x, partner, cutmix)
    else:
        mixed, share = _mixup(x, partner, mixup)
    y = share * y + (1.0 - share) * tf.gather(y, order)
    w = share * w + (1.0 - share) * tf.gather(w, order)
    return mixed, y, w
