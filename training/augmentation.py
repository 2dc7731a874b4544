"""How faces are augmented while training: the strengths, shared by the in-model layers
(`training.models.augmentation`) and the fixed views of `training.views`; no framework imports."""

from __future__ import annotations

# Augmentation strengths: FER2013 faces are roughly aligned already, so small geometric jitter
# helps while large rotations or crops would teach the net poses the detector never produces.
ROTATION_DEGREES = 10.0
ZOOM = 0.10
SHIFT = 0.10
CONTRAST = 0.20
# Random erasing (Zhong et al. 2017): blanks a noise patch of 2-20 % of the face in about half
# the images, so the net cannot lean on one region (a smile alone) and must read the whole face.
ERASING_AREA = (0.02, 0.20)


def describe_augmentation() -> str:
    """One line for model cards: what `augmentation()` does while training."""
    low, high = ERASING_AREA
    return (
        f"horizontal flip, rotation ±{ROTATION_DEGREES:g}°, zoom ±{ZOOM:.0%}, shift ±{SHIFT:.0%}, "
        f"contrast ±{CONTRAST:.0%}, random erasing of {low:.0%} to {high:.0%} of the face (about half the images)"
    )
