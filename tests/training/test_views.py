"""training.views: fixed augmented views, the same pixels wherever they are rendered."""

from __future__ import annotations

import numpy as np
import pytest

from training.views import render_view, render_views


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    # A gradient plus noise: a mirror or a warp of it is never the face itself.
    rng = np.random.default_rng(5)
    ramp = np.tile(np.linspace(0, 200, 48, dtype=np.float32), (48, 1))
    return np.clip(ramp[None] + rng.normal(0, 20, (12, 48, 48)), 0, 255).astype(np.uint8)


def test_view_zero_is_the_face_and_view_one_its_mirror(faces: np.ndarray) -> None:
    np.testing.assert_array_equal(render_view(faces, 0, seed=1), faces)
    np.testing.assert_array_equal(render_view(faces, 1, seed=1), faces[:, :, ::-1])


def test_views_are_reproducible_from_seed_and_number_alone(faces: np.ndarray) -> None:
    first = render_view(faces, 5, seed=3)
    np.testing.assert_array_equal(first, render_view(faces, 5, seed=3))
    assert first.dtype == np.uint8 and first.shape == faces.shape
    assert not np.array_equal(first, render_view(faces, 6, seed=3))
    assert not np.array_equal(first, render_view(faces, 5, seed=4))
    # Small jitter: each view stays close to the face or its mirror, never a different picture.
    for view, face in zip(first.astype(np.float32), faces.astype(np.float32), strict=True):
        closest = min(np.abs(view - face).mean(), np.abs(view - face[:, ::-1]).mean())
        assert closest < 60


def test_render_views_in_worker_processes_matches_one_by_one(faces: np.ndarray) -> None:
    stacked = render_views(faces, 4, seed=9, processes=2)
    assert stacked.shape == (4, *faces.shape)
    for k in range(4):
        np.testing.assert_array_equal(stacked[k], render_view(faces, k, seed=9))


def test_bad_input_is_refused(faces: np.ndarray) -> None:
    with pytest.raises(ValueError, match="uint8"):
        render_view(faces.astype(np.float32), 2, seed=1)
    with pytest.raises(ValueError, match="view"):
        render_view(faces, -1, seed=1)
