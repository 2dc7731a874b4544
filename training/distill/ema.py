"""The exponential moving average of a network's weights, read while it trains."""

from __future__ import annotations

from typing import Any

import numpy as np


def ema_weights(model: Any, evaluator: Any) -> list[np.ndarray]:
    """`model`'s weights with each trainable variable replaced by its moving average, written into
    `evaluator` (the same network, built separately) and returned.

    Keras' public `Optimizer.finalize_variable_values(var_list)` assigns the averages to the
    variables it is given, in the order of the trainable variables the optimizer was built with
    (`fit` calls it with the model's own when training ends). Given the evaluator's, it leaves the
    weights being trained untouched, where `keras.callbacks.SwapEMAWeights` swaps them out and back
    (on TensorFlow by adding and subtracting, which is not exact). Non-trainable weights
    (batch-norm statistics) are the live values. TensorFlow's optimizer pairs the variables with
    `zip`, so a list of another shape would be cut short in silence: it is checked here.
    """
    optimizer = model.optimizer
    if not optimizer.use_ema:
        raise ValueError("the optimizer keeps no moving average of the weights (use_ema=False)")
    shapes = [tuple(v.shape) for v in model.trainable_variables]
    if [tuple(v.shape) for v in evaluator.trainable_variables] != shapes:
        raise ValueError(f"{evaluator.name!r} does not have the trainable variables of {model.name!r}")
    evaluator.set_weights(model.get_weights())
    optimizer.finalize_variable_values(evaluator.trainable_variables)
    weights: list[np.ndarray] = evaluator.get_weights()
    return weights
