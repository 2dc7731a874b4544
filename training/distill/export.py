"""A run's weights in the form the server loads, beside a card that records the run
(`training.card`). Needs TensorFlow (the [train] extra) for the ONNX copies."""

from __future__ import annotations

import argparse
from typing import Any

from training.card import Measured, RunCard, markdown_table, network_size
from training.data import load_split
from training.distill.fitting import accuracy, predict_flip_tta
from training.distill.runs import load_run, network_of
from training.metrics import report
from training.served_form import write_served_form


def optimizer_line(record: dict[str, Any]) -> str:
    recipe = record["recipe"]
    # Runs saved before the record had it: teachers used the recipe's smoothing, students none.
    smoothing = record.get("label_smoothing", recipe["label_smoothing"] if record["role"] == "teacher" else 0.0)
    return (
        f"AdamW (peak lr {recipe['lr']}, warm-up {recipe['warmup_epochs']} epochs, cosine ending with the last epoch "
        f"that fits the deadline, at most {recipe['max_epochs']}; weight decay {recipe['weight_decay']}), EMA of "
        f"weights (momentum {recipe['ema_momentum']}), batch {recipe['batch_size']}, label smoothing {smoothing}, "
        f"class-weight power {recipe['class_weight_power']}, precision {recipe['precision']}"
    )


def role_line(record: dict[str, Any]) -> str:
    if "alpha" not in record:
        return str(record["role"])
    return f"{record['role']}, alpha {record['alpha']} (target = alpha x teachers + (1 - alpha) x label)"


def teachers_section(store: dict[str, Any]) -> tuple[str, str]:
    rows = (
        [t["network"], t["seed"], t["epochs_run"], f"{t['val_accuracy']:.2%}", f"{t['val_accuracy_tta']:.2%}"]
        for t in store["teachers"]
    )
    table = markdown_table(["network", "seed", "epochs", "PublicTest", "+ flip TTA"], rows)
    return (
        f"Teachers ({store['views']} fixed views per face, view seed {store['view_seed']})",
        f"{table}\n\nensemble (averaged flip-TTA probabilities): **{store['ensemble_val_accuracy_tta']:.2%}**",
    )


def epochs_section(history: list[dict[str, float]]) -> tuple[str, str]:
    rows = (
        [h["epoch"], f"{h['loss']:.4f}", f"{h['val_accuracy']:.4f}", f"{h['val_accuracy_tta']:.4f}"] for h in history
    )
    return "Epochs", markdown_table(["epoch", "loss", "PublicTest", "+ flip TTA"], rows, text_columns=0)


def cmd_export(args: argparse.Namespace) -> None:
    """A run's weights in the served form, beside a card that records the run."""
    weights, record, _ = load_run(args.run)
    model = network_of(weights, record, augment=True)
    val = load_split(args.data, "val")
    tta, plain = predict_flip_tta(model, val.x)
    paths = write_served_form(model, record["network"], args.export_dir, args.name, args.data)
    store = record.get("store")
    parameters, macs = network_size(model)
    views = f", shown as {store['views']} fixed views per face" if store else ""
    card = RunCard(
        name=args.name,
        network=record["network"],
        parameters=parameters,
        macs=macs,
        data=f"FER2013 Training ({record['train_size']:,} faces){views}; selected on PublicTest (`x_val`)",
        command=record["command"],
        seed=record["seed"],
        epochs=f"epochs run: {record['epochs_run']}; best epoch: {record['best_epoch']} "
        "(EMA weights, selected on PublicTest with flip TTA)",
        wall_seconds=record["seconds"],
        optimizer=optimizer_line(record),
        measured=Measured(
            "PublicTest (x_val), flip TTA, measured here by the export",
            report(val.y, tta),
            note=f"without TTA: {accuracy(plain, val.y):.2%}",
        ),
        details=[
            ("Keras backend", record["backend"]),
            ("exported with", f"`python -m training.distill export {args.run} --name {args.name}`"),
            ("role", role_line(record)),
        ],
        sections=[*([teachers_section(store)] if store else []), epochs_section(record["history"])],
    )
    card_path = args.export_dir / f"{args.name}.md"
    card_path.write_text(card.markdown())
    print(f"exported {', '.join(map(str, paths))}, {card_path}")
    print(f"PublicTest with flip TTA {accuracy(tta, val.y):.4f}")
