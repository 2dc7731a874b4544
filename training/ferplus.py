"""FER+ crowd votes: training targets and the majority protocol used to score a network.

FER+ (Microsoft, MIT licence; Barsoum et al. 2016, arXiv:1608.01041) had ten crowd taggers label
every FER2013 face again. `../shared/data/ferplus/ferplus_votes.npz` holds the votes face by face
in the order of `fer2013.npz` (`votes_train`, `votes_val`: [N, 10] int8, a row of -1 where a face
has none) in the column order of `VOTE_COLUMNS`.

Two uses:

* **Scoring** (`majority_labels`): the FER+ "majority" protocol restricted to the network's seven
  classes. A face counts when its top vote (over all ten columns) is one of the seven classes and
  is not tied with the second; its label is that class. On PublicTest that is 3,281 faces.
* **Targets** (`training_targets`): each face's vote distribution over the seven classes, mixed
  with its FER2013 one-hot label (`vote_share` 1 = votes alone, 0 = FER2013 alone). Contempt,
  unknown and not-a-face votes are left out of the distribution (the network has no such
  class). Faces whose top vote is contempt, unknown or not-a-face are dropped: the crowd says
  the seven classes do not describe them. Faces without votes keep their FER2013 label or are
  dropped (`unvoted`). `class_shares` sets another share for the faces FER2013 gives one class
  (the votes move many FER2013-angry faces to neutral, sad or surprise; what keeping their label
  changes is measured in docs/training.md).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fer_async.labels import EMOTIONS

DEFAULT_VOTES = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "ferplus" / "ferplus_votes.npz"

VOTE_COLUMNS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown", "NF")
# FER+ column -> FER2013 class index (EMOTIONS order) for the seven shared classes.
COLUMN_CLASSES = np.array([6, 3, 5, 4, 0, 1, 2])
SHARED_COLUMNS = len(COLUMN_CLASSES)  # the first seven columns; contempt, unknown and NF follow
UNVOTED_CHOICES = ("keep", "drop")


def load_votes(path: str | os.PathLike[str], split: str) -> np.ndarray:
    """The [N, 10] vote counts of one split ("train" or "val"), -1 rows where a face has none."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FER+ votes not found: {path}")
    with np.load(path) as data:
        key = f"votes_{split}"
        if key not in data.files:
            raise KeyError(f"{path} has no {key!r} (it has: {', '.join(data.files)})")
        columns = tuple(str(c) for c in data["columns"]) if "columns" in data.files else VOTE_COLUMNS
        if columns != VOTE_COLUMNS:
            raise ValueError(f"{path}: expected the columns {VOTE_COLUMNS}, got {columns}")
        votes = np.asarray(data[key], dtype=np.int64)
    if votes.ndim != 2 or votes.shape[1] != len(VOTE_COLUMNS):
        raise ValueError(f"{path}: {key} must be [N, {len(VOTE_COLUMNS)}], got {list(votes.shape)}")
    return votes


def has_votes(votes: np.ndarray) -> np.ndarray:
    return np.asarray(votes.min(axis=1) >= 0)


def seven_class_votes(votes: np.ndarray) -> np.ndarray:
    """[N, 7] vote counts in FER2013 class order (contempt, unknown and NF left out; 0 where none)."""
    counts = np.zeros((len(votes), len(EMOTIONS)), np.float64)
    counts[:, COLUMN_CLASSES] = np.clip(votes[:, :SHARED_COLUMNS], 0, None)
    return counts


def majority_labels(votes: np.ndarray) -> np.ndarray:
    """The FER+ majority class of each face in FER2013 order, or -1 where the protocol leaves it out
    (no votes; top vote contempt, unknown or not-a-face; top vote tied with the second)."""
    ranked = np.sort(votes, axis=1)
    top = votes.argmax(axis=1)
    counted = has_votes(votes) & (top < SHARED_COLUMNS) & (ranked[:, -1] > ranked[:, -2])
    labels = np.full(len(votes), -1, np.int64)
    labels[counted] = COLUMN_CLASSES[top[counted]]
    return labels


@dataclass(frozen=True)
class Targets:
    keep: np.ndarray  # bool [N]: faces that train
    targets: np.ndarray  # float32 [keep.sum(), 7]: the target distribution of each kept face
    dropped_off_class: int  # top vote contempt, unknown or not-a-face
    dropped_unvoted: int
    unvoted_kept: int


def training_targets(
    y: np.ndarray,
    votes: np.ndarray,
    vote_share: float,
    unvoted: str = "keep",
    class_shares: Mapping[int, float] | None = None,
) -> Targets:
    """Each face's target: `vote_share` x its seven-class vote distribution + the rest x its
    FER2013 one-hot label, or `class_shares[c]` x ... for the faces FER2013 labels `c`; see the
    module docstring for which faces are dropped."""
    shares = np.full(len(EMOTIONS), vote_share, np.float64)
    for label, share in (class_shares or {}).items():
        if not 0 <= label < len(EMOTIONS):
            raise ValueError(f"class_shares: no class {label} (0..{len(EMOTIONS) - 1})")
        shares[label] = share
    for share in shares:
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"vote_share must be in [0, 1], got {share}")
    if unvoted not in UNVOTED_CHOICES:
        raise ValueError(f"unvoted must be one of {UNVOTED_CHOICES}, got {unvoted!r}")
    if len(votes) != len(y):
        raise ValueError(f"{len(votes)} vote rows for {len(y)} faces: the votes must follow the faces' order")
    voted = has_votes(votes)
    counts = seven_class_votes(votes)
    top = votes.argmax(axis=1)
    off_class = voted & ((top >= SHARED_COLUMNS) | (counts.sum(axis=1) == 0))
    keep = ~off_class & (voted | (unvoted == "keep"))
    one_hot = np.eye(len(EMOTIONS))[np.asarray(y, np.int64)]
    distribution = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    face_share = shares[np.asarray(y, np.int64)][:, None]
    mixed = np.where(voted[:, None], face_share * distribution + (1.0 - face_share) * one_hot, one_hot)
    return Targets(
        keep=keep,
        targets=mixed[keep].astype(np.float32),
        dropped_off_class=int(off_class.sum()),
        dropped_unvoted=int((~voted).sum()) if unvoted == "drop" else 0,
        unvoted_kept=int((~voted & keep).sum()),
    )
