"""The report of a run, built from the files the run wrote (nothing is trained again):

- ``report.pdf`` (reportlab platypus, pip only): A4; the main part (data, architecture, training,
  learning curves, test performance, replication) ends on page 3 at the latest; the extras (CNN vs
  MLP, activation figures, human vs CNN), each present only when its input is given, start on a new
  page and take at most 1.5 pages (two pages, the second at most half full). Zero-size markers in
  the flow record the page and height where each part ends; figures shrink step by step (100% to
  60%) until both limits hold; failing that, the extras' folders lose figures from the end, the rest
  shown at 80% (they stay in the HTML and Markdown). If nothing fits, `build_report` raises rather
  than write a longer report. Text beyond cp1252 (a path with Ł, Greek or Cyrillic) switches the
  PDF to DejaVu (shipped with matplotlib), embedded; Chinese, Japanese and Korean go in Adobe's CJK
  fonts, which PDF readers supply; what no font has (Devanagari, Thai, most emoji) is spelled out,
  in commands as bash's $'...' form (UTF-8 bytes), which gives the same words, in text as code points.
- ``report.html``: one self-contained file, images embedded as base64 data URIs.
- ``report.md``: readable on a code-hosting site, its figures copied into ``figures/`` beside it.

All three are rendered from one list of blocks (headings, paragraphs, tables, figures), so their
numbers agree. No weights are loaded: the layer table is computed with forward hooks on a freshly
built model of the run's architecture (a (1, 1, 48, 48) input); the checkpoint is only hashed, to
check that the extras' folders were made from it.

Example: ``ferkit report runs/cnn --mlp runs/mlp --features runs/cnn/features --out runs/cnn/report``
"""

from __future__ import annotations

import base64
import functools
import html
import io
import json
import math
import os
import re
import shlex
import shutil
import tempfile
import textwrap
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import yaml

from ferkit.compare import model_label
from ferkit.config import epoch_changes
from ferkit.data import EMOTIONS, same_data
from ferkit.errors import FerkitError
from ferkit.fileio import (atomic_path, holds, output_folder, read_json, require_own_files, require_run_folder,
                           write_text)

MAIN_PAGES = 3  # the main part ends on this page at the latest
EXTRA_PAGES = 1.5  # the extras take at most this many further pages
COMMANDS_LEFT_OUT = ("note: the replication's commands, which write the run's paths several times, do not fit "
                     "within the PDF's pages; {md} and report.html hold them")
EVAL_DIRS = ("test-tta", "test")  # preferred first
_METRIC_KEYS = {"accuracy", "macro_f1", "weighted_f1", "n"}
_FIGURE_SCALES = (1.0, 0.9, 0.8, 0.7, 0.6)  # tried in turn until the page limits hold
# once figures must be left out, those kept are shown larger than the smallest scale: fewer, but legible
_DROP_SCALE = 0.8
# the most of a recorded command that the replication's paragraph shows (run.json holds all of it)
_LONGEST_REMARK = 200


# ---------------------------------------------------------------------------------------------
# The document: a list of blocks that each renderer (PDF, HTML, Markdown) lays out its own way.
# Text may hold **bold** and `code`; nothing else is interpreted.


@dataclass
class Heading:
    text: str
    level: int = 1  # 0 = the title


@dataclass
class Para:
    text: str
    small: bool = False
    keep_with_next: bool = False  # PDF: never the last line of a page


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""
    widths: list[float] | None = None  # fractions of the text width (PDF)
    font: float = 7.5  # PDF point size
    group: int = 0  # key/value tables: a rule before every `group` columns


@dataclass
class Figure:
    path: Path
    caption: str
    name: str  # file name under figures/ beside report.md
    width: float = 1.0  # fraction of the text width (PDF)
    max_height: float = 0.36  # fraction of the text height (PDF)


@dataclass
class FigureGrid:
    """Figures two to a row in the PDF (wide ones get a row of their own) and side by side in the HTML."""

    figures: list[Figure]


@dataclass
class SideBySide:
    """Two columns of blocks in the PDF and HTML; one after the other in Markdown."""

    left: list[Any]
    right: list[Any]
    split: float = 0.42  # the left column's share of the text width (PDF)


@dataclass
class Code:
    text: str


@dataclass
class Shell:
    """Shell lines (the replication's commands). Each stays one line however its paths read: the PDF
    wraps them so that they still run, and Markdown and HTML show `text`."""

    lines: list[str]

    @property
    def text(self) -> str:
        return "\n".join(map(_shell_line, self.lines))


@dataclass
class Details:
    """Collapsible in HTML and Markdown; left out of the PDF, whose pages are counted."""

    summary: str
    blocks: list[Any]


@dataclass
class Document:
    title: str  # plain text, for the PDF's metadata and HTML's <title>
    main: list[Any]
    extras: list[Any] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Reading the inputs


@dataclass
class Run:
    path: Path
    config: dict[str, Any]
    info: dict[str, Any]  # run.json
    history: list[dict[str, float]]
    evals: dict[str, dict[str, Any]]  # "test-tta" / "test" -> metrics.json
    eval_dirs: dict[str, Path]

    @property
    def preferred(self) -> str:
        return next(name for name in EVAL_DIRS if name in self.evals)

    @property
    def metrics(self) -> dict[str, Any]:
        return self.evals[self.preferred]

    @property
    def best_epoch(self) -> int | None:
        if self.info.get("best_epoch"):
            return int(self.info["best_epoch"])
        key = self.config.get("select_by", "val_acc")
        return max(self.history, key=lambda r: r[key])["epoch"] if self.history else None

    @property
    def recorded_command(self) -> str | None:
        """The command that run.json records as having started the training."""
        return _command(self.info.get("environment", {}).get("command"))

    @property
    def train_seconds(self) -> float:
        # the history keeps each epoch's time to the millisecond, run.json the total to 0.1 s only
        # (a 0.03 s run records 0.0)
        if self.history:
            return float(sum(r["seconds"] for r in self.history))
        return float(self.info.get("train_seconds") or 0.0)


def _evaluate(path: Path, name: str) -> str:
    """The command that writes the evaluation `name` (test or test-tta) of the run in `path`, shell-quoted: a path
    with a space, copied from the message, named two folders."""
    return shlex.join(["ferkit", "evaluate", str(path), *(["--tta"] if name == "test-tta" else [])])


def read_run(run_dir: str | os.PathLike, option: str = "RUN_DIR") -> Run:
    """The files of a trained and evaluated run; a FerkitError names what to run when one is missing."""
    from ferkit.train import read_history

    path = Path(run_dir)
    where = f"{option} {path}" if option != "RUN_DIR" else str(path)
    require_run_folder(path, where, needs=("run.json", "config.yaml"))
    try:
        info = read_json(path / "run.json")
        config = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise FerkitError(f"{where}: cannot read run.json or config.yaml ({exc})") from None
    if not isinstance(info, dict) or not isinstance(info.get("model"), dict) or not isinstance(config, dict):
        raise FerkitError(f"{where}: run.json or config.yaml is not what `ferkit train` writes (damaged or edited)")
    history = read_history(path / "history.csv") if (path / "history.csv").is_file() else []
    evals, eval_dirs = {}, {}
    for name in EVAL_DIRS:
        metrics_path = path / "eval" / name / "metrics.json"
        if metrics_path.is_file():
            try:
                evals[name] = read_json(metrics_path)
            except (OSError, ValueError) as exc:
                raise FerkitError(f"{metrics_path}: unreadable ({exc}); run `{_evaluate(path, name)}` again") from None
            if not (isinstance(evals[name], dict) and _METRIC_KEYS <= evals[name].keys()
                    and isinstance(evals[name].get("per_class", {}), dict)):
                raise FerkitError(f"{metrics_path}: not what `ferkit evaluate` writes (damaged or edited); run "
                                  f"`{_evaluate(path, name)}` again")
            eval_dirs[name] = metrics_path.parent
    if not evals:
        raise FerkitError(f"{where}: no test evaluation (neither eval/test-tta/metrics.json nor "
                          f"eval/test/metrics.json); run `{_evaluate(path, 'test-tta')}` first")
    run = Run(path, config, info, history, evals, eval_dirs)
    best = run.best_epoch
    for name, metrics in evals.items():
        if best is not None and metrics.get("epoch") not in (None, best):
            raise FerkitError(f"{path}/eval/{name} evaluates the epoch-{metrics['epoch']} checkpoint but the run's "
                              f"best epoch is {best} (the run went on after the evaluation); run "
                              f"`{_evaluate(path, name)}` again")
        trained_on = _trained_data(run)
        # another file with the same faces (a re-saved or compressed copy) is the same data
        if trained_on["data_sha256"] and metrics.get("data_sha256") and not same_data(trained_on, metrics):
            raise FerkitError(f"{path}/eval/{name} was computed on other data than the run was trained on; "
                              f"run `{_evaluate(path, name)}` again")
    return run


@dataclass
class Extra:
    """A folder written by `ferkit features` or `ferkit compare`: its JSON and its PNG figures."""

    path: Path
    data: dict[str, Any]
    figures: list[Path]


def read_extra(folder: str | os.PathLike, option: str, json_name: str, command: str) -> Extra:
    path = Path(folder)
    making = f"{command} --out {shlex.quote(str(path))}"  # shell-quoted: copied, a path with a space is one word
    if not path.is_dir():
        raise FerkitError(f"{option} {path}: no such folder; make it with `{making}`")
    # Without its JSON a folder's figures could be anyone's (another run's, an interrupted command's),
    # and the report would file them under this run
    if not (path / json_name).is_file():
        raise FerkitError(f"{option} {path}: holds no {json_name}, so it is not (or not yet) the output of `{command}`; "
                          f"make it with `{making}`")
    try:
        data = read_json(path / json_name)
    except (OSError, ValueError) as exc:
        raise FerkitError(f"{path / json_name}: unreadable ({exc}); run `{making}` again") from None
    if not isinstance(data, dict):
        raise FerkitError(f"{path / json_name}: not what `{command}` writes; run it again with --out {path}")
    figures = sorted(p for p in path.rglob("*.png")
                     if not any(part.startswith(".") for part in p.relative_to(path).parts))
    # Where the JSON lists the files its command wrote (features.json's "figures", comparison.json's "files"),
    # only those: the other PNGs of the folder (a data summary's, the runs' in it) were shown as its figures
    listed = next((set(names) for names in (data.get("figures"), data.get("files"))
                   if isinstance(names, list) and all(isinstance(name, str) for name in names)), None)
    if listed is not None:
        figures = [p for p in figures if p.relative_to(path).as_posix() in listed]
    return Extra(path, data, figures)


def require_extra_of(run: Run, extra: Extra, option: str, command: str) -> None:
    """Stop when the features or comparison in `extra` were made from another model than the run's
    best checkpoint: the report would show them as this model's. Their JSON records the checkpoint's
    sha256 (older ones only its epoch and the data), which is compared when both sides have it."""
    from ferkit.train import checkpoint_sha256

    record = extra.data
    model = record.get("model") if isinstance(record.get("model"), dict) else {}  # comparison.json's layout
    data = record.get("data") if isinstance(record.get("data"), dict) else {}
    recorded_checkpoint = record.get("checkpoint_sha256") or model.get("checkpoint_sha256")
    recorded_epoch = record.get("checkpoint_epoch") or model.get("epoch")
    recorded_data = {"data_sha256": record.get("data_sha256") or data.get("sha256"),
                     "data_faces_sha256": record.get("data_faces_sha256") or data.get("faces_sha256")}
    trained_on = _trained_data(run)
    problems = []
    checkpoint = checkpoint_sha256(run.path)
    if recorded_checkpoint and checkpoint and recorded_checkpoint != checkpoint:
        problems.append("another checkpoint file")
    if recorded_epoch is not None and run.best_epoch is not None and int(recorded_epoch) != run.best_epoch:
        problems.append(f"the checkpoint of epoch {recorded_epoch}, the run's best is epoch {run.best_epoch}")
    if recorded_data["data_sha256"] and trained_on["data_sha256"] and not same_data(recorded_data, trained_on):
        problems.append("other data")
    if problems:
        # another run's folder is that run's to keep (`ferkit features` would refuse to replace it): a folder of its own
        owner = record.get("run_folder")
        of_another = isinstance(owner, str) and owner != os.path.realpath(run.path)
        where = Path(run.path) / extra.path.name if of_another else extra.path
        raise FerkitError(f"{option} {extra.path}: made from another model than the best checkpoint of {run.path} "
                          f"({'; '.join(problems)}" + (f"; it holds those of {owner}" if of_another else "") +
                          f"); make {'them for this run' if of_another else 'it again'} with `{command} --out "
                          f"{shlex.quote(str(where))}`")


def _shape(shape: Sequence[int] | None) -> str:
    return "×".join(str(s) for s in shape) if shape else "-"


def _build_model(run: Run) -> Any:
    from ferkit.models import get_model

    model_info = run.info["model"]
    return get_model(model_info["name"], **model_info["kwargs"])


# ---------------------------------------------------------------------------------------------
# Number formatting


def _f4(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def _pts(x: float) -> str:
    """A difference of two fractions in percentage points."""
    return f"{abs(x) * 100:.1f}"


def _signed_pts(x: float) -> str:
    """A signed difference in points; one that rounds to zero gets no sign ("+0.0" would claim a direction)."""
    text = f"{x * 100:+.1f}"
    return "0.0" if float(text) == 0 else text


def _relative(x: float, other: str) -> str:
    """The difference `x` of two fractions in words: "1.2 points above OTHER", "level with OTHER"."""
    if _signed_pts(x) == "0.0":
        return f"level with {other}"
    return f"{_pts(x)} points {'above' if x > 0 else 'below'} {other}"


def _int(x: Any) -> str:
    return f"{int(x):,}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if 0 < seconds < 0.005:
        return "< 0.01 s"  # a time that was spent must not read as zero
    # each unit up to where its rounded figure would reach the next: 7,199 s reads 2 h 00 min, not 120.0 min
    if round(seconds, 2) < 1:
        return f"{seconds:.2f} s"
    if round(seconds, 1) < 120:
        return f"{seconds:.1f} s"
    minutes = seconds / 60
    if round(minutes, 1) < 120:
        return f"{minutes:.1f} min"
    hours, rest = divmod(round(minutes), 60)
    return f"{hours} h {rest:02d} min"


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):  # short (4, not 4.0), but never rounded: the config table replicates the run
        short = f"{v:g}"
        return short if float(short) == v else repr(v)
    if isinstance(v, (list, tuple)):
        return ",".join(_value(x) for x in v) if v else "none"
    return str(v)


def _times(n: int) -> str:
    return {1: "once", 2: "twice"}.get(n, f"{n} times")


def _trained_counts(data: dict[str, Any]) -> list[int] | None:
    """The training faces per class: those trained on (train_limit takes the first N); older runs record
    only the whole file's."""
    return data.get("train_counts") or data.get("counts", {}).get("Training")


def _no_face(counts: Sequence[int]) -> str:
    """The classes without a training face, named ("Disgust had no training face, ..."), "" when every class
    had one: the rarest-class ratios and the sampler's are taken over the others, never over a count of zero."""
    absent = [EMOTIONS[i] for i, c in enumerate(counts) if c == 0]
    if not absent:
        return ""
    names = absent[0] if len(absent) == 1 else f"{', '.join(absent[:-1])} and {absent[-1]}"
    return f"{names} had no training face, so the model was never shown {'one' if len(absent) == 1 else 'any'}. "


def _rarest(counts: Sequence[int]) -> int | None:
    """The class with the fewest training faces among those that had some; None when fewer than two had any."""
    present = [i for i, c in enumerate(counts) if c]
    return min(present, key=lambda i: counts[i]) if len(present) > 1 else None


def _command(recorded: str | None) -> str | None:
    """The recorded argv with the path of the ferkit script shortened to `ferkit`; shell-quoted (older
    runs recorded the words joined by spaces, which is the same unless a word needs quotes)."""
    try:
        words = shlex.split(recorded or "")
    except ValueError:  # not shell words (an older record with an odd quote): shown as it is
        return recorded
    if not words:
        return None
    script = Path(words[0])
    if script.name == "ferkit" or (script.name == "__main__.py" and script.parent.name == "ferkit"):  # python -m
        return shlex.join(["ferkit", *words[1:]])
    return recorded


def _is_study(recorded: str | None) -> bool:
    """Whether the recorded command is a `ferkit run` study, which trains its runs in STUDY/cnn and STUDY/mlp."""
    return bool(recorded) and recorded.split()[:2] == ["ferkit", "run"]


# ---------------------------------------------------------------------------------------------
# The text, written from what the run recorded


def _title(run: Run) -> str:
    model = run.info.get("model", {}).get("name", "model")
    folder = Path(os.path.abspath(run.path))  # "." or "runs/cnn/" have a name here too
    name = folder.name
    if name == model:  # `ferkit run` names a study's runs after their model: the study tells them apart
        name = f"{folder.parent.name}/{name}" if folder.parent.name else ""
    return f"Facial-expression recognition on FER2013: the {model} run" + (f" {_literal(name)}" if name else "")


def _tta_label(metrics: dict[str, Any]) -> str:
    return f"TTA {metrics.get('tta')}" if metrics.get("tta") not in (None, "none") else "no TTA"


def _with_out(command: str, folder: Path | str) -> str:
    """`command` with the folder of its --out replaced: the last one, which argparse takes when there
    are two. A command recorded shell-quoted (shlex.join) is parsed as such; an older one, joined by
    spaces, by its words."""
    try:
        words = shlex.split(command)
    except ValueError:
        words = None
    if words is not None and shlex.join(words) == command:
        for i in reversed(range(len(words))):
            if words[i] == "--out" and i + 1 < len(words):
                return shlex.join(words[:i + 1] + [str(folder)] + words[i + 2:])
            if words[i].startswith("--out="):
                return shlex.join(words[:i] + [f"--out={folder}"] + words[i + 1:])
        return command
    outs = list(re.finditer(r"(?<!\S)(--out[= ])\S+", command))
    if not outs:
        return command
    last = outs[-1]
    return f"{command[:last.start()]}{last.group(1)}{folder}{command[last.end():]}"


def _summary(run: Run) -> Para:
    m = run.metrics
    tta = _tta_label(m)
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    from ferkit import __version__

    present = m.get("macro_f1_classes", EMOTIONS)
    over = "" if len(present) == len(EMOTIONS) else \
        f" (over the {len(present)} classes these faces hold: {', '.join(present)})"
    return Para(f"Test set ({m.get('split', 'PrivateTest')}, {_int(m['n'])} faces, {tta}): **accuracy "
                f"{_f4(m['accuracy'])}**, **macro F1 {_f4(m['macro_f1'])}**{over}, weighted F1 "
                f"{_f4(m['weighted_f1'])}. Built by ferkit {__version__} on {generated} from the files of "
                f"{_code(run.path)}.", small=True)


def _data_section(run: Run) -> list[Any]:
    from ferkit.models import PIXEL_CENTER, PIXEL_SCALE

    cfg, data = run.config, run.info.get("data", {})
    counts = data.get("counts", {})
    blocks: list[Any] = [Heading("1  Data")]
    limits = []
    if cfg.get("train_limit"):
        limits.append(f"the first {_int(cfg['train_limit'])} training faces only (`train_limit`)")
    if cfg.get("val_limit"):
        limits.append(f"the first {_int(cfg['val_limit'])} validation faces only (`val_limit`)")
    blocks.append(Para(
        f"Source {_code(data.get('path', '?'))} ({data.get('layout', 'csv')} layout), "
        f"sha256 {_code(data.get('sha256', '?'))}. "
        f"Splits: Training for training ({_int(data.get('train_images', 0))} faces used), PublicTest for validation "
        f"and model selection ({_int(data.get('val_images', 0))} used), PrivateTest for the test, touched only by "
        f"`ferkit evaluate`." + (f" This run used {' and '.join(limits)}." if limits else "")))
    mode, power = cfg.get("imbalance", "none"), cfg.get("imbalance_power", 0.5)
    # run.json records the weights whatever the mode; only these two modes use them
    weights = run.info.get("class_weights") if mode in ("weighted_loss", "sampler") else None
    rows = []
    for split in ("Training", "PublicTest", "PrivateTest"):
        if split in counts:
            rows.append([split] + [_int(c) for c in counts[split]] + [_int(sum(counts[split]))])
    train = counts.get("Training")
    trained = _trained_counts(data)
    if train and sum(train):
        rows.append(["Training share"] + [f"{c / sum(train):.1%}" for c in train] + ["100%"])
    if weights:
        # a class without training faces has a weight that no face was drawn or weighed with
        rows.append(["class weight"] + [f"{w:.2f}" if not trained or trained[i] else "-" for i, w in enumerate(weights)]
                    + [""])
    blocks.append(Table(["split"] + list(EMOTIONS) + ["total"], rows,
                        "Faces per class and split in the whole file" +
                        (", and the class weights of this run's training subset." if weights else "."),
                        widths=[0.15] + [0.093] * 7 + [0.0995]))
    rarity = ""
    if trained and sum(trained):
        rarity = _no_face(trained)
        if (rare := _rarest(trained)) is not None:
            of = "of training" if trained == train else "of the faces trained on"
            rarity += (("Of the others, " if rarity else "") +
                       f"{EMOTIONS[rare]} is the rarest class ({trained[rare] / sum(trained):.1%} {of}, "
                       f"{max(trained) / trained[rare]:.1f}× fewer faces than {EMOTIONS[int(np.argmax(trained))]}). ")
    handling = {
        "weighted_loss": f"the cross-entropy weighs each class by (largest class / class size)^{power:g}, scaled to "
                         "mean 1 over the training faces (the weights above)",
        "sampler": f"training batches are drawn with replacement, each face with probability proportional to its "
                   f"class weight (largest class / class size)^{power:g} (the weights above)",
    }.get(mode)
    if mode == "none":
        imbalance = ("Nothing compensates for the imbalance (`imbalance: none`): every training face is drawn once "
                     "per epoch and weighs the same in the loss.")
    else:
        imbalance = f"Handled with `imbalance: {mode}`" + (f": {handling}." if handling else ".")
    blocks.append(Para(f"**Imbalance.** {rarity}{imbalance} Macro F1, the mean of the per-class F1 scores, is "
                       "reported beside accuracy because it weighs every class alike."))
    crop = cfg.get("train_crop", 0) if cfg.get("augment", True) else 0  # the crop is part of the augmentation
    if cfg.get("augment", True):
        parts = []
        if cfg.get("flip", True):
            parts.append("horizontal flip (p 0.5)")
        parts.append(f"shift ±{cfg.get('max_shift', 0):g} px, rotation ±{cfg.get('max_rotate', 0):g}°, "
                     f"zoom ±{cfg.get('max_scale', 0) * 100:g}% (one random affine warp per face)")
        if crop:
            parts.append(f"a random {crop}×{crop} crop of the warped face (`train_crop`; validation and testing "
                         "see whole faces)")
        if cfg.get("erase_prob", 0) > 0:
            parts.append(f"random erasing of one rectangle (p {cfg['erase_prob']:g})")
        augmentation = "; ".join(parts)
    else:
        augmentation = "none (`augment: false`)"
    mixing = [f"{k} (alpha {cfg[k]:g})" for k in ("mixup", "cutmix") if cfg.get(k, 0) > 0]
    tta = cfg.get("tta", "none")
    tta_text = {"flip": "the face and its mirror image", "crops": "the face, its mirror and four 2-pixel shifts of "
                "each", "none": "none"}.get(tta, tta)
    blocks.append(Para(
        f"**Preprocessing and augmentation.** Each 48×48 grey face (uint8) is scaled to (x - {PIXEL_CENTER:g}) / "
        f"{PIXEL_SCALE:g}; there is no {'alignment' if crop else 'cropping or alignment'}. Training "
        f"augmentation, on whole batches on the {run.info.get('device', 'device')}: "
        f"{augmentation}" + (f"; plus {' and '.join(mixing)}" if mixing else "") +
        (". No test-time augmentation (`tta: none`)." if tta == "none" else
         f". Test-time augmentation (`tta: {tta}`) averages the probabilities of {tta_text}.")))
    return blocks


def _architecture_section(run: Run) -> tuple[list[Any], int]:
    from ferkit.models import compact_layers, count_parameters, layer_table

    model = _build_model(run)
    rows = layer_table(model)
    total = count_parameters(model)
    compact = compact_layers(rows)
    name = run.info.get("model", {}).get("name", type(model).__name__)
    kwargs = run.info.get("model", {}).get("kwargs") or {}
    doc = " ".join((type(model).__doc__ or "").split())
    table_rows = [[str(i + 1), b["name"] or "-", b["layer"] + (f"  ×{b['count']}" if b["count"] > 1 else ""),
                   _shape(b["output"]), _int(b["parameters"])] for i, b in enumerate(compact)]
    table_rows.append(["", "", "total", "", _int(total)])
    blocks: list[Any] = [
        Heading("2  Architecture"),
        Para(f"`{name}` ({', '.join(f'{k} {_value(v)}' for k, v in kwargs.items())}). {doc} "
             f"**{_int(total)} parameters** ({total * 4 / 2**20:.2f} MiB as float32)."),
        Table(["#", "module", "layer (BatchNorm, activation, dropout folded in)", "output shape", "parameters"],
              table_rows, f"Layers for one 1×1×48×48 input, recorded with forward hooks on the leaf modules "
                          f"({len(rows)} calls, folded into {len(compact)} rows)"
                          + ("; a residual block is one row, its output written as a function of its input x."
                             if any(row["block"] for row in rows) else "."),
              widths=[0.04, 0.2, 0.48, 0.15, 0.13]),
        Details(f"All {len(rows)} leaf-module calls", [Table(
            ["#", "module", "type", "detail", "input", "output", "parameters"],
            [[str(i + 1), r["name"], r["type"], r["detail"], _shape(r["input"]), _shape(r["output"]),
              _int(r["parameters"])] for i, r in enumerate(rows)])]),
    ]
    return blocks, total


def _schedule_text(cfg: dict[str, Any]) -> str:
    from ferkit.train import ONECYCLE_PEAK_AT, ONECYCLE_START

    lr, epochs = cfg.get("lr"), cfg.get("epochs")
    schedule = cfg.get("schedule", "cosine")
    if schedule == "constant":
        return f"constant learning rate {lr:g}"
    cut = ""
    if shortened := cfg.get("shortened"):  # fit_minutes' guard changed the epochs: the first plan, then the changes
        changes = epoch_changes(tuple(shortened), epochs)
        first, planned, _ = changes[0]
        if len(changes) == 1 and epochs < planned:
            cut = (f"; the run fell behind its minutes and was cut short after epoch {first}: from there the rest "
                   f"of this schedule ran {(planned - first) / (epochs - first):.2f} times as fast, to end "
                   f"at epoch {epochs}")
        else:
            listed = ", ".join(f"after epoch {after} to {then}" for after, _, then in changes)
            cut = (f"; to keep to its minutes the run changed its epochs {listed}: from each change the rest of this "
                   f"schedule was spread over the epochs then left")
        epochs = planned
    if schedule == "onecycle":
        return f"one-cycle: from {ONECYCLE_START:.0%} of the peak learning rate {lr:g} up to the peak at " \
               f"{ONECYCLE_PEAK_AT:.0%} of the steps, then " \
               f"cosine decay over the rest of {epochs} epochs{cut}"
    return f"linear warm-up over {cfg.get('warmup_epochs', 0):g} epoch(s) to the peak learning rate {lr:g}, then " \
           f"cosine decay to 0 at epoch {epochs}{cut}"


def _hardware(run: Run) -> str:
    env = run.info.get("environment", {})
    device = run.info.get("device", "?")
    if env.get("gpu"):
        where = f"GPU {env['gpu']} ({device})"
    else:
        kernels = f", torch's {env['cpu_capability']} kernels" if env.get("cpu_capability") else ""
        where = f"CPU ({env.get('cpu_model') or env.get('cpu', '?')}{kernels}, {env.get('cpu_count', '?')} cores, " \
                f"{env.get('torch_threads', '?')} torch threads)"
    return f"{where} on {env.get('platform', '?')}"


def _training_section(run: Run) -> list[Any]:
    from ferkit.train import EMA_RAMP, sized_epochs, steps_per_epoch

    cfg, info, history = run.config, run.info, run.history
    items = [(k, _value(v)) for k, v in cfg.items()]
    per_row = 3
    rows = []
    for i in range(0, len(items), per_row):
        chunk = items[i:i + per_row]
        chunk += [("", "")] * (per_row - len(chunk))
        rows.append([cell for pair in chunk for cell in pair])
    optimizer = f"SGD with Nesterov momentum {cfg.get('momentum', 0):g}" if cfg.get("optimizer") == "sgd" else "AdamW"
    n_train = info.get("data", {}).get("train_images") or 0
    batch = cfg.get("batch_size", 1)
    steps = steps_per_epoch(n_train, batch)
    loss = f"cross-entropy with label smoothing {cfg.get('label_smoothing', 0):g}" + \
           (" and the class weights of Table 1" if cfg.get("imbalance") == "weighted_loss" else "")
    epochs_run = info.get("epochs_run", len(history))
    wall = _wall_clock(info, run.train_seconds)
    speed = info.get("train_images_per_second")
    amp = " with bfloat16 autocast" if cfg.get("amp") and "cuda" in str(info.get("device")) else ""
    average = (f" Weights: an exponential moving average of the trained weights, decay {cfg['ema']:g} per step "
               f"(min(decay, (1 + step) / ({EMA_RAMP} + step)) over the first steps); the average is what is validated, "
               f"kept and evaluated, while the training columns of the history are the trained weights'."
               if cfg.get("ema") else "")
    fit = ""
    if fitted := info.get("fit_minutes"):
        timing = (f"by the first epoch's {fitted['first_epoch_seconds']:.1f} s" if "first_epoch_seconds" in fitted
                  else f"at about {fitted['epoch_seconds']:.1f} s an epoch, as timed at the start")
        cuts = "".join(f"; after epoch {cut['after_epoch']} ({cut['spent_seconds'] / 60:.1f} minutes, "
                       f"{cut['pace_seconds']:.1f} s an epoch) the run was "
                       + ("behind time and cut" if cut["epochs"] < cut["from_epochs"] else "back on time and lengthened")
                       + f" from {cut['from_epochs']} to {cut['epochs']} epochs" for cut in fitted.get("shortened", []))
        fit = (f" The epochs were sized to fit {fitted['minutes']:g} minutes (`fit_minutes`) on this machine: "
               f"{sized_epochs(fitted)} of the {fitted['epochs_asked']} asked for, {timing}{cuts}; config.yaml holds "
               "the epochs chosen.")
    blocks: list[Any] = [
        Heading("3  Training"),
        Table(["key", "value"] * per_row, rows, "Every hyper-parameter: the run's config.yaml.",
              widths=[0.19, 0.143] * per_row, font=7, group=2),
        Para(f"**Procedure.** {optimizer}, weight decay {cfg.get('weight_decay', 0):g}"
             f"{'' if cfg.get('decay_norm_and_bias', True) else ' (not on batch-norm parameters and biases)'}, "
             f"batch size {batch} "
             f"({steps} steps per epoch over {_int(n_train)} faces), {loss}. Schedule: {_schedule_text(cfg)}.{average} "
             f"Early stopping: stop after {cfg.get('patience')} epochs without a better `{cfg.get('select_by')}` on "
             f"PublicTest; the checkpoint of the best epoch is kept (checkpoints/best.pt) and evaluated. "
             f"Hardware: {_hardware(run)}{amp}. Time: {epochs_run} epochs in {_duration(run.train_seconds)} of "
             f"training{wall}" + (f", {speed:,.0f} training images per second" if speed else "") + "." + fit),
        Para("**Challenges met, and how they were handled** (from the run's history and the test metrics):"),
        Bullets(_challenges(run)),
    ]
    curves = run.path / "learning_curves.png"
    if curves.is_file():
        training = "training (augmented batches)" if cfg.get("augment", True) else "training"
        smoothed = (f" The training loss includes label smoothing {cfg['label_smoothing']:g} and the validation "
                    "loss does not, so the training curve sits higher without any gap in fit."
                    if cfg.get("label_smoothing") else "")
        blocks.append(Figure(curves, f"Learning curves: loss and accuracy per epoch on {training} "
                                     f"and validation (PublicTest); the dashed line marks the best epoch "
                                     f"({run.best_epoch}).{smoothed}", "learning_curves.png", max_height=0.3))
    return blocks


def _wall_clock(info: dict[str, Any], train_seconds: float) -> str:
    """The remark on run.json's span from start to finish that follows the training time, or "" when
    the timestamps are missing or unreadable."""
    started, finished = info.get("started"), info.get("finished")
    if not (isinstance(started, str) and isinstance(finished, str)):
        return ""
    try:
        span = (datetime.fromisoformat(finished) - datetime.fromisoformat(started)).total_seconds()
    except (TypeError, ValueError):  # unreadable, or one with a time zone and one without
        return ""
    # Timestamps cut to whole seconds (older runs) may each be up to 1 s early, so a span less than
    # 1 s above the training time cannot be told from it; never print a wall-clock below it.
    slack = 0.0 if "." in started and "." in finished else 1.0
    if span < train_seconds + slack or _duration(span) == _duration(train_seconds):
        return " (about the same wall-clock from start to finish, evaluation excluded)"
    if info.get("resumed"):  # the span holds the break before each resume, which may be days
        return f" ({_duration(span)} from the start to the finish, including the break before resuming)"
    return f" ({_duration(span)} wall-clock from start to finish, evaluation excluded)"


def _not_learned(run: Run, at_best: dict[str, float]) -> str | None:
    """Why the model at its best epoch is no better than one answer for every face, or None when it
    learned. The rule: validation accuracy not above the largest class's share of PublicTest (what
    always answering that class scores), or validation macro F1 below 1/7, where every one-class
    answer stays (its one F1 below 1, the six others 0)."""
    reasons = []
    validation = run.info.get("data", {}).get("counts", {}).get("PublicTest")
    if validation and sum(validation) and at_best.get("val_acc") is not None:
        largest = int(np.argmax(validation))
        share = validation[largest] / sum(validation)  # of the whole split, also under `val_limit`
        if at_best["val_acc"] <= share:
            reasons.append(f"validation accuracy {_f4(at_best['val_acc'])} is not above the {_f4(share)} that "
                           f"always answering {EMOTIONS[largest]}, the largest class of PublicTest, scores")
    if at_best.get("val_macro_f1") is not None and at_best["val_macro_f1"] < 1 / len(EMOTIONS):
        reasons.append(f"validation macro F1 {_f4(at_best['val_macro_f1'])} is below 1/{len(EMOTIONS)} "
                       f"({1 / len(EMOTIONS):.4f}), where any answer of one class for every face stays")
    return ", and ".join(reasons) or None


def _challenges(run: Run) -> list[str]:
    """The report's bullets on what made training hard and how it was met; each says something only
    where the run's files show it."""
    bullets = (_unfinished, _fit, _early_stopping, _rare_class, _confusions, _tta_effect, _resumed)
    return [text for bullet in bullets if (text := bullet(run))]


def _unfinished(run: Run) -> str | None:
    cfg, info, history = run.config, run.info, run.history
    if info.get("finished") or len(history) >= int(cfg.get("epochs", 0)) or info.get("stopped_early"):
        return None
    if info.get("diverged_epoch"):  # a resume would only repeat it
        return (f"**Training diverged** in epoch {info['diverged_epoch']} (a loss that is not finite) and stopped: "
                f"{len(history)} of {cfg.get('epochs')} epochs are recorded, and the best checkpoint is of those; "
                f"a lower `lr` in a new folder trains it again.")
    return (f"**Training did not finish**: {len(history)} of {cfg.get('epochs')} epochs are recorded; "
            f"continue it with {_inline_command(['ferkit', 'train', 'DATA', '--out', str(run.path), '--resume'])}.")


def _at_best(run: Run) -> dict[str, float]:
    return {r["epoch"]: r for r in run.history}.get(run.best_epoch, run.history[-1])


def _regularisers(cfg: dict[str, Any]) -> str:
    regularisers = []
    if cfg.get("augment", True):
        regularisers.append("augmentation")
    if cfg.get("dropout"):
        regularisers.append(f"dropout {cfg['dropout']:g}")
    if cfg.get("weight_decay"):
        regularisers.append(f"weight decay {cfg['weight_decay']:g}")
    if cfg.get("label_smoothing"):
        regularisers.append(f"label smoothing {cfg['label_smoothing']:g}")
    regularisers += [f"{k} {cfg[k]:g}" for k in ("mixup", "cutmix") if cfg.get(k, 0) > 0]
    return ", ".join(regularisers) or "no regulariser"


def _fit(run: Run) -> str | None:
    """Over-fitting, or its absence, from the gap between training and validation accuracy."""
    cfg, history = run.config, run.history
    if not history:
        return None
    best, select_by = run.best_epoch, cfg.get("select_by", "val_acc")
    at_best, last = _at_best(run), history[-1]
    gap_best, gap_end = at_best["train_acc"] - at_best["val_acc"], last["train_acc"] - last["val_acc"]
    loss_min = min(history, key=lambda r: r["val_loss"])
    regularised = _regularisers(cfg)
    gaps = (f"train accuracy minus validation accuracy is {_signed_pts(gap_best)} points at the best epoch "
            f"({best}) and {_signed_pts(gap_end)} at the last ({last['epoch']})")
    rising = loss_min["epoch"] < last["epoch"] and last["val_loss"] > loss_min["val_loss"] * 1.02
    not_learned = _not_learned(run, at_best)
    if not_learned:
        return (f"**The model did not learn**: at the best epoch ({best}) {not_learned}; training accuracy is "
                f"{_f4(at_best['train_acc'])}. At the level of a constant answer, the gap between training and "
                f"validation accuracy ({_signed_pts(gap_end)} points at the end) says nothing about over-fitting "
                "or regularisation; the learning rate, the model's size and the number of epochs come first.")
    if gap_end > 0.03:
        text = f"**Over-fitting**: {gaps}" + (", growing after the best epoch" if gap_end > gap_best + 0.01 else "")
        if rising:
            text += f"; the validation loss is lowest at epoch {loss_min['epoch']} ({loss_min['val_loss']:.3f}) " \
                    f"and {last['val_loss']:.3f} at the end"
        return text + f". Countered by {regularised}, and by evaluating the best validation epoch's checkpoint " \
                      f"(by `{select_by}`), not the last."
    if gap_end < -0.01:
        measured = "a running mean over the epoch" + (" on augmented batches" if cfg.get("augment", True) else "") \
            + (" with dropout on" if cfg.get("dropout") else "")
        return (f"**No over-fitting**: {gaps}; training accuracy is {measured}, so it trails "
                f"validation. The regularisation ({regularised}) is ample: a larger model or a longer "
                "schedule could use the slack.")
    text = (f"**Over-fitting held in check**: {gaps}, within 3 points, with {regularised}; the best "
            f"validation epoch's checkpoint (by `{select_by}`) is the one evaluated.")
    if rising:
        text += f" The validation loss is lowest at epoch {loss_min['epoch']} and rises after it."
    return text


def _early_stopping(run: Run) -> str | None:
    cfg, info, history = run.config, run.info, run.history
    if not history:
        return None
    best, select_by = run.best_epoch, cfg.get("select_by", "val_acc")
    epochs_run = info.get("epochs_run", len(history))
    score = _at_best(run).get(select_by)
    if info.get("stopped_early"):
        return (f"**Early stopping fired** after epoch {epochs_run} of {cfg.get('epochs')}: "
                f"{cfg.get('patience')} epochs brought no better `{select_by}` than epoch {best}'s "
                f"{_f4(score)}, which saved {int(cfg.get('epochs', epochs_run)) - epochs_run} epochs.")
    if _unfinished(run):
        return (f"**Early stopping** (patience {cfg.get('patience')}) had not fired when training stopped after epoch "
                f"{epochs_run}; the best `{select_by}` so far ({_f4(score)}) came at epoch {best}.")
    if best == epochs_run:
        return (f"**Early stopping did not fire** (patience {cfg.get('patience')}): all {epochs_run} epochs "
                f"ran and the last was the best (`{select_by}` {_f4(score)}); the model was still improving, "
                "so a longer schedule may help.")
    return (f"**Early stopping did not fire** (patience {cfg.get('patience')}): all {epochs_run} epochs "
            f"ran; the best `{select_by}` ({_f4(score)}) came at epoch {best}, whose checkpoint is the "
            f"one evaluated, {epochs_run - best} epoch(s) before the end.")


def _class_numbers(run: Run) -> tuple[dict[str, Any], list[int]] | None:
    """The test set's per-class scores and the training faces per class, when the run records both."""
    per_class = run.metrics.get("per_class", {})
    train_counts = _trained_counts(run.info.get("data", {}))
    if per_class and train_counts and len(train_counts) == len(EMOTIONS):
        return per_class, train_counts
    return None


def _rare_class(run: Run) -> str | None:
    cfg, info, metrics = run.config, run.info, run.metrics
    if (numbers := _class_numbers(run)) is None:
        return None
    per_class, train_counts = numbers
    if (rare_index := _rarest(train_counts)) is None:
        return None
    rare = EMOTIONS[rare_index]
    # the classes without faces were never learnt: they would weigh on the others' mean, not on the rare class's
    others = [c for c, n in zip(EMOTIONS, train_counts) if n and c != rare]
    f1_rare, recall_rare = per_class[rare]["f1"], per_class[rare]["recall"]
    f1_others = float(np.mean([per_class[c]["f1"] for c in others]))
    recall_others = float(np.mean([per_class[c]["recall"] for c in others]))
    weights = info.get("class_weights") or []
    weight = weights[EMOTIONS.index(rare)] if len(weights) == len(EMOTIONS) else None
    mode = cfg.get("imbalance", "none")
    how = {"weighted_loss": f"its loss weight is {weight:.2f} (mean 1)" if weight is not None
           else "a weighted loss",
           "sampler": f"the sampler draws each {rare} face {weight / min(weights):.2f}× as often as each "
                      f"{EMOTIONS[int(np.argmin(weights))]} face (the smallest weight: the largest class "
                      "among the faces trained on)"
           if weight is not None else "a weighted sampler",
           "none": "nothing compensates for its rarity"}.get(mode, mode)
    whole = "" if info.get("data", {}).get("train_counts") or not cfg.get("train_limit") else \
        f" in the whole file (this run trained on its first {_int(cfg['train_limit'])})"
    count = train_counts[rare_index]
    other = "the other six classes" if len(others) == 6 else f"the other {len(others)} classes with training faces"
    text = (f"**The rare class**: {_no_face(train_counts)}{rare} has {_int(count)} training faces{whole} "
            f"({count / sum(train_counts):.1%}); {how}. On the test set its F1 is "
            f"{_f4(f1_rare)} and recall {_f4(recall_rare)}, against a mean F1 of {_f4(f1_others)} and recall "
            f"{_f4(recall_others)} over {other}")
    if per_class[rare]["support"] == 0:
        text += "; the test set holds none of it, so these numbers say nothing."
    elif f1_rare == 0:
        text += ": the model never gets it right; the imbalance is not overcome."
    elif f1_rare > f1_others + 0.03:  # a model that answers the rare class for most faces
        text += (f": {_pts(f1_rare - f1_others)} F1 points ahead of the others, which says less of the rare class "
                 "than of how poorly the others are told apart.")
    elif f1_rare >= f1_others - 0.03:
        text += ": on a par with the others" + (" without any rebalancing." if mode == "none" else
                                                 ", so the rebalancing works.")
    else:
        text += f": {_pts(f1_others - f1_rare)} F1 points behind."
    return text + f" Macro F1 is {_relative(metrics['macro_f1'] - metrics['accuracy'], 'accuracy')}."


def _confusions(run: Run) -> str | None:
    metrics = run.metrics
    matrix = np.asarray(metrics.get("confusion_matrix") or [])
    if matrix.shape != (len(EMOTIONS), len(EMOTIONS)):
        return None
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    if off.sum() == 0:
        return "**Confusions**: none; every test face is classified correctly."
    i, j = np.unravel_index(int(np.argmax(off)), off.shape)
    both = off + off.T
    a, b = np.unravel_index(int(np.argmax(np.triu(both))), both.shape)
    row = matrix[i].sum()
    text = (f"**Confusions**: the most frequent error is a true {EMOTIONS[i]} face predicted as {EMOTIONS[j]} "
            f"({_int(off[i, j])} faces, {off[i, j] / max(1, row):.1%} of {EMOTIONS[i]}); the most confused "
            f"pair, both ways, is {EMOTIONS[a]}/{EMOTIONS[b]} ({_int(both[a, b])} faces).")
    if (numbers := _class_numbers(run)) is not None:
        per_class = numbers[0]
        ranked = sorted(EMOTIONS, key=lambda c: per_class[c]["f1"])
        text += f" Weakest class by F1: {ranked[0]} ({_f4(per_class[ranked[0]]['f1'])}); strongest: " \
                f"{ranked[-1]} ({_f4(per_class[ranked[-1]]['f1'])})."
    return text


def _tta_effect(run: Run) -> str | None:
    if "test" not in run.evals or "test-tta" not in run.evals:
        return None
    plain, tta = run.evals["test"], run.evals["test-tta"]
    if tta.get("tta") in (None, "none"):  # `ferkit evaluate --tta` of a run whose tta is none: the same evaluation
        return None
    return (f"**Test-time augmentation** ({tta.get('tta')}) changes accuracy by "
            f"{_signed_pts(tta['accuracy'] - plain['accuracy'])} points and macro F1 by "
            f"{_signed_pts(tta['macro_f1'] - plain['macro_f1'])} points.")


def _resumed(run: Run) -> str | None:
    resumes = len(run.info.get("resumed") or [])
    if not resumes:
        return None
    study = _is_study(run.recorded_command)
    how = "by running its `ferkit run` study again" if study else "with `ferkit train --resume`"
    text = (f"**Resumed**: run.json records that the run was continued from checkpoints/last.pt "
            f"{_times(resumes)} ({how}); every epoch draws its randomness from (seed, epoch) alone, so it "
            "ends where a run without a break would")
    elsewhere = run.info.get("resumed_elsewhere") or []
    if not elsewhere:
        return text + "."
    from ferkit.train import run_session

    first = run_session(run.info.get("device"), run.info.get("environment"))
    changes = []
    for session in elsewhere:
        changed = [f"{key} {_value(session.get(key))} (first {_value(first[key])})" for key in first
                   if key != "versions" and session.get(key) != first[key]]
        versions = session.get("versions") or {}
        changed += [f"{name} {versions.get(name)} (first {version})"
                    for name, version in (first["versions"] or {}).items() if versions.get(name) != version]
        changes.append(f"from {str(session.get('at', '?'))[:16]}: {', '.join(changed) or 'the same'}")
    return text + (" on the same machine and versions; but it went on elsewhere (" + "; ".join(changes) + "), so the "
                   "numbers of its later epochs may differ in the last digits from a run without a break, and the "
                   "hardware and libraries of Section 5 are those of its start.")


def _test_section(run: Run, figures_dir: Path) -> list[Any]:
    blocks: list[Any] = [Heading("4  Test performance")]
    order = [name for name in ("test", "test-tta") if name in run.evals]
    label = {name: _tta_label(run.evals[name]) for name in order}
    m = run.metrics
    rows = [[key_label] + [_f4(run.evals[name][key]) for name in order]
            for key, key_label in (("accuracy", "accuracy"), ("macro_f1", "macro F1"), ("weighted_f1", "weighted F1"))]
    rows.append(["faces"] + [_int(run.evals[name]["n"]) for name in order])
    other_tta = [] if order[0] == "test-tta" else ["--tta"]  # the evaluation that is missing, when one is
    blocks.append(Para(f"The best checkpoint (epoch {m.get('epoch')}) on {m.get('split', 'PrivateTest')}, the split "
                       "never seen in training or model selection." +
                       ("" if len(order) == 2 else
                        f" Only the evaluation {'with' if order[0] == 'test-tta' else 'without'} TTA exists; "
                        f"{_inline_command(['ferkit', 'evaluate', str(run.path), *other_tta])} adds the other.")))
    summary = Table(["metric"] + [label[name] for name in order], rows,
                    f"Test metrics (from eval/{'/metrics.json and eval/'.join(order)}/metrics.json).",
                    widths=[0.4] + [0.3] * len(order))
    per_class = m.get("per_class", {})
    report_rows = [[c, _f4(per_class[c]["precision"]), _f4(per_class[c]["recall"]), _f4(per_class[c]["f1"]),
                    _int(per_class[c]["support"])] for c in EMOTIONS if c in per_class]
    if per_class:
        support = np.array([per_class[c]["support"] for c in EMOTIONS], dtype=float)
        # macro F1 (metrics.json) averages the classes present in the test set: so does this row
        averaged = m.get("macro_f1_classes") or [c for c in EMOTIONS if per_class[c]["support"] > 0] or EMOTIONS
        present = np.array([c in averaged for c in EMOTIONS], dtype=float)
        macro = "macro avg" if len(averaged) == len(EMOTIONS) else f"macro avg ({len(averaged)} classes present)"
        for name, w in ((macro, present), ("weighted avg", support)):
            w = w / max(w.sum(), 1e-12)
            report_rows.append([name] + [_f4(float(sum(per_class[c][k] * w[i] for i, c in enumerate(EMOTIONS))))
                                         for k in ("precision", "recall", "f1")] + [_int(support.sum())])
        report_rows.append(["accuracy", "", "", _f4(m["accuracy"]), _int(m["n"])])
    report = Table(["class", "precision", "recall", "F1", "support"], report_rows,
                   f"Classification report ({label[run.preferred]}).", widths=[0.28, 0.18, 0.18, 0.18, 0.18])
    matrix = m.get("confusion_matrix")
    if matrix is None:
        blocks += [summary, report]
        return blocks
    # One matrix with counts and row shares, drawn from metrics.json at a size that stays legible
    # in half the page width (the evaluation's own figure has two panels and needs the full width).
    path = confusion_figure(matrix, figures_dir / "confusion_matrix.png",
                            f"{m.get('split', 'PrivateTest')}, {label[run.preferred]}")
    source = run.eval_dirs[run.preferred]
    blocks.append(SideBySide([summary, report], [Figure(
        path, f"Confusion matrix ({label[run.preferred]}): each cell holds the count and its share of the true class "
              f"(row); the diagonal is each class's recall. Drawn from {source.name}/metrics.json (the evaluation's "
              f"two-panel figure: eval/{source.name}/confusion_matrix.png).", "confusion_matrix.png",
        max_height=0.45)], split=0.47))
    return blocks


def confusion_figure(matrix: Sequence[Sequence[int]], path: Path, title: str) -> Path:
    """A compact confusion matrix: colour = share of the true class, text = count and share."""
    from ferkit.visualize import confusion_panel, plt, save

    fig, ax = plt.subplots(figsize=(4.3, 3.9))
    im = confusion_panel(ax, matrix, fontsize=8.5)
    ax.set_title(title, fontsize=9.5)
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    bar.ax.tick_params(labelsize=7.5)
    bar.set_label("share of the true class", fontsize=8)
    return save(fig, path, dpi=200)


def _named(path: Path) -> Path:
    """`path`, or its absolute form where it has no name of its own ("." or "..")."""
    return path if path.name not in ("", "..") else path.resolve()


def _replica_folder(run_path: Path) -> Path:
    """A new folder beside the run to train its replica in: `ferkit train` refuses one that holds a run. A
    study's run gets it beside the study (STUDY-cnn-replica): in the study, the study's next `ferkit run`
    refused the folder as holding other files."""
    named = _named(run_path)
    if (named.parent / "pipeline.json").is_file():
        study = _named(named.parent)
        return study.with_name(f"{study.name}-{named.name}-replica")
    return named.with_name(f"{named.name}-replica")


def _parent(path: Path) -> Path:
    """The folder that holds `path`, also for "." or "..", whose parent as written is themselves."""
    return path.parent if path.name not in ("", ".", "..") else Path(os.path.abspath(path)).parent


def _recorded_there(command: str, replica: Path, cwd: str | None) -> str:
    """A recorded command with its --out set to `replica`, run in the folder it was recorded in (`cwd`), where
    its relative paths start, when that is not the folder of this report's command."""
    if cwd and os.path.realpath(cwd) != os.path.realpath(os.getcwd()):  # a subshell: the lines after it stay here
        return f"(cd {shlex.quote(cwd)} && {_with_out(command, Path(os.path.abspath(replica)))})"
    return _with_out(command, replica)


def _replication_section(run: Run, report_command: str) -> list[Any]:
    info, cfg = run.info, run.config
    env = info.get("environment", {})
    data = info.get("data", {})
    recorded = run.recorded_command
    replica = _replica_folder(run.path)
    lines = [f"# training into a new folder, {replica}: ferkit train refuses {run.path}, which holds the run"]
    # a run sized by fit_minutes: its command sizes the epochs again, by the speed of the machine it runs on
    resized = ", which sizes its epochs again by this machine's speed" if info.get("fit_minutes") else ""
    # without --profile, `ferkit train` and `ferkit run` pick one by the machine they run on
    pinned = f" --profile {cfg['profile']}" if recorded and " --profile" not in f" {recorded}" and cfg.get("profile") \
        else ""
    changed = f"--out{' and --profile' if pinned else ''}"
    if recorded and recorded.startswith("ferkit train"):
        lines += [f"# as recorded in run.json, but for {changed}{resized}",
                  _recorded_there(recorded + pinned, replica, env.get("cwd"))]
    q = shlex.quote
    lines += ["# with every key from the saved config" + (" (exact: the epochs as sized)" if resized else " (equivalent)"),
              f"ferkit train {q(str(data.get('path', 'DATA')))} --out {q(str(replica))} "
              f"--config {q(str(run.path / 'config.yaml'))}"]
    lines += ["# evaluation of the replica"] + [f"ferkit evaluate {q(str(replica))}{' --tta' if name == 'test-tta' else ''}"
                                               for name in ("test-tta", "test") if name in run.evals]
    if _is_study(recorded):
        study_replica = _replica_folder(_parent(run.path))
        lines += [f"# or the whole study that trained it, as recorded in run.json but for {changed}: "
                  f"{study_replica / (_model_name(run) or run.path.name)} replicates this run{resized}",
                  # a study names its runs after their models
                  _recorded_there(recorded + pinned, study_replica, env.get("cwd"))]
    lines += ["# this report, from the files of the original run", report_command]
    versions = env.get("versions", {})
    commit = env.get("git_commit")
    dirty = " (the working tree had uncommitted changes: the commit alone does not hold the exact code)" \
        if commit and commit.endswith("-dirty") else ""
    blocks: list[Any] = [
        Heading("5  Replication"),
        Shell(lines),
        Para(f"Seed {_code(cfg.get('seed'))} (every epoch's shuffling, augmentation and dropout derive from it and "
             f"the epoch number). Config: {_code(run.path / 'config.yaml')} (Table 3). ferkit "
             f"{versions.get('ferkit', '?')}, git commit {_code(commit or 'unknown')}{dirty}. Libraries: " +
             ", ".join(f"{k} {v}" for k, v in versions.items() if k != "ferkit") +
             f". Data: {_code(Path(str(data.get('path', '?'))).name)}, sha256 {_code(data.get('sha256', '?'))}. "
             "Device: "
             f"{info.get('device', '?')}; results match to the last digit only with the same hardware and library "
             "versions." + _trained_by(recorded)),
        Details("config.yaml", [Code((run.path / "config.yaml").read_text(encoding="utf-8").rstrip())]),
    ]
    return blocks


def _trained_by(recorded: str | None) -> str:
    """A remark on the recorded command when it was not `ferkit train`; a long one is cut, since this
    paragraph stays in the PDF when the page limit leaves the replication's commands out."""
    if not recorded or recorded.startswith("ferkit train"):
        return ""
    shown = _code(recorded)
    if len(recorded) > _LONGEST_REMARK:  # a script's argv: pytest given a hundred test names, say
        shown = f"{_code(recorded[:_LONGEST_REMARK] + ' …')} (the first {_LONGEST_REMARK} of its " \
                f"{len(recorded):,} characters)"
    if _is_study(recorded):
        return f" This run was trained by the `ferkit run` study {shown} (as run.json records)."
    return f" (run.json records the training as started by {shown}, not by a ferkit command.)"


def _trained_data(run: Run) -> dict[str, str | None]:
    """run.json's checksums of the data the run was trained on, under the keys evaluations use."""
    data = run.info.get("data", {})
    return {"data_sha256": data.get("sha256"), "data_faces_sha256": data.get("faces_sha256")}


def _model_name(run: Run) -> str | None:
    return (run.info.get("model") or {}).get("name") or run.metrics.get("name")


def _evaluated_data(run: Run, metrics: dict[str, Any]) -> dict[str, str | None]:
    """The file and faces checksums of an evaluation's data. `ferkit evaluate` refuses other data
    than the run's, so run.json stands in where an older metrics.json lacks them."""
    trained_on = _trained_data(run)
    return {key: metrics.get(key) or trained_on[key] for key in trained_on}


def _compared_evaluations(cnn: Run, mlp: Run) -> tuple[dict[str, Any], dict[str, Any]]:
    """The CNN's and the MLP's test metrics for the CNN vs MLP section, like for like: the MLP's in the CNN's
    TTA mode where it has it, else the CNN's in the MLP's where the CNN has it. A FerkitError unless RUN_DIR
    is no MLP, --mlp is one, and both were evaluated
    on the same test faces (the same file, or the same faces in another file): on other faces the
    comparison would say nothing."""
    if _model_name(cnn) == "mlp":
        raise FerkitError(f"{cnn.path} is a run of the `mlp` model: the CNN vs MLP comparison of --mlp needs a "
                          f"CNN run as RUN_DIR; pass the CNN run first and {mlp.path} as --mlp")
    model = _model_name(mlp)
    if model != "mlp":
        raise FerkitError(f"--mlp {mlp.path}: a run of the `{model}` model, not of `mlp`; pass a run trained with "
                          f"`ferkit train DATA --model mlp --out RUN_DIR` (and evaluated), or leave out --mlp")
    name = cnn.preferred if cnn.preferred in mlp.evals else mlp.preferred
    a, b = cnn.evals.get(name, cnn.metrics), mlp.evals[name]
    data_a, data_b = _evaluated_data(cnn, a), _evaluated_data(mlp, b)
    differences = [f"{key} {a.get(key)} vs {b.get(key)}" for key in ("split", "n") if a.get(key) != b.get(key)]
    if not same_data(data_a, data_b):
        paths = [run.info.get("data", {}).get("path", "?") for run in (cnn, mlp)]
        differences.insert(0, f"data {paths[0]} (sha256 {str(data_a['data_sha256'])[:12]}) vs {paths[1]} "
                              f"(sha256 {str(data_b['data_sha256'])[:12]})")
    if differences:
        raise FerkitError(f"--mlp {mlp.path}: {mlp.path}/eval/{name} is not on the test faces of {cnn.path}/eval/"
                          f"{cnn.preferred} ({'; '.join(differences)}), so the two cannot be compared; pass an "
                          f"MLP run trained and evaluated on {cnn.info.get('data', {}).get('path', 'the same data')}")
    return a, b


def _mlp_section(cnn: Run, mlp: Run, cnn_params: int, number: int) -> list[Any]:
    a, b = _compared_evaluations(cnn, mlp)
    mlp_params = mlp.info.get("model", {}).get("parameters")
    cnn_label = f"CNN ({cnn.info.get('model', {}).get('name')}, {_tta_label(a)})"
    mlp_label = f"MLP ({mlp.info.get('model', {}).get('name')}, {_tta_label(b)})"
    rows = [["test accuracy", _f4(a["accuracy"]), _f4(b["accuracy"])],
            ["macro F1", _f4(a["macro_f1"]), _f4(b["macro_f1"])],
            ["weighted F1", _f4(a["weighted_f1"]), _f4(b["weighted_f1"])],
            ["parameters", _int(cnn_params), _int(mlp_params) if mlp_params is not None else "-"],
            ["training time", _duration(cnn.train_seconds), _duration(mlp.train_seconds)],
            ["epochs run (best)", f"{cnn.info.get('epochs_run', len(cnn.history))} ({cnn.best_epoch})",
             f"{mlp.info.get('epochs_run', len(mlp.history))} ({mlp.best_epoch})"],
            ["device", str(cnn.info.get("device", "?")), str(mlp.info.get("device", "?"))]]
    pa, pb = a.get("per_class", {}), b.get("per_class", {})
    gains, class_rows = {}, []
    for c in EMOTIONS:
        if c in pa and c in pb:
            class_rows.append([c, _f4(pa[c]["f1"]), _f4(pb[c]["f1"]), _signed_pts(pa[c]["f1"] - pb[c]["f1"])])
            gains[c] = pa[c]["f1"] - pb[c]["f1"]
    theirs = "the MLP's"
    text = (f"The MLP run {_code(mlp.path)} sees the same pixels without convolutions. The CNN's test accuracy is "
            f"{_relative(a['accuracy'] - b['accuracy'], theirs)} and its macro F1 "
            f"{_relative(a['macro_f1'] - b['macro_f1'], theirs)}")
    if mlp_params:
        ratio = cnn_params / mlp_params
        text += f", with {ratio:.2f}× the MLP's parameters" if ratio >= 1 else \
            f", with {1 / ratio:.1f}× fewer parameters"
    if gains:
        top = max(gains, key=gains.get)
        # a "largest gain" that rounds to 0.0 or less would name a class the CNN does not win
        text += f"; the largest per-class F1 gain is on {top} ({_signed_pts(gains[top])} points)" \
            if _signed_pts(gains[top]).startswith("+") else "; no class has a higher F1 with the CNN"
    trained = [run.info.get("data", {}).get("train_images") for run in (cnn, mlp)]
    if None not in trained and trained[0] != trained[1]:
        text += f". The CNN was trained on {_int(trained[0])} faces, the MLP on {_int(trained[1])}"
    text += "."
    if not _is_study(mlp.recorded_command):
        # a study's command (Section 5) trains its MLP too; another MLP run would have no command in the report
        data = str(mlp.info.get("data", {}).get("path", "DATA"))
        command = ["ferkit", "train", data, "--out", str(_replica_folder(mlp.path)), "--config",
                   str(mlp.path / "config.yaml")]
        text += f" To train it again: {_inline_command(command)}."
    faces = f"the same {_int(a['n'])} {a.get('split', 'PrivateTest')} faces"
    return [Heading(f"{number}  CNN vs MLP baseline", 1), Para(text),
            SideBySide([Table(["", cnn_label, mlp_label], rows, f"The CNN and the MLP on {faces}.",
                              widths=[0.3, 0.35, 0.35])],
                       [Table(["class", "F1 CNN", "F1 MLP", "CNN - MLP (points)"], class_rows,
                              "Per-class F1 of the two models.", widths=[0.25, 0.22, 0.22, 0.31])], split=0.55)]


_KEY_WORDS = ("accuracy", "f1", "kappa", "agreement", "p_value", "auc", "correlation", "score", "loss")

# Captions for the figures that `ferkit features` and `ferkit compare` write today; any other PNG is
# captioned from its JSON (a "caption"/"title" beside its file name) or from its file name.
_KNOWN_CAPTIONS = {
    "overview.png": "Per emotion, a correctly classified face with its Grad-CAM, and a misclassified one with "
                    "Grad-CAM for the true and for the predicted class (last conv layer).",
    "class_channels.png": "The last conv layer's channels most selective for each emotion: mean activation per "
                          "class, and its selectivity (z-score).",
    "top_faces.png": "For each emotion's most selective channel, the test faces that excite it most, its map drawn "
                     "over each.",
    "embedding.png": "A 2-D map of the penultimate features of the test faces, coloured by true and by predicted "
                     "emotion.",
    "confusion_matrices.png": "Confusion matrices of the human labeller and of the {network} on the same faces "
                              "(rows: truth).",
    "disagreements.png": "The faces where the human and the {network} disagree: the truth, the human's and the "
                         "{network}'s answer.",
}
_KNOWN_FAMILIES = {
    "faces": "{emotion} faces: the face, the channel-mean activation of the last conv layer, Grad-CAM for the true "
             "and for the predicted class.",
    "channels": "{emotion} faces and their strongest channels of the last conv layer.",
}


def _flatten(data: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Scalar leaves of a JSON object (depth first); short lists of numbers kept whole; lists of
    objects, file names and long strings left out."""
    out: list[tuple[str, Any]] = []
    nested: list[tuple[str, Any]] = []
    for key, value in (data.items() if isinstance(data, dict) else []):
        name = f"{prefix}{key}"
        if str(key).lower().endswith(".png"):
            continue
        if isinstance(value, (bool, int, float)):
            if not (isinstance(value, float) and not math.isfinite(value)):
                out.append((name, value))
        elif isinstance(value, str):
            if len(value) <= 48 and not re.search(r"\.(png|csv|json)$", value.lower()):
                out.append((name, value))
        elif isinstance(value, list):
            if 0 < len(value) <= len(EMOTIONS) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                       for v in value):
                out.append((name, value))
        elif isinstance(value, dict):
            nested.append((name, value))
    for name, value in nested:
        out += _flatten(value, f"{name}.")
    return out


def _key_numbers(data: dict[str, Any]) -> list[tuple[str, Any]]:
    """The leaves of a JSON, the metric-like numbers first (accuracy, F1, kappa, ...), then other
    numbers, then short strings, each group in `_flatten`'s order (an object's own values before
    those of the objects nested in it)."""
    leaves = [(k, v) for k, v in _flatten(data)
              if not isinstance(v, list) or any(word in k.lower() for word in _KEY_WORDS)]

    def rank(item: tuple[str, Any]) -> int:
        key, value = item
        if "seconds" in key.lower():
            return 3
        if isinstance(value, str) or isinstance(value, bool):
            return 2
        return 0 if any(word in key.lower() for word in _KEY_WORDS) else 1

    return sorted(leaves, key=rank)  # sorted() is stable: _flatten's order within a group


def _format_leaf(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, list):
        return ", ".join(_format_leaf(v) for v in value)
    if isinstance(value, int) and not isinstance(value, bool):
        return _int(value)
    return _value(value)


def _captions(data: Any) -> dict[str, str]:
    """Figure captions a JSON may carry: {"x.png": "caption"}, or an object holding one PNG file
    name and a "caption"/"title"/"description" (else its short scalars describe the figure)."""
    found: dict[str, str] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(value, str) and str(key).lower().endswith(".png"):
                    found[Path(str(key)).name] = value
            files = [v for v in node.values() if isinstance(v, str) and v.lower().endswith(".png")]
            if len(files) == 1:
                text = next((node[k] for k in ("caption", "title", "description") if isinstance(node.get(k), str)),
                            None)
                if text is None:
                    details = [f"{k} {v}" for k, v in node.items() if isinstance(v, (str, int, float))
                               and not isinstance(v, bool) and k not in ("figure", "file", "path", "csv")
                               and not str(v).lower().endswith((".png", ".csv")) and len(str(v)) <= 40][:3]
                    text = "; ".join(details) if details else None
                if text:
                    found.setdefault(Path(files[0]).name, text)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(data)
    return found


def _figure_order(paths: list[Path]) -> list[Path]:
    """Figures of their own first (those ferkit writes in the order of _KNOWN_CAPTIONS), then
    families of one figure per emotion (faces_angry.png, ...): the PDF, short of room, drops from
    the end."""
    def per_emotion(path: Path) -> bool:
        return any(path.stem.lower().endswith(f"_{e.lower()}") for e in EMOTIONS)

    known = list(_KNOWN_CAPTIONS)
    singles = sorted((p for p in paths if not per_emotion(p)),
                     key=lambda p: known.index(p.name) if p.name in known else len(known))
    return singles + [p for p in paths if per_emotion(p)]


def _comparison_summary(data: dict[str, Any], network: str) -> list[Any]:
    """The human's and the network's scores side by side, and what tells them apart, from comparison.json;
    nothing where it lacks their scores."""
    def interval(scores: dict[str, Any], key: str) -> str:
        ci = scores.get(f"{key}_ci95")
        value = f"{scores[key]:.3f}" if isinstance(scores.get(key), (int, float)) else "-"
        return value + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if isinstance(ci, list) and len(ci) == 2 else "")

    sides = [(name, data.get(key)) for key, name in (("human", "human"), ("cnn", network))]
    if not all(isinstance(scores, dict) and "accuracy" in scores for _, scores in sides):
        return []
    rows = [[name, _int(scores["correct"]) if isinstance(scores.get("correct"), int) else "-",
             interval(scores, "accuracy"), interval(scores, "macro_f1")] for name, scores in sides]
    said = []
    difference = data.get("difference", {})
    for metric, words in (("accuracy", "accuracy"), ("macro_f1", "macro F1")):
        given = difference.get(metric, {}) if isinstance(difference, dict) else {}
        if isinstance(given.get("human_minus_cnn"), (int, float)) and isinstance(given.get("ci95"), list):
            low, high = given["ci95"]
            said.append(f"{words} {_signed_pts(given['human_minus_cnn'])} points [{low * 100:+.1f}, {high * 100:+.1f}]")
    kappas = data.get("kappa", {}) if isinstance(data.get("kappa"), dict) else {}
    shown = {k: "n/a" if v is None else f"{v:.3f}" for k, v in kappas.items() if v is None or isinstance(v, float)}
    test = data.get("mcnemar", {}) if isinstance(data.get("mcnemar"), dict) else {}
    text = f"Human minus {network}: {'; '.join(said)}." if said else ""
    if {"human_vs_truth", "cnn_vs_truth", "human_vs_cnn"} <= set(shown):
        text += (f" Cohen's kappa with the truth: human {shown['human_vs_truth']}, {network} {shown['cnn_vs_truth']}; "
                 f"between them {shown['human_vs_cnn']}.")
    if isinstance(test.get("p_value"), float):
        text += (f" McNemar exact p = {test['p_value']:.3g} (human right and {network} wrong on "
                 f"{test.get('human_correct_cnn_wrong')} faces, the reverse on {test.get('human_wrong_cnn_correct')}).")
    faces = f"the same {_int(data['n'])} PrivateTest faces" if isinstance(data.get("n"), int) else "the same faces"
    blocks: list[Any] = [Table(["", "correct", "accuracy [95% CI]", "macro F1 [95% CI]"], rows,
                               f"The human and the {network} on {faces}.", widths=[0.2, 0.14, 0.33, 0.33])]
    return blocks + ([Para(text.strip())] if text else [])


def _caption_for(path: Path, captions: dict[str, str], network: str = "CNN") -> str:
    stem = path.stem.lower()
    for emotion in EMOTIONS:
        family = stem[: -len(emotion) - 1]
        if stem.endswith(f"_{emotion.lower()}") and family in _KNOWN_FAMILIES:
            return _KNOWN_FAMILIES[family].format(emotion=emotion)
    known = _KNOWN_CAPTIONS.get(path.name, "").format(network=network)
    found = captions.get(path.name)
    if known and found:
        return f"{known} ({found})"
    if known or found:
        return known or found[0].upper() + found[1:]
    return path.stem.replace("_", " ").replace("-", " ").capitalize()


def _extra_section(extra: Extra, number: int, title: str, intro: str, json_name: str, prefix: str,
                   key_limit: int = 10, summary: Sequence[Any] = (), network: str = "CNN") -> list[Any]:
    """An extra's section: `summary` (blocks of its own), then its JSON's key numbers and its figures."""
    blocks: list[Any] = [Heading(f"{number}  {title}", 1)]
    leaves = _key_numbers(extra.data)
    shown = leaves[:key_limit]
    blocks.append(Para(f"{intro} From {_code(extra.path)}: {json_name} ({len(leaves)} values, {len(shown)} below), "
                       f"{len(extra.figures)} figure(s).", keep_with_next=True))
    blocks += summary
    if shown:
        per_row = 2
        rows = []
        for i in range(0, len(shown), per_row):
            chunk = [(k, _format_leaf(v)) for k, v in shown[i:i + per_row]]
            chunk += [("", "")] * (per_row - len(chunk))
            rows.append([cell for pair in chunk for cell in pair])
        blocks.append(Table(["key", "value"] * per_row, rows, f"Key numbers from {json_name} (metrics first).",
                            widths=[0.32, 0.18, 0.32, 0.18], font=7, group=2))
    text = json.dumps(extra.data, indent=1)
    if len(text) > 50_000:
        text = text[:50_000] + f"\n... (cut here: the whole file is {extra.path / json_name})"
    blocks.append(Details(f"{json_name} in full", [Code(text)]))
    captions = _captions(extra.data)
    figures = []
    for path in _figure_order(extra.figures):
        relative = path.relative_to(extra.path)
        figures.append(Figure(path, f"{_caption_for(path, captions, network)} ({relative})",
                              f"{prefix}_{'_'.join(relative.parts)}", max_height=0.42))
    if figures:
        blocks.append(FigureGrid(figures))
    return blocks


def _features_command(run: Run, features: Extra) -> str:
    """How the features of a run outside a study are made again (a study's command makes them), from what
    features.json records; "" in a study."""
    if _is_study(run.recorded_command):
        return ""
    data, method = features.data, str((features.data.get("embedding") or {}).get("method", ""))
    words = ["ferkit", "features", str(run.path), "--out", str(features.path)]
    if isinstance(data.get("data"), str) and data.get("data_sha256") != run.info.get("data", {}).get("sha256"):
        words += ["--data", data["data"]]  # another file of the faces than the run's (its default)
    words += [word for key in ("n", "seed") if isinstance(data.get(key), int) for word in (f"--{key}", str(data[key]))]
    words += ["--embedding", "pca"] if method.startswith("PCA") else []
    return f" (made by {_inline_command(words)})"


def build_document(run: Run, figures_dir: Path, mlp: Run | None = None, features: Extra | None = None,
                   compare: Extra | None = None, report_command: str = "") -> Document:
    """The report's blocks; the figures it draws itself go into `figures_dir`."""
    architecture, parameters = _architecture_section(run)
    main = [Heading(_title(run), 0), _summary(run)] + _data_section(run) + architecture + _training_section(run) + \
        _test_section(run, figures_dir) + _replication_section(run, report_command)
    extras: list[Any] = []
    number = 6
    if mlp is not None:
        extras += _mlp_section(run, mlp, parameters, number)
        number += 1
    if features is not None:
        extras += _extra_section(features, number, "Activation figures", "What the trained network responds to"
                                 + _features_command(run, features) + ".", "features.json", "features")
        number += 1
    if compare is not None:
        network = model_label(compare.data)
        extras += _extra_section(compare, number, f"Human vs {network}", "People and the network on the same faces.",
                                 "comparison.json", "compare", summary=_comparison_summary(compare.data, network),
                                 network=network)
    if extras:
        extras.insert(0, Heading("Extras", 0))
    return Document(_plain(_title(run)), main, extras)


# ---------------------------------------------------------------------------------------------
# Inline markup


# The text's markup is CommonMark's, in part: **bold**, `code` and backslash escapes. A code span's
# fence is a run of backticks that its content does not hold, so that _code quotes any path.
# Read left to right: a backslash before ASCII punctuation escapes it, or a code span, fenced by a run
# of backticks and closed by a run as long.
_LITERAL = re.compile(r"\\([!-/:-@\[-`{-~])|(?<!`)(`+)(?!`)(.+?)(?<!`)\2(?!`)", re.S)
_BOLD = re.compile(r"\*\*(.+?)\*\*", re.S)
_HELD = re.compile("\0(\\d+)\0")


def _code(value: Any) -> str:
    """`value` as an inline code span, whatever backticks or asterisks it holds (a user's path)."""
    text = str(value) or " "  # two backticks are no span, but a space shows as an empty one
    fence = "`" * (max(map(len, re.findall("`+", text)), default=0) + 1)
    padded = text[:1] == "`" or text[-1:] == "`" or (text[:1] == text[-1:] == " " and text.strip())
    return f"{fence} {text} {fence}" if padded else f"{fence}{text}{fence}"  # CommonMark drops the spaces


def _inline_command(words: Sequence[str]) -> str:
    """A command in a sentence, as a code span: each word quoted as in the PDF's shell blocks, so that a path with
    a tab, or with letters the PDF's fonts lack, copies as the same word from every format (shlex.join kept a tab
    as it is, and the PDF spelled a Devanagari letter as \\u0915 inside its quotes, which bash reads literally)."""
    return _code(" ".join(_shell_word(word, pdf=True) for word in words))


def _literal(value: Any) -> str:
    """`value` as plain text, its markup characters escaped (a folder name in a heading): also `&`, which
    Markdown reads as the start of an entity (`&copy;`), and `#`, whose run ends a heading as its closing
    sequence."""
    return re.sub(r"([\\`*_\[\]<>&#])", r"\\\1", str(value))


def _held(text: str) -> tuple[str, list[tuple[bool, str]]]:
    """`text` with its code spans and escaped characters taken out, each left as a numbered mark
    between NULs, and what they hold: (whether a code span, its literal text). Nothing inside a code
    span is markup, and an escaped character is itself."""
    kept: list[tuple[bool, str]] = []

    def hold(is_code: bool, literal: str) -> str:
        kept.append((is_code, literal))
        return f"\0{len(kept) - 1}\0"

    def literal(match: re.Match) -> str:
        if match.group(1) is not None:
            return hold(False, match.group(1))
        inside = match.group(3)
        return hold(True, inside[1:-1] if inside[:1] == inside[-1:] == " " and inside.strip() else inside)

    return _LITERAL.sub(literal, text), kept


def _inline(text: str, escape: Callable[[str], str], bold: Callable[[str], str], code: Callable[[str], str]) -> str:
    text, kept = _held(text)

    def restore(part: str) -> str:
        pieces = _HELD.split(part)  # plain text at even places, mark numbers at odd ones
        for i in range(1, len(pieces), 2):
            is_code, literal = kept[int(pieces[i])]
            pieces[i] = code(literal) if is_code else escape(literal)  # `code` escapes: the PDF's in its face
        pieces[::2] = [escape(piece) for piece in pieces[::2]]
        return "".join(pieces)

    out, pos = [], 0
    for match in _BOLD.finditer(text):
        out.append(restore(text[pos:match.start()]))
        out.append(bold(restore(match.group(1))))
        pos = match.end()
    out.append(restore(text[pos:]))
    return "".join(out)


def _plain(text: str) -> str:
    """The text without its markup."""
    return _inline(text, lambda s: s, lambda s: s, lambda s: s)


def _columns(text: str) -> int:
    """How many monospace columns `text` takes: a wide (CJK) character takes two."""
    return sum(2 if unicodedata.east_asian_width(char) in "WF" else 1 for char in text)


# Control characters (a tab or a newline in a path) have no glyph in the PDF's fonts, and a newline
# would end a line of shell
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_ANSI_C = {"\\": "\\\\", "'": "\\'", "\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _ansi_c(char: str) -> str:
    """`char` as bash's $'...' form writes it: by name, else as its UTF-8 bytes (`\\xe0\\xa4\\x95`), which give
    the same word in any locale and in bash 3.2 (macOS), where `\\u0915` stays as typed."""
    return _ANSI_C.get(char) or "".join(f"\\x{byte:02x}" for byte in char.encode("utf-8", "surrogateescape"))


def _code_point(char: str) -> str:
    """`char` spelled out for reading (`\\n`, `\\x01`, `\\u0915`, `\\U0001f44d`), where it is not run as shell."""
    code = ord(char)
    return _ANSI_C.get(char) or (f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}" if code < 0x10000
                                 else f"\\U{code:08x}")


def _seen(char: str, pdf: bool) -> bool:
    """Whether `char` shows as itself in a line of shell: not a control character, and in the PDF one its
    monospace face has a glyph for."""
    return not _CONTROL.match(char) and (not pdf or _shows(char, mono=True))


def _shell_word(word: str, pdf: bool = False) -> str:
    """`word` quoted for the shell: as shlex.quote does, or, when it holds characters that would not show
    (control characters; in the PDF also those its fonts lack), in bash's $'...' form, which spells each
    one out (`$'a\\tb'`) so that it shows and copies as the same word."""
    if all(_seen(char, pdf) for char in word):
        return shlex.quote(word)
    return "$'" + "".join(_ansi_c(char) if char in "\\'" or not _seen(char, pdf) else char for char in word) + "'"


def _spelled_unless(text: str, shows: Callable[[str], bool], backslashes: bool | None = None) -> str:
    """`text` with each character that does not `shows` spelled out as a code point. Once one is, each
    backslash is too (`\\\\`), as in bash's $'...' form, so that a spelled newline and a typed backslash-n
    stay apart; text that spells nothing keeps its backslashes. `backslashes` decides for a piece of a
    larger text, whose backslashes follow what the whole text spells."""
    unseen = {char for char in set(text) if not shows(char)}
    if backslashes is None:
        backslashes = bool(unseen)
    return "".join(_code_point(char) if char in unseen or (backslashes and char == "\\") else char for char in text)


def _spelled(text: str, pdf: bool = False) -> str:
    """`text` with each character that would not show (as for `_shell_word`) spelled out, for text that is
    not shell words: a comment, an old record."""
    return _spelled_unless(text, lambda char: _seen(char, pdf))


def _shell_words(line: str) -> list[tuple[str, bool]]:
    """The words of a line of shell (shlex.split: a ValueError when it is none), each with whether it is an
    operator, written as it is: the `(cd`, `&&` and `)` of the subshell `_recorded_there` writes, which
    quoted as words made a command named `(cd` and a last word that ends in `)`."""
    words = shlex.split(line)
    if line.startswith("(cd ") and line.endswith(")") and len(words) > 3 and words[2] == "&&":
        return [("(cd", True), (words[1], False), ("&&", True), *((word, False) for word in words[3:-1]),
                (words[-1][:-1], False), (")", True)]
    return [(word, False) for word in words]


def _shell_line(line: str) -> str:
    """A line of shell without control characters, so that it stays one line that shows in every
    format: a command's words that hold them in $'...' form, a comment's spelled out."""
    if not _CONTROL.search(line):
        return line
    if line.lstrip().startswith("#"):
        return _spelled(line)
    try:
        return " ".join(word if operator else _shell_word(word) for word, operator in _shell_words(line))
    except ValueError:  # not shell words (an old record joined by spaces): shown as recorded
        return _spelled(line)


def _shell_lines(line: str, width: int) -> list[str]:
    """A shell line wrapped to `width` columns so that it still runs when copied from the PDF: a break
    falls between words and ends its line with ` \\`; a word too long for a line (a deep path) is cut
    into quoted pieces that the shell joins again (`'piece'\\` then the rest at column 0, since an
    indent would split the word); a comment goes on as comments. A break inside quotes would have
    put the line break into the path. Characters the PDF would not show are spelled out as for
    `_shell_word`."""
    if _columns(line) <= width and all(_seen(char, pdf=True) for char in line):
        return [line]
    if line.lstrip().startswith("#"):  # textwrap counts characters: leave room for the wide ones
        line = _spelled(line, pdf=True)
        room = max(20, width - (_columns(line) - len(line)))
        return textwrap.wrap(line, room, subsequent_indent="#   ", break_on_hyphens=False)
    try:
        words = _shell_words(line)
    except ValueError:  # not shell words (an odd old record): cut as text
        wrapped = textwrap.wrap(_spelled(line, pdf=True), width - 2, subsequent_indent="    ", break_on_hyphens=False)
        return [text + " \\" for text in wrapped[:-1]] + wrapped[-1:]
    lines, current = [], ""
    for word, operator in words:
        quoted = word if operator else _shell_word(word, pdf=True)
        if current and _columns(current) + 1 + _columns(quoted) <= width - 2:
            current += " " + quoted
            continue
        if current:
            lines.append(current + " \\")
            current = "    "
        if _columns(current) + _columns(quoted) <= width - 2:
            current += quoted
            continue
        first, *middle, last = _quoted_pieces(word, width - 2 - _columns(current), width - 2)
        lines += [current + first + "\\"] + [piece + "\\" for piece in middle]
        current = last
    return lines + [current]


def _quoted_pieces(word: str, first_room: int, room: int) -> list[str]:
    """`word` cut into shell-quoted pieces, the first at most `first_room` long and the others `room`:
    two or more, as `word` quoted needs more than `first_room`."""
    pieces, piece = [], ""
    for char in word:
        if piece and _columns(_shell_word(piece + char, pdf=True)) > (room if pieces else first_room):
            pieces.append(_shell_word(piece, pdf=True))
            piece = ""
        piece += char
    return pieces + [_shell_word(piece, pdf=True)]


# ---------------------------------------------------------------------------------------------
# PDF (reportlab platypus)


@dataclass
class PdfLayout:
    pages: int
    main_pages: int  # the page the main part ends on
    extra_pages: float  # pages the extras take, the last one counted by the fraction used
    scale: float  # the figure scale that made it fit
    dropped_figures: int
    commands_left_out: bool = False  # the replication's commands, too long for the pages (HTML and Markdown keep them)


def _pixels(path: Path) -> tuple[int, int]:
    from PIL import Image as PILImage

    with PILImage.open(path) as im:
        return im.size


def _grid_figures(blocks: list[Any]) -> list[Figure]:
    """The figures of the FigureGrids in the order the PDF drops them when short of room: the last
    of each grid first, round robin, so that a long grid loses figures before a short one."""
    grids = [b.figures for b in blocks if isinstance(b, FigureGrid)]
    ranked = [(position, g, figure) for g, figures in enumerate(grids) for position, figure in enumerate(figures)]
    return [figure for _, _, figure in sorted(ranked, key=lambda t: (-t[0], t[1]))]


# The PDF's fonts: the standard ones every reader has, which encode cp1252 only, and DejaVu (shipped
# with matplotlib), embedded when the text holds more (a path with Ł, Greek or Cyrillic)
_STANDARD_FONTS = {"regular": "Helvetica", "bold": "Helvetica-Bold", "italic": "Helvetica-Oblique", "mono": "Courier"}
_UNICODE_FONTS = {"regular": "DejaVuSans", "bold": "DejaVuSans-Bold", "italic": "DejaVuSans-Oblique",
                  "bold_italic": "DejaVuSans-BoldOblique", "mono": "DejaVuSansMono"}


def _pdf_fonts(doc: Document) -> dict[str, str]:
    """The standard fonts when they can show every character of `doc`, else DejaVu (which lacks CJK, set
    apart by _pdf_escape, and Devanagari, Thai and most emoji, spelled out by it: see `_shows`)."""
    try:
        render_markdown(doc)[0].encode("cp1252")
        return _STANDARD_FONTS
    except UnicodeEncodeError:
        pass
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont

    for name in _UNICODE_FONTS.values():
        if name not in pdfmetrics.getRegisteredFontNames():
            pdfmetrics.registerFont(TTFont(name, str(_dejavu_file(name))))
    fonts = _UNICODE_FONTS
    pdfmetrics.registerFontFamily(fonts["regular"], normal=fonts["regular"], bold=fonts["bold"],
                                  italic=fonts["italic"], boldItalic=fonts["bold_italic"])
    return fonts


def _dejavu_file(name: str) -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / f"{name}.ttf"


@functools.cache
def _glyphs(mono: bool) -> frozenset[int]:
    """The code points that the PDF's DejaVu monospace face, or else every one of its other faces, has a glyph for."""
    from reportlab.pdfbase.ttfonts import TTFont

    faces = [name for key, name in _UNICODE_FONTS.items() if (key == "mono") == mono]
    return frozenset.intersection(*(frozenset(TTFont(name, str(_dejavu_file(name))).face.charToGlyph)
                                    for name in faces))


def _shows(char: str, mono: bool = False) -> bool:
    """Whether the PDF shows `char` (not a control character) as itself, set in its monospace face or in
    the others: DejaVu has it (its faces cover the standard fonts' cp1252), or it is CJK, set in Adobe's
    fonts. Otherwise it would be an empty box: Devanagari, Thai, most emoji; in monospace Hebrew too."""
    return char.isascii() or bool(_CJK.match(char)) or ord(char) in _glyphs(mono)


# Chinese, Japanese and Korean script: Adobe's CJK fonts, which PDF readers supply (nothing is embedded):
# Japanese when the run holds kana, Korean for Hangul, else Simplified Chinese.
_CJK = re.compile("[\u1100-\u11ff\u2e80-\u9fff\ua960-\ua97f\uac00-\ud7ff\uf900-\ufaff\ufe30-\ufe4f"
                  "\uff00-\uffef\U00020000-\U0003134f]+")
_KANA = re.compile("[\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f]")
_HANGUL = re.compile("[\u1100-\u11ff\u3130-\u318f\ua960-\ua97f\uac00-\ud7ff]")


def _pdf_escape(text: str, mono: bool = False, backslashes: bool | None = None) -> str:
    """Plain text as reportlab markup, each run of CJK characters set in a CJK font (DejaVu has none) and
    each character the PDF would not show (`_pdf_shows`) spelled out as its code point (`\\u0915`), which
    report.html and report.md show as it is; once one is, each backslash is spelled too (`\\\\`), so that a
    typed `\\u0915` stays apart (`backslashes`: as `_spelled_unless`)."""
    def font(match: re.Match) -> str:
        run = match.group(0)
        name = "HeiseiMin-W3" if _KANA.search(run) else "HYSMyeongJo-Medium" if _HANGUL.search(run) else "STSong-Light"
        _register_cid_font(name)
        return f'<font face="{name}">{run}</font>'

    text = _spelled_unless(text, lambda char: _pdf_shows(char, mono), backslashes)
    return _CJK.sub(font, html.escape(text, quote=False))


def _pdf_shows(char: str, mono: bool) -> bool:
    """Whether the PDF's text keeps `char` as it is: a newline (a code block's line break), or one it shows. Other
    control characters are spelled: a tab would read as a space, and U+0085, which the fonts lack, not at all."""
    return char == "\n" or (not _CONTROL.match(char) and _shows(char, mono))


def _pdf_markup(text: str, mono_font: str) -> str:
    """Markdown text (a paragraph, a caption, a cell) as reportlab markup, code spans in `mono_font`. When
    any of its pieces spells a character, every piece spells its backslashes: an escaped `\\` or a code
    span is a piece of its own."""
    plain, kept = _held(text)
    spells = (not all(_pdf_shows(char, False) for char in _HELD.sub("", plain))
              or not all(_pdf_shows(char, is_code) for is_code, literal in kept for char in literal))
    return _inline(text, lambda s: _pdf_escape(s, backslashes=spells), lambda s: f"<b>{s}</b>",
                   lambda s: f'<font face="{mono_font}">{_pdf_escape(s, mono=True, backslashes=spells)}</font>')


def _register_cid_font(name: str) -> None:
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.cidfonts import UnicodeCIDFont

    if name not in pdfmetrics.getRegisteredFontNames():
        pdfmetrics.registerFont(UnicodeCIDFont(name))


def render_pdf(doc: Document, main_scale: float = 1.0, extra_scale: float = 1.0, drop: int = 0,
               draft: bool = False) -> tuple[bytes, PdfLayout]:
    """Lay the document out on A4 with figures scaled by `main_scale` / `extra_scale`, leaving out
    the `drop` grid figures `_grid_figures` puts first; the layout says where each part ended.
    A draft puts blank boxes of the same size in place of the images: the same layout, much faster."""
    from reportlab.lib import colors
    from reportlab.lib.enums import TA_CENTER, TA_LEFT, TA_RIGHT
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import ParagraphStyle
    from reportlab.lib.units import cm
    from reportlab.platypus import (Flowable, Image, KeepTogether, PageBreak, Paragraph, SimpleDocTemplate, Spacer,
                                    XPreformatted)
    from reportlab.platypus import Table as RLTable
    from reportlab.platypus import TableStyle

    fonts = _pdf_fonts(doc)
    base = ParagraphStyle("base", fontName=fonts["regular"], fontSize=8.4, leading=10.4, alignment=TA_LEFT,
                          spaceAfter=3)
    styles = {
        "title": ParagraphStyle("title", base, fontName=fonts["bold"], fontSize=13, leading=16, spaceAfter=3),
        "h1": ParagraphStyle("h1", base, fontName=fonts["bold"], fontSize=10.5, leading=13, spaceBefore=5,
                             spaceAfter=2, keepWithNext=1),
        "small": ParagraphStyle("small", base, fontSize=8, leading=10),
        "caption": ParagraphStyle("caption", base, fontName=fonts["italic"], fontSize=7.3, leading=8.8,
                                  spaceAfter=4, textColor=colors.HexColor("#333333")),
        "bullet": ParagraphStyle("bullet", base, leftIndent=9, bulletIndent=0, spaceAfter=1.5),
        "code": ParagraphStyle("code", base, fontName=fonts["mono"], fontSize=7, leading=8.4,
                               backColor=colors.HexColor("#f3f3f3"), borderPadding=3, spaceBefore=2, spaceAfter=6),
    }

    def markup(text: str) -> str:
        return _pdf_markup(text, fonts["mono"])

    buffer = io.BytesIO()
    margin = 1.5 * cm
    template = SimpleDocTemplate(buffer, pagesize=A4, leftMargin=margin, rightMargin=margin, topMargin=1.3 * cm,
                                 bottomMargin=1.4 * cm, title=doc.title, author="ferkit")
    full_width, height = template.width - 12, template.height - 12  # less the frame's padding
    marks: dict[str, tuple[int, float]] = {}
    counters = {"table": 0, "figure": 0}
    dropped = {id(f) for f in _grid_figures(doc.extras)[:drop]}

    class Mark(Flowable):
        """Zero-size: records the page and height where the flow reached it."""

        def __init__(self, name: str):
            super().__init__()
            self.name = name

        def wrap(self, *args: Any) -> tuple[float, float]:
            return 0, 0

        def drawOn(self, canvas: Any, x: float, y: float, _sW: float = 0) -> None:
            marks[self.name] = (canvas.getPageNumber(), y)

    def image(fig: Figure, max_width: float, scale: float) -> Flowable:
        px_w, px_h = _pixels(fig.path)
        w = max_width * fig.width * scale
        h = w * px_h / px_w
        limit = height * fig.max_height * scale
        if h > limit:
            w, h = w * limit / h, limit
        if draft:
            box = Spacer(w, h)
            box.hAlign = "CENTER"
            return box
        picture = Image(str(fig.path), width=w, height=h)
        picture.hAlign = "CENTER"
        return picture

    def caption(kind: str, text: str) -> Paragraph:
        counters[kind] += 1
        return Paragraph(f"<b>{kind.capitalize()} {counters[kind]}.</b> {markup(text)}", styles["caption"])

    def table(block: Table, width: float, nested: bool) -> list[Any]:
        cell = ParagraphStyle("cell", base, fontSize=block.font, leading=block.font * 1.2, spaceAfter=0)
        right = ParagraphStyle("right", cell, alignment=TA_RIGHT)
        numeric = [i > 0 and _numeric_column(block, i) for i in range(len(block.header))]
        data = [[Paragraph(f"<b>{markup(h)}</b>", right if numeric[i] else cell) for i, h in enumerate(block.header)]]
        data += [[Paragraph(markup(c), right if numeric[i] else cell) for i, c in enumerate(row)] for row in block.rows]
        widths = [f * width for f in block.widths] if block.widths else None
        grid = RLTable(data, colWidths=widths, repeatRows=1, hAlign="LEFT")
        grid.setStyle(TableStyle([
            ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e4e8ee")),
            ("LINEBELOW", (0, 0), (-1, 0), 0.6, colors.HexColor("#7a869a")),
            ("LINEBELOW", (0, -1), (-1, -1), 0.6, colors.HexColor("#7a869a")),
            ("ROWBACKGROUNDS", (0, 1), (-1, -1), [colors.white, colors.HexColor("#f6f7f9")]),
            ("VALIGN", (0, 0), (-1, -1), "TOP"),
            ("TOPPADDING", (0, 0), (-1, -1), 1.2), ("BOTTOMPADDING", (0, 0), (-1, -1), 1.2),
            ("LEFTPADDING", (0, 0), (-1, -1), 3), ("RIGHTPADDING", (0, 0), (-1, -1), 3),
        ]))
        if block.group:
            grid.setStyle(TableStyle([("LINEBEFORE", (i, 0), (i, -1), 0.5, colors.HexColor("#b8c0cc"))
                                      for i in range(block.group, len(block.header), block.group)] +
                                     [("LEFTPADDING", (i, 0), (i, -1), 6)
                                      for i in range(block.group, len(block.header), block.group)]))
        head = [caption("table", block.caption)] if block.caption else []
        if nested:  # inside a SideBySide cell, where KeepTogether cannot measure
            return head + [grid, Spacer(1, 6)]
        if len(block.rows) < 25:
            return [head + [grid, Spacer(1, 5)]]  # a group: kept together
        return head + [grid, Spacer(1, 5)]  # too long for one page: it splits, its header row repeated

    def figure_grid(figures: list[Figure], scale: float, width: float) -> list[Any]:
        rows, pending = [], []
        for fig in figures:
            px_w, px_h = _pixels(fig.path)
            if px_w / px_h >= 1.6:
                rows.append([fig])
            else:
                pending.append(fig)
                if len(pending) == 2:
                    rows.append(pending)
                    pending = []
        if pending:
            rows.append(pending)
        story = []
        for row in rows:
            if len(row) == 1:
                story.append([image(row[0], width, scale), caption("figure", row[0].caption)])
            else:
                cells = [[image(f, width / 2 - 6, scale), caption("figure", f.caption)] for f in row]
                grid = RLTable([cells], colWidths=[width / 2] * 2, hAlign="LEFT")
                grid.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "BOTTOM"),
                                          ("LEFTPADDING", (0, 0), (-1, -1), 0), ("RIGHTPADDING", (0, 0), (-1, -1), 6),
                                          ("TOPPADDING", (0, 0), (-1, -1), 0), ("BOTTOMPADDING", (0, 0), (-1, -1), 0)]))
                story.append(grid)
        return story

    def flow(blocks: list[Any], scale: float, width: float = full_width, nested: bool = False) -> list[Any]:
        story: list[Any] = []
        for block in blocks:
            if isinstance(block, Heading):
                story.append(Paragraph(markup(block.text), styles["title" if block.level == 0 else "h1"]))
            elif isinstance(block, Para):
                style = styles["small"] if block.small else base
                if block.keep_with_next:
                    style = ParagraphStyle("keep", style, keepWithNext=1)
                story.append(Paragraph(markup(block.text), style))
            elif isinstance(block, Bullets):
                story += [Paragraph(markup(item), styles["bullet"], bulletText="•") for item in block.items]
            elif isinstance(block, Shell):  # in the PDF, Code is only in Details, which it leaves out
                chars = int((width - 8) / (0.6 * styles["code"].fontSize))
                lines = [wrapped for line in block.lines for wrapped in _shell_lines(line, chars)]
                story.append(XPreformatted(_pdf_escape("\n".join(lines), mono=True), styles["code"]))
            elif isinstance(block, Table):
                story += table(block, width, nested)
            elif isinstance(block, Figure):
                pair = [image(block, width, scale), caption("figure", block.caption)]
                story += pair if nested else [pair]
            elif isinstance(block, FigureGrid):
                kept = [f for f in block.figures if id(f) not in dropped]
                story += figure_grid(kept, scale, width)
                if len(kept) < len(block.figures):
                    story.append(Paragraph(f"{len(block.figures) - len(kept)} more figure(s) from this folder are in "
                                           "report.html and report.md.", styles["caption"]))
            elif isinstance(block, SideBySide):
                left_width = width * block.split - 6
                columns = RLTable([[flow(block.left, scale, left_width, True),
                                    flow(block.right, scale, width - left_width - 12, True)]],
                                  colWidths=[left_width + 12, width - left_width - 12], hAlign="LEFT")
                columns.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"),
                                             ("LEFTPADDING", (0, 0), (-1, -1), 0),
                                             ("RIGHTPADDING", (0, 0), (-1, -1), 0)]))
                story += [columns, Spacer(1, 5)]
            # Details: HTML and Markdown only
        return kept_together(story)

    def kept_together(story: list[Any]) -> list[Any]:
        """`story` with each group (a list of flowables) in a KeepTogether, joined by the headings and
        intros before it that keep with what follows: reportlab's keepWithNext does not join a
        KeepTogether, and would leave them at the foot of a page."""
        joined: list[Any] = []
        for item in story:
            if isinstance(item, list):
                lead = []
                while joined and joined[-1].getKeepWithNext():
                    lead.insert(0, joined.pop())
                item = KeepTogether(lead + item)
            joined.append(item)
        return joined

    footer_style = ParagraphStyle("footer", base, fontSize=7, leading=8, alignment=TA_CENTER,
                                  textColor=colors.HexColor("#666666"))

    def footer(canvas: Any, document: Any) -> None:
        title = doc.title if len(doc.title) <= 110 else doc.title[:109] + "…"  # one line within the margins
        line = Paragraph(_pdf_escape(f"{title}  ·  page {document.page}"), footer_style)
        line.wrap(A4[0] - 2 * margin, 1 * cm)
        line.drawOn(canvas, margin, 0.8 * cm - 2)

    story = flow(doc.main, main_scale) + [Mark("main")]
    if doc.extras:
        story += [PageBreak()] + flow(doc.extras, extra_scale) + [Mark("extras")]
    template.build(story, onFirstPage=footer, onLaterPages=footer)
    main_page = marks["main"][0]
    if doc.extras:
        last_page, y = marks["extras"]
        used = (template.bottomMargin + template.height - y) / template.height
        extra_pages, pages = (last_page - main_page - 1) + used, last_page
    else:
        extra_pages, pages = 0.0, main_page
    return buffer.getvalue(), PdfLayout(pages, main_page, round(extra_pages, 2), min(main_scale, extra_scale), drop)


def _without_commands(doc: Document) -> Document:
    """`doc` with the replication's commands replaced by a pointer to the files that hold them: for
    paths so long (hundreds of characters, each written several times) that the commands would take
    a page of their own."""
    pointer = Para("The commands that replicate this run are in report.md and report.html beside this PDF: they "
                   f"do not fit within its {MAIN_PAGES} pages.")
    return Document(doc.title, [pointer if isinstance(block, Shell) else block for block in doc.main], doc.extras)


def _fit_main(doc: Document) -> tuple[Document, PdfLayout, float] | None:
    """`doc`, the layout of its main part and the largest figure scale at which that part fits its
    pages; None if none does."""
    for scale in _FIGURE_SCALES:
        _, layout = render_pdf(Document(doc.title, doc.main), scale, draft=True)
        if layout.main_pages <= MAIN_PAGES:
            return doc, layout, scale
    return None


def layout_pdf(doc: Document) -> tuple[bytes, PdfLayout]:
    """The PDF within the page limits: figures shrink step by step (main part first, then extras);
    if the main part still overflows at the smallest size, the replication's commands are left to
    HTML and Markdown; if the extras do, figures of the extra folders are left out of the PDF (they
    stay in HTML and Markdown), as few as will do, and the rest are shown at `_DROP_SCALE`. Raises
    if nothing fits."""
    fitted = _fit_main(doc) or _fit_main(_without_commands(doc))
    if fitted is None:
        raise FerkitError(f"the main part of the report needs more than {MAIN_PAGES} pages, even with figures at "
                          f"{_FIGURE_SCALES[-1]:.0%} of their size and without the replication's commands")
    doc, layout, main_scale = fitted
    if not doc.extras:
        return _final(doc, layout, main_scale)

    def fits(scale: float, drop: int = 0) -> PdfLayout | None:
        _, layout = render_pdf(doc, main_scale, scale, drop, draft=True)
        return layout if layout.extra_pages <= EXTRA_PAGES else None

    for scale in _FIGURE_SCALES:
        if (result := fits(scale)) is not None:
            return _final(doc, result, main_scale, scale)
    # The fewest figures to leave out at a legible scale, by bisection (fewer figures, fewer pages).
    low, high = 0, len(_grid_figures(doc.extras))
    best = fits(_DROP_SCALE, high)
    if best is None:
        raise FerkitError(f"the extras of the report need more than {EXTRA_PAGES} pages even without their figures; "
                          "leave out --features or --compare")
    while high - low > 1:
        middle = (low + high) // 2
        if (result := fits(_DROP_SCALE, middle)) is not None:
            high, best = middle, result
        else:
            low = middle
    return _final(doc, best, main_scale, _DROP_SCALE)


def _final(doc: Document, chosen: PdfLayout, main_scale: float, extra_scale: float = 1.0) -> tuple[bytes, PdfLayout]:
    """Render with the images the layout the drafts chose, and check that it came out the same."""
    pdf, layout = render_pdf(doc, main_scale, extra_scale, chosen.dropped_figures)
    layout.commands_left_out = not any(isinstance(block, Shell) for block in doc.main)
    if layout.main_pages > MAIN_PAGES or layout.extra_pages > EXTRA_PAGES:
        raise FerkitError(f"the report's PDF came out with a main part of {layout.main_pages} pages (limit "
                          f"{MAIN_PAGES}) and {layout.extra_pages:.2f} pages of extras (limit {EXTRA_PAGES})")
    return pdf, layout


# ---------------------------------------------------------------------------------------------
# HTML (one file, images embedded)


_CSS = """
body{font:14px/1.45 -apple-system,'Segoe UI',Helvetica,Arial,sans-serif;color:#1d1d1f}
body{max-width:980px;margin:2em auto;padding:0 1em}
h1{font-size:1.5em;margin:.2em 0}
h2{font-size:1.2em;margin:1.4em 0 .4em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.3em 0 1em;font-size:.86em}
th,td{padding:2px 8px;border-bottom:1px solid #e3e3e3;text-align:left;vertical-align:top}
th{background:#e4e8ee}
.num{text-align:right}
tr:nth-child(even) td{background:#f7f8fa}
caption{caption-side:top;text-align:left;font-style:italic;padding:2px 0;color:#333}
code,pre{font-family:Menlo,Consolas,monospace;font-size:.9em}
pre{background:#f3f3f3;padding:.6em;white-space:pre-wrap;word-break:break-all}
figure{margin:.6em 0 1.2em}
figure img{max-width:100%}
figcaption{font-style:italic;font-size:.88em;color:#333}
.grid{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-end}
.grid figure{flex:1 1 45%}
.cols{display:flex;gap:2em;flex-wrap:wrap;align-items:flex-start}
.extras{border-top:3px double #aaa;margin-top:2em}
@media print{.extras{page-break-before:always}}
"""


def render_html(doc: Document) -> str:
    counters = {"table": 0, "figure": 0}

    def markup(text: str) -> str:
        return _inline(text, lambda s: html.escape(s, quote=False), lambda s: f"<b>{s}</b>",
                       lambda s: f"<code>{html.escape(s, quote=False)}</code>")

    def figure(fig: Figure) -> str:
        counters["figure"] += 1
        data = base64.b64encode(fig.path.read_bytes()).decode("ascii")
        return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(_plain(fig.caption))}">'
                f'<figcaption><b>Figure {counters["figure"]}.</b> {markup(fig.caption)}</figcaption></figure>')

    def blocks(items: list[Any]) -> list[str]:
        out = []
        for block in items:
            if isinstance(block, Heading):
                tag = "h1" if block.level == 0 else "h2"
                out.append(f"<{tag}>{markup(block.text)}</{tag}>")
            elif isinstance(block, Para):
                out.append(f"<p>{markup(block.text)}</p>")
            elif isinstance(block, Bullets):
                out.append("<ul>" + "".join(f"<li>{markup(i)}</li>" for i in block.items) + "</ul>")
            elif isinstance(block, (Code, Shell)):
                out.append(f"<pre>{html.escape(block.text)}</pre>")
            elif isinstance(block, Table):
                caption = ""
                if block.caption:
                    counters["table"] += 1
                    caption = f"<caption><b>Table {counters['table']}.</b> {markup(block.caption)}</caption>"
                right = [' class="num"' if i > 0 and _numeric_column(block, i) else ""
                         for i in range(len(block.header))]
                head = "".join(f"<th{right[i]}>{markup(h)}</th>" for i, h in enumerate(block.header))
                body = "".join("<tr>" + "".join(f"<td{right[i]}>{markup(c)}</td>" for i, c in enumerate(row)) + "</tr>"
                               for row in block.rows)
                out.append(f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            elif isinstance(block, Figure):
                out.append(figure(block))
            elif isinstance(block, FigureGrid):
                out.append('<div class="grid">' + "".join(figure(f) for f in block.figures) + "</div>")
            elif isinstance(block, SideBySide):
                out.append('<div class="cols"><div>' + "".join(blocks(block.left)) + "</div><div>" +
                           "".join(blocks(block.right)) + "</div></div>")
            elif isinstance(block, Details):
                out.append(f"<details><summary>{markup(block.summary)}</summary>" + "".join(blocks(block.blocks)) +
                           "</details>")
        return out

    body = blocks(doc.main)
    if doc.extras:
        body.append('<section class="extras">' + "\n".join(blocks(doc.extras)) + "</section>")
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(doc.title)}'
            f"</title>\n<style>{_CSS}</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n")


# ---------------------------------------------------------------------------------------------
# Markdown (figures copied beside it)


def render_markdown(doc: Document) -> tuple[str, dict[str, Path]]:
    """The Markdown text and the figures it links: {relative path: source file}."""
    counters = {"table": 0, "figure": 0}
    files: dict[str, Path] = {}

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ") or " "

    def figure(fig: Figure) -> list[str]:
        counters["figure"] += 1
        relative = f"figures/{fig.name}"
        files[relative] = fig.path
        return [f"![{_plain(fig.caption)}](<{relative}>)" if re.search(r"[\s()<>]", relative) else
                f"![{_plain(fig.caption)}]({relative})", "", f"*Figure {counters['figure']}. {fig.caption}*", ""]

    def blocks(items: list[Any]) -> list[str]:
        out: list[str] = []
        for block in items:
            if isinstance(block, Heading):
                out += [("# " if block.level == 0 else "## ") + block.text, ""]
            elif isinstance(block, Para):
                out += [block.text, ""]
            elif isinstance(block, Bullets):
                out += [f"- {item}" for item in block.items] + [""]
            elif isinstance(block, (Code, Shell)):
                out += ["```", block.text, "```", ""]
            elif isinstance(block, Table):
                if block.caption:
                    counters["table"] += 1
                    out += [f"**Table {counters['table']}.** {block.caption}", ""]
                out.append("| " + " | ".join(cell(h) for h in block.header) + " |")
                out.append("|" + "|".join(" --- " if i == 0 or not _numeric_column(block, i) else " ---: "
                                          for i in range(len(block.header))) + "|")
                out += ["| " + " | ".join(cell(c) for c in row) + " |" for row in block.rows]
                out.append("")
            elif isinstance(block, Figure):
                out += figure(block)
            elif isinstance(block, FigureGrid):
                for fig in block.figures:
                    out += figure(fig)
            elif isinstance(block, SideBySide):
                out += blocks(block.left) + blocks(block.right)
            elif isinstance(block, Details):
                out += ["<details>", f"<summary>{html.escape(_plain(block.summary))}</summary>", ""]
                out += blocks(block.blocks) + ["</details>", ""]
        return out

    lines = blocks(doc.main)
    if doc.extras:
        lines += ["---", ""] + blocks(doc.extras)
    return "\n".join(lines).rstrip() + "\n", files


def _numeric_column(table: Table, i: int) -> bool:
    values = [row[i] for row in table.rows if i < len(row) and row[i] not in ("", "-")]
    return bool(values) and all(re.fullmatch(r"[-+]?[\d,]*\.?\d+%?", v) for v in values)


# ---------------------------------------------------------------------------------------------
# Entry point


def build_report(run_dir: str | os.PathLike, out: str | os.PathLike, mlp: str | os.PathLike | None = None,
                 features: str | os.PathLike | None = None, compare: str | os.PathLike | None = None) -> dict[str, Any]:
    """Write report.pdf, report.html and report.md (with figures/) for a trained, evaluated run.
    `features` needs a CNN run, and `out` may not lie inside the `features` or `compare` folder. Returns the
    files written, the page counts and scores, and `notes` to show the user (what the PDF had to leave out).

    Example: ``ferkit report runs/cnn --mlp runs/mlp --features runs/cnn/features --out runs/cnn/report``
    """
    run = read_run(run_dir)
    if features is not None and run.info["model"].get("name") != "cnn":
        raise FerkitError(f"--features {features}: activation maps come from a CNN's last conv layer, and {run_dir} "
                          f"is a run of the `{run.info['model'].get('name')}` model; report on the CNN run")
    mlp_run = read_run(mlp, "--mlp") if mlp is not None else None
    if mlp_run is not None:
        _compared_evaluations(run, mlp_run)  # stop before anything is written
    extras: dict[str, Extra | None] = {}
    for option, folder, json_name, made_by in (
            ("--features", features, "features.json", f"ferkit features {shlex.quote(str(run_dir))}"),
            ("--compare", compare, "comparison.json", f"ferkit compare {shlex.quote(str(run_dir))} LABELS.csv")):
        extras[option] = read_extra(folder, option, json_name, made_by) if folder is not None else None
        if extras[option] is not None:
            require_extra_of(run, extras[option], option, made_by)
    for option, extra in extras.items():
        if extra is not None and Path(os.path.realpath(out)).is_relative_to(os.path.realpath(extra.path)):
            raise FerkitError(f"--out {out}: lies in the {option} folder {extra.path}, whose figures the report reads "
                              "(the next report would take its own figures for that folder's); name another folder")
        if extra is not None and Path(os.path.realpath(extra.path)).is_relative_to(os.path.realpath(Path(out) /
                                                                                                  "figures")):
            raise FerkitError(f"{option} {extra.path}: lies in {Path(out) / 'figures'}, where the report writes its "
                              "own figures, which the next report would take for that folder's; keep the "
                              f"{option} folder elsewhere")
    given = (("--mlp", mlp), ("--features", features), ("--compare", compare), ("--out", out))
    command = shlex.join(["ferkit", "report", str(run_dir)] +
                         [word for flag, value in given if value is not None for word in (flag, str(value))])
    target = output_folder(out)
    # ferkit's report says who built it: in its text, and as the PDF's author
    require_own_files(target, {"report.md": holds(b"Built by ferkit"), "report.html": holds(b"Built by ferkit"),
                               "report.pdf": holds(b"/Author (ferkit)")}, "ferkit report")
    # the report's own figures are drawn apart and copied in with the rest once the layout holds: a report
    # that fails or is cut short leaves the previous one whole
    with tempfile.TemporaryDirectory(prefix="ferkit-report-") as drawn:
        doc = build_document(run, Path(drawn), mlp_run, extras["--features"], extras["--compare"], command)
        pdf, layout = layout_pdf(doc)
        markdown, files = render_markdown(doc)
        page = render_html(doc)
        for relative, source in files.items():
            if (target / relative).resolve() != source.resolve():
                with atomic_path(target / relative) as tmp:
                    shutil.copyfile(source, tmp)
    write_text(target / "report.md", markdown)
    write_text(target / "report.html", page)
    with atomic_path(target / "report.pdf") as tmp:
        tmp.write_bytes(pdf)
    return {"pdf": str(target / "report.pdf"), "html": str(target / "report.html"), "md": str(target / "report.md"),
            "pages": layout.pages, "main_pages": layout.main_pages, "extra_pages": layout.extra_pages,
            "figure_scale": layout.scale, "dropped_figures": layout.dropped_figures,
            "commands_left_out": layout.commands_left_out,
            "notes": [COMMANDS_LEFT_OUT.format(md=target / "report.md")] if layout.commands_left_out else [],
            "accuracy": run.metrics["accuracy"], "macro_f1": run.metrics["macro_f1"], "evaluation": run.preferred}
