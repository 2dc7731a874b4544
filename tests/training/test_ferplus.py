"""FER+ votes: the majority protocol, the training targets, webcam augmentation and training on votes."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from testsupport import run_train, write_tiny_votes

from training.ferplus import DEFAULT_VOTES, load_votes, majority_labels, training_targets

# Columns: neutral, happiness, surprise, sadness, anger, disgust, fear, contempt, unknown, NF
VOTES = np.array(
    [
        [8, 0, 0, 1, 1, 0, 0, 0, 0, 0],  # neutral
        [0, 0, 0, 0, 6, 4, 0, 0, 0, 0],  # anger over disgust
        [0, 5, 5, 0, 0, 0, 0, 0, 0, 0],  # happiness tied with surprise: left out
        [1, 0, 0, 0, 0, 0, 0, 7, 2, 0],  # contempt: left out, dropped from training
        [0, 0, 0, 0, 0, 0, 0, 0, 2, 8],  # not a face: left out, dropped
        [-1] * 10,  # no votes
        [0, 0, 0, 0, 1, 0, 9, 0, 0, 0],  # fear
    ]
)
FER2013_LABELS = np.array([6, 1, 3, 0, 4, 5, 2])  # angry, disgust, fear, happy, sad, surprise, neutral = 0..6


def test_majority_follows_the_protocol_in_fer2013_class_order() -> None:
    assert majority_labels(VOTES).tolist() == [6, 0, -1, -1, -1, -1, 2]


def test_targets_mix_the_vote_distribution_with_the_fer2013_label() -> None:
    chosen = training_targets(FER2013_LABELS, VOTES, vote_share=0.5, unvoted="keep")
    assert chosen.keep.tolist() == [True, True, True, False, False, True, True]
    assert chosen.dropped_off_class == 2 and chosen.unvoted_kept == 1
    np.testing.assert_allclose(chosen.targets.sum(axis=1), 1.0, atol=1e-6)
    # neutral face, FER2013 says neutral too: 0.5 x (0.8 neutral, 0.1 sad, 0.1 angry) + 0.5 x neutral
    np.testing.assert_allclose(chosen.targets[0], [0.05, 0, 0, 0, 0.05, 0, 0.9], atol=1e-6)
    # anger 6 / disgust 4 votes, FER2013 says disgust: 0.5 x (0.6, 0.4) + 0.5 x disgust
    np.testing.assert_allclose(chosen.targets[1], [0.3, 0.7, 0, 0, 0, 0, 0], atol=1e-6)
    # no votes: the FER2013 label alone (surprise)
    np.testing.assert_allclose(chosen.targets[3], np.eye(7)[5])


def test_votes_alone_and_unvoted_faces_dropped() -> None:
    chosen = training_targets(FER2013_LABELS, VOTES, vote_share=1.0, unvoted="drop")
    assert chosen.keep.tolist() == [True, True, True, False, False, False, True]
    assert chosen.dropped_unvoted == 1 and chosen.unvoted_kept == 0
    np.testing.assert_allclose(chosen.targets[1], [0.6, 0.4, 0, 0, 0, 0, 0], atol=1e-6)
    # The tied face trains on its two halves.
    np.testing.assert_allclose(chosen.targets[2], [0, 0, 0, 0.5, 0, 0.5, 0], atol=1e-6)


def test_a_class_can_keep_more_of_its_fer2013_label() -> None:
    # FER2013 calls face 1 disgust: with disgust at share 0 it trains on its label alone, while the
    # other faces keep the common share.
    chosen = training_targets(FER2013_LABELS, VOTES, vote_share=1.0, class_shares={1: 0.0})
    np.testing.assert_allclose(chosen.targets[1], np.eye(7)[1])
    np.testing.assert_allclose(chosen.targets[0], [0.1, 0, 0, 0, 0.1, 0, 0.8], atol=1e-6)
    with pytest.raises(ValueError, match="no class 7"):
        training_targets(FER2013_LABELS, VOTES, 1.0, class_shares={7: 0.5})
    with pytest.raises(ValueError, match="vote_share"):
        training_targets(FER2013_LABELS, VOTES, 1.0, class_shares={0: 2.0})


def test_the_cli_reads_class_vote_shares() -> None:
    from training.train_options import parse_args

    args = parse_args(["--votes", "--class-vote-share", "angry=0.2", "--class-vote-share", "disgust=0"])
    assert args.class_vote_share == {0: 0.2, 1: 0.0}
    for bad in (
        ["--votes", "--class-vote-share", "grumpy=0.2"],
        ["--votes", "--class-vote-share", "angry=1.5"],
        ["--class-vote-share", "angry=0.2"],
    ):
        with pytest.raises(SystemExit):
            parse_args(bad)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="vote_share"):
        training_targets(FER2013_LABELS, VOTES, vote_share=1.5)
    with pytest.raises(ValueError, match="order"):
        training_targets(FER2013_LABELS[:3], VOTES, 0.5)
    with pytest.raises(ValueError, match="unvoted"):
        training_targets(FER2013_LABELS, VOTES, 0.5, unvoted="maybe")


@pytest.mark.skipif(not DEFAULT_VOTES.is_file(), reason=f"the FER+ votes are not here ({DEFAULT_VOTES})")
def test_the_shared_votes_give_the_documented_publictest_protocol() -> None:
    from training.data import DEFAULT_DATA, load_split

    majority = majority_labels(load_votes(DEFAULT_VOTES, "val"))
    counted = majority >= 0
    assert counted.sum() == 3281  # ../shared/data/ferplus/README.md
    if DEFAULT_DATA.is_file():
        y = load_split(DEFAULT_DATA, "val").y
        assert (majority[counted] == y[counted]).sum() == 2135  # the faces both label sets agree on


def test_training_on_votes_selects_on_the_ferplus_majority_and_says_so(tiny_npz: Path, tmp_path: Path) -> None:
    votes = write_tiny_votes(tmp_path / "votes.npz", n_train=70, n_val=21)
    run_dir, export_dir = run_train(
        tiny_npz,
        tmp_path,
        "--epochs",
        "2",
        "--votes",
        str(votes),
        "--vote-share",
        "0.6",
        "--webcam-augment",
        "--keep-epochs",
    )
    with (run_dir / "log.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    assert all(0 <= float(r[key]) <= 1 for r in rows for key in ("val_accuracy", "val_fer2013", "val_agreed"))
    assert sorted(p.name for p in (run_dir / "epochs").iterdir()) == ["001.weights.h5", "002.weights.h5"]
    card = (export_dir / "fernet.md").read_text()
    assert "FER+ majority (the selection figure)" in card and "0.6 x FER+ vote distribution" in card
    assert "occluding grey box" in card and "(FER2013 labels)" in card


def test_webcam_conditions_change_the_faces_they_pick() -> None:
    import tensorflow as tf

    from training.webcam_augment import WebcamAugment, webcam_batch

    faces = tf.constant(np.random.default_rng(0).integers(60, 200, (16, 48, 48, 1)).astype(np.float32))
    none = WebcamAugment(occluder=0, blur=0, low_light=0, turn=0)
    np.testing.assert_array_equal(webcam_batch(faces, none).numpy(), faces.numpy())

    occluded = webcam_batch(faces, WebcamAugment(occluder=1, blur=0, low_light=0, turn=0)).numpy()
    changed = (occluded != faces.numpy())[..., 0]
    rows = changed.any(axis=2).sum(axis=1)
    assert ((rows >= 12) & (rows <= 28)).all()  # one box of 12..28 px on every face

    dim = webcam_batch(faces, WebcamAugment(occluder=0, blur=0, low_light=1, turn=0)).numpy()
    assert dim.mean() < 0.6 * faces.numpy().mean() and dim.min() >= 0 and dim.max() <= 255

    turned = webcam_batch(faces, WebcamAugment(occluder=0, blur=0, low_light=0, turn=1)).numpy()
    assert turned.shape == faces.shape and not np.array_equal(turned, faces.numpy())
