"""Teachers, a store of their probabilities on fixed views of every training face, and a student
of the served size distilled from it (issue 14).

Runs on any Keras 3 backend and needs no TensorFlow, except `export`: the shipped runs used
`KERAS_BACKEND=jax` on a lent GPU machine. One command runs the whole chain inside a time budget:

    KERAS_BACKEND=jax python -m training.distill pipeline --data fer2013.npz --out runs/distill --minutes 8.5

The steps, each also a subcommand:

* ``teacher``: trains one network (in-model augmentation, AdamW with an EMA of the weights,
  a per-epoch cosine schedule fitted to the deadline) and keeps the epoch whose EMA weights have
  the best PublicTest accuracy with flip TTA: ``<out>.npz`` (weights, PublicTest probabilities,
  and a JSON record of the run).
* ``store``: renders K fixed views of every training face (`training.views`) and averages the
  teachers' probabilities on each: ``store.npz`` [K, N, 7].
* ``student``: trains a network on those views, target = alpha * teachers + (1 - alpha) * label,
  one random view of each face per epoch, with the same schedule, EMA and selection.
* ``ensemble``: PublicTest accuracy of the teachers' averaged flip-TTA probabilities.
* ``export`` (TensorFlow, the [train] extra): a run's ``.npz`` to ``<export-dir>/<name>.json``,
  ``.weights.h5``, ``.onnx``, ``.int8.onnx`` and a card, the form the server loads.

Stop rule (the issue's): no student when the ensemble is below ``--min-ensemble`` (70.5 %).

The modules: `options` (the command line and the recipe), `runs` (run and store files),
`batches`, `ema` and `fitting` (training one network), `steps` (teacher, store, student,
ensemble), `pipeline` (the chain in child processes) and `export` (the served form and its card,
rendered by `training.card`). Only the steps that train or export import Keras.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from training.distill.options import parse_args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run: Callable[[argparse.Namespace], None]
    if args.step == "pipeline":  # forks view renderers: Keras stays out of this process
        from training.distill.pipeline import cmd_pipeline as run
    elif args.step == "export":
        from training.distill.export import cmd_export as run
    else:
        from training.distill import steps

        run = {
            "teacher": steps.cmd_teacher,
            "store": steps.cmd_store,
            "student": steps.cmd_student,
            "ensemble": steps.cmd_ensemble,
        }[args.step]
    run(args)
