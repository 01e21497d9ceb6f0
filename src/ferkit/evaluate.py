"""Evaluation of a run (or an ensemble of runs) on PrivateTest or PublicTest: metrics.json,
classification_report.txt, predictions.csv, confusion_matrix.png, learning_curves.png."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import (accuracy_score, classification_report, confusion_matrix, f1_score,
                             precision_recall_fscore_support)

from ferkit import data as fdata
from ferkit.data import EMOTIONS
from ferkit.errors import FerkitError
from ferkit.fileio import (atomic_path, holds, is_run_folder, json_with, output_folder, read_json, require_not_study,
                           require_outside, require_own_files, require_run_folder, run_folder_around, write_json,
                           write_text)

SPLIT_NAMES = {alias: fdata.SPLIT_ALIASES[alias] for alias in ("test", "val")}  # never evaluated on Training


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Macro F1 over the classes present in `y_true`: a class that a small subset lacks (say Disgust in
    100 faces) has no F1 to average, and counting it as 0 would lower the score by a seventh. Every class
    is present in the full PublicTest and PrivateTest, where this is sklearn's plain macro F1."""
    return float(f1_score(y_true, y_pred, labels=np.unique(y_true), average="macro", zero_division=0))


def compute_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """Accuracy, macro and weighted F1, per-class precision/recall/F1/support, confusion matrix."""
    labels = list(range(len(EMOTIONS)))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": macro_f1(y_true, y_pred),
        "macro_f1_classes": [EMOTIONS[i] for i in np.unique(y_true)],
        "weighted_f1": float(f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)),
        "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                             "support": int(support[i])} for i, name in enumerate(EMOTIONS)},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def split_name(split: str) -> str:
    if split not in SPLIT_NAMES:
        raise FerkitError(f"unknown split {split!r}: use test (PrivateTest) or val (PublicTest)")
    return SPLIT_NAMES[split]


def run_data_path(run_dir: Path, data: str | os.PathLike | None = None) -> str:
    """`data` if given, else the data file the run recorded in run.json (which must still exist)."""
    require_run_folder(run_dir)
    if data:
        return str(data)
    recorded = recorded_data_path(run_dir)
    if recorded is None:
        raise FerkitError(f"{run_dir}: no run.json with the data path; pass --data")
    if not Path(recorded).exists():
        raise FerkitError(f"{recorded} (the run's data file) is gone; pass --data PATH")
    return recorded


def recorded_data_path(run_dir: Path) -> str | None:
    """The data file run.json names; None when there is no readable run.json."""
    try:
        return str(read_json(run_dir / "run.json")["data"]["path"])
    except (OSError, KeyError, TypeError, ValueError):
        return None


def require_trained_on(dataset: fdata.Dataset, state: dict[str, Any], run: str | os.PathLike,
                       todo: str = "pass that file with --data") -> None:
    """Stop unless the run `run`, whose checkpoint is `state`, was trained on `dataset`'s faces; the
    message names the data file its run.json records."""
    if not dataset.is_recorded_as(state):
        fdata.require_recorded(dataset, state, f"the run {run} was trained on", recorded_data_path(Path(run)), todo)


def write_evaluation(out: Path, dataset: fdata.Dataset, rows: np.ndarray, probs: np.ndarray,
                     info: dict[str, Any], history: list[dict] | None = None, best_epoch: int | None = None,
                     mark: str = "best epoch {epoch}", training: dict[str, Any] | None = None) -> dict:
    """Write the evaluation files for predictions `probs` (N, 7) on dataset rows `rows`; `history`, if
    given, is drawn as learning curves (`training`: the run's config, for how its training loss and
    validation were measured).
    Returns what metrics.json holds, plus `folder`: where the files went."""
    from ferkit.visualize import confusion_matrices, curve_notes, learning_curves

    out.mkdir(parents=True, exist_ok=True)  # callers check a --out of the user's (fileio.output_folder)
    if not history and (out / "metrics.json").is_file():  # an earlier evaluation's curves would pass for these
        (out / "learning_curves.png").unlink(missing_ok=True)
    y_true = dataset.labels[rows]
    y_pred = probs.argmax(1)
    metrics = dict(info, **compute_metrics(y_true, y_pred), **dataset.checksums())
    # metrics.json is the set's mark, removed first and written last: a re-evaluation cut short must not leave
    # new numbers beside the predictions of another model, which `ensemble` would read as this one's
    (out / "metrics.json").unlink(missing_ok=True)
    report = classification_report(y_true, y_pred, labels=list(range(len(EMOTIONS))), target_names=list(EMOTIONS),
                                   digits=4, zero_division=0)
    absent = [name for name in EMOTIONS if name not in metrics["macro_f1_classes"]]
    if absent:  # sklearn's macro avg row counts them as F1 0
        report += (f"\n{', '.join(absent)}: no face of this split here, so metrics.json's macro F1 "
                   f"({metrics['macro_f1']:.4f}) averages the other {len(metrics['macro_f1_classes'])} classes; "
                   "the macro avg row above counts the absent ones as 0\n")
    write_text(out / "classification_report.txt", report)
    frame = pd.DataFrame({dataset.origin_column: dataset.origins(rows)})
    frame["true"] = y_true
    frame["pred"] = y_pred
    for i, name in enumerate(EMOTIONS):
        frame[name] = np.round(probs[:, i], 6)
    with atomic_path(out / "predictions.csv") as tmp:
        frame.to_csv(tmp, index=False)
    title = f"{info.get('name', '')} on {info['split']}: accuracy {metrics['accuracy']:.4f}, " \
            f"macro F1 {metrics['macro_f1']:.4f}"
    confusion_matrices(np.array(metrics["confusion_matrix"]), out / "confusion_matrix.png", title=title)
    if history:
        learning_curves(history, out / "learning_curves.png", best_epoch=best_epoch, mark=mark,
                        **curve_notes(training or {}))
    write_json(out / "metrics.json", metrics)
    return dict(metrics, folder=str(out))


def evaluate(run_dir: str | os.PathLike, split: str = "test", tta: bool = False, data: str | os.PathLike | None = None,
             out: str | os.PathLike | None = None, checkpoint: str = "best", device: str = "auto") -> dict[str, Any]:
    """Evaluate the run's `checkpoint` (best, last, at_<N>min); files go to `out`, by default
    RUN_DIR/eval/<split>[-tta][-<checkpoint>] (no checkpoint suffix for best). `checkpoint` must be
    one of this run's; metrics.json records its sha256, and on PublicTest (`split="val"`) a `note`
    that the split chose the model. Returns the metrics, with `folder` naming where the files went.

    Example: ``ferkit evaluate runs/cnn --split test --tta``
    """
    from ferkit.train import checkpoint_name, load_run_model, pick_device, predict_as_trained, read_history

    run = Path(run_dir)
    which = checkpoint_name(checkpoint, run)
    name = split_name(split)
    suffix = ("-tta" if tta else "") + ("" if which == "best" else f"-{which}")
    destination = output_folder(out, create=False) if out is not None else run / "eval" / (split + suffix)
    require_run_folder(run, needs=("checkpoints/",))
    data_path = run_data_path(run, data)
    require_outside(data_path, destination)
    target = pick_device(device)
    model, state, checkpoint_sha = load_run_model(run, which, target)
    if out is not None:
        _require_replaceable(destination, {checkpoint_sha, os.path.realpath(run)}, f"the run {run}")
    dataset = fdata.load(data_path)
    require_trained_on(dataset, state, run)
    rows = dataset.indices(name)
    probs, mode = predict_as_trained(model, state, dataset.images[rows], target, tta)
    history_path = run / "history.csv"
    history = read_history(history_path) if history_path.exists() else None
    info = {"name": state["model_name"], "run": str(run), "run_folder": os.path.realpath(run),
            "checkpoint_sha256": checkpoint_sha,
            "split": name, "tta": mode,
            "checkpoint": which, "epoch": state["epoch"]}
    notes = []
    if name == "PublicTest":  # the validation split: say so beside its numbers
        limit = int(state["config"].get("val_limit") or 0)
        chose = f"its first {limit} faces" if 0 < limit < len(rows) else "it"
        notes.append(_validated_note("the run", f"{chose} chose the best epoch"))
    record = _run_record(run)
    if (diverged := _diverged_epoch(record)) is not None:
        notes.append(f"the run diverged in epoch {diverged} and stopped there: this is its {which} checkpoint, of "
                     f"epoch {state['epoch']}")
    elif not _finished(record):
        notes.append(f"the run has not finished training (interrupted, or still running): this is its {which} "
                     f"checkpoint so far, of epoch {state['epoch']}; evaluate it again once the run has ended")
    if notes:
        info["note"] = "; ".join(notes)
    return write_evaluation(destination, dataset, rows, probs, info, history, state["epoch"],
                            mark="best epoch {epoch}" if which == "best" else
                            "evaluated: epoch {epoch} (" + which + " checkpoint)", training=state["config"])


def _validated_note(trained: str, choice: str) -> str:
    """What an evaluation on PublicTest says beside its numbers: that split chose the model."""
    return (f"PublicTest validated {trained} every epoch ({choice} and when to stop), so these scores are optimistic; "
            "--split test (PrivateTest) is the held-out estimate")


def _run_record(run: Path) -> dict[str, Any] | None:
    """A run's run.json, None where it cannot be read as one."""
    try:
        info = read_json(run / "run.json")
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _finished(record: dict[str, Any] | None) -> bool:
    """Whether a run.json says the run ended (all its epochs, stopped early, or diverged); True where it cannot say."""
    return record is None or "finished" in record or "diverged_epoch" in record


def _diverged_epoch(record: dict[str, Any] | None) -> int | None:
    """The epoch whose loss was not finite, where a run.json records that the run stopped there."""
    try:
        return int(record["diverged_epoch"]) if record is not None else None
    except (ValueError, TypeError, KeyError):
        return None


def _unfinished_note(member: str | os.PathLike, epoch: Any) -> str:
    """What an ensemble says of a member whose run has not ended: its best epoch may still change."""
    return (f"the run of {member} has not finished training (interrupted, or still running): the ensemble holds its "
            f"best checkpoint so far, of epoch {epoch}; make the ensemble again once the run has ended")


def is_evaluation_folder(path: str | os.PathLike) -> bool:
    """Whether `path` holds an earlier evaluation (metrics.json and predictions.csv) rather than a run;
    a run folder is a run, whatever else it holds."""
    return ((Path(path) / "predictions.csv").is_file() and (Path(path) / "metrics.json").is_file()
            and not is_run_folder(path))


def saved_probabilities(folder: Path, dataset: fdata.Dataset, rows: np.ndarray, split: str) -> tuple[np.ndarray, dict]:
    """The probabilities an earlier evaluation saved in FOLDER/predictions.csv and its metrics.json,
    checked against `dataset`: the same data file, the same split, and its faces in the same order."""
    table = folder / "predictions.csv"
    try:
        metrics = read_json(folder / "metrics.json")
        frame = pd.read_csv(table)
    except (OSError, ValueError) as exc:
        raise FerkitError(f"{folder}: unreadable evaluation ({exc}); run `ferkit evaluate` again") from None
    if not isinstance(metrics, dict):
        raise FerkitError(f"{folder / 'metrics.json'}: not the metrics of an evaluation; run `ferkit evaluate` again")
    fdata.require_recorded(dataset, metrics, f"the predictions in {folder} were made on",
                           todo="an ensemble needs predictions on the same data")
    if metrics.get("split") != split:
        raise FerkitError(f"{folder}: these predictions are on {metrics.get('split')}, the ensemble is on {split}; "
                          f"pick folders of one split, and --split to match")
    other = "path" if dataset.origin_column == "line" else "line"
    if dataset.origin_column not in frame.columns and other in frame.columns:
        layouts = {"line": "a CSV (rows named by line)", "path": "the image-folder export (rows named by path)"}
        raise FerkitError(f"{table}: these predictions were made on {layouts[other]}, and {dataset.source} is "
                          f"{layouts[dataset.origin_column].split(' (')[0]}; pass --data with the file or folder "
                          f"they were made on")
    missing = [column for column in (dataset.origin_column, *EMOTIONS) if column not in frame.columns]
    if missing:
        raise FerkitError(f"{table}: no column {', '.join(missing)}; not a ferkit predictions.csv for this data")
    if frame[dataset.origin_column].tolist() != dataset.origins(rows):
        raise FerkitError(f"{table}: its rows are not the {split} faces of this data file in their order")
    try:
        probs = frame[list(EMOTIONS)].to_numpy(dtype=float)
    except (TypeError, ValueError):  # a cell that is no number
        probs = np.full((len(frame), len(EMOTIONS)), np.nan)
    # saved to 6 decimals, so a row sums to 1 within 7 * 5e-7
    if not np.isfinite(probs).all() or (probs < 0).any() or (np.abs(probs.sum(1) - 1) > 1e-4).any():
        raise FerkitError(f"{table}: the probability columns hold rows that are not probabilities (each row must "
                          f"be 7 values from 0 to 1 that sum to 1)")
    return probs, metrics


def _checkpoint_now(recorded: dict) -> str | None:
    """The checksum of the checkpoint an evaluation names (its run folder's, of that name) as the run holds it
    now; None where there is none or it cannot tell."""
    from ferkit.train import checkpoint_sha256

    run, which = recorded.get("run_folder"), recorded.get("checkpoint")
    if not (isinstance(run, str) and isinstance(which, str)):
        return None
    try:
        return checkpoint_sha256(run, which)
    except FerkitError:
        return None


def _model_keys(folder: Path, metrics: dict, now: str | None) -> list[tuple]:
    """What names the model(s) behind an evaluation folder: the checksum of the checkpoint it evaluated
    (recorded since), else its run folder and epoch; an ensemble's folder names its members' models. `now`:
    what `_checkpoint_now` says of `metrics`."""
    if isinstance(metrics.get("members"), list):
        return [tuple(key) for member in metrics["members"] if isinstance(member, dict)
                for key in member.get("model_keys", []) if isinstance(key, list)]
    if isinstance(metrics.get("checkpoint_sha256"), str):
        keys = [("checkpoint", metrics["checkpoint_sha256"])]
        # best.pt and last.pt (or a snapshot) of one epoch hold the same weights in files of other checksums: the
        # run folder and epoch name them too, as a run folder member's keys do, while the run still holds the
        # checkpoint evaluated (a stale one's epoch may be of an earlier training)
        if now == metrics["checkpoint_sha256"]:
            keys.append(("run", os.path.realpath(metrics["run_folder"]), metrics.get("epoch")))
        return keys
    run = run_folder_around(folder)
    return [("run", os.path.realpath(run), metrics.get("epoch"))] if run is not None else []


def _owners(folder: Path, metrics: dict) -> set[str]:
    """The models an evaluation folder speaks for, as checkpoint checksums and run folders (real paths)."""
    now = _checkpoint_now(metrics) if isinstance(metrics.get("checkpoint_sha256"), str) else None  # else unread
    owners = {str(key[1]) for key in _model_keys(folder, metrics, now) if len(key) > 1}
    if "members" not in metrics:  # `run` is as typed: relative to a working folder that is not recorded
        run = metrics.get("run_folder", metrics.get("run"))
        if isinstance(run, str) and os.path.isabs(run):
            owners.add(os.path.realpath(run))
    return owners


def _stale_evaluation(folder: Path, recorded: dict, now: str | None) -> str | None:
    """What to say of saved predictions whose run now holds another checkpoint of that name (it trained on,
    or was trained again), None when it holds the one evaluated or cannot tell. `now`: what
    `_checkpoint_now` says of `recorded`."""
    run, which, sha = (recorded.get(key) for key in ("run_folder", "checkpoint", "checkpoint_sha256"))
    if now is None or not isinstance(sha, str) or now == sha:
        return None
    return (f"{folder} holds the predictions of an earlier {which} checkpoint of {run} than the run holds now (it "
            "trained on, or again); they were averaged as saved: evaluate the run again, or give its folder")


def _member_owners(member: Path) -> set[str]:
    """The models an ensemble member brings: a run folder's own, or those of the evaluation it saved."""
    if not is_evaluation_folder(member):  # its folder, and its best checkpoint wherever that is now
        from ferkit.train import checkpoint_sha256

        return {os.path.realpath(member)} | ({sha} if (sha := checkpoint_sha256(member)) else set())
    try:
        recorded = read_json(member / "metrics.json")
    except (OSError, ValueError):  # saved_probabilities names it when the ensemble reads it
        return set()
    return _owners(member, recorded) if isinstance(recorded, dict) else set()


def _require_replaceable(folder: Path, owners: Iterable[str], this: str, ensemble: bool = False) -> None:
    """Stop before an --out that holds the evaluation of other models is written over. A re-run may
    replace its own: a run's evaluation that of the same run, an ensemble's that of an ensemble (or a
    single model) sharing a model with it. An ensemble is never replaced by one model's evaluation.
    `owners` is read only when `folder` holds an evaluation, and only until one matches (a generator
    may hash checkpoints lazily)."""
    if not is_evaluation_folder(folder):
        # an evaluation cut short leaves predictions.csv alone (metrics.json comes last): a folder of ferkit's
        require_own_files(folder, {"metrics.json": json_with("accuracy", "per_class"),
                                   "predictions.csv": holds(b",true,pred,")}, "ferkit ensemble" if ensemble else
                          "ferkit evaluate")
        return
    try:
        recorded = read_json(folder / "metrics.json")
    except (OSError, ValueError):
        recorded = None
    if isinstance(recorded, dict) and (ensemble or "members" not in recorded) and \
            not _owners(folder, recorded).isdisjoint(owners):
        return
    held = (f"the evaluation of {recorded.get('name', 'a model')}"
            + (f" ({recorded['run']})" if isinstance(recorded.get("run"), str) else "")
            if isinstance(recorded, dict) else "an evaluation whose metrics.json cannot be read")
    raise FerkitError(f"--out {folder}: holds {held}, not of {this}; name another folder, or delete that one "
                      f"if it is no longer wanted")


def _ensemble_data_path(member: Path, data: str | os.PathLike | None) -> str:
    """The data file for an ensemble whose first member is `member`: `data` if given, else the run's."""
    if data or not is_evaluation_folder(member):
        return run_data_path(member, data)
    if (run := run_folder_around(member)) is not None:  # `ferkit evaluate` writes to RUN/eval/SPLIT
        return run_data_path(run)
    raise FerkitError(f"{member}: no run folder around these predictions says which data file they are on; "
                      f"pass --data")


def ensemble(members: str | os.PathLike | Sequence[str | os.PathLike], out: str | os.PathLike, split: str = "test",
             tta: bool = False, data: str | os.PathLike | None = None, device: str = "auto") -> dict[str, Any]:
    """Average the probabilities of several members and evaluate the average. A member is a run folder
    (its best checkpoint predicts, with the run's TTA if `tta`) or an evaluation folder such as
    RUN/eval/test-tta, whose saved predictions.csv is averaged as it is: runs evaluated on another
    machine (a GPU whose checkpoints stayed there) join an ensemble without their models. A model
    counts once (by its checkpoint's sha256, else its run folder and epoch), and `out` may not be
    a member.

    Example: ``ferkit ensemble runs/cnn-s0 runs/cnn-s1 gpu/cnn-s2/eval/test-tta --out runs/ensemble --tta``
    """
    from ferkit.train import load_run_model, pick_device, predict_as_trained

    if isinstance(members, (str, os.PathLike)):  # one member, not an iterable of its characters
        members = [members]
    if len(members) < 1:
        raise FerkitError("ensemble needs at least one member: a run folder or an evaluation folder")
    resolved = [Path(member).resolve() for member in members]
    for i, member in enumerate(members):  # a mistyped folder is named before the data is loaded
        if not Path(member).is_dir():
            raise FerkitError(f"{member}: no such folder; a member is a run folder (`ferkit train DATA --out RUN`) "
                              f"or an evaluation folder (`ferkit evaluate RUN --tta` writes RUN/eval/test-tta)")
        if resolved[i] in resolved[:i]:
            first = members[resolved.index(resolved[i])]
            again = "" if str(first) == str(member) else f" (again as {member})"
            raise FerkitError(f"{first} is listed twice{again}; each member counts once in the average")
        if not is_evaluation_folder(member) and not (Path(member) / "checkpoints" / "best.pt").is_file():
            require_not_study(member)
            raise FerkitError(f"{member}: neither a trained run folder (no checkpoints/best.pt) nor an evaluation "
                              f"folder (metrics.json and predictions.csv, as `ferkit evaluate RUN` writes in "
                              f"RUN/eval/test)")
    output = output_folder(out, create=False)
    if (taken := next((m for m, r in zip(members, resolved) if r == Path(os.path.realpath(output))), None)) is not None:
        raise FerkitError(f"--out {out}: is the member {taken}, whose predictions.csv the ensemble's would replace; "
                          f"name another folder")
    _require_replaceable(output, (owner for member in members for owner in _member_owners(Path(member))),
                         f"an ensemble of {', '.join(map(str, members))}", ensemble=True)
    data_path = _ensemble_data_path(Path(members[0]), data)
    require_outside(data_path, output)
    dataset = fdata.load(data_path)
    target = pick_device(device)
    name = split_name(split)
    rows = dataset.indices(name)
    total = np.zeros((len(rows), len(EMOTIONS)))
    summaries, notes = [], []
    models: dict[tuple, str] = {}  # what names each member's model(s): one model counts once
    given: list[tuple[str, np.ndarray]] = []  # each member's probabilities, for twins under two checksums
    for member in members:
        if is_evaluation_folder(member):
            probs, recorded = saved_probabilities(Path(member), dataset, rows, name)
            mode, source = str(recorded.get("tta", "none")), "saved predictions"
            now = _checkpoint_now(recorded)  # a checkpoint hashed once for both
            keys = _model_keys(Path(member), recorded, now)
            if stale := _stale_evaluation(Path(member), recorded, now):
                notes.append(stale)
            elif isinstance(run := recorded.get("run_folder"), str) and not _finished(_run_record(Path(run))):
                notes.append(_unfinished_note(member, recorded.get("epoch")))
        else:
            model, state, checkpoint_sha = load_run_model(member, device=target)
            require_trained_on(dataset, state, member, todo="an ensemble needs runs on the same data")
            if not _finished(_run_record(Path(member))):
                notes.append(_unfinished_note(member, state["epoch"]))
            source = "its best checkpoint"
            probs, mode = predict_as_trained(model, state, dataset.images[rows], target, tta)
            keys = [("checkpoint", checkpoint_sha), ("run", os.path.realpath(member), state.get("epoch"))]
        if (same := next((key for key in keys if key in models), None)) is not None:
            raise FerkitError(f"{member} and {models[same]} hold the same model ("
                              + (f"the epoch-{same[2]} checkpoint of {same[1]}" if same[0] == "run" else
                                 f"checkpoint sha256 {same[1][:12]}...") +
                              ", with or without TTA); each model counts once in the average")
        # a run trained again with the same seed and config is the same network under another checksum (its file
        # records its times): equal probabilities on every face say so, to within the 6 decimals saved ones keep
        if (twin := next((other for other, seen in given if np.abs(seen - probs).max() <= 2e-6), None)) is not None:
            raise FerkitError(f"{member} and {twin} give every face the same probabilities: one network trained "
                              "twice (the same seed and config train the same network); each model counts once in "
                              "the average: train the others with another seed (--set seed=1)")
        given.append((str(member), probs))
        models.update(dict.fromkeys(keys, str(member)))
        scores = compute_metrics(dataset.labels[rows], probs.argmax(1))
        summaries.append({"run": str(member), "source": source, "tta": mode, "accuracy": scores["accuracy"],
                          "macro_f1": scores["macro_f1"], "model_keys": [list(key) for key in keys]})
        total += probs
    info = {"name": f"ensemble of {len(members)}", "split": name,
            "tta": ", ".join(sorted({summary["tta"] for summary in summaries})), "members": summaries}
    if name == "PublicTest":  # as evaluate says of one run
        notes.insert(0, _validated_note("each member", "it chose their best epochs"))
    if notes:
        info["note"] = "; ".join(notes)
    return write_evaluation(output, dataset, rows, total / len(members), info)
