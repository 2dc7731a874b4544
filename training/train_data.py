"""What `training.train` trains on: the faces, their targets (FER2013's one-hot labels, or with
`--votes` the FER+ vote distributions mixed in) and per-face loss weights, as arrays or as a
tf.data pipeline that applies webcam conditions and mixup/cutmix to each batch."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from fer_async.labels import EMOTIONS
from training.data import Split
from training.ferplus import load_votes, training_targets
from training.mixing import mix_batch
from training.webcam_augment import WebcamAugment, webcam_batch


def sample_weights(targets: np.ndarray, args: argparse.Namespace) -> np.ndarray:
    """Per-face loss weights: each face's target distribution times the class weights, which
    come from the summed targets (1 without class weights). One-hot targets give each face the
    weight of its class."""
    if args.class_weight_power <= 0:
        return np.ones(len(targets), np.float32)
    counts = targets.sum(axis=0).astype(np.float64)
    raw = (counts.max() / np.maximum(counts, 1e-9)) ** args.class_weight_power
    raw /= float((raw * counts).sum() / counts.sum())
    return (targets @ raw).astype(np.float32)


@dataclass(frozen=True)
class TrainingSet:
    x: np.ndarray  # uint8 [N, 48, 48]
    targets: np.ndarray  # float32 [N, 7]: one-hot FER2013 labels, or FER+ vote distributions mixed in
    y: np.ndarray  # the FER2013 labels (counts, logs)

    def __len__(self) -> int:
        return len(self.y)


def one_hot(y: np.ndarray) -> np.ndarray:
    return keras.utils.to_categorical(y, len(EMOTIONS)).astype(np.float32)


def uses_dataset(args: argparse.Namespace) -> bool:
    """Whether the batches are transformed in a tf.data pipeline (mixing, webcam conditions)."""
    return bool(args.mixup or args.cutmix or args.webcam_augment)


def batch_dataset(train: TrainingSet, args: argparse.Namespace) -> tf.data.Dataset:
    dataset = tf.data.Dataset.from_tensor_slices(
        (train.x[..., None], train.targets, sample_weights(train.targets, args))
    )
    dataset = dataset.shuffle(len(train), seed=args.seed, reshuffle_each_iteration=True).batch(args.batch_size)
    # Sequential maps: stateful random ops drawn in a fixed order, so a seed repeats a run.
    if args.webcam_augment:
        spec = WebcamAugment()
        dataset = dataset.map(lambda x, y, w: (webcam_batch(x, spec), y, w))
    if args.mixup or args.cutmix:
        dataset = dataset.map(lambda x, y, w: mix_batch(x, y, w, args.mixup, args.cutmix))
    return dataset.prefetch(tf.data.AUTOTUNE)


def make_training_set(train: Split, args: argparse.Namespace, keep: np.ndarray | None) -> TrainingSet:
    """The faces that train and their targets: FER2013's one-hot labels, or with `--votes` the
    FER+ vote distributions mixed with them (`training.ferplus.training_targets`)."""
    if not args.votes:
        return TrainingSet(train.x, one_hot(train.y), train.y)
    votes = load_votes(args.votes, "train")
    if keep is not None:
        votes = votes[keep]
    if args.extra_train == "val":
        votes = np.concatenate([votes, load_votes(args.votes, "val")])
    chosen = training_targets(train.y, votes, args.vote_share, args.unvoted, args.class_vote_share)
    print(
        f"FER+ targets: {chosen.keep.sum():,} of {len(train):,} faces train; dropped {chosen.dropped_off_class:,} "
        f"(contempt/unknown/not-a-face majority) and {chosen.dropped_unvoted:,} without votes; "
        f"{chosen.unvoted_kept:,} without votes kept on their FER2013 label"
    )
    return TrainingSet(train.x[chosen.keep], chosen.targets, train.y[chosen.keep])
