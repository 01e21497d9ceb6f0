"""Tests of `ferkit.report` and the `ferkit report` command.

A tiny CNN and a tiny MLP are trained for two epochs on a small generated dataset and evaluated;
the report is built once from them (with stand-in --features and --compare folders) and every test
reads what it wrote. The PDF is read back with pypdf to count its pages.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from reportlab.lib.pagesizes import A4
from reportlab.lib.units import cm

from ferkit import cli
from ferkit import config as configs
from ferkit import report as freport
from ferkit.data import EMOTIONS
from ferkit.errors import FerkitError
from ferkit.evaluate import evaluate
from ferkit.models import compact_layers, layer_table
from ferkit.train import train

from conftest import write_fer_csv

pypdf = pytest.importorskip("pypdf")


def fake_run(path: str | Path = "run", config: dict | None = None, info: dict | None = None,
             history: list | None = None, evals: dict | None = None, eval_dirs: dict | None = None) -> freport.Run:
    """A run as `report.load_run` reads one, holding only what a test gives it: by default nothing but an
    empty test evaluation."""
    return freport.Run(Path(path), config or {}, info or {}, history or [], {"test": {}} if evals is None else evals,
                       eval_dirs or {})


def per_class_scores(f1: float | dict[str, float], support: int | list[int] = 10) -> dict[str, dict[str, float]]:
    """metrics.json's `per_class`, each class's precision and recall equal to its F1."""
    f1s = f1 if isinstance(f1, dict) else dict.fromkeys(EMOTIONS, f1)
    supports = support if isinstance(support, list) else [support] * len(EMOTIONS)
    return {c: {"precision": f1s[c], "recall": f1s[c], "f1": f1s[c], "support": n} for c, n in zip(EMOTIONS, supports)}


TINY = {"epochs": 2, "train_limit": 64, "val_limit": 32, "batch_size": 32, "widths": "4,8", "eval_batch_size": 64}
N_FEATURE_FIGURES = 12  # more than fit in 1.5 pages: the PDF must leave some out, the HTML none


def make_csv(path: Path, seed: int = 0) -> Path:
    """A FER2013 CSV (header 'emotion, Usage, pixels') with rows of all three Usage values; the
    class sets the brightness, so that the tiny models learn something."""
    rng = np.random.default_rng(seed)
    counts = {"Training": 80, "PublicTest": 40, "PrivateTest": 42}
    images, labels, usages = [], [], []
    for usage, n in counts.items():
        for label in rng.integers(0, len(EMOTIONS), n):
            images.append(np.clip(30 * label + rng.integers(0, 60, 48 * 48), 0, 255).reshape(48, 48))
            labels.append(label)
            usages.append(usage)
    return write_fer_csv(path, np.array(images), np.array(labels), usages)


def make_extra(folder: Path, json_name: str, data: dict, figures: int) -> Path:
    folder.mkdir(parents=True)
    (folder / json_name).write_text(json.dumps(data), encoding="utf-8")
    rng = np.random.default_rng(1)
    for i in range(figures):
        pixels = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"figure_{i:02d}.png")
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FERKIT_CACHE", str(root / "cache"))
        csv_path = make_csv(root / "faces.csv")
        cnn, mlp = root / "cnn", root / "mlp"
        train(csv_path, cnn, configs.resolve(overrides=TINY), progress=False)
        evaluate(cnn, tta=True, device="cpu")
        evaluate(cnn, tta=False, device="cpu")
        mlp_settings = {k: v for k, v in TINY.items() if k != "widths"}  # the CNN's shape: refused for an MLP
        train(csv_path, mlp, configs.resolve(overrides=dict(mlp_settings, model="mlp", hidden="32")), progress=False)
        evaluate(mlp, tta=True, device="cpu")
        features = make_extra(root / "features", "features.json",
                              {"accuracy": 0.5, "layer": {"name": "last conv", "shape": [8, 24, 24]},
                               "figures": {"figure_00.png": "Mean activation per emotion"}}, N_FEATURE_FIGURES)
        compare = make_extra(root / "compare", "comparison.json",
                             {"n": 100, "human": {"accuracy": 0.655, "macro_f1": 0.61},
                              "cnn": {"accuracy": 0.62, "macro_f1": 0.58}, "kappa": {"human_vs_cnn": 0.41}}, 1)
        out = root / "out"
        result = freport.build_report(cnn, out, mlp=mlp, features=features, compare=compare)
    return {"root": root, "cnn": cnn, "mlp": mlp, "features": features, "compare": compare, "out": out,
            "result": result, "md": (out / "report.md").read_text(encoding="utf-8"),
            "html": (out / "report.html").read_text(encoding="utf-8")}


def metrics(run: Path, name: str = "test-tta") -> dict:
    return json.loads((run / "eval" / name / "metrics.json").read_text())


def page_texts(pdf: Path | bytes) -> list[str]:
    """The text of each page of a PDF file, or of a PDF in memory."""
    source = io.BytesIO(pdf) if isinstance(pdf, bytes) else str(pdf)
    return [page.extract_text() or "" for page in pypdf.PdfReader(source).pages]


def section_paragraphs(blocks: list) -> dict[str, str]:
    """The section's paragraphs by their bold lead ("Imbalance", "Procedure", ...), "" for one without."""
    paragraphs = {}
    for block in blocks:
        if isinstance(block, freport.Para):
            lead = re.match(r"\*\*(.+?)\.\*\* ", block.text)
            paragraphs[lead.group(1) if lead else ""] = block.text
    return paragraphs


# ---------------------------------------------------------------------------------------------
# What it writes


def test_writes_the_three_reports(world):
    out = world["out"]
    for name in ("report.pdf", "report.html", "report.md"):
        assert (out / name).stat().st_size > 1000
    assert (out / "report.pdf").read_bytes().startswith(b"%PDF")


def test_pdf_pages_within_limits(world):
    result = world["result"]
    pages = page_texts(world["out"] / "report.pdf")
    assert len(pages) == result["pages"]
    assert result["main_pages"] <= freport.MAIN_PAGES
    assert result["extra_pages"] <= freport.EXTRA_PAGES
    assert len(pages) <= result["main_pages"] + 2
    # the main part ends on its page; the extras begin on the next one
    replication = [i for i, text in enumerate(pages) if "Replication" in text]
    extras = [i for i, text in enumerate(pages) if "Extras" in text]
    assert replication and replication[0] + 1 <= result["main_pages"]
    assert extras and extras[0] == result["main_pages"]


def test_main_sections_present(world):
    md = world["md"]
    for heading in ("1  Data", "2  Architecture", "3  Training", "4  Test performance", "5  Replication",
                    "6  CNN vs MLP baseline", "7  Activation figures", "8  Human vs CNN"):
        assert f"\n## {heading}\n" in md
    assert "\n---\n\n# Extras\n\n## 6  CNN vs MLP baseline\n" in md  # the extras under a title of their own
    assert "Mean activation per emotion" in md  # the caption features.json gives its figure
    run_info = json.loads((world["cnn"] / "run.json").read_text())
    assert run_info["data"]["sha256"] in md
    assert "Challenges met" in md and "Early stopping" in md and "The rare class" in md
    assert "ferkit evaluate" in md and "--config" in md


def test_numbers_equal_the_metrics(world):
    tta, plain = metrics(world["cnn"], "test-tta"), metrics(world["cnn"], "test")
    mlp = metrics(world["mlp"], "test-tta")
    for text in (world["md"], world["html"]):
        for m in (tta, plain):
            for key in ("accuracy", "macro_f1", "weighted_f1"):
                assert f"{m[key]:.4f}" in text, key
        assert f"accuracy {tta['accuracy']:.4f}" in text  # the summary line quotes the TTA numbers
        assert f"macro F1 {tta['macro_f1']:.4f}" in text
        assert f"{mlp['accuracy']:.4f}" in text and f"{mlp['macro_f1']:.4f}" in text
        for name in EMOTIONS:
            assert f"{tta['per_class'][name]['f1']:.4f}" in text
    assert world["result"]["accuracy"] == tta["accuracy"]
    assert world["result"]["evaluation"] == "test-tta"


def test_pdf_holds_the_same_numbers(world):
    text = " ".join(page_texts(world["out"] / "report.pdf"))
    m = metrics(world["cnn"])
    assert f"{m['accuracy']:.4f}" in text and f"{m['macro_f1']:.4f}" in text


def test_html_is_self_contained(world):
    html = world["html"]
    sources = re.findall(r'src="([^"]*)"', html)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r"<link|<script|url\(|https?://", html)
    # every figure of the extras is in the HTML, even those the PDF had no room for
    assert len(sources) == 2 + N_FEATURE_FIGURES + 1


def test_markdown_figures_are_relative_and_copied(world):
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", world["md"])
    assert len(links) == 2 + N_FEATURE_FIGURES + 1
    for link in links:
        assert link.startswith("figures/") and not Path(link).is_absolute()
        assert (world["out"] / link).is_file()


def test_pdf_leaves_out_what_does_not_fit(world):
    assert world["result"]["dropped_figures"] > 0
    assert "more figure(s) from this folder are in report.html and report.md" in \
        " ".join(page_texts(world["out"] / "report.pdf"))


def test_layer_table_counts_every_parameter(world):
    from ferkit.train import load_model

    model, _ = load_model(world["cnn"])
    rows = layer_table(model)
    total = sum(p.numel() for p in model.parameters())
    assert sum(r["parameters"] for r in rows) == total
    assert rows[0]["type"] == "Conv2d" and rows[0]["output"] == (1, 4, 48, 48)
    assert rows[-1]["output"] == (1, len(EMOTIONS))
    compact = compact_layers(rows)
    assert sum(b["parameters"] for b in compact) == total
    assert any("no module" in b["layer"] for b in compact)  # the global pooling of forward()
    assert f"{total:,}" in world["md"]


def test_compact_layers_collapse_repeats():
    from ferkit.models import get_model

    model = get_model("cnn", widths=[8, 16], depth=5, residual=True)
    compact = compact_layers(layer_table(model))
    assert [b["count"] for b in compact if b["count"] > 1] == [2, 2]  # two residual blocks in each stage
    assert sum(b["parameters"] for b in compact) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("residual", [True, False])
def test_the_architecture_table_writes_a_residual_block_as_its_sum(residual):
    kwargs = {"widths": [8], "depth": 3, "residual": residual, "residual_block": "resnet"}
    run = fake_run(info={"model": {"name": "cnn", "kwargs": kwargs}}, evals={})
    blocks, _ = freport._architecture_section(run)
    table = next(block for block in blocks if isinstance(block, freport.Table))
    assert (["2", "features.0.blocks.0", "ReLU(x + BN(conv(ReLU(BN(conv(x)))))); conv 8->8, 3×3"]
            in [row[:3] for row in table.rows]) is residual
    assert table.caption.endswith("; a residual block is one row, its output written as a function of its input x."
                                  if residual else "rows).")


@pytest.mark.parametrize("name, kwargs, dropout_rows", [
    ("cnn", {"widths": [8, 16], "dropout": 0.0}, []),
    ("cnn", {"widths": [8, 16], "dropout": 0.3}, ["Dropout p=0.3"]),
    ("mlp", {"hidden": [32, 16], "dropout": 0.0, "batch_norm": False}, []),
])
def test_layer_table_lists_only_layers_that_compute(name, kwargs, dropout_rows):
    from ferkit.models import get_model

    compact = compact_layers(layer_table(get_model(name, **kwargs)))
    layers = " | ".join(b["layer"] for b in compact)
    assert "Identity" not in layers
    assert all(row in layers for row in dropout_rows)
    assert ("Dropout" in layers) == bool(dropout_rows)


@pytest.mark.parametrize("augment, dropout, regularisers", [
    (True, 0.3, "augmentation, dropout 0.3, weight decay 0.0005, label smoothing 0.1"),
    (True, 0.0, "augmentation, weight decay 0.0005, label smoothing 0.1"),
    (False, 0.0, "weight decay 0.0005, label smoothing 0.1"),
])
def test_under_fitting_names_only_the_regularisers_in_use(augment, dropout, regularisers):
    # validation above training accuracy: the "no over-fitting" branch
    history = [{"epoch": e, "train_acc": 0.5 + e / 100, "val_acc": 0.55 + e / 100, "val_loss": 1.5 - e / 10,
                "val_macro_f1": 0.5} for e in (1, 2)]
    cfg = {"augment": augment, "dropout": dropout, "weight_decay": 5e-4, "label_smoothing": 0.1, "epochs": 2}
    run = fake_run(config=cfg, info={"finished": True, "best_epoch": 2}, history=history)
    text = next(item for item in freport._challenges(run) if item.startswith("**No over-fitting**"))
    assert f"({regularisers}) is ample" in text
    assert "training accuracy is a running mean over the epoch" in text
    assert ("on augmented batches" in text) is augment
    assert ("with dropout on" in text) is (dropout > 0)


@pytest.mark.parametrize("augment", [True, False])
def test_learning_curves_say_augmented_only_when_they_were(tmp_path, monkeypatch, augment):
    from ferkit import visualize
    from ferkit.config import TrainConfig

    history = [{"epoch": e, "train_loss": 1.5 - e / 10, "train_acc": 0.5, "val_loss": 1.4, "val_acc": 0.55,
                "val_macro_f1": 0.5, "lr": 0.05, "seconds": 10.0} for e in (1, 2)]
    titles = []
    monkeypatch.setattr(visualize, "save", lambda fig, path: titles.append(fig.axes[0].get_title()) or Path(path))
    visualize.learning_curves(history, tmp_path / "curves.png", best_epoch=2, augmented=augment)
    assert ("augmented" in titles[0]) is augment

    (tmp_path / "learning_curves.png").write_bytes(b"")
    cfg = dict(TrainConfig().to_dict(), augment=augment, epochs=2)
    run = fake_run(path=tmp_path, config=cfg, info={"best_epoch": 2}, history=history)
    caption = next(b.caption for b in freport._training_section(run) if isinstance(b, freport.Figure))
    assert ("augmented" in caption) is augment
    assert f"includes label smoothing {cfg['label_smoothing']:g} and the validation loss does not" in caption
    run = fake_run(path=tmp_path, config=dict(cfg, label_smoothing=0.0), info={"best_epoch": 2}, history=history)
    caption = next(b.caption for b in freport._training_section(run) if isinstance(b, freport.Figure))
    assert "label smoothing" not in caption


@pytest.mark.parametrize("ema", [0.0, 0.999])
def test_procedure_names_the_weight_average_only_when_there_is_one(tmp_path, ema):
    from ferkit.config import TrainConfig

    history = [{"epoch": 1, "train_loss": 1.5, "train_acc": 0.5, "val_loss": 1.4, "val_acc": 0.55,
                "val_macro_f1": 0.5, "lr": 0.05, "seconds": 10.0}]
    run = fake_run(path=tmp_path, config=dict(TrainConfig().to_dict(), ema=ema, epochs=1), info={"best_epoch": 1},
                   history=history)
    procedure = section_paragraphs(freport._training_section(run))["Procedure"]
    assert ("moving average of the trained weights, decay 0.999 per step" in procedure) is (ema > 0)


@pytest.mark.parametrize("mode", ["none", "sampler", "weighted_loss"])
def test_class_weights_shown_only_when_used(mode):
    counts = {"Training": [40, 5, 40, 70, 50, 30, 45]}
    info = {"data": {"counts": counts}, "class_weights": [1.0, 3.2, 1.0, 0.8, 0.9, 1.2, 1.0]}
    run = fake_run(config={"imbalance": mode, "augment": False}, info=info)
    blocks = freport._data_section(run)
    table = next(b for b in blocks if isinstance(b, freport.Table))
    imbalance = section_paragraphs(blocks)["Imbalance"]
    used = mode != "none"
    assert any(row[0] == "class weight" for row in table.rows) is used
    assert ("class weights" in table.caption) is used
    assert imbalance.count(f"`imbalance: {mode}`") == 1
    assert ("Nothing compensates for the imbalance" in imbalance) is not used
    assert ("Handled with" in imbalance) is used


@pytest.mark.parametrize("mode", ["none", "sampler"])
def test_rare_class_credits_rebalancing_only_when_there_is_some(mode):
    per_class = per_class_scores(0.5)
    info = {"data": {"counts": {"Training": [40, 5, 40, 70, 50, 30, 45]}}, "class_weights": [1.0] * len(EMOTIONS)}
    run = fake_run(config={"imbalance": mode}, info=info,
                   evals={"test": {"accuracy": 0.5, "macro_f1": 0.5, "per_class": per_class}})
    text = next(item for item in freport._challenges(run) if item.startswith("**The rare class**"))
    assert "on a par with the others" in text
    assert ("the rebalancing works" in text) is (mode != "none")


def test_sampler_weight_is_relative_to_the_largest_class():
    weights = [1.0, 1.705, 1.0, 0.5, 0.9, 1.2, 1.0]  # Happy, the largest class, has the smallest weight
    per_class = per_class_scores(0.5)
    info = {"data": {"counts": {"Training": [40, 5, 40, 70, 50, 30, 45]}}, "class_weights": weights}
    run = fake_run(config={"imbalance": "sampler"}, info=info,
                   evals={"test": {"accuracy": 0.5, "macro_f1": 0.5, "per_class": per_class}})
    text = next(item for item in freport._challenges(run) if item.startswith("**The rare class**"))
    assert "the sampler draws each Disgust face 3.41× as often as each Happy face" in text


def _history(train_acc: float, val_acc: float, val_macro_f1: float) -> list[dict[str, float]]:
    return [{"epoch": e, "train_acc": train_acc, "val_acc": val_acc, "val_loss": 1.9, "val_macro_f1": val_macro_f1}
            for e in (1, 2)]


@pytest.mark.parametrize("history, learned", [
    (_history(0.24, 0.25, 0.057), False),  # one class for every face: Happy, a quarter of PublicTest
    (_history(0.30, 0.25, 0.16), False),  # accuracy no better than always answering Happy
    (_history(0.30, 0.33, 0.10), False),  # macro F1 where one-class answers stay
    (_history(0.30, 0.33, 0.20), True),
])
def test_a_model_that_did_not_learn_gets_no_regularisation_advice(history, learned):
    info = {"finished": True, "best_epoch": 2,
            "data": {"counts": {"PublicTest": [10, 2, 10, 25, 20, 13, 20]}}}  # Happy: 25 of 100
    cfg = {"augment": True, "weight_decay": 5e-4, "epochs": 2}
    run = fake_run(config=cfg, info=info, history=history)
    items = freport._challenges(run)
    remark = next(item for item in items if "over-fitting" in item.lower() or "did not learn" in item)
    assert remark.startswith("**The model did not learn**") is not learned
    if not learned:
        assert "slack" not in remark and "is ample" not in remark
        assert "always answering Happy" in remark or "below 1/7" in remark
    else:
        assert remark.startswith("**No over-fitting**")


@pytest.mark.parametrize("resumes, times", [(1, "once"), (2, "twice"), (3, "3 times")])
@pytest.mark.parametrize("command, how", [
    ("/venv/bin/ferkit train faces.csv --out runs/cnn", "with `ferkit train --resume`"),
    ("/venv/bin/ferkit run faces.csv --out study", "by running its `ferkit run` study again"),
])
def test_resumes_are_told_as_run_json_records_them(resumes, times, command, how):
    info = {"resumed": ["2024-05-01T10:00:00+00:00"] * resumes, "environment": {"command": command}}
    run = fake_run(info=info)
    text = next(item for item in freport._challenges(run) if "checkpoints/last.pt" in item)
    assert text.startswith("**Resumed**: run.json records that the run was continued from checkpoints/last.pt "
                           f"{times} ({how})")
    assert "(s)" not in text and "Interruptions" not in text


@pytest.mark.parametrize("started, finished, train_seconds, wall", [
    ("2024-05-01T10:00:00+00:00", "2024-05-01T10:00:16+00:00", 16.1, "about the same wall-clock"),  # whole seconds
    ("2024-05-01T10:00:00+00:00", "2024-05-01T10:00:17+00:00", 16.1, "about the same wall-clock"),
    ("2024-05-01T10:00:00+00:00", "2024-05-01T10:00:40+00:00", 16.1, "40.0 s wall-clock"),
    ("2024-05-01T10:00:00.000+00:00", "2024-05-01T10:00:16.050+00:00", 16.1, "about the same wall-clock"),
    ("2024-05-01T10:00:00.000+00:00", "2024-05-01T10:00:17.400+00:00", 16.1, "17.4 s wall-clock"),
])
def test_wall_clock_is_never_shorter_than_the_training(tmp_path, started, finished, train_seconds, wall):
    from ferkit.config import TrainConfig

    info = {"best_epoch": 1, "started": started, "finished": finished, "train_seconds": train_seconds}
    run = fake_run(path=tmp_path, config=dict(TrainConfig().to_dict(), epochs=1), info=info)
    procedure = section_paragraphs(freport._training_section(run))["Procedure"]
    assert f"in 16.1 s of training ({wall} from start to finish, evaluation excluded)" in procedure


def test_short_durations_do_not_read_as_zero():
    assert [freport._duration(x) for x in (0.001, 0.03, 0.5, 16.14, 150)] == \
        ["< 0.01 s", "0.03 s", "0.50 s", "16.1 s", "2.5 min"]
    assert [freport._duration(x) for x in (None, 0, 0.005, 119.9, 120, 7200, 7260)] == \
        ["-", "0.00 s", "0.01 s", "119.9 s", "2.0 min", "2 h 00 min", "2 h 01 min"]  # nothing spent reads as zero
    # a figure that rounds up to the next unit's threshold is written in that unit
    assert [freport._duration(x) for x in (0.996, 119.96, 7196, 7199, 7229, 7259)] == \
        ["1.0 s", "2.0 min", "119.9 min", "2 h 00 min", "2 h 00 min", "2 h 01 min"]


def test_training_time_comes_from_the_history_to_the_millisecond():
    cnn, mlp = _fake_cnn_and_mlp()
    mlp.info["train_seconds"] = 0.0  # run.json rounds to 0.1 s
    mlp.history = [{"epoch": 1, "seconds": 0.014}, {"epoch": 2, "seconds": 0.016}]
    table = next(b for b in freport._mlp_section(cnn, mlp, 2000, 6) if isinstance(b, freport.SideBySide)).left[0]
    assert next(row for row in table.rows if row[0] == "training time")[1:] == ["1.0 s", "0.03 s"]


@pytest.mark.parametrize("folder, name", [
    ("study/cnn", "the cnn run study/cnn"),  # a `ferkit run` study's folder: the study tells it apart
    ("runs/baseline", "the cnn run baseline"),
])
def test_title_does_not_repeat_the_model_name(tmp_path, folder, name):
    run = fake_run(path=tmp_path / folder, info={"model": {"name": "cnn"}})
    assert freport._title(run) == f"Facial-expression recognition on FER2013: {name}"


def test_title_of_a_relative_run_folder_named_after_its_model(tmp_path, monkeypatch):
    (tmp_path / "study").mkdir()
    monkeypatch.chdir(tmp_path / "study")
    run = fake_run(path="cnn", info={"model": {"name": "cnn"}})
    assert freport._title(run).endswith(": the cnn run study/cnn")


def test_signed_differences_that_round_to_zero_have_no_sign():
    assert [freport._signed_pts(x) for x in (0.0004, -0.0004, -0.0, 0.012, -0.012)] == \
        ["0.0", "0.0", "0.0", "+1.2", "-1.2"]
    assert freport._relative(-0.0004, "accuracy") == "level with accuracy"
    assert freport._relative(-0.012, "accuracy") == "1.2 points below accuracy"


def _fake_evaluated_run(name: str, model: str, f1: dict[str, float], accuracy: float) -> freport.Run:
    per_class = per_class_scores(f1)
    metrics = {"name": model, "split": "PrivateTest", "n": 70, "tta": "none", "accuracy": accuracy,
               "macro_f1": float(np.mean(list(f1.values()))), "weighted_f1": accuracy, "per_class": per_class,
               "data_sha256": "a" * 64}
    info = {"model": {"name": model, "parameters": 1000}, "data": {"sha256": "a" * 64, "train_images": 64},
            "train_seconds": 1.0, "epochs_run": 2, "best_epoch": 2,
            "environment": {"command": "ferkit run d.csv --out study"}}  # a study's runs, as `ferkit run` trains them
    return fake_run(path=name, info=info, evals={"test": metrics})


def test_an_mlp_and_features_outside_a_study_are_given_the_commands_that_make_them_again(tmp_path):
    """A study's command (Section 5) trains its MLP and draws its features; for runs trained one by one the
    report named no command for either."""
    cnn, mlp = _fake_cnn_and_mlp()
    for run in (cnn, mlp):
        run.info.update(environment={"command": f"ferkit train d.csv --out {run.path}"}, data={"path": "d.csv"})
    para = freport._mlp_section(cnn, mlp, 2000, 6)[1]
    assert para.text.endswith(" To train it again: `ferkit train d.csv --out mlp-replica --config mlp/config.yaml`.")
    features = freport.Extra(tmp_path / "f", {"n": 3, "seed": 7, "data": "copy.csv", "data_sha256": "b" * 64,
                                              "embedding": {"method": "PCA of the standardised features"}}, [])
    assert freport._features_command(cnn, features) == (f" (made by `ferkit features cnn --out {tmp_path / 'f'} "
                                                        "--data copy.csv --n 3 --seed 7 --embedding pca`)")
    cnn.info["environment"]["command"] = "ferkit run d.csv --out study"
    assert freport._features_command(cnn, features) == ""


def _fake_cnn_and_mlp() -> tuple[freport.Run, freport.Run]:
    """A CNN at 0.6 accuracy and an MLP at 0.5, each with F1 0.5 on every class."""
    f1 = {c: 0.5 for c in EMOTIONS}
    return _fake_evaluated_run("cnn", "cnn", f1, 0.6), _fake_evaluated_run("mlp", "mlp", f1, 0.5)


@pytest.mark.parametrize("cnn_gain, expected", [
    (0.0, "no class has a higher F1 with the CNN"),  # MLP better on six classes, a tie on the seventh
    (0.02, "the largest per-class F1 gain is on Disgust (+2.0 points)"),
])
def test_cnn_vs_mlp_names_a_largest_gain_only_when_there_is_one(cnn_gain, expected):
    mlp_f1 = {c: 0.5 for c in EMOTIONS}
    cnn_f1 = {c: 0.4 for c in EMOTIONS}
    cnn_f1["Disgust"] = 0.5 + cnn_gain - 0.0001  # without a gain: -0.01 points, which rounds to zero
    cnn = _fake_evaluated_run("cnn", "cnn", cnn_f1, 0.60)
    mlp = _fake_evaluated_run("mlp", "mlp", mlp_f1, 0.60004)
    blocks = freport._mlp_section(cnn, mlp, 2000, 6)
    text = next(b.text for b in blocks if isinstance(b, freport.Para))
    assert expected in text
    assert ("largest per-class F1 gain" in text) is (cnn_gain > 0)
    assert "test accuracy is level with the MLP's" in text
    per_class = blocks[-1].right[0]
    everything = text + " ".join(cell for row in per_class.rows for cell in row)
    assert "+0.0" not in everything and "-0.0" not in everything


# ---------------------------------------------------------------------------------------------
# Missing inputs


def _without_eval(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("eval"))
    return dest


def test_no_evaluation_names_the_command(world, tmp_path):
    bare = _without_eval(world["cnn"], tmp_path / "bare")
    with pytest.raises(FerkitError, match=r"ferkit evaluate .*bare --tta"):
        freport.build_report(bare, tmp_path / "out")
    assert not (tmp_path / "out" / "report.pdf").exists()


def test_the_commands_that_errors_name_are_shell_quoted(world, tmp_path):
    """`ferkit evaluate my runs/cnn --tta`, copied from the message, named the folders `my` and `runs/cnn`."""
    bare = _without_eval(world["cnn"], tmp_path / "my runs" / "it's cnn")
    with pytest.raises(FerkitError) as error:
        freport.build_report(bare, tmp_path / "out")
    assert shlex.split(re.search("`(ferkit evaluate .*)`", str(error.value)).group(1)) == [
        "ferkit", "evaluate", str(bare), "--tta"]
    with pytest.raises(FerkitError) as error:
        freport.build_report(world["cnn"], tmp_path / "out", features=tmp_path / "my features")
    assert shlex.split(re.search("make it with `(.*)`", str(error.value)).group(1)) == [
        "ferkit", "features", str(world["cnn"]), "--out", str(tmp_path / "my features")]


def test_mlp_without_metrics_names_the_command(world, tmp_path):
    bare = _without_eval(world["mlp"], tmp_path / "mlp-bare")
    with pytest.raises(FerkitError, match=r"--mlp .*mlp-bare.*ferkit evaluate"):
        freport.build_report(world["cnn"], tmp_path / "out", mlp=bare)


def test_missing_features_folder(world, tmp_path):
    with pytest.raises(FerkitError, match=r"--features .*nowhere: no such folder.*ferkit features"):
        freport.build_report(world["cnn"], tmp_path / "out", features=tmp_path / "nowhere")


@pytest.mark.parametrize("option", ["features", "compare"])
def test_a_folder_of_figures_without_its_json_is_refused(world, tmp_path, option):
    """Another run's folder or an interrupted command's figures would be filed under this run."""
    folder = make_extra(tmp_path / "figures", "notes.json", {}, 2)
    json_name = {"features": "features.json", "compare": "comparison.json"}[option]
    with pytest.raises(FerkitError, match=f"--{option} .*figures: holds no {json_name}, so it is not"):
        freport.build_report(world["cnn"], tmp_path / "out", **{option: folder})
    (folder / json_name).write_text("[1, 2]")
    with pytest.raises(FerkitError, match=f"{json_name}: not what `ferkit {option}"):
        freport.build_report(world["cnn"], tmp_path / "out", **{option: folder})


@pytest.mark.parametrize("json_name, key", [("features.json", "figures"), ("comparison.json", "files")])
def test_an_extra_shows_only_the_figures_its_json_lists(tmp_path, json_name, key):
    """`ferkit features RUN --out STUDY/data` put the data summary's samples.png and class_balance.png beside
    the features' figures, and the report showed them as activation figures."""
    folder = make_extra(tmp_path / "extra", json_name, {}, 3)  # figure_00.png to figure_02.png
    (folder / "runs" / "cnn").mkdir(parents=True)
    shutil.copyfile(folder / "figure_00.png", folder / "runs" / "cnn" / "learning_curves.png")
    (folder / json_name).write_text(json.dumps({key: ["figure_00.png", "figure_02.png", "gone.png", "x.csv"]}))
    extra = freport.read_extra(folder, "--x", json_name, "ferkit x")
    assert [p.name for p in extra.figures] == ["figure_00.png", "figure_02.png"]
    (folder / json_name).write_text(json.dumps({key: {"figure_00.png": "a caption"}}))  # no list: every PNG
    assert len(freport.read_extra(folder, "--x", json_name, "ferkit x").figures) == 4


def test_empty_compare_folder(world, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FerkitError, match=r"comparison.json.*ferkit compare"):
        freport.build_report(world["cnn"], tmp_path / "out", compare=tmp_path / "empty")


@pytest.mark.parametrize("option, json_name, record, why", [
    ("--features", "features.json", {"checkpoint_sha256": "0" * 64}, "another checkpoint file"),
    ("--features", "features.json", {"checkpoint_epoch": 99}, "the checkpoint of epoch 99, the run's best is epoch"),
    ("--compare", "comparison.json", {"model": {"epoch": 99}}, "the checkpoint of epoch 99"),
    ("--compare", "comparison.json", {"data": {"sha256": "f" * 64, "faces_sha256": "e" * 64}}, "other data"),
])
def test_extras_of_another_model_are_refused(world, tmp_path, option, json_name, record, why):
    extra = make_extra(tmp_path / "extra", json_name, record, 1)
    keyword = {"--features": "features", "--compare": "compare"}[option]
    with pytest.raises(FerkitError, match=f"{option} .*extra: made from another model than the best checkpoint of "
                                          f".*cnn \\({why}"):
        freport.build_report(world["cnn"], tmp_path / "out", **{keyword: extra})
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["report.md", "report.html", "report.pdf"])
def test_a_report_never_replaces_a_file_of_the_users_of_its_name_and_replaces_its_own(world, tmp_path, name):
    out = tmp_path / "paper"
    out.mkdir()
    (out / name).write_text("# My thesis notes\n")
    with pytest.raises(FerkitError, match=f"--out .*paper: holds {name}, which `ferkit report` did not write and "
                                          "would replace; name another folder, or move that file"):
        freport.build_report(world["cnn"], out)
    assert (out / name).read_text() == "# My thesis notes\n"
    (out / name).unlink()
    freport.build_report(world["cnn"], out)
    assert freport.build_report(world["cnn"], out)["pages"] >= 1  # its own, replaced


def test_features_of_another_run_are_to_be_made_in_a_folder_of_this_runs_own(world, tmp_path):
    """The advice was to make them again into the other run's folder, whose features `ferkit features` now keeps."""
    extra = make_extra(tmp_path / "extra", "features.json", {"checkpoint_sha256": "0" * 64, "run_folder": "/x/r3"}, 1)
    with pytest.raises(FerkitError, match="another checkpoint file; it holds those of /x/r3\\); make them for this run "
                                          "with `ferkit features .*cnn --out .*cnn/extra`"):
        freport.build_report(world["cnn"], tmp_path / "out", features=extra)
    own = make_extra(tmp_path / "own", "features.json", {"checkpoint_sha256": "0" * 64,
                                                         "run_folder": os.path.realpath(world["cnn"])}, 1)
    with pytest.raises(FerkitError, match="another checkpoint file\\); make it again with `ferkit features .*cnn "
                                          "--out .*own`"):
        freport.build_report(world["cnn"], tmp_path / "out", features=own)


def test_extras_of_this_model_are_accepted(world, tmp_path):
    from ferkit.train import checkpoint_sha256

    info = json.loads((world["cnn"] / "run.json").read_text())
    extra = make_extra(tmp_path / "extra", "features.json", {
        "checkpoint_sha256": checkpoint_sha256(world["cnn"]), "checkpoint_epoch": info["best_epoch"],
        "data_sha256": "0" * 64, "data_faces_sha256": info["data"]["faces_sha256"]}, 1)  # a copy of the data
    assert freport.build_report(world["cnn"], tmp_path / "out", features=extra)["pages"] >= 1


def test_a_report_that_fails_leaves_the_previous_one_whole(world, tmp_path, monkeypatch):
    """The report drew its confusion matrix into OUT/figures before its layout: a failed report of another
    run replaced the previous report's figure."""
    out = tmp_path / "out"
    freport.build_report(world["cnn"], out)
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def no_room(doc):
        raise FerkitError("no room")

    monkeypatch.setattr(freport, "layout_pdf", no_room)
    with pytest.raises(FerkitError, match="no room"):
        freport.build_report(world["mlp"], out)
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


COMPARISON = {
    "n": 60, "model": {"name": "mlp"},
    "human": {"correct": 39, "accuracy": 0.65, "accuracy_ci95": [0.524, 0.758], "macro_f1": 0.61,
              "macro_f1_ci95": [0.48, 0.72]},
    "cnn": {"correct": 30, "accuracy": 0.5, "accuracy_ci95": [0.376, 0.624], "macro_f1": 0.44,
            "macro_f1_ci95": [0.31, 0.57]},
    "difference": {"accuracy": {"human_minus_cnn": 0.15, "ci95": [0.02, 0.28]},
                   "macro_f1": {"human_minus_cnn": 0.17, "ci95": [0.01, 0.33]}},
    "agreement_human_cnn": 0.55, "kappa": {"human_vs_truth": 0.58, "cnn_vs_truth": 0.41, "human_vs_cnn": None},
    "mcnemar": {"human_correct_cnn_wrong": 14, "human_wrong_cnn_correct": 5, "p_value": 0.0636},
    "human_seconds": {"mean": 2.5, "median": 2.0, "total": 150.0},
}


def test_the_comparison_section_shows_both_sides_and_names_the_network(world, tmp_path):
    """Its ten key numbers were all the human's: the network's accuracy never reached the report; and an
    MLP run's comparison was headed Human vs CNN."""
    folder = make_extra(tmp_path / "cmp", "comparison.json", COMPARISON, 0)
    Image.new("RGB", (64, 48)).save(folder / "disagreements.png")
    extra = freport.read_extra(folder, "--compare", "comparison.json", "ferkit compare")
    markdown, _ = freport.render_markdown(freport.build_document(freport.read_run(world["cnn"]), tmp_path,
                                                                 compare=extra))
    section = markdown.split("Human vs MLP")[1]
    assert "| human | 39 | 0.650 [0.524, 0.758] | 0.610 [0.480, 0.720] |" in section
    assert "| MLP | 30 | 0.500 [0.376, 0.624] | 0.440 [0.310, 0.570] |" in section
    assert ("Human minus MLP: accuracy +15.0 points [+2.0, +28.0]; macro F1 +17.0 points [+1.0, +33.0]. Cohen's kappa "
            "with the truth: human 0.580, MLP 0.410; between them n/a. McNemar exact p = 0.0636 (human right and MLP "
            "wrong on 14 faces, the reverse on 5).") in section
    assert "The faces where the human and the MLP disagree" in section and "CNN" not in section


def test_not_a_run(tmp_path):
    with pytest.raises(FerkitError, match="ferkit train"):
        freport.build_report(tmp_path / "nothing", tmp_path / "out")


def test_stale_evaluation_is_refused(world, tmp_path):
    run = shutil.copytree(world["cnn"], tmp_path / "stale")
    path = run / "eval" / "test-tta" / "metrics.json"
    data = json.loads(path.read_text())
    data["epoch"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(FerkitError, match="ferkit evaluate"):
        freport.build_report(run, tmp_path / "out")


@pytest.mark.parametrize("same_faces", [True, False])
def test_evaluation_on_a_copy_of_the_data_is_accepted(world, tmp_path, same_faces):
    run = shutil.copytree(world["cnn"], tmp_path / "copy")
    faces = json.loads((run / "run.json").read_text())["data"]["faces_sha256"]
    path = run / "eval" / "test-tta" / "metrics.json"
    data = json.loads(path.read_text())
    data.update(data_sha256="f" * 64, data_faces_sha256=faces if same_faces else "e" * 64)
    path.write_text(json.dumps(data))
    if same_faces:
        assert freport.read_run(run).metrics["data_sha256"] == "f" * 64
    else:
        with pytest.raises(FerkitError, match=r"eval/test-tta was computed on other data .*ferkit evaluate"):
            freport.read_run(run)


def test_overflowing_main_part_fails_loudly(world, tmp_path, monkeypatch):
    monkeypatch.setattr(freport, "MAIN_PAGES", 1)
    with pytest.raises(FerkitError, match="main part of the report needs"):
        freport.build_report(world["cnn"], tmp_path / "out")


@pytest.mark.parametrize("main, compared, message", [
    ("cnn", "cnn", r"--mlp .*cnn: a run of the `cnn` model, not of `mlp`; pass a run trained with .*--model mlp"),
    ("mlp", "mlp", r"mlp is a run of the `mlp` model: .* needs a CNN run as RUN_DIR"),
])
def test_mlp_option_needs_an_mlp_beside_a_cnn(world, tmp_path, main, compared, message):
    with pytest.raises(FerkitError, match=message):
        freport.build_report(world[main], tmp_path / "out", mlp=world[compared])
    assert not (tmp_path / "out").exists()


def _mlp_evaluated_elsewhere(world: dict, dest: Path, n: int, **checksums: str) -> Path:
    """A copy of the MLP run whose run and evaluation record `n` test faces and other data
    `checksums` (sha256, faces_sha256) where given."""
    run = shutil.copytree(world["mlp"], dest)
    info = json.loads((run / "run.json").read_text())
    info["data"].update(checksums)
    (run / "run.json").write_text(json.dumps(info))
    path = run / "eval" / "test-tta" / "metrics.json"
    data = json.loads(path.read_text())
    data.update({f"data_{key}": value for key, value in checksums.items()}, n=n)
    path.write_text(json.dumps(data))
    return run


@pytest.mark.parametrize("other_data, message", [
    (True, r"is not on the test faces of .*\(data .*; n 42 vs 200\).*cannot be compared; pass an MLP run"),
    (False, r"is not on the test faces of .*\(n 42 vs 200\)"),
])
def test_mlp_on_other_test_faces_is_refused(world, tmp_path, other_data, message):
    other = {"sha256": "f" * 64, "faces_sha256": "e" * 64} if other_data else {}
    mlp = _mlp_evaluated_elsewhere(world, tmp_path / "mlp-elsewhere", 200, **other)
    with pytest.raises(FerkitError, match=message):
        freport.build_report(world["cnn"], tmp_path / "out", mlp=mlp)
    assert not (tmp_path / "out").exists()


def test_mlp_on_the_same_faces_in_another_file_is_compared(world, tmp_path):
    cnn = freport.read_run(world["cnn"])
    faces = {"faces_sha256": cnn.info["data"].get("faces_sha256") or "c" * 64}
    mlp = _mlp_evaluated_elsewhere(world, tmp_path / "mlp-copy", cnn.metrics["n"], sha256="f" * 64, **faces)
    cnn.metrics["data_faces_sha256"] = faces["faces_sha256"]
    copy = freport.read_run(mlp)
    assert freport._compared_evaluations(cnn, copy) == (cnn.metrics, copy.metrics)
    assert "The CNN and the MLP on the same 42 PrivateTest faces." in world["md"]


def test_replication_commands_run_as_printed(world):
    code = world["md"].split("## 5  Replication")[1].split("```")[1]
    commands = [line for line in code.splitlines() if line.startswith("ferkit ") and
                not line.startswith("ferkit report")]  # the report's own command rewrites this report
    assert [c.split()[1] for c in commands] == ["train", "evaluate", "evaluate"]
    replica = world["root"] / "cnn-replica"
    assert all(f" {replica}" in c for c in commands)
    assert f"--config {world['cnn']}/config.yaml" in commands[0]
    for command in commands:
        assert cli.main(shlex.split(command)[1:]) == 0, command
    assert metrics(replica)["n"] == metrics(world["cnn"])["n"]


@pytest.mark.parametrize("recorded", ["/venv/bin/ferkit train faces.csv --out runs/cnn --set epochs=2",
                                      "/venv/bin/ferkit train faces.csv --set epochs=2 --out=runs/cnn"])
def test_replication_retargets_the_recorded_training(tmp_path, recorded):
    run_path = tmp_path / "runs" / "cnn"
    run_path.mkdir(parents=True)
    (run_path / "config.yaml").write_text("epochs: 2\n")
    info = {"environment": {"command": recorded}, "data": {"path": "faces.csv"}}
    run = fake_run(path=run_path, config={"seed": 0}, info=info)
    code = next(b.text for b in freport._replication_section(run, "ferkit report x --out y")
                if isinstance(b, freport.Shell))
    trains = [line for line in code.splitlines() if line.startswith("ferkit train")]
    assert len(trains) == 2
    assert all(re.search(rf"--out[= ]{re.escape(str(tmp_path / 'runs' / 'cnn-replica'))}( |$)", t) for t in trains)
    assert "--set epochs=2" in trains[0] and f"--config {run_path}/config.yaml" in trains[1]
    assert f"ferkit evaluate {tmp_path / 'runs' / 'cnn-replica'}" in code


@pytest.mark.parametrize("recorded, profile", [("/venv/bin/ferkit run faces.csv --out runs/study", " --profile cpu"),
                                               ("/venv/bin/ferkit run faces.csv --out runs/study --profile gpu", "")])
def test_replication_names_the_study_that_trained_the_run(tmp_path, recorded, profile):
    run_path = tmp_path / "runs" / "study" / "cnn"
    run_path.mkdir(parents=True)
    (run_path / "config.yaml").write_text("epochs: 2\n")
    info = {"environment": {"command": recorded}, "data": {"path": "faces.csv"}}
    run = fake_run(path=run_path, config={"seed": 0, "profile": "cpu"}, info=info)
    blocks = freport._replication_section(run, "ferkit report x --out y")
    code = next(b.text for b in blocks if isinstance(b, freport.Shell))
    text = " ".join(b.text for b in blocks if isinstance(b, freport.Para))
    study = recorded.split("/bin/")[1].replace("runs/study", str(tmp_path / "runs" / "study-replica"))
    assert f"\n{study}{profile}\n" in code
    assert f"{tmp_path / 'runs' / 'study-replica' / 'cnn'} replicates this run" in code
    assert "not by a ferkit command" not in text and "not the ferkit command" not in text
    assert f"trained by the `ferkit run` study `{recorded.split('/bin/')[1]}`" in text


@pytest.mark.parametrize("started_in", ["work", "."])
def test_the_recorded_training_is_run_where_it_was_started_and_pinned_to_its_profile(tmp_path, monkeypatch,
                                                                                      started_in):
    """Its data path was relative to where it ran, and without --profile `ferkit train` picks one by the
    machine: copied from another folder, or run on a machine with a GPU, the line trained nothing or another
    network."""
    monkeypatch.chdir(tmp_path)
    run_path = Path("work") / "r1"
    (tmp_path / run_path).mkdir(parents=True)
    (tmp_path / run_path / "config.yaml").write_text("epochs: 2\n")
    info = {"environment": {"command": "/venv/bin/ferkit train ../faces.csv --out r1",
                            "cwd": str(tmp_path / started_in)}, "data": {"path": str(tmp_path / "faces.csv")}}
    run = fake_run(path=run_path, config={"seed": 0, "profile": "cpu"}, info=info)
    code = next(b.text for b in freport._replication_section(run, "ferkit report x --out y")
                if isinstance(b, freport.Shell))
    line = next(line for line in code.splitlines() if "../faces.csv" in line)
    if started_in == "work":
        replica = tmp_path / "work" / "r1-replica"
        assert line == f"(cd {tmp_path / 'work'} && ferkit train ../faces.csv --out {replica} --profile cpu)"
    else:  # this report's folder: the line as it was typed
        assert line == "ferkit train ../faces.csv --out work/r1-replica --profile cpu"
    assert "# as recorded in run.json, but for --out and --profile" in code


def test_a_report_on_the_run_in_the_current_folder_names_the_study_beside_the_study(tmp_path, monkeypatch):
    """`ferkit report .` in STUDY/cnn put the study's replica in the study itself."""
    run_dir = tmp_path / "runs" / "study" / "cnn"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("epochs: 2\n")
    monkeypatch.chdir(run_dir)
    info = {"environment": {"command": "ferkit run faces.csv --out runs/study --profile cpu", "cwd": str(tmp_path)},
            "data": {"path": "faces.csv"}, "model": {"name": "cnn"}}
    run = fake_run(path=Path("."), config={"seed": 0, "profile": "cpu"}, info=info)
    code = next(b.text for b in freport._replication_section(run, "ferkit report . --out y")
                if isinstance(b, freport.Shell))
    assert f"{tmp_path / 'runs' / 'study-replica' / 'cnn'} replicates this run" in code
    assert f"(cd {tmp_path} && ferkit run faces.csv --out {tmp_path / 'runs' / 'study-replica'} --profile cpu)" in code


def test_replication_names_a_training_started_outside_ferkit(tmp_path):
    (tmp_path / "config.yaml").write_text("epochs: 2\n")
    info = {"environment": {"command": "/venv/bin/pytest tests -q"}, "data": {"path": "faces.csv"}}
    run = fake_run(path=tmp_path, config={"seed": 0}, info=info)
    text = " ".join(b.text for b in freport._replication_section(run, "ferkit report x --out y")
                    if isinstance(b, freport.Para))
    assert "started by `/venv/bin/pytest tests -q`, not by a ferkit command" in text


LONG_PYTEST = "/venv/bin/pytest -q " + " ".join(f"tests/test_report.py::test_case_number_{i}" for i in range(120))


CUT = "`{shown}` (the first 200 of its {n:,} characters)"


@pytest.mark.parametrize("recorded, remark", [(LONG_PYTEST, "started by " + CUT),
                                              ("ferkit run faces.csv --out " + "runs/" * 60,
                                               "the `ferkit run` study " + CUT)])
def test_a_long_recorded_command_is_cut_in_the_replication_paragraph(tmp_path, recorded, remark):
    (tmp_path / "config.yaml").write_text("epochs: 2\n")
    info = {"environment": {"command": recorded}, "data": {"path": "faces.csv"}}
    run = fake_run(path=tmp_path, config={"seed": 0}, info=info)
    text = " ".join(b.text for b in freport._replication_section(run, "ferkit report x --out y")
                    if isinstance(b, freport.Para))
    assert remark.format(shown=recorded[:200] + " …", n=len(recorded)) in text
    assert recorded[:201] not in text


def test_a_run_started_by_a_long_command_still_fits_its_pages(world, tmp_path):
    """pytest given a list of test names records them all as the training's command: the paragraph that
    names it stays in the PDF, so it once pushed the main part past its pages and the report failed."""
    run = shutil.copytree(world["cnn"], tmp_path / "cnn")
    info = json.loads((run / "run.json").read_text())
    info["environment"]["command"] = LONG_PYTEST
    (run / "run.json").write_text(json.dumps(info))
    result = freport.build_report(run, tmp_path / "out")
    assert result["main_pages"] <= freport.MAIN_PAGES and not result["commands_left_out"]
    pdf_text = "".join(page_texts(tmp_path / "out" / "report.pdf"))
    assert f"the first 200 of its {len(LONG_PYTEST):,} characters" in pdf_text


# ---------------------------------------------------------------------------------------------
# The command


def test_cli_report(world, tmp_path, capsys):
    out = tmp_path / "cli"
    assert cli.main(["report", str(world["cnn"]), "--mlp", str(world["mlp"]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "report.pdf" in printed and (out / "report.md").is_file()
    assert "## 6  CNN vs MLP baseline" in (out / "report.md").read_text()


def test_cli_report_error(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path / "nothing"), "--out", str(tmp_path / "out")]) == 2
    assert "ferkit report: error:" in capsys.readouterr().err


def test_classification_report_averages_equal_scikit_learns(world):
    lines = (world["cnn"] / "eval" / "test-tta" / "classification_report.txt").read_text().splitlines()
    for name in ("macro avg", "weighted avg"):
        expected = next(line for line in lines if line.strip().startswith(name)).split()[2:5]  # precision, recall, F1
        row = next(line for line in world["md"].splitlines() if line.startswith(f"| {name} "))
        assert [cell.strip() for cell in row.strip().strip("|").split("|")][1:4] == expected, (name, row)


def md_table(md: str, caption: str) -> tuple[list[str], dict[str, list[str]]]:
    """The header and the rows (by their first cell) of the Markdown table whose caption starts with `caption`."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("**Table") and f".** {caption}" in line)
    cells = lambda line: [c.strip() for c in line.strip().strip("|").split("|")]  # noqa: E731
    rows = {}
    for line in lines[start + 4:]:
        if not line.startswith("|"):
            break
        rows[cells(line)[0]] = cells(line)[1:]
    return cells(lines[start + 2]), rows


def test_each_number_stands_where_its_label_says(world):
    """Not only somewhere in the text: the summary, the test table, the TTA remark and the CNN vs MLP
    tables each put every number under its own name and model."""
    md = world["md"]
    tta, plain, mlp = metrics(world["cnn"], "test-tta"), metrics(world["cnn"], "test"), metrics(world["mlp"], "test-tta")
    f4 = "{:.4f}".format
    assert (f"Test set (PrivateTest, {tta['n']} faces, TTA {tta['tta']}): **accuracy {f4(tta['accuracy'])}**, **macro F1 {f4(tta['macro_f1'])}**, "
            f"weighted F1 {f4(tta['weighted_f1'])}.") in md
    header, rows = md_table(md, "Test metrics")
    assert header == ["metric", "no TTA", f"TTA {tta['tta']}"]
    for key, label in (("accuracy", "accuracy"), ("macro_f1", "macro F1"), ("weighted_f1", "weighted F1")):
        assert rows[label] == [f4(plain[key]), f4(tta[key])], label
    signed = freport._signed_pts
    assert (f"changes accuracy by {signed(tta['accuracy'] - plain['accuracy'])} points and macro F1 by "
            f"{signed(tta['macro_f1'] - plain['macro_f1'])} points") in md
    header, rows = md_table(md, "The CNN and the MLP")
    assert header[1].startswith("CNN") and header[2].startswith("MLP")
    for key, label in (("accuracy", "test accuracy"), ("macro_f1", "macro F1"), ("weighted_f1", "weighted F1")):
        assert rows[label] == [f4(tta[key]), f4(mlp[key])], label
    _, rows = md_table(md, "Per-class F1 of the two models")
    for name in EMOTIONS:
        a, b = tta["per_class"][name]["f1"], mlp["per_class"][name]["f1"]
        assert rows[name] == [f4(a), f4(b), signed(a - b)], name


@pytest.mark.parametrize("present, said", [(list(EMOTIONS), ""),
                                           (["Angry", "Happy"], " (over the 2 classes these faces hold: Angry, Happy)")])
def test_the_summary_says_when_macro_f1_averages_fewer_classes(present, said):
    m = {"n": 10, "accuracy": 0.5, "macro_f1": 0.25, "weighted_f1": 0.5, "macro_f1_classes": present}
    run = fake_run(evals={"test": m})
    assert f"**macro F1 0.2500**{said}, weighted F1 0.5000." in freport._summary(run).text


def test_tta_remark_gives_the_change_from_without_to_with_tta(world):
    """The world's tiny CNN scores the same with and without TTA; edited numbers give the remark a direction."""
    run = freport.read_run(world["cnn"])
    plain = run.evals["test"]
    run.evals["test-tta"] = {**run.evals["test-tta"], "accuracy": plain["accuracy"] + 0.05,
                             "macro_f1": plain["macro_f1"] - 0.02}
    assert any("changes accuracy by +5.0 points and macro F1 by -2.0 points" in item
               for item in freport._challenges(run))


def test_pdf_drops_the_last_figures_of_the_longest_grid_first_and_no_more_than_needed(tmp_path):
    tall = tmp_path / "tall.png"
    Image.fromarray(np.full((400, 300), 128, np.uint8)).save(tall)
    long_grid = [freport.Figure(tall, f"long {k}", f"long{k}.png") for k in range(3)]
    short_grid = [freport.Figure(tall, "short 0", "short0.png")]
    order = freport._grid_figures([freport.FigureGrid(long_grid), freport.FigureGrid(short_grid)])
    assert [f.caption for f in order] == ["long 2", "long 1", "long 0", "short 0"]

    figures = [freport.Figure(tall, f"figure {k}", f"f{k}.png") for k in range(24)]
    doc = freport.Document("t", [freport.Para("main")], [freport.FigureGrid(figures)])
    _, layout = freport.layout_pdf(doc)
    assert 0 < layout.dropped_figures < len(figures)
    _, one_fewer = freport.render_pdf(doc, 1.0, freport._DROP_SCALE, layout.dropped_figures - 1, draft=True)
    assert one_fewer.extra_pages > freport.EXTRA_PAGES  # dropping one figure fewer would not fit


def test_data_and_training_sections_quote_the_runs_own_numbers(tmp_path):
    from ferkit.config import TrainConfig
    from ferkit.models import count_parameters, get_model

    counts = {"Training": [40, 5, 40, 80, 50, 30, 3], "PublicTest": [4, 1, 4, 8, 5, 3, 2],
              "PrivateTest": [5, 1, 4, 7, 5, 3, 2]}
    cfg = dict(TrainConfig().to_dict(), model="cnn", batch_size=16, eval_batch_size=64, lr=0.0125, epochs=20,
               warmup_epochs=2.0, schedule="cosine", patience=5)
    history = [{"epoch": e, "train_loss": 1.5, "train_acc": 0.5, "val_loss": 1.4, "val_acc": 0.55,
                "val_macro_f1": 0.5, "lr": 0.01, "seconds": 10.0} for e in range(1, 8)]
    kwargs = {"widths": (8, 16)}
    info = {"data": {"counts": counts, "train_images": 200, "val_images": 27}, "epochs_run": 7, "best_epoch": 2,
            "model": {"name": "cnn", "kwargs": kwargs}}
    run = fake_run(path=tmp_path, config=cfg, info=info, history=history)
    blocks = freport._data_section(run)
    text = " ".join(b.text for b in blocks if isinstance(b, freport.Para))
    assert "(200 faces used), PublicTest for validation and model selection (27 used)" in text
    assert "Neutral is the rarest class (1.2% of training, 26.7× fewer faces than Happy)" in text
    table = next(b for b in blocks if isinstance(b, freport.Table))
    share = next(row for row in table.rows if row[0] == "Training share")
    assert share[1:-1] == [f"{c / 248:.1%}" for c in counts["Training"]]
    procedure = section_paragraphs(freport._training_section(run))["Procedure"]
    assert "batch size 16 (12 steps per epoch over 200 faces)" in procedure
    assert "to the peak learning rate 0.0125, then cosine decay to 0 at epoch 20" in procedure
    assert "stop after 5 epochs without" in procedure and "Time: 7 epochs in" in procedure
    total = count_parameters(get_model("cnn", **kwargs))
    architecture = " ".join(b.text for b in freport._architecture_section(run)[0] if isinstance(b, freport.Para))
    assert f"**{total:,} parameters** ({total * 4 / 2**20:.2f} MiB as float32)" in architecture


# ---------------------------------------------------------------------------------------------
# Found by an audit of the report (paths that need quoting, unusual runs, damaged files)


def test_replication_quotes_paths_that_need_it_and_retargets_a_quoted_out(tmp_path):
    run_path = tmp_path / "my runs" / "cnn & co"
    run_path.mkdir(parents=True)
    (run_path / "config.yaml").write_text("epochs: 2\n")
    recorded = shlex.join(["/my venv/bin/ferkit", "train", "faces of mine.csv", "--out", str(run_path),
                           "--set", "epochs=2"])
    info = {"environment": {"command": recorded}, "data": {"path": str(tmp_path / "faces of mine.csv")}}
    run = fake_run(path=run_path, config={"seed": 0}, info=info, evals={"test": {}, "test-tta": {}})
    code = next(b.text for b in freport._replication_section(run, "ferkit report x --out y")
                if isinstance(b, freport.Shell))
    commands = [shlex.split(line) for line in code.splitlines() if line.startswith("ferkit ")]
    replica = str(tmp_path / "my runs" / "cnn & co-replica")
    assert commands[0] == ["ferkit", "train", "faces of mine.csv", "--out", replica, "--set", "epochs=2"]
    assert commands[1] == ["ferkit", "train", str(tmp_path / "faces of mine.csv"), "--out", replica, "--config",
                           str(run_path / "config.yaml")]
    assert commands[2:4] == [["ferkit", "evaluate", replica, "--tta"], ["ferkit", "evaluate", replica]]


def test_a_newline_in_a_path_leaves_every_replication_line_whole(tmp_path):
    """A newline in a folder name split a comment (its rest would run as a command) and a command's
    quoted path across lines; each line now holds it spelled out, and bash reads the same words."""
    run_path = tmp_path / "runs\nof mine" / "cnn"
    run_path.mkdir(parents=True)
    (run_path / "config.yaml").write_text("epochs: 2\n")
    data = str(tmp_path / "faces.csv")
    recorded = shlex.join(["ferkit", "train", data, "--out", str(run_path)])
    info = {"environment": {"command": recorded}, "data": {"path": data}}
    run = fake_run(path=run_path, config={"seed": 0}, info=info)
    shell = next(b for b in freport._replication_section(run, shlex.join(["ferkit", "report", str(run_path)]))
                 if isinstance(b, freport.Shell))
    lines = shell.text.split("\n")  # as Markdown and HTML show them
    assert all(line.startswith(("# ", "ferkit ")) and not freport._CONTROL.search(line) for line in lines)
    assert any("runs\\nof mine" in line for line in lines if line.startswith("# "))
    pdf_lines = [wrapped for line in shell.lines for wrapped in freport._shell_lines(line, 60)]
    assert not freport._CONTROL.search("".join(pdf_lines))
    replica = str(tmp_path / "runs\nof mine" / "cnn-replica")
    for shown in (lines, pdf_lines):
        script = "\n".join(line.replace("ferkit", "printf '%s\\0'", 1) for line in shown)
        printed = subprocess.run(["bash", "-c", script], capture_output=True, check=True).stdout.decode()
        assert printed.split("\0")[:5] == ["train", data, "--out", replica, "train"]
        assert f"report\0{run_path}\0" in printed


def test_a_path_too_long_for_the_pdf_leaves_its_commands_to_html_and_markdown(world, tmp_path, capsys):
    """A run some 700 characters deep: its paths, written a dozen times, made the main part 4 pages
    long and the report fail with nothing written. The PDF now points to report.md for the commands."""
    deep = tmp_path.joinpath(*["folder of runs " * 14] * 3)
    run = shutil.copytree(world["cnn"], deep / "cnn")
    out = tmp_path / "out"
    assert cli.main(["report", str(run), "--out", str(out)]) == 0
    assert "do not fit within the PDF's pages" in capsys.readouterr().out
    text = "".join(page_texts(out / "report.pdf"))
    assert "The commands that replicate this run are in report.md and report.html" in text
    assert len(page_texts(out / "report.pdf")) <= freport.MAIN_PAGES
    assert f"ferkit evaluate {shlex.quote(str(deep / 'cnn-replica'))}" in (out / "report.md").read_text()
    assert not world["result"]["commands_left_out"] and world["result"]["notes"] == []


def test_the_report_command_is_recorded_shell_quoted(world, tmp_path):
    out = tmp_path / "a report & more"
    freport.build_report(world["cnn"], out)
    md = (out / "report.md").read_text(encoding="utf-8")
    assert shlex.join(["ferkit", "report", str(world["cnn"]), "--out", str(out)]) in md


def test_the_macro_avg_row_averages_the_classes_macro_f1_averages(tmp_path):
    per_class = per_class_scores(dict(dict.fromkeys(EMOTIONS, 0.4), Disgust=0.0), [10, 0, 10, 10, 10, 10, 10])
    present = [c for c in EMOTIONS if c != "Disgust"]
    m = {"n": 60, "accuracy": 0.4, "macro_f1": 0.4, "weighted_f1": 0.4, "per_class": per_class,
         "macro_f1_classes": present, "confusion_matrix": np.eye(7, dtype=int).tolist()}
    run = fake_run(path=tmp_path, evals={"test": m}, eval_dirs={"test": tmp_path})
    blocks = freport._test_section(run, tmp_path)
    tables = [b for b in blocks if isinstance(b, freport.Table)] + \
        [b for side in blocks if isinstance(side, freport.SideBySide) for b in side.left if isinstance(b, freport.Table)]
    table = next(t for t in tables if any(row[0].startswith("macro avg") for row in t.rows))
    row = next(row for row in table.rows if row[0].startswith("macro avg"))
    assert row[:4] == ["macro avg (6 classes present)", "0.4000", "0.4000", "0.4000"]


def test_the_rare_class_is_counted_among_the_faces_trained_on(tmp_path):
    per_class = per_class_scores(0.5)
    counts = {"Training": [400, 50, 400, 700, 500, 300, 450]}
    metrics_ = {"accuracy": 0.5, "macro_f1": 0.5, "per_class": per_class}
    for data, said in (({"counts": counts, "train_counts": [4, 1, 4, 7, 5, 3, 4]}, "Disgust has 1 training faces ("),
                       ({"counts": counts}, "Disgust has 50 training faces in the whole file (this run trained on its "
                                            "first 28)")):
        run = fake_run(path=tmp_path, config={"imbalance": "none", "train_limit": 28}, info={"data": data},
                       evals={"test": metrics_})
        text = next(item for item in freport._challenges(run) if item.startswith("**The rare class**"))
        assert said in text, text


def test_a_class_with_no_training_face_is_named_and_left_out_of_the_rarest_class(tmp_path):
    from ferkit.train import class_weights

    train_counts = [40, 0, 40, 80, 50, 30, 45]  # every Training Disgust face relabelled
    weights = class_weights(np.repeat(np.arange(len(EMOTIONS)), train_counts), 0.5).tolist()
    info = {"data": {"counts": {"Training": train_counts}, "train_counts": train_counts}, "class_weights": weights}
    per_class = per_class_scores(dict(dict.fromkeys(EMOTIONS, 0.5), Disgust=0.0))
    run = fake_run(path=tmp_path, config={"imbalance": "sampler"}, info=info,
                   evals={"test": {"accuracy": 0.5, "macro_f1": 0.43, "per_class": per_class}})
    blocks = freport._data_section(run)
    imbalance = section_paragraphs(blocks)["Imbalance"]
    assert "Disgust had no training face" in imbalance, imbalance
    assert "Surprise is the rarest class (10.5% of training, 2.7× fewer faces than Happy)" in imbalance, imbalance
    assert "0.0%" not in imbalance
    table = next(b for b in blocks if isinstance(b, freport.Table))
    row = next(row for row in table.rows if row[0] == "class weight")
    assert row[1 + EMOTIONS.index("Disgust")] == "-"  # a weight no face was drawn or weighed with
    text = next(item for item in freport._challenges(run) if item.startswith("**The rare class**"))
    assert "Disgust had no training face" in text, text
    assert "Surprise has 30 training faces" in text, text
    assert "the sampler draws each Surprise face 1.63× as often as each Happy face" in text, text
    assert "over the other 5 classes with training faces" in text and "on a par with the others" in text, text
    assert "draws each Disgust" not in text and "not overcome" not in text


def test_the_imbalance_paragraph_counts_the_faces_trained_on(tmp_path):
    counts = {"Training": [400, 50, 400, 700, 500, 300, 450]}
    train_counts = [4, 2, 4, 7, 5, 1, 4]  # train_limit=27: Surprise, not Disgust, is the rarest
    for data, said in (({"counts": counts, "train_counts": train_counts},
                        "Surprise is the rarest class (3.7% of the faces trained on, 7.0× fewer faces than Happy)"),
                       ({"counts": counts},  # an older run: only the whole file's counts
                        "Disgust is the rarest class (1.8% of training, 14.0× fewer faces than Happy)")):
        run = fake_run(path=tmp_path, config={"imbalance": "weighted_loss", "train_limit": 27},
                       info={"data": data, "class_weights": [1.0] * len(EMOTIONS)})
        imbalance = section_paragraphs(freport._data_section(run))["Imbalance"]
        assert said in imbalance, imbalance

def test_run_json_records_the_faces_trained_on_per_class(tmp_path):
    csv_path = make_csv(tmp_path / "faces.csv")
    train(csv_path, tmp_path / "run", configs.resolve(overrides=dict(TINY, epochs=1, train_limit=20)), progress=False)
    data = json.loads((tmp_path / "run" / "run.json").read_text())["data"]
    labels = [int(line.split(",")[0]) for line in csv_path.read_text().splitlines()[1:] if ",Training," in line]
    assert data["train_counts"] == np.bincount(labels[:20], minlength=7).tolist()


def test_an_unfinished_run_is_not_told_that_all_its_epochs_ran(tmp_path):
    history = [{"epoch": e, "val_acc": 0.3 + 0.1 * e, "val_macro_f1": 0.2} for e in (1, 2)]
    run = fake_run(path=tmp_path, config={"epochs": 5, "patience": 10, "select_by": "val_acc"},
                   info={"best_epoch": 2, "finished": False}, history=history)
    text = freport._early_stopping(run)
    assert "had not fired when training stopped after epoch 2" in text and "all 2 epochs ran" not in text


def test_the_wall_clock_of_a_resumed_run_says_it_holds_the_break(tmp_path):
    from ferkit.config import TrainConfig

    info = {"best_epoch": 1, "started": "2024-05-01T10:00:00+00:00", "finished": "2024-05-01T12:00:00+00:00",
            "train_seconds": 16.1, "resumed": ["2024-05-01T11:59:00+00:00"]}
    run = fake_run(path=tmp_path, config=dict(TrainConfig().to_dict(), epochs=1), info=info)
    procedure = section_paragraphs(freport._training_section(run))["Procedure"]
    assert "(2 h 00 min from the start to the finish, including the break before resuming)" in procedure


def test_tta_none_is_said_plainly(tmp_path):
    m = {"accuracy": 0.5, "macro_f1": 0.5, "tta": "none"}
    run = fake_run(path=tmp_path, config={"tta": "none", "augment": False}, evals={"test": m, "test-tta": dict(m)})
    text = " ".join(b.text for b in freport._data_section(run) if isinstance(b, freport.Para))
    assert "No test-time augmentation (`tta: none`)." in text and "probabilities of none" not in text
    assert freport._tta_effect(run) is None


def test_out_inside_an_extra_folder_is_refused(world, tmp_path):
    features = tmp_path / "features"
    shutil.copytree(world["features"], features)
    with pytest.raises(FerkitError, match="lies in the --features folder"):
        freport.build_report(world["cnn"], features / "report", features=features)
    assert not (features / "report").exists()
    inside = tmp_path / "report" / "figures"  # the other way round: the report's figures joined the extra's
    shutil.copytree(world["features"], inside)
    with pytest.raises(FerkitError, match="--features .*figures: lies in .*report/figures, where the report writes"):
        freport.build_report(world["cnn"], tmp_path / "report", features=inside)
    assert sorted(p.name for p in inside.iterdir()) == sorted(p.name for p in world["features"].iterdir())
    beside = tmp_path / "report" / "features"  # elsewhere in --out: the report's figures never go there
    shutil.copytree(world["features"], beside)
    assert freport.build_report(world["cnn"], tmp_path / "report", features=beside)["pages"] >= 1


def test_features_of_an_mlp_run_are_refused_plainly(world):
    with pytest.raises(FerkitError, match="activation maps come from a CNN's last conv layer"):
        freport.build_report(world["mlp"], world["root"] / "never", features=world["features"])


@pytest.mark.parametrize("name, text", [("run.json", "{}"), ("run.json", "[]"), ("config.yaml", "- a list\n"),
                                        ("eval/test-tta/metrics.json", "{}"), ("eval/test-tta/metrics.json", "[]"),
                                        ("history.csv", "epoch,train_loss\nnot a number,1\n")])
def test_damaged_run_files_are_named_not_a_traceback(world, tmp_path, name, text):
    copy = tmp_path / "cnn"
    shutil.copytree(world["cnn"], copy)
    (copy / name).write_text(text)
    with pytest.raises(FerkitError, match=re.escape(str(copy / name) if name.startswith(("eval", "history")) else
                                                    str(copy))):
        freport.read_run(copy)


def test_figure_names_with_spaces_link_in_markdown():
    doc = freport.Document("t", [freport.Figure(Path("/x/my plot (v1).png"), "caption", "features_my plot (v1).png")],
                           [])
    md, _ = freport.render_markdown(doc)
    assert "](<figures/features_my plot (v1).png>)" in md


def test_a_path_beyond_latin_1_is_legible_in_the_pdf(world, tmp_path):
    """The standard PDF fonts encode cp1252 only: Ł and Cyrillic were black boxes. Then DejaVu is embedded."""
    run = tmp_path / "Łukasz" / "данные"
    shutil.copytree(world["cnn"], run)
    freport.build_report(run, tmp_path / "report")
    reader = pypdf.PdfReader(io.BytesIO((tmp_path / "report" / "report.pdf").read_bytes()))
    text = " ".join(page.extract_text() for page in reader.pages)
    assert "Łukasz/данные" in text.replace("\n", "")
    assert "■" not in text
    fonts = {font["/BaseFont"] for page in reader.pages for font in page["/Resources"]["/Font"].values()}
    assert any("DejaVuSans" in name for name in fonts)
    plain = pypdf.PdfReader(io.BytesIO((world["out"] / "report.pdf").read_bytes()))  # an ASCII path: as before
    assert {font["/BaseFont"] for page in plain.pages for font in page["/Resources"]["/Font"].values()} <= \
        {"/Helvetica", "/Helvetica-Bold", "/Helvetica-Oblique", "/Helvetica-BoldOblique", "/Courier"}


def test_a_path_with_backticks_and_asterisks_stays_one_literal_path(world, tmp_path):
    """The report's text is Markdown-like: a backtick or ** in a folder's name ended its code span or
    turned bold. Now a path is fenced by backticks it does not hold, and a title's name is escaped."""
    import html as htmlmod

    run = tmp_path / "a`b**c" / "x*y_"
    shutil.copytree(world["cnn"], run)
    freport.build_report(run, tmp_path / "report")
    page = (tmp_path / "report" / "report.html").read_text(encoding="utf-8")
    assert f"<code>{htmlmod.escape(str(run), quote=False)}</code>" in page
    assert f"<code>{htmlmod.escape(str(run / 'config.yaml'), quote=False)}</code>" in page
    assert "<h1>Facial-expression recognition on FER2013: the cnn run x*y_</h1>" in page
    assert "<title>Facial-expression recognition on FER2013: the cnn run x*y_</title>" in page
    markdown = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    assert f"``{run}``" in markdown and "# Facial-expression recognition on FER2013: the cnn run x\\*y\\_" in markdown
    reader = pypdf.PdfReader(io.BytesIO((tmp_path / "report" / "report.pdf").read_bytes()))
    text = "".join(page.extract_text() for page in reader.pages).replace("\n", "")
    assert str(run) in text and "the cnn run x*y_" in text


def test_inline_markup_quotes_any_text():
    def render(text: str) -> str:
        return freport._inline(text, lambda s: s, lambda s: f"<b>{s}</b>", lambda s: f"<code>{s}</code>")

    for literal in ("plain", "a`b", "``", "a`b``c", "`start", "end`", " both ", "**x**", "C:\\a\\b", "a\\`b"):
        assert render(f"see {freport._code(literal)}.") == f"see <code>{literal}</code>."
        assert render(f"**{freport._literal(literal)}**") == f"<b>{literal}</b>"
    assert render(f"see {freport._code('')}.") == "see <code> </code>."  # two backticks were no span
    assert render("**bold `c**d` more** and `e`") == "<b>bold <code>c**d</code> more</b> and <code>e</code>"


@pytest.mark.parametrize("width", [30, 60, 100])
def test_a_wrapped_command_runs_as_the_one_written(tmp_path, width):
    """The PDF wraps long commands; bash must read the wrapped lines as the same words, even where a
    path holds spaces or quotes or is longer than a line."""
    words = ["ferkit", "train", "/Users/me/My Drive/FER data/icml_face_data.csv", "--out",
             "runs/it's a run/" + "deep/" * 20 + "cnn", "--set", "lr=0.1", "--config", "a b/config.yaml", "--tta",
             "--data", "tab\there/" + "and quote's/" * 6 + "x.csv"]
    comment = "# training into a new folder, " + "x" * 80 + ": ferkit train refuses the old one, which holds the run"
    notes, command = freport._shell_lines(comment, width), freport._shell_lines(shlex.join(words), width)
    assert all(len(line) <= width for line in notes + command) and len(command) > 1
    assert all(line.startswith("#") for line in notes)
    command[0] = command[0].replace("ferkit", "printf '%s\\n'", 1)  # prints each word it is given on a line
    script = "\n".join(notes + command)
    printed = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout
    assert printed.splitlines() == words[1:]
    assert not any(freport._CONTROL.search(line) for line in command)  # no tab: the PDF's fonts have no glyph


def test_a_control_character_in_a_command_is_spelled_out():
    """A tab in a path was printed as is, a box in the PDF, and a newline split the command in two;
    bash's $'...' form shows them and gives the same words. A comment spells them out."""
    words = ["printf", "%s|", "a\tb", "it's\x01", "\x85", "new\nline"]
    line = freport._shell_line(shlex.join(words))
    assert "$'a\\tb'" in line and "$'new\\nline'" in line and not freport._CONTROL.search(line)
    for locale in ("C.UTF-8", "C"):  # `\\u0085` stayed as typed in the C locale: the bytes are spelled out
        printed = subprocess.run(["bash", "-c", line], capture_output=True, check=True,
                                 env={**os.environ, "LC_ALL": locale}).stdout
        assert printed.decode() == "".join(word + "|" for word in words[2:])
    assert freport._shell_lines(shlex.join(words), 200) == [line]  # the PDF's line
    assert freport._shell_line("# into runs/a\nb: ferkit") == "# into runs/a\\nb: ferkit"
    assert freport._shell_line("ferkit run plain") == "ferkit run plain"


@pytest.mark.parametrize("width", [40, 200])
def test_a_command_run_where_it_was_recorded_stays_a_subshell_when_wrapped_or_spelled(tmp_path, monkeypatch, width):
    """The PDF wrapped `(cd DIR && ferkit run ...)` word by word and quoted `(cd`, `&&` and the last word with
    its `)`: bash looked for a command named `(cd`. A control character in a path did the same in every format."""
    started = tmp_path / "it's here"
    started.mkdir()
    monkeypatch.chdir(tmp_path)
    words = ["ferkit", "run", "my data/faces 'q'.csv", "--out", "study", "--set", "epochs=2", "--data", "a\tb c"]
    line = freport._recorded_there(shlex.join(words), Path("study-replica"), str(started))
    assert line.startswith("(cd ") and line.endswith(")")
    shown = [freport._shell_line(line)] if width == 200 else freport._shell_lines(line, width)
    assert width == 200 or len(shown) > 2  # the PDF's lines, wrapped
    script = "ferkit() { pwd; printf '%s\\n' \"$@\"; }\n" + "\n".join(shown)
    printed = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout
    assert printed.splitlines() == [str(started), "run", words[2], "--out", str(tmp_path / "study-replica"),
                                    *words[5:8], "a\tb c"]

def test_a_spelled_comment_keeps_a_typed_backslash_apart_from_a_spelled_character():
    """A folder named `a`, newline, `b` and one named `a\\nb` were both shown as `a\\nb` in a comment (in the
    PDF's, so were Devanagari's `\\u0915` and a typed one). Once a comment spells a character it doubles each
    backslash, as bash's $'...' form does; a comment that spells nothing keeps its backslashes."""
    assert freport._shell_line("# into runs/a\\nb, not runs/a\nb") == "# into runs/a\\\\nb, not runs/a\\nb"
    assert freport._shell_line("# into C:\\runs") == "# into C:\\runs"
    assert freport._shell_lines("# into C:\\u0915, not \u0915", 200) == ["# into C:\\\\u0915, not \\u0915"]
    assert freport._shell_lines("# into C:\\runs", 200) == ["# into C:\\runs"]


def test_a_wrapped_command_fills_each_line_to_its_width():
    """A line holds its words and ` \\` in `width` columns, and a piece of a word too long for a line
    leaves room for ` \\` too; here the words and pieces fill their lines, and bash reads the same words."""
    words = ["ab", "--out", "runs/x", "abcdefgh", "abcdefghijklmnopqrstuvwxyz0123456"]
    lines = freport._shell_lines(shlex.join(["printf", "%s,", *words]), 14)
    assert lines == ["printf %s, \\", "    ab --out \\", "    runs/x \\", "    abcdefgh \\", "    abcdefgh\\",
                     "ijklmnopqrst\\", "uvwxyz012345\\", "6"]
    printed = subprocess.run(["bash", "-c", "\n".join(lines)], capture_output=True, text=True, check=True).stdout
    assert printed == "".join(word + "," for word in words)
    assert freport._shell_lines("printf %s, abcdefghi", 14) == ["printf %s, \\", "    abcdefgh\\", "i"]  # one too many


def test_wide_and_control_characters_are_counted_and_spelled():
    assert freport._columns("a\u6f22b") == 4  # a CJK character takes two columns
    assert freport._spelled("a\x7f\x80b") == "a\\x7f\\u0080b"  # C0 and DEL by byte, the C1 controls as code points
    assert freport._code_point("\uffff") == "\\uffff" and freport._code_point("\U00010000") == "\\U00010000"
    # a line of exactly the width stays whole; a comment with wide characters wraps by columns
    assert freport._shell_lines("ferkit train ab", 15) == ["ferkit train ab"]
    comment = "# the run runs/\u6f22\u5b57\u6f22\u5b57 is trained again into a folder beside it"
    assert freport._shell_lines(comment, 40) == ["# the run runs/\u6f22\u5b57\u6f22\u5b57 is trained again",
                                                 "#   into a folder beside it"]


def test_cjk_runs_are_set_in_the_font_of_their_language():
    assert freport._pdf_escape("runs/\ud55c\uad6d") == 'runs/<font face="HYSMyeongJo-Medium">\ud55c\uad6d</font>'
    assert freport._pdf_escape("\u6c49\u5b57") == '<font face="STSong-Light">\u6c49\u5b57</font>'
    assert freport._pdf_escape("\u3072\u6f22") == '<font face="HeiseiMin-W3">\u3072\u6f22</font>'  # kana: Japanese


def test_an_old_record_that_is_no_shell_words_is_wrapped_as_text():
    """A command recorded before ferkit quoted it (joined by spaces) may not split into shell words; the PDF
    wraps it as text at spaces, each line but the last ending with ` \\`, and spells what its fonts lack."""
    assert freport._shell_line('echo "a\tb') == 'echo "a\\tb'  # its tab spelled, the rest as recorded
    record = 'printf "%s" "an \u0915 old record, un-closed quote'
    assert freport._shell_lines(record, 24) == ['printf "%s" "an \\u0915 \\', "    old record, \\",
                                                "    un-closed quote"]


def test_a_wrapped_comment_breaks_only_between_words():
    comment = "# into runs/a-b and more text-with-hyphens so it-wraps"
    assert freport._shell_lines(comment, 22) == ["# into runs/a-b and", "#   more", "#   text-with-hyphens",
                                                 "#   so it-wraps"]


def test_the_pdf_text_keeps_a_typed_backslash_apart_from_a_spelled_character():
    """In the PDF's text (outside its commands), Devanagari's `\\u0915` was spelled out as `\\u0915`, just as
    a typed one reads. Now a paragraph (a caption, a cell) that spells a character doubles each backslash,
    in every piece of it, as a comment does; one that spells nothing keeps them. report.html and report.md
    show both as they are."""
    assert freport._pdf_escape("in C:\\u0915, not \u0915") == "in C:\\\\u0915, not \\u0915"
    assert freport._pdf_escape("runs\\\u0915", mono=True) == "runs\\\\\\u0915"
    assert freport._pdf_escape("in C:\\u0915 or C:\\runs") == "in C:\\u0915 or C:\\runs"
    assert freport._pdf_escape("C:\\runs\n\u05e9", mono=True) == "C:\\\\runs\n\\u05e9"  # Hebrew: not in monospace
    # a folder name's escaped backslash and a code span are pieces of their own
    mixed = freport._literal("runs\\u0915") + " or " + freport._code("\u0915")
    assert freport._pdf_markup(mixed, "Courier") == 'runs\\\\u0915 or <font face="Courier">\\u0915</font>'
    plain = freport._literal("C:\\runs") + " or " + freport._code("C:\\u0915")
    assert freport._pdf_markup(plain, "Courier") == 'C:\\runs or <font face="Courier">C:\\u0915</font>'


def test_the_pdf_text_spells_control_characters_but_a_newline_and_decides_backslashes_per_paragraph():
    """A tab in a folder name read as a space in the PDF's text, and U+0085 was kept though its fonts lack it. A code span's
    characters are judged in the monospace face, and its backslashes follow the whole paragraph."""
    assert freport._pdf_escape("a\tb\x85c\nd") == "a\\tb\\u0085c\nd"
    assert freport._code_point("\x7f") == "\\x7f" and freport._code_point("\x85") == "\\u0085"
    hebrew_text = freport._literal("C:\\runs \u05e9")  # the regular face shows it: nothing is spelled
    assert freport._pdf_markup(hebrew_text, "Courier") == "C:\\runs \u05e9"
    hebrew_code = freport._code("a\\b \u05e9")  # Hebrew: in the regular face, not in monospace
    assert freport._pdf_markup(hebrew_code, "Courier") == '<font face="Courier">a\\\\b \\u05e9</font>'
    spelled_text = "\u0915 " + freport._code("a\\b")
    assert freport._pdf_markup(spelled_text, "Courier") == '\\u0915 <font face="Courier">a\\\\b</font>'


def test_a_run_named_with_a_typed_code_point_and_devanagari_reads_apart_in_the_pdf(world, tmp_path):
    """The run `a\\u0915 क` was titled `a\\u0915 \\u0915` in the PDF, as if both were the same letter."""
    run = tmp_path / "a\\u0915 \u0915"
    shutil.copytree(world["cnn"], run)
    freport.build_report(run, tmp_path / "report")
    reader = pypdf.PdfReader(io.BytesIO((tmp_path / "report" / "report.pdf").read_bytes()))
    text = "".join(page.extract_text() for page in reader.pages).replace("\n", "").replace(" ", "")
    assert text.count("thecnnruna\\\\u0915\\u0915") >= 1 + len(reader.pages)  # title and footers (pypdf drops a space)
    assert f"the cnn run {run.name}" in (tmp_path / "report" / "report.html").read_text(encoding="utf-8")


def test_a_moved_study_run_is_replicated_in_the_folder_the_study_names(tmp_path):
    """`ferkit run` trains STUDY/cnn whatever the run's folder is called now."""
    run_path = tmp_path / "runs" / "study" / "best cnn"
    run_path.mkdir(parents=True)
    (run_path / "config.yaml").write_text("epochs: 2\n")
    info = {"environment": {"command": "ferkit run faces.csv --out runs/study --profile cpu"},
            "data": {"path": "faces.csv"}, "model": {"name": "cnn"}}
    run = fake_run(path=run_path, config={"seed": 0, "profile": "cpu"}, info=info)
    code = next(b.text for b in freport._replication_section(run, "ferkit report x --out y")
                if isinstance(b, freport.Shell))
    assert f"{tmp_path / 'runs' / 'study-replica' / 'cnn'} replicates this run" in code


def test_chinese_japanese_and_korean_paths_are_set_in_cjk_fonts(world, tmp_path):
    """DejaVu has no CJK glyph: such paths were empty boxes. Now each run of CJK characters is set in
    one of Adobe's CJK fonts, which PDF readers supply."""
    run = tmp_path / "张三的数据" / "データ" / "한국어 실행"
    shutil.copytree(world["cnn"], run)
    freport.build_report(run, tmp_path / "report")
    reader = pypdf.PdfReader(io.BytesIO((tmp_path / "report" / "report.pdf").read_bytes()))
    text = "".join(page.extract_text() for page in reader.pages).replace("\n", "")
    assert str(run) in text and text.count("the cnn run 한국어 실행") >= 1 + len(reader.pages)  # title and footers
    fonts = {font["/BaseFont"] for page in reader.pages for font in page["/Resources"]["/Font"].values()}
    assert {"/STSong-Light", "/HeiseiMin-W3", "/HYSMyeongJo-Medium"} <= fonts


def test_characters_the_pdf_fonts_lack_are_spelled_out_and_its_commands_still_run(world, tmp_path):
    """DejaVu has no Devanagari and no 👍, and its monospace face no Hebrew: a path holding them was
    empty boxes in the PDF, and a command copied from it named another folder. Now the PDF spells them
    out, the commands in bash's $'...' form (UTF-8 bytes, so in any locale), the text as code points;
    report.md keeps them as they are."""
    run = tmp_path / "प्रयोग 👍" / "שלום"
    shutil.copytree(world["cnn"], run)
    freport.build_report(run, tmp_path / "report")
    assert f"the cnn run {run.name}" in (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    reader = pypdf.PdfReader(io.BytesIO((tmp_path / "report" / "report.pdf").read_bytes()))
    text = "".join(page.extract_text() for page in reader.pages)
    assert "\\U0001f44d/\\u05e9\\u05dc\\u05d5\\u05dd" in text.replace("\n", "")  # a path in the text, set in monospace
    assert freport._pdf_escape("שלום") == "שלום" and freport._pdf_escape("<👍>") == "&lt;\\U0001f44d&gt;"
    assert freport._pdf_escape("𝙰", mono=True) == "𝙰"  # the monospace face's own letters stay
    lines = text.replace("\xa0", " ").splitlines()
    start = lines.index("ferkit report \\")
    command = [lines[start]]
    while command[-1].endswith("\\"):
        command.append(lines[start + len(command)])
    assert "\\xe0\\xa4" in command[1] and "\\xf0\\x9f\\x91\\x8d" in "".join(command)
    script = "\n".join(command).replace("ferkit report", "printf '%s\\n'", 1)
    printed = subprocess.run(["bash", "-c", script], capture_output=True, check=True,
                             env={**os.environ, "LC_ALL": "C"}).stdout.decode()
    assert str(run) in printed.splitlines()


def test_wrapped_commands_count_wide_characters_twice():
    line = "ferkit evaluate " + "/数据" * 30 + " --tta"
    lines = freport._shell_lines(line, 60)
    assert len(lines) > 2 and all(freport._columns(text) <= 60 for text in lines)


@pytest.mark.parametrize("kept, missing", [("test-tta", ""), ("test", " --tta")])
def test_a_missing_evaluation_is_named_with_the_command_that_makes_it(world, tmp_path, kept, missing):
    run = tmp_path / "my run"
    shutil.copytree(world["cnn"], run, ignore=shutil.ignore_patterns("test-tta" if kept == "test" else "test"))
    freport.build_report(run, tmp_path / "out")
    text = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert f"`ferkit evaluate '{run}'{missing}` adds the other" in text


@pytest.mark.parametrize("name", ["R&copy;D", "exp #", "a&amp;b ##"])
def test_a_folder_name_in_a_heading_keeps_its_ampersands_and_hashes_in_markdown(name):
    """CommonMark reads `&copy;` as ©, and drops a heading's closing run of `#`: `# the run exp #` is
    "the run exp". The PDF and HTML showed the name as it is, the Markdown otherwise."""
    from ferkit.report import _literal, _plain

    text = "the cnn run " + _literal(name)
    assert _plain(text) == "the cnn run " + name
    assert not re.search(r"(?<!\\)[&#]", text)


def test_a_run_sized_by_fit_minutes_is_replicated_from_its_saved_config(tmp_path):
    """Its recorded command sizes the epochs again on the machine it runs on; config.yaml holds those chosen."""
    run_path = tmp_path / "cnn"
    run_path.mkdir()
    (run_path / "config.yaml").write_text("epochs: 11\nfit_minutes: 0.0\n")
    info = {"environment": {"command": "ferkit train faces.csv --out cnn --set fit_minutes=20"},
            "data": {"path": "faces.csv"}, "model": {"name": "cnn"},
            "fit_minutes": {"minutes": 20, "epochs_asked": 16, "epochs": 11, "epoch_seconds": 105.2}}
    run = fake_run(path=run_path, config={"seed": 0, "profile": "cpu"}, info=info)
    code = next(b.text for b in freport._replication_section(run, "ferkit report x --out y")
                if isinstance(b, freport.Shell))
    assert "sizes its epochs again by this machine's speed" in code and "(exact: the epochs as sized)" in code
    del info["fit_minutes"]
    code = next(b.text for b in freport._replication_section(run, "ferkit report x --out y")
                if isinstance(b, freport.Shell))
    assert "sizes" not in code and "(equivalent)" in code


def test_the_training_section_says_how_fit_minutes_sized_the_run(world, tmp_path):
    run_path = tmp_path / "cnn"
    shutil.copytree(world["cnn"], run_path)
    info = json.loads((run_path / "run.json").read_text())
    info["fit_minutes"] = {"minutes": 20, "epochs_asked": 16, "epochs": 11, "epoch_seconds": 105.2}
    (run_path / "run.json").write_text(json.dumps(info))
    text = " ".join(b.text for b in freport._training_section(freport.read_run(run_path))
                    if isinstance(b, freport.Para))
    assert ("sized to fit 20 minutes (`fit_minutes`) on this machine: 11 of the 16 asked for, at about 105.2 s an "
            "epoch, as timed at the start") in text
    info["fit_minutes"]["first_epoch_seconds"] = 110.4
    (run_path / "run.json").write_text(json.dumps(info))
    text = " ".join(b.text for b in freport._training_section(freport.read_run(run_path))
                    if isinstance(b, freport.Para))
    assert "11 of the 16 asked for, by the first epoch's 110.4 s;" in text
    # fit_minutes' guard cut it short: the paragraph says when and why, the schedule how the rate came down
    info["fit_minutes"].update(epochs=9, shortened=[{"after_epoch": 4, "from_epochs": 11, "epochs": 9,
                                                     "pace_seconds": 131.5, "spent_seconds": 520.0}])
    (run_path / "run.json").write_text(json.dumps(info))
    saved = configs.load(run_path / "config.yaml")
    configs.save(dataclasses.replace(saved, epochs=9, shortened=(4, 11)), run_path / "config.yaml")
    text = " ".join(b.text for b in freport._training_section(freport.read_run(run_path))
                    if isinstance(b, freport.Para))
    assert ("11 of the 16 asked for, by the first epoch's 110.4 s; after epoch 4 (8.7 minutes, 131.5 s an epoch) "
            "the run was behind time and cut from 11 to 9 epochs;") in text
    assert ("cosine decay to 0 at epoch 11; the run fell behind its minutes and was cut short after epoch 4: from "
            "there the rest of this schedule ran 1.40 times as fast, to end at epoch 9") in text
    # caught up after epoch 5, it took back one epoch: both changes, in both places
    info["fit_minutes"]["shortened"].append({"after_epoch": 5, "from_epochs": 9, "epochs": 10, "pace_seconds": 96.0,
                                             "spent_seconds": 616.0})
    info["fit_minutes"]["epochs"] = 10
    (run_path / "run.json").write_text(json.dumps(info))
    configs.save(dataclasses.replace(saved, epochs=10, shortened=(4, 11, 5, 9)), run_path / "config.yaml")
    text = " ".join(b.text for b in freport._training_section(freport.read_run(run_path))
                    if isinstance(b, freport.Para))
    assert ("cut from 11 to 9 epochs; after epoch 5 (10.3 minutes, 96.0 s an epoch) the run was back on time and "
            "lengthened from 9 to 10 epochs;") in text
    assert ("cosine decay to 0 at epoch 11; to keep to its minutes the run changed its epochs after epoch 4 to 9, "
            "after epoch 5 to 10: from each change the rest of this schedule was spread over the epochs then left") \
        in text


# ---------------------------------------------------------------------------------------------
# The findings the report states, from given histories and scores


def curve(train_acc: list[float], val_acc: list[float], val_loss: list[float]) -> list[dict[str, float]]:
    return [{"epoch": e, "train_acc": t, "val_acc": v, "val_loss": loss, "val_macro_f1": 0.5}
            for e, (t, v, loss) in enumerate(zip(train_acc, val_acc, val_loss), start=1)]


REGULARISED = {"weight_decay": 5e-4, "mixup": 0.2, "epochs": 4}  # augmentation is on unless switched off
SHRINKING = ("**Over-fitting**: train accuracy minus validation accuracy is +14.0 points at the best epoch (3) and "
             "+13.5 at the last (4). Countered by augmentation, weight decay 0.0005, mixup 0.2, and by evaluating the "
             "best validation epoch's checkpoint (by `val_acc`), not the last.")
HELD = ("**Over-fitting held in check**: train accuracy minus validation accuracy is +1.0 points at the best epoch (3) "
        "and +2.0 at the last (4), within 3 points, with augmentation, weight decay 0.0005, mixup 0.2; the best "
        "validation epoch's checkpoint (by `val_acc`) is the one evaluated.")


@pytest.mark.parametrize("history, said", [
    (curve([0.5, 0.6, 0.7, 0.8], [0.5, 0.55, 0.56, 0.55], [1.5, 1.2, 1.25, 1.4]),
     "**Over-fitting**: train accuracy minus validation accuracy is +14.0 points at the best epoch (3) and +25.0 at "
     "the last (4), growing after the best epoch; the validation loss is lowest at epoch 2 (1.200) and 1.400 at the "
     "end. Countered by augmentation, weight decay 0.0005, mixup 0.2, and by evaluating the best validation epoch's "
     "checkpoint (by `val_acc`), not the last."),
    # a gap that shrinks after the best epoch; a loss that ends 1% (then exactly 2%) above its lowest: not rising
    (curve([0.5, 0.6, 0.7, 0.695], [0.5, 0.55, 0.56, 0.56], [1.5, 1.0, 1.2, 1.01]), SHRINKING),
    (curve([0.5, 0.6, 0.7, 0.695], [0.5, 0.55, 0.56, 0.56], [1.5, 1.0, 1.2, 1.02]), SHRINKING),
    (curve([0.5, 0.55, 0.57, 0.58], [0.5, 0.55, 0.56, 0.56], [1.5, 1.0, 1.1, 1.3]),
     HELD + " The validation loss is lowest at epoch 2 and rises after it."),
    (curve([0.5, 0.55, 0.57, 0.58], [0.5, 0.55, 0.56, 0.56], [1.5, 1.2, 1.1, 1.0]), HELD),
    (curve([0.5, 0.5, 0.5, 0.5], [0.5, 0.55, 0.56, 0.56], [1.5, 1.2, 1.1, 1.0]),
     "**No over-fitting**: train accuracy minus validation accuracy is -6.0 points at the best epoch (3) and -6.0 at "
     "the last (4); training accuracy is a running mean over the epoch on augmented batches, so it trails "
     "validation. The regularisation (augmentation, weight decay 0.0005, mixup 0.2) is ample: a larger model or a "
     "longer schedule could use the slack."),
])
def test_the_fit_remark_reads_the_gap_and_the_validation_loss(history, said):
    run = fake_run(config=REGULARISED, info={"finished": True, "best_epoch": 3}, history=history)
    assert freport._fit(run) == said


def test_the_best_epoch_falls_back_to_the_last_recorded_one():
    history = curve([0.5, 0.6], [0.5, 0.55], [1.5, 1.2])
    run = fake_run(info={"best_epoch": 9}, history=history)  # epoch 9 is not recorded
    assert freport._at_best(run) is history[-1]


def test_a_validation_macro_f1_of_exactly_one_seventh_counts_as_learned():
    run = fake_run()
    assert freport._not_learned(run, {"val_macro_f1": 1 / 7}) is None
    assert "below 1/7" in freport._not_learned(run, {"val_macro_f1": 0.14})


@pytest.mark.parametrize("cfg, info, history_length, unfinished", [
    ({"epochs": 4}, {}, 4, False),  # every epoch recorded
    ({"epochs": 4}, {"finished": True}, 2, False),
    ({"epochs": 4}, {"stopped_early": True}, 2, False),
    ({}, {}, 0, False),  # nothing to go by
    ({"epochs": 4}, {}, 3, True),
])
def test_a_run_is_unfinished_only_when_its_files_say_so(cfg, info, history_length, unfinished):
    history = curve([0.5] * history_length, [0.5] * history_length, [1.0] * history_length)
    run = fake_run(config=cfg, info=info, history=history)
    assert (freport._unfinished(run) is not None) is unfinished


@pytest.mark.parametrize("best, said", [
    (4, "**Early stopping did not fire** (patience 5): all 4 epochs ran and the last was the best (`val_acc` "
        "0.5600); the model was still improving, so a longer schedule may help."),
    (3, "**Early stopping did not fire** (patience 5): all 4 epochs ran; the best `val_acc` (0.5600) came at epoch "
        "3, whose checkpoint is the one evaluated, 1 epoch(s) before the end.")])
def test_early_stopping_that_did_not_fire_says_where_the_best_epoch_was(best, said):
    history = curve([0.5] * 4, [0.5, 0.55, 0.56, 0.56], [1.0] * 4)
    run = fake_run(config={"epochs": 4, "patience": 5}, info={"finished": True, "best_epoch": best}, history=history)
    assert freport._early_stopping(run) == said


def rare_run(disgust: dict[str, float], mode: str = "none") -> freport.Run:
    per_class = {c: {"f1": 0.4 + 0.05 * k, "recall": 0.3 + 0.1 * k, "support": 10} for k, c in enumerate(EMOTIONS)}
    per_class["Disgust"] = dict(per_class["Disgust"], **disgust)
    info = {"data": {"train_counts": [40, 5, 40, 70, 50, 30, 45]}}
    return fake_run(config={"imbalance": mode}, info=info,
                    evals={"test": {"accuracy": 0.6, "macro_f1": 0.55, "per_class": per_class}})


@pytest.mark.parametrize("disgust, ending", [
    ({"f1": 0.3, "recall": 0.2}, ": 26.7 F1 points behind."),
    ({"f1": 0.0, "recall": 0.0}, ": the model never gets it right; the imbalance is not overcome."),
    ({"f1": 0.0, "recall": 0.0, "support": 0}, "; the test set holds none of it, so these numbers say nothing."),
    ({"f1": 0.54, "recall": 0.2}, ": on a par with the others without any rebalancing."),
    ({"f1": 0.59, "recall": 0.2}, ": on a par with the others without any rebalancing."),  # 2.3 points ahead
    # a model that answers Disgust for most faces was said to be "on a par"
    ({"f1": 0.8, "recall": 1.0}, ": 23.3 F1 points ahead of the others, which says less of the rare class than of how "
                                 "poorly the others are told apart."),
])
def test_the_rare_class_remark_compares_it_with_the_mean_of_the_six_others(disgust, ending):
    # the six others: F1 0.40, 0.50, 0.55, ..., 0.70 (mean 0.5667), recall 0.3, 0.5, 0.6, ..., 0.9 (mean 0.6333)
    text = freport._rare_class(rare_run(disgust))
    assert text == (f"**The rare class**: Disgust has 5 training faces (1.8%); nothing compensates for its rarity. On "
                    f"the test set its F1 is {disgust['f1']:.4f} and recall {disgust['recall']:.4f}, against a mean "
                    f"F1 of 0.5667 and recall 0.6333 over the other six classes{ending} Macro F1 is 5.0 points "
                    "below accuracy.")


def test_confusions_name_the_largest_error_the_most_confused_pair_and_the_extreme_classes():
    matrix = np.diag([10, 2, 8, 20, 9, 12, 11])
    matrix[4, 6] = 5  # Sad as Neutral: the largest single error
    matrix[6, 4], matrix[2, 0], matrix[0, 2] = 1, 4, 4  # Fear/Angry: 8 both ways, more than Sad/Neutral's 6
    run = rare_run({})
    run.evals["test"]["confusion_matrix"] = matrix.tolist()
    assert freport._confusions(run) == (
        "**Confusions**: the most frequent error is a true Sad face predicted as Neutral (5 faces, 35.7% of Sad); "
        "the most confused pair, both ways, is Angry/Fear (8 faces). Weakest class by F1: Angry (0.4000); strongest: "
        "Neutral (0.7000).")
    run.evals["test"]["confusion_matrix"] = np.diag([3, 1, 1, 1, 1, 1, 1]).tolist()
    assert freport._confusions(run) == "**Confusions**: none; every test face is classified correctly."


@pytest.mark.parametrize("evals, said", [
    (("test", "test-tta"), "**Test-time augmentation** (flip) changes accuracy by +2.0 points and macro F1 by -1.0 "
                           "points."),
    (("test-tta",), None), (("test",), None)])
def test_the_tta_remark_needs_both_evaluations(evals, said):
    scores = {"test": {"accuracy": 0.60, "macro_f1": 0.55}, "test-tta": {"accuracy": 0.62, "macro_f1": 0.54,
                                                                       "tta": "flip"}}
    run = fake_run(evals={name: scores[name] for name in evals})
    assert freport._tta_effect(run) == said


# ---------------------------------------------------------------------------------------------
# What the data and training sections say of the config


@pytest.mark.parametrize("cfg, augmentation", [
    ({}, "horizontal flip (p 0.5); shift ±0 px, rotation ±0°, zoom ±0% (one random affine warp per face). No "
         "test-time augmentation (`tta: none`)."),
    ({"flip": False, "max_shift": 4, "max_rotate": 10, "max_scale": 0.1, "erase_prob": 0.5, "mixup": 0.2,
      "cutmix": 0.0, "tta": "flip"},
     "shift ±4 px, rotation ±10°, zoom ±10% (one random affine warp per face); random erasing of one rectangle "
     "(p 0.5); plus mixup (alpha 0.2). Test-time augmentation (`tta: flip`) averages the probabilities of the face "
     "and its mirror image."),
    ({"augment": False, "tta": "crops"}, "none (`augment: false`). Test-time augmentation (`tta: crops`) averages the "
                                         "probabilities of the face, its mirror and four 2-pixel shifts of each."),
    ({"flip": False, "train_crop": 40}, "shift ±0 px, rotation ±0°, zoom ±0% (one random affine warp per face); a "
     "random 40×40 crop of the warped face (`train_crop`; validation and testing see whole faces). No test-time "
     "augmentation (`tta: none`)."),
])
def test_the_augmentation_paragraph_names_what_the_config_turns_on(cfg, augmentation):
    run = fake_run(config=cfg, info={"device": "cpu"})
    text = section_paragraphs(freport._data_section(run))["Preprocessing and augmentation"]
    assert text.endswith(f"Training augmentation, on whole batches on the cpu: {augmentation}")
    assert ("there is no alignment." if cfg.get("train_crop") else "there is no cropping or alignment.") in text


@pytest.mark.parametrize("cfg, used", [({}, ""), ({"train_limit": 1000}, " This run used the first 1,000 training "
                                                                          "faces only (`train_limit`).")])
def test_the_data_paragraph_mentions_a_limit_only_when_there_is_one(cfg, used):
    run = fake_run(config=cfg)
    assert section_paragraphs(freport._data_section(run))[""].endswith(f"touched only by `ferkit evaluate`.{used}")


def test_the_imbalance_paragraph_says_how_the_sampler_draws():
    run = fake_run(config={"imbalance": "sampler", "imbalance_power": 1.0})
    assert section_paragraphs(freport._data_section(run))["Imbalance"].startswith(
        "**Imbalance.** Handled with `imbalance: sampler`: training batches are drawn with replacement, each face "
        "with probability proportional to its class weight (largest class / class size)^1 (the weights above).")


def test_the_summary_is_set_small():
    metrics = {"n": 10, "accuracy": 0.5, "macro_f1": 0.4, "weighted_f1": 0.45}
    assert freport._summary(fake_run(evals={"test": metrics})).small


@pytest.mark.parametrize("cfg, device, said", [
    ({"optimizer": "sgd", "momentum": 0.9, "imbalance": "weighted_loss", "amp": True}, "cpu",
     "**Procedure.** SGD with Nesterov momentum 0.9, weight decay 0, batch size 32 (3 steps per epoch over 100 "
     "faces), cross-entropy with label smoothing 0 and the class weights of Table 1."),
    ({"optimizer": "adamw", "imbalance": "sampler", "amp": True}, "cuda",
     "**Procedure.** AdamW, weight decay 0, batch size 32 (3 steps per epoch over 100 faces), cross-entropy with "
     "label smoothing 0."),
])
def test_the_procedure_names_the_optimizer_the_loss_and_autocast_on_a_gpu_only(tmp_path, cfg, device, said):
    cfg = dict(cfg, batch_size=32, schedule="constant", lr=0.1)
    info = {"device": device, "data": {"train_images": 100}}
    procedure = section_paragraphs(freport._training_section(fake_run(path=tmp_path, config=cfg, info=info)))
    assert procedure["Procedure"].startswith(said + " Schedule: constant learning rate 0.1.")
    assert (" with bfloat16 autocast." in procedure["Procedure"]) is (device == "cuda")


def test_the_config_table_holds_three_keys_a_row():
    def config_table(cfg: dict) -> freport.Table:
        blocks = freport._training_section(fake_run(config=cfg))
        return next(b for b in blocks if isinstance(b, freport.Table))

    cfg = {"schedule": "constant", "lr": 0.1, "a": 1, "b": 2, "c": 3, "d": 4}
    assert config_table(cfg).rows == [["schedule", "constant", "lr", "0.1", "a", "1"], ["b", "2", "c", "3", "d", "4"]]
    cfg.pop("d")
    table = config_table(cfg)
    assert table.rows[-1] == ["b", "2", "c", "3", "", ""]
    assert table.group == 2


@pytest.mark.parametrize("started, finished", [
    (None, "2024-05-01T10:00:40+00:00"), ("2024-05-01T10:00:00+00:00", None), ("yesterday", "today"),
    ("2024-05-01T10:00:00", "2024-05-01T10:00:40+00:00")])  # one with a time zone and one without
def test_the_wall_clock_is_left_out_without_two_readable_timestamps(started, finished):
    assert freport._wall_clock({"started": started, "finished": finished}, 16.1) == ""


@pytest.mark.parametrize("started, finished, said", [
    # one timestamp in whole seconds may be up to 1 s early: 16.9 s cannot be told from 16.1 s
    ("2024-05-01T10:00:00+00:00", "2024-05-01T10:00:16.900+00:00", " (about the same wall-clock"),
    ("2024-05-01T10:00:00.000+00:00", "2024-05-01T10:00:16.900+00:00", " (16.9 s wall-clock"),
    ("2024-05-01T10:00:00.000+00:00", "2024-05-01T10:00:16.100+00:00", " (about the same wall-clock")])
def test_the_wall_clock_allows_for_timestamps_in_whole_seconds(started, finished, said):
    assert freport._wall_clock({"started": started, "finished": finished}, 16.1).startswith(said)


def test_the_layer_table_numbers_its_rows_and_marks_repeated_layers():
    run = fake_run(info={"model": {"name": "cnn", "kwargs": {"widths": [4, 8], "depth": 3}}})
    blocks, total = freport._architecture_section(run)
    table = next(b for b in blocks if isinstance(b, freport.Table))
    numbered = table.rows[:-1]
    assert [row[0] for row in numbered] == [str(i) for i in range(1, len(numbered) + 1)]
    assert table.rows[-1] == ["", "", "total", "", f"{total:,}"]
    assert [row[2].endswith("  ×2") for row in numbered] == [False, True, False, False, True, False, False]
    assert "×1" not in " ".join(row[2] for row in numbered)
    assert [row[1] for row in numbered if row[1] == "-"] == ["-"]  # the pooling done in forward(), no module's name
    details = next(b for b in blocks if isinstance(b, freport.Details)).blocks[0]
    assert [row[0] for row in details.rows] == [str(i) for i in range(1, len(details.rows) + 1)]


@pytest.mark.parametrize("env, device, said", [
    ({"gpu": "NVIDIA H200", "platform": "Linux"}, "cuda", "GPU NVIDIA H200 (cuda) on Linux"),
    ({"cpu": "AMD EPYC", "cpu_count": 2, "torch_threads": 2, "platform": "Linux"}, "cpu",
     "CPU (AMD EPYC, 2 cores, 2 torch threads) on Linux"),  # as run.json was before it named the model
    ({"cpu": "x86_64", "cpu_model": "Intel(R) Xeon(R) Processor (family 6, model 167)", "cpu_capability": "AVX512",
      "cpu_count": 2, "torch_threads": 2, "platform": "Linux"}, "cpu",
     "CPU (Intel(R) Xeon(R) Processor (family 6, model 167), torch's AVX512 kernels, 2 cores, 2 torch threads) on "
     "Linux")])
def test_the_hardware_is_named_as_run_json_records_it(env, device, said):
    assert freport._hardware(fake_run(info={"environment": env, "device": device}, evals={})) == said


@pytest.mark.parametrize("cfg, shown", [({}, "training (augmented batches)"), ({"augment": False}, "training")])
def test_the_curves_caption_says_augmented_unless_augmentation_is_off(tmp_path, cfg, shown):
    (tmp_path / "learning_curves.png").write_bytes(b"")
    run = fake_run(path=tmp_path, config=dict(cfg, schedule="constant", lr=0.1), info={"best_epoch": 1})
    caption = next(b.caption for b in freport._training_section(run) if isinstance(b, freport.Figure))
    assert caption.startswith(f"Learning curves: loss and accuracy per epoch on {shown} and validation")


# ---------------------------------------------------------------------------------------------
# The extras' JSON: key numbers, captions and figure order


EXTRA_JSON = {"accuracy": 0.7, "loss": float("nan"), "name": "cnn", "note": "y" * 49, "limit": "y" * 48,
              "figure": "maps.png", "table": "rows.CSV", "per_class_f1": [0.5, 0.25], "counts": [1, 2],
              "eight": [1] * 8, "empty": [], "flags": [True], "mixed": [1, "a"], "maps.png": "a caption",
              "nested": {"kappa": 0.5, "deeper": {"seconds": 12.5}}, "tta": True, "n": 3, "fit_seconds": 1.5}


def test_the_leaves_of_an_extra_json_are_its_short_scalars_and_short_number_lists():
    """Left out: not-a-number, strings over 48 characters or naming a file, lists longer than the
    emotions, empty or not all numbers, and a figure's caption keyed by its file name; nested objects
    come after their parent's own values."""
    assert freport._flatten(EXTRA_JSON) == [
        ("accuracy", 0.7), ("name", "cnn"), ("limit", "y" * 48), ("per_class_f1", [0.5, 0.25]), ("counts", [1, 2]),
        ("tta", True), ("n", 3), ("fit_seconds", 1.5), ("nested.kappa", 0.5), ("nested.deeper.seconds", 12.5)]


def test_a_list_of_one_to_seven_numbers_is_a_leaf():
    assert freport._flatten({"one": [2], "seven": [1] * 7, "eight": [1] * 8}) == [("one", [2]), ("seven", [1] * 7)]


def test_key_numbers_put_metrics_first_then_numbers_then_words_then_times():
    # a list stays only under a metric's name: per-class F1 is a key number, counts are not
    assert freport._key_numbers(EXTRA_JSON) == [
        ("accuracy", 0.7), ("per_class_f1", [0.5, 0.25]), ("nested.kappa", 0.5), ("n", 3), ("name", "cnn"),
        ("limit", "y" * 48), ("tta", True), ("fit_seconds", 1.5), ("nested.deeper.seconds", 12.5)]
    assert freport._key_numbers({"seconds": 2.0, "name": "cnn"}) == [("name", "cnn"), ("seconds", 2.0)]


@pytest.mark.parametrize("value, shown", [(0.12345, "0.1235"), (999.5, "999.5000"), (1000.0, "1,000"),
                                          (1234.6, "1,235"), ([0.5, 2], "0.5000, 2"), (12345, "12,345"),
                                          (True, "true"), ("x", "x")])
def test_key_numbers_are_formatted_by_kind(value, shown):
    assert freport._format_leaf(value) == shown


def test_figure_captions_come_from_the_json_beside_their_file_names():
    """A caption keyed by the file name wins; else an object holding one PNG gives its caption, title
    or description, else up to three of its short scalars (no flags, no file names); an object with
    two PNGs says nothing about either."""
    data = {"overview.png": "given for the file", "maps": {"figure": "sub/maps.png", "caption": "Mean maps"},
            "two": {"a": "one.png", "b": "two.png", "caption": "of which?"},
            "runs": [{"file": "curve.png", "title": "Curves", "caption": 5},
                     {"path": "plain.png", "layer": "conv4", "flag": True, "n": 12, "long": "z" * 41,
                      "csv": "x.csv", "table": "t.csv", "k": 3, "m": 4},
                     {"path": "bare.png", "flag": False}, {"path": "forty.png", "note": "w" * 40, "big": "w" * 41}],
            "overview": {"figure": "overview.png", "caption": "a second one"}}
    assert freport._captions(data) == {"overview.png": "given for the file", "maps.png": "Mean maps",
                                       "curve.png": "Curves", "plain.png": "layer conv4; n 12; k 3",
                                       "forty.png": "note " + "w" * 40}


def test_extra_figures_are_ordered_and_captioned_known_ones_first():
    paths = [Path(p) for p in ("z/faces_angry.png", "b.png", "embedding.png", "a.png", "overview.png",
                               "channels_happy.png", "top_faces.png")]
    assert [str(p) for p in freport._figure_order(paths)] == [
        "overview.png", "top_faces.png", "embedding.png", "b.png", "a.png", "z/faces_angry.png", "channels_happy.png"]
    found = {"overview.png": "extra words", "mine.png": "my own caption", "faces_sad.png": "not for a family"}
    known = freport._KNOWN_CAPTIONS
    assert freport._caption_for(Path("overview.png"), found) == f"{known['overview.png']} (extra words)"
    assert freport._caption_for(Path("embedding.png"), found) == known["embedding.png"]
    assert freport._caption_for(Path("mine.png"), found) == "My own caption"
    assert freport._caption_for(Path("faces_sad.png"), found) == freport._KNOWN_FAMILIES["faces"].format(emotion="Sad")
    assert freport._caption_for(Path("channels_fear.png"), found).startswith("Fear faces and their strongest")
    assert freport._caption_for(Path("my_plot-v2.png"), found) == "My plot v2"
    assert freport._caption_for(Path("other_sad.png"), found) == "Other sad"  # no family of ferkit's


def test_an_extra_section_shows_key_numbers_in_pairs_and_cuts_a_long_json():
    extra = freport.Extra(Path("/x/feat"), {"accuracy": 0.5, "n": 3, "name": "cnn", "blob": ["x" * 60] * 1000},
                          [Path("/x/feat/sub/a.png"), Path("/x/feat/overview.png")])
    heading, intro, table, details, grid = freport._extra_section(
        extra, 7, "Activation figures", "Intro.", "features.json", "features", key_limit=2)
    assert heading == freport.Heading("7  Activation figures", 1)
    assert intro.text == "Intro. From `/x/feat`: features.json (3 values, 2 below), 2 figure(s)."
    assert intro.keep_with_next
    assert table.rows == [["accuracy", "0.5000", "n", "3"]]
    assert table.header == ["key", "value"] * 2 and table.group == 2  # a rule between the pairs
    _, _, table, _, _ = freport._extra_section(extra, 7, "A", "B.", "features.json", "features", key_limit=3)
    assert table.rows == [["accuracy", "0.5000", "n", "3"], ["name", "cnn", "", ""]]
    text = details.blocks[0].text
    cut = "\n... (cut here: the whole file is /x/feat/features.json)"
    assert text == json.dumps(extra.data, indent=1)[:50_000] + cut
    assert [(f.name, f.caption.endswith(f"({f.path.relative_to(extra.path)})")) for f in grid.figures] == [
        ("features_overview.png", True), ("features_sub_a.png", True)]
    short = freport.Extra(Path("/x/feat"), {"name": "cnn"}, [])
    blocks = freport._extra_section(short, 7, "A", "B.", "features.json", "features")
    assert [type(b).__name__ for b in blocks] == ["Heading", "Para", "Table", "Details"]
    assert blocks[3].blocks[0].text == json.dumps({"name": "cnn"}, indent=1)


def _test_metrics(tta: str, accuracy: float, supports: list[int], classes: list[str] | None = None) -> dict:
    per_class = per_class_scores(dict(zip(EMOTIONS, (0.1, 0.9, 0.2, 0.3, 0.4, 0.5, 0.6))), supports)
    return {"epoch": 3, "split": "PrivateTest", "n": sum(supports), "tta": tta, "accuracy": accuracy,
            "macro_f1": 0.5, "weighted_f1": 0.4, "per_class": per_class,
            **({"macro_f1_classes": classes} if classes else {})}


@pytest.mark.parametrize("folder, shown", [("runs/ta\tb", "$'runs/ta\\tb'"),
                                           ("runs/dev_\u0915", "$'runs/dev_\\xe0\\xa4\\x95'")])
def test_a_command_in_a_sentence_is_quoted_as_the_shell_blocks_are(folder, shown):
    """shlex.join kept a tab as it is, and the PDF spelled a letter its fonts lack as \\u0915 inside the quotes:
    copied, either named another folder."""
    blocks = freport._test_section(fake_run(path=folder, evals={"test": _test_metrics("none", 0.6, [10] * 7)}),
                                   Path("unused"))
    assert blocks[1].text.endswith(f" Only the evaluation without TTA exists; `ferkit evaluate {shown} --tta` adds the "
                                   "other.")
    unfinished = freport._unfinished(fake_run(path=folder, config={"epochs": 3}, history=[{}]))
    assert f"`ferkit train DATA --out {shown} --resume`" in unfinished


@pytest.mark.parametrize("evals, columns, missing", [
    ({"test": _test_metrics("none", 0.6, [10, 0, 10, 10, 10, 10, 20])}, ["no TTA"],
     " Only the evaluation without TTA exists; `ferkit evaluate runs/cnn --tta` adds the other."),
    ({"test-tta": _test_metrics("flip", 0.62, [10, 0, 10, 10, 10, 10, 20])}, ["TTA flip"],
     " Only the evaluation with TTA exists; `ferkit evaluate runs/cnn` adds the other."),
    ({"test": _test_metrics("none", 0.6, [10, 0, 10, 10, 10, 10, 20]),
      "test-tta": _test_metrics("flip", 0.62, [10, 0, 10, 10, 10, 10, 20])}, ["no TTA", "TTA flip"], ""),
])
def test_the_test_section_names_a_missing_evaluation_and_reports_the_preferred_one(evals, columns, missing):
    blocks = freport._test_section(fake_run(path="runs/cnn", evals=evals), Path("unused"))
    heading, intro, summary, report = blocks  # no confusion matrix recorded: no figure
    assert intro.text == ("The best checkpoint (epoch 3) on PrivateTest, the split never seen in training or model "
                          "selection." + missing)
    assert summary.header == ["metric", *columns]
    assert summary.caption == f"Test metrics (from eval/{'/metrics.json and eval/'.join(evals)}/metrics.json)."
    shown = {"no TTA": ["0.6000", "0.5000", "0.4000", "70"], "TTA flip": ["0.6200", "0.5000", "0.4000", "70"]}
    assert [row[1:] for row in summary.rows] == [list(values) for values in zip(*(shown[c] for c in columns))]
    # the macro average over the six classes present (Disgust has no test face), the weighted by support
    assert report.caption == f"Classification report ({columns[-1]})."
    assert report.rows[-3:] == [["macro avg (6 classes present)", "0.3500", "0.3500", "0.3500", "70"],
                                ["weighted avg", "0.3857", "0.3857", "0.3857", "70"],
                                ["accuracy", "", "", shown[columns[-1]][0], "70"]]
    assert [row[0] for row in report.rows[:-3]] == list(EMOTIONS)
    assert report.rows[1] == ["Disgust", "0.9000", "0.9000", "0.9000", "0"]


def test_the_macro_average_row_follows_the_classes_metrics_json_averaged():
    every = _test_metrics("none", 0.6, [10, 1, 10, 10, 10, 10, 10])  # one test face of Disgust is enough
    chosen = _test_metrics("none", 0.6, [10] * 7, classes=["Angry", "Disgust"])
    rows = [freport._test_section(fake_run(path="r", evals={"test": m}), Path("unused"))[3].rows[-3]
            for m in (every, chosen)]
    assert rows == [["macro avg", "0.4286", "0.4286", "0.4286", "61"],
                    ["macro avg (2 classes present)", "0.5000", "0.5000", "0.5000", "70"]]


# ---------------------------------------------------------------------------------------------
# HTML and Markdown: every kind of block


def _every_block(png: Path) -> freport.Document:
    return freport.Document("T <1>", [
        freport.Heading("Title `x`", 0), freport.Para("a **b** `c<d>`"), freport.Bullets(["one", "two & three"]),
        freport.Shell(["ferkit train a", "# c"]),
        freport.Table(["k", "n", "s"], [["a|b", "1,234", "x"], ["b", "-", "-0.5%"]], "Cap **one**"),
        freport.Figure(png, "a fig `(cap)`", "my plot (v1).png"),
        freport.SideBySide([freport.Para("L")], [freport.Table(["q", "v"], [["z", "2"]])]),
        freport.Details("sum <x>", [freport.Code("code <y>")]),
    ], [freport.Heading("Extras", 0), freport.Heading("7  More"),
        freport.FigureGrid([freport.Figure(png, "g1", "g1.png"), freport.Figure(png, "g2", "g2.png")]),
        freport.Table(["a"], [["x"]], "Last")])


def test_markdown_renders_every_kind_of_block(tmp_path):
    png = tmp_path / "a.png"
    Image.fromarray(np.zeros((4, 8, 3), np.uint8)).save(png)
    text, files = freport.render_markdown(_every_block(png))
    assert text == "\n".join([
        "# Title `x`", "", "a **b** `c<d>`", "", "- one", "- two & three", "",
        "```", "ferkit train a", "# c", "```", "",
        "**Table 1.** Cap **one**", "", "| k | n | s |", "| --- | ---: | --- |", "| a\\|b | 1,234 | x |",
        "| b | - | -0.5% |", "",
        "![a fig (cap)](<figures/my plot (v1).png>)", "", "*Figure 1. a fig `(cap)`*", "",
        "L", "", "| q | v |", "| --- | ---: |", "| z | 2 |", "",
        "<details>", "<summary>sum &lt;x&gt;</summary>", "", "```", "code <y>", "```", "", "</details>", "",
        "---", "", "# Extras", "", "## 7  More", "",
        "![g1](figures/g1.png)", "", "*Figure 2. g1*", "", "![g2](figures/g2.png)", "", "*Figure 3. g2*", "",
        "**Table 2.** Last", "", "| a |", "| --- |", "| x |", ""])
    assert files == {"figures/my plot (v1).png": png, "figures/g1.png": png, "figures/g2.png": png}


def test_html_renders_every_kind_of_block(tmp_path):
    png = tmp_path / "a.png"
    Image.fromarray(np.zeros((4, 8, 3), np.uint8)).save(png)
    page = freport.render_html(_every_block(png))
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    assert page.startswith('<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
                           "<title>T &lt;1&gt;</title>")

    def picture(caption: str, number: int, alt: str) -> str:
        return (f'<figure><img src="data:image/png;base64,{data}" alt="{alt}"><figcaption><b>Figure {number}.</b> '
                f"{caption}</figcaption></figure>")

    assert page[page.index("<body>"):] == "\n".join([
        "<body>", "<h1>Title <code>x</code></h1>", "<p>a <b>b</b> <code>c&lt;d&gt;</code></p>",
        "<ul><li>one</li><li>two &amp; three</li></ul>", "<pre>ferkit train a\n# c</pre>",
        '<table><caption><b>Table 1.</b> Cap <b>one</b></caption><thead><tr><th>k</th><th class="num">n</th>'
        '<th>s</th></tr></thead><tbody><tr><td>a|b</td><td class="num">1,234</td><td>x</td></tr><tr><td>b</td>'
        '<td class="num">-</td><td>-0.5%</td></tr></tbody></table>',
        picture("a fig <code>(cap)</code>", 1, "a fig (cap)"),
        '<div class="cols"><div><p>L</p></div><div><table><thead><tr><th>q</th><th class="num">v</th></tr></thead>'
        '<tbody><tr><td>z</td><td class="num">2</td></tr></tbody></table></div></div>',
        "<details><summary>sum &lt;x&gt;</summary><pre>code &lt;y&gt;</pre></details>",
        '<section class="extras"><h1>Extras</h1>', "<h2>7  More</h2>",
        '<div class="grid">' + picture("g1", 2, "g1") + picture("g2", 3, "g2") + "</div>",
        "<table><caption><b>Table 2.</b> Last</caption><thead><tr><th>a</th></tr></thead><tbody><tr><td>x</td></tr>"
        "</tbody></table></section>", "</body>", "</html>", ""])


@pytest.mark.parametrize("column, numeric", [
    (["1", "-2.5", "+3", "1,234", "45%", ".5"], True), (["-", "", "7"], True), (["-", ""], False),
    (["1", "x"], False), (["1.2.3"], False), (["1e5"], False)])
def test_numeric_columns_are_those_of_numbers_only(column, numeric):
    table = freport.Table(["name", "value"], [["row", v] for v in column] + [["short"]])  # a short row: skipped
    assert freport._numeric_column(table, 1) is numeric


# ---------------------------------------------------------------------------------------------
# Fitting the PDF to its pages, with a renderer whose page counts follow a formula


def _fake_renderer(calls: list, main_fits_at: float, with_commands: bool, extra_page_per_figure: float,
                   final_extra_pages: float | None = None):
    """render_pdf's stand-in: the main part takes 3 pages at figure scales up to `main_fits_at` (never
    with the commands unless `with_commands`), 4 above; each extra figure kept takes
    `extra_page_per_figure` × its scale."""
    def render(doc, main_scale=1.0, extra_scale=1.0, drop=0, draft=False):
        calls.append((main_scale, extra_scale, drop, draft, bool(doc.extras)))
        has_commands = any(isinstance(block, freport.Shell) for block in doc.main)
        main_pages = 3 if main_scale <= main_fits_at and (with_commands or not has_commands) else 4
        kept = len(freport._grid_figures(doc.extras)) - drop
        extra_pages = kept * extra_page_per_figure * extra_scale if doc.extras else 0.0
        if not draft and final_extra_pages is not None:
            extra_pages = final_extra_pages
        return b"pdf", freport.PdfLayout(main_pages + 1, main_pages, extra_pages, min(main_scale, extra_scale), drop)
    return render


def _fitted_document(figures: int) -> freport.Document:
    main = [freport.Heading("t", 0), freport.Shell(["ferkit train a"])]
    grid = freport.FigureGrid([freport.Figure(Path(f"f{i}.png"), "c", f"f{i}.png") for i in range(figures)])
    return freport.Document("t", main, [freport.Heading("Extras", 0), grid] if figures else [])


@pytest.mark.parametrize("figures, per_figure, extra_scale, drop", [
    (0, 0.5, 1.0, 0),   # no extras: the main part alone
    (3, 0.5, 1.0, 0),   # 1.5 pages at full size: exactly the limit
    (3, 0.6, 0.8, 0),   # 1.8 pages at full size, 1.44 at 80%
    (10, 0.5, 0.8, 7),  # 3 pages even at 60%: the fewest figures to leave out at 80% is 7 (3 × 0.4 = 1.2)
    (4, 0.5, 0.7, 0),   # 2 pages at full size, 1.4 at 70%
    (6, 0.5, 0.8, 3),   # 1.8 pages at 60%: the figures kept are shown at 80%, 3 of them in 1.2 pages
    (6, 0.45, 0.8, 2),  # 4 figures at 80% take 1.44 pages, 5 take 1.8
    (3, 0.9, 0.8, 1),   # 1.62 pages at 60%; 2 figures at 80% take 1.44
])
def test_the_pdf_shrinks_figures_then_leaves_out_as_few_as_will_do(monkeypatch, figures, per_figure, extra_scale,
                                                                   drop):
    calls: list = []
    monkeypatch.setattr(freport, "render_pdf", _fake_renderer(calls, 0.8, True, per_figure))
    _, layout = freport.layout_pdf(_fitted_document(figures))
    assert calls[:3] == [(1.0, 1.0, 0, True, False), (0.9, 1.0, 0, True, False), (0.8, 1.0, 0, True, False)]
    assert calls[-1] == (0.8, extra_scale if figures else 1.0, drop, False, bool(figures))  # the final render
    assert layout.dropped_figures == drop and not layout.commands_left_out


def test_the_pdf_leaves_the_commands_out_only_when_the_main_part_overflows_without_them(monkeypatch):
    calls: list = []
    monkeypatch.setattr(freport, "render_pdf", _fake_renderer(calls, 0.7, False, 0.5))
    _, layout = freport.layout_pdf(_fitted_document(0))
    assert [call[0] for call in calls] == [1.0, 0.9, 0.8, 0.7, 0.6, 1.0, 0.9, 0.8, 0.7, 0.7]
    assert layout.commands_left_out and layout.main_pages == 3


@pytest.mark.parametrize("renderer, message", [
    (dict(main_fits_at=0.5, with_commands=False, extra_page_per_figure=0.5),
     "needs more than 3 pages, even with figures at 60% of their size and without the replication's commands"),
    (dict(main_fits_at=1.0, with_commands=True, extra_page_per_figure=0.5, final_extra_pages=1.6),
     "came out with a main part of 3 pages \\(limit 3\\) and 1.60 pages of extras \\(limit 1.5\\)"),
])
def test_a_pdf_that_cannot_fit_is_refused(monkeypatch, renderer, message):
    monkeypatch.setattr(freport, "render_pdf", _fake_renderer([], **renderer))
    with pytest.raises(FerkitError, match=message):
        freport.layout_pdf(_fitted_document(2))


def test_extras_that_overflow_without_any_figure_are_refused(monkeypatch):
    monkeypatch.setattr(freport, "render_pdf", _fake_renderer([], 1.0, True, 0.5))
    monkeypatch.setattr(freport, "EXTRA_PAGES", -1)
    with pytest.raises(FerkitError, match="extras of the report need more than -1 pages even without their figures"):
        freport.layout_pdf(_fitted_document(2))


def test_the_replica_folder_sits_beside_the_run_as_the_user_named_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert freport._replica_folder(Path("runs/cnn")) == Path("runs/cnn-replica")  # relative stays relative
    assert freport._replica_folder(Path(".")) == tmp_path.with_name(f"{tmp_path.name}-replica")
    assert freport._replica_folder(Path("runs/..")) == tmp_path.with_name(f"{tmp_path.name}-replica")


def test_the_replica_of_a_study_run_sits_beside_the_study_which_it_would_stop(tmp_path, monkeypatch):
    """Trained into STUDY/cnn-replica as the report said, the replica made the study's next `ferkit run` stop:
    its folder held other files."""
    from ferkit import pipeline

    study = tmp_path / "study one"
    (study / "cnn").mkdir(parents=True)
    (study / "pipeline.json").write_text("{}")
    (study / "cnn" / "config.yaml").write_text("epochs: 2\n")
    info = {"environment": {"command": "ferkit run faces.csv --out 'study one'"}, "data": {"path": "faces.csv"},
            "model": {"name": "cnn"}}
    run = fake_run(path=study / "cnn", config={"seed": 0, "profile": "cpu"}, info=info)
    code = next(b.text for b in freport._replication_section(run, "ferkit report x --out y")
                if isinstance(b, freport.Shell))
    replica = tmp_path / "study one-cnn-replica"
    train = shlex.split(next(line for line in code.splitlines() if line.startswith("ferkit train")))
    assert train[train.index("--out") + 1] == str(replica) and f"ferkit evaluate {shlex.quote(str(replica))}" in code
    assert f"{tmp_path / 'study one-replica' / 'cnn'} replicates this run" in code  # the whole study's, as before
    replica.mkdir()
    pipeline.require_only(study, pipeline._STUDY_ENTRIES, "a study")  # the study may still be run again
    monkeypatch.chdir(study / "cnn")
    assert freport._replica_folder(Path(".")) == replica


@pytest.mark.parametrize("commit, said", [
    ("abc123-dirty", "`abc123-dirty` (the working tree had uncommitted changes: the commit alone does not hold the "
                     "exact code)"),
    ("abc123", "`abc123`"), (None, "`unknown`")])
def test_the_replication_paragraph_names_versions_data_and_device(tmp_path, commit, said):
    (tmp_path / "config.yaml").write_text("epochs: 2\n")
    info = {"environment": {"versions": {"ferkit": "0.1.0", "torch": "2.13.0", "numpy": "2.1"}, "git_commit": commit},
            "data": {"path": "/d/faces.csv", "sha256": "f" * 8}, "device": "cpu"}
    run = fake_run(path=tmp_path, config={"seed": 7}, info=info)
    heading, shell, para, details = freport._replication_section(run, "ferkit report x --out y")
    assert para.text == (
        f"Seed `7` (every epoch's shuffling, augmentation and dropout derive from it and the epoch number). Config: "
        f"`{tmp_path}/config.yaml` (Table 3). ferkit 0.1.0, git commit {said}. Libraries: torch 2.13.0, numpy 2.1. "
        "Data: `faces.csv`, sha256 `ffffffff`. Device: cpu; results match to the last digit only with the same "
        "hardware and library versions.")
    assert details == freport.Details("config.yaml", [freport.Code("epochs: 2")])
    assert shell.lines[-2:] == ["# this report, from the files of the original run", "ferkit report x --out y"]


def test_only_a_command_other_than_ferkit_train_gets_a_remark():
    assert freport._trained_by(None) == "" and freport._trained_by("ferkit train a.csv --out r") == ""
    exactly = "pytest " + "x" * (freport._LONGEST_REMARK - 7)  # as long as a remark may be: shown whole
    assert freport._trained_by(exactly) == f" (run.json records the training as started by `{exactly}`, not by a " \
                                           "ferkit command.)"


def test_an_evaluation_without_checksums_stands_on_the_runs(tmp_path):
    run = fake_run(path=tmp_path, info={"data": {"sha256": "a", "faces_sha256": "b"}})
    assert freport._evaluated_data(run, {}) == {"data_sha256": "a", "data_faces_sha256": "b"}
    assert freport._evaluated_data(run, {"data_sha256": "c", "data_faces_sha256": "d"}) == \
        {"data_sha256": "c", "data_faces_sha256": "d"}


@pytest.mark.parametrize("cnn_params, mlp_params, ratio, shown", [
    (2000, 1000, ", with 2.00× the MLP's parameters", "1,000"), (500, 1000, ", with 2.0× fewer parameters", "1,000"),
    (2000, None, "", "-")])
def test_cnn_vs_mlp_compares_parameters_when_the_mlp_records_them(cnn_params, mlp_params, ratio, shown):
    cnn, mlp = _fake_cnn_and_mlp()
    mlp.info["model"]["parameters"] = mlp_params
    _, para, columns = freport._mlp_section(cnn, mlp, cnn_params, 6)
    assert para.text == ("The MLP run `mlp` sees the same pixels without convolutions. The CNN's test accuracy is 10.0 "
                         f"points above the MLP's and its macro F1 level with the MLP's{ratio}; no class has a higher "
                         "F1 with the CNN.")
    assert columns.left[0].rows[3] == ["parameters", f"{cnn_params:,}", shown]


def test_cnn_vs_mlp_takes_the_mlps_evaluation_in_the_cnns_tta_mode():
    cnn, mlp = _fake_cnn_and_mlp()
    mlp.evals["test-tta"] = dict(mlp.evals["test"], tta="flip", accuracy=0.52)
    assert freport._compared_evaluations(cnn, mlp)[1]["accuracy"] == 0.5  # the CNN has no TTA: nor has the MLP
    cnn.evals = {"test-tta": dict(cnn.evals["test"], tta="flip")}
    assert freport._compared_evaluations(cnn, mlp)[1]["accuracy"] == 0.52
    del mlp.evals["test-tta"]
    assert freport._compared_evaluations(cnn, mlp)[1]["accuracy"] == 0.5  # the MLP's only evaluation


def test_cnn_vs_mlp_lists_the_classes_both_evaluations_score():
    cnn, mlp = _fake_cnn_and_mlp()
    del mlp.evals["test"]["per_class"]["Disgust"]
    per_class = freport._mlp_section(cnn, mlp, 2000, 6)[-1].right[0]
    assert [row[0] for row in per_class.rows] == [c for c in EMOTIONS if c != "Disgust"]


def test_an_extra_json_of_exactly_the_limit_is_shown_whole():
    data = {"a": "x" * 49_988}  # 50,000 characters as json.dumps(indent=1) writes it
    assert len(json.dumps(data, indent=1)) == 50_000
    details = freport._extra_section(freport.Extra(Path("/x"), data, []), 7, "A", "B.", "f.json", "f")[-1]
    assert details.blocks[0].text == json.dumps(data, indent=1)


def test_the_pdf_numbers_tables_and_figures_and_a_draft_only_leaves_out_the_images(tmp_path):
    png = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 80, 3), dtype=np.uint8)).save(png)
    doc = _every_block(png)
    pdf, layout = freport.render_pdf(doc)
    draft_pdf, draft_layout = freport.render_pdf(doc, draft=True)
    assert layout == draft_layout and (layout.pages, layout.main_pages) == (2, 1) and 0 < layout.extra_pages < 1
    main, extras = pypdf.PdfReader(io.BytesIO(pdf)).pages
    assert len(main.images) == 1 and len(extras.images) == 1  # the grid's two figures share one image
    assert not any(page.images for page in pypdf.PdfReader(io.BytesIO(draft_pdf)).pages)
    main_text, extras_text = main.extract_text(), extras.extract_text()
    assert main_text.startswith("T <1> · page 1\nTitle x\na b c<d>\n")
    assert "Table 1. Cap one" in main_text and "Figure 1. a fig (cap)" in main_text
    assert "sum <x>" not in main_text and "code <y>" not in main_text  # Details: HTML and Markdown only
    assert extras_text.startswith("T <1> · page 2\nExtras\n7 More\nFigure 2. g1\nFigure 3. g2\nTable 2. Last")


@pytest.mark.parametrize("mlp_faces, said", [(64, ""), (32, ". The CNN was trained on 64 faces, the MLP on 32"),
                                             (None, "")])
def test_cnn_vs_mlp_says_when_the_two_were_trained_on_different_faces(mlp_faces, said):
    cnn, mlp = _fake_cnn_and_mlp()
    mlp.info["data"]["train_images"] = mlp_faces
    heading, para, _ = freport._mlp_section(cnn, mlp, 1000, 6)
    assert heading == freport.Heading("6  CNN vs MLP baseline", 1)
    assert para.text.endswith(f"no class has a higher F1 with the CNN{said}.")


# The PDF's text frame: A4 less margins of 1.5 cm a side and 2.7 cm top and bottom together, and the
# frame's padding of 6 pt a side
TEXT_WIDTH, TEXT_HEIGHT, TEXT_LEFT = A4[0] - 3 * cm - 12, A4[1] - 2.7 * cm - 12, 1.5 * cm + 6


def test_pdf_figures_take_their_share_of_the_text_width_at_the_scale_of_their_part(tmp_path):
    """A figure is `width` of the text width times the scale of its part (main or extras), and no taller
    than `max_height` of the text height times that scale."""
    Image.fromarray(np.full((40, 80, 3), 50, np.uint8)).save(tmp_path / "wide.png")
    Image.fromarray(np.full((400, 40, 3), 90, np.uint8)).save(tmp_path / "tall.png")
    doc = freport.Document("t", [freport.Figure(tmp_path / "wide.png", "w", "w.png", width=0.5),
                                 freport.Figure(tmp_path / "tall.png", "t", "t.png", max_height=0.2)],
                           [freport.Figure(tmp_path / "wide.png", "x", "x.png")])
    pdf, _ = freport.render_pdf(doc, main_scale=0.8, extra_scale=0.6)
    width, height = TEXT_WIDTH, TEXT_HEIGHT
    tall = height * 0.2 * 0.8
    expected = [[(width * 0.5 * 0.8, width * 0.2), (tall / 10, tall)], [(width * 0.6, width * 0.3)]]
    assert _drawn_images(pdf) == [[pytest.approx(size, abs=1e-3) for size in page] for page in expected]


def _drawn_images(pdf: bytes) -> list[list[tuple[float, float]]]:
    """The width and height of each image drawn on each page of `pdf`, as its content stream places them."""
    return [[(float(w), float(h)) for w, h in re.findall(r"([\d.]+) 0 0 ([\d.]+) [\d.]+ [\d.]+ cm\s*/\S+ Do",
                                                         page.get_contents().get_data().decode("latin-1"))]
            for page in pypdf.PdfReader(io.BytesIO(pdf)).pages]


def test_a_pdf_grid_pairs_figures_and_gives_a_wide_one_a_row_of_its_own(tmp_path):
    sizes = {"a": (50, 80), "b": (40, 40), "c": (40, 40), "d": (40, 40), "e": (40, 63)}  # a: 1.6 wide, e: 1.575
    for name, (h, w) in sizes.items():
        Image.fromarray(np.full((h, w, 3), ord(name), np.uint8)).save(tmp_path / f"{name}.png")
    figures = [freport.Figure(tmp_path / f"{n}.png", n, f"{n}.png", max_height=0.9) for n in sizes]
    pdf, _ = freport.render_pdf(freport.Document("t", [freport.Heading("t", 0)], [freport.FigureGrid(figures)]))
    width = TEXT_WIDTH
    half = width / 2 - 6  # a figure of a pair, less the gap
    expected = [(width, width / 1.6), (half, half), (half, half), (half, half), (half, half * 40 / 63)]
    assert [size for page in _drawn_images(pdf) for size in page] == [pytest.approx(s, abs=1e-3) for s in expected]


def test_a_long_pdf_table_splits_across_pages_and_repeats_its_header():
    rows = [[f"r{i}", str(i)] for i in range(70)]
    pdf, layout = freport.render_pdf(freport.Document("t", [freport.Table(["key", "value"], rows, "Long")]))
    first, second = page_texts(pdf)
    assert layout.pages == 2 and first.startswith("t · page 1\nTable 1. Long\n key\n value\nr0\n 0\n")
    assert second.startswith("t · page 2\nkey\n value\nr") and "r0\n" not in second  # the header row alone


def _text_runs(pdf: bytes, page: int) -> list[tuple[str, float, str, float]]:
    """Each piece of text on a page of `pdf` in order: the text, where it starts (points from the left
    edge), its font and its size in points."""
    runs = []

    def visit(text, cm, tm, font, size):
        if text.strip():
            runs.append((text.strip(), tm[4] + cm[4], font["/BaseFont"], round(size * tm[0], 2)))

    pypdf.PdfReader(io.BytesIO(pdf)).pages[page].extract_text(visitor_text=visit)
    return runs


def test_pdf_tables_right_align_numeric_columns_but_the_first():
    table = freport.Table(["name", "value", "word"], [["1", "1", "x"], ["1,234", "1,234", "yy"]])
    pdf, _ = freport.render_pdf(freport.Document("t", [table]))
    placed: dict[str, list[float]] = {}
    for text, x, _, _ in _text_runs(pdf, 0):
        placed.setdefault(text, []).append(x)
    assert placed["1"][0] == placed["1,234"][0] == placed["name"][0]  # the first column: left
    assert placed["value"][0] < placed["1,234"][1] < placed["1"][1]  # the numbers: right
    assert placed["word"][0] == placed["x"][0] == placed["yy"][0]


@pytest.mark.parametrize("follower", ["table", "figure"])
def test_a_heading_and_its_intro_move_with_the_table_or_figure_that_follows(tmp_path, follower):
    """reportlab keeps a paragraph styled keepWithNext with the next flowable, unless that is a
    KeepTogether (a short table, a figure): an extra section's heading and intro were left at the foot
    of a page, their table on the next."""
    Image.fromarray(np.full((100, 100, 3), 60, np.uint8)).save(tmp_path / "f.png")
    follows = (freport.Table(["a", "b"], [["x", "1"]] * 20, "Key numbers") if follower == "table" else
               freport.Figure(tmp_path / "f.png", "Key figure", "f.png", max_height=0.3))
    filler = [freport.Para(f"filler {i}") for i in range(40)]
    pdf, _ = freport.render_pdf(freport.Document("t", filler + [freport.Heading("7  Extra"),
                                                                freport.Para("Intro.", keep_with_next=True), follows]))
    pages = page_texts(pdf)
    assert len(pages) == 2 and "filler 39" in pages[0]
    assert "7 Extra\nIntro.\n" in pages[1] and "Key " in pages[1]


def test_pdf_text_is_set_in_the_styles_of_its_blocks():
    doc = freport.Document("t", [freport.Heading("Big", 0), freport.Heading("Sub"), freport.Para("body"),
                                 freport.Para("small", small=True), freport.Shell(["ferkit x"])])
    pdf, _ = freport.render_pdf(doc)
    set_in = [(text, font, size) for text, _, font, size in _text_runs(pdf, 0)]
    assert set_in == [("t · page 1", "/Helvetica", 7.0), ("Big", "/Helvetica-Bold", 13.0),
                      ("Sub", "/Helvetica-Bold", 10.5), ("body", "/Helvetica", 8.4), ("small", "/Helvetica", 8.0),
                      ("ferkit x", "/Courier", 7.0)]


def test_pdf_commands_wrap_to_the_width_of_their_box():
    """A line of 7 pt Courier (4.2 pt a character) in the text width less the box's 8 pt holds 116 characters."""
    command = "ferkit train " + " ".join(f"--set key{i}=value{i}" for i in range(40))
    pdf, _ = freport.render_pdf(freport.Document("t", [freport.Shell([command])]))
    lines = page_texts(pdf)[0].splitlines()[1:]
    assert lines == freport._shell_lines(command, 116) and max(map(len, lines)) > 110


@pytest.mark.parametrize("length, footer", [(110, "x" * 109 + "y · page 1"), (111, "x" * 109 + "… · page 1")])
def test_a_long_title_is_cut_to_one_line_in_the_footer(length, footer):
    pdf, _ = freport.render_pdf(freport.Document("x" * (length - 1) + "y", [freport.Para("p")]))
    assert page_texts(pdf)[0].split("\n")[0] == footer


def test_the_pdf_layout_records_the_smaller_scale_and_the_extras_to_the_hundredth():
    _, layout = freport.render_pdf(freport.Document("t", [freport.Para("p")], [freport.Para("q")]), 0.8, 0.6)
    assert (layout.pages, layout.main_pages, layout.scale) == (2, 1, 0.6)
    assert 0 < layout.extra_pages < 0.1 and layout.extra_pages == round(layout.extra_pages, 2)


def test_a_figure_beside_a_table_takes_the_width_of_its_column(tmp_path):
    Image.fromarray(np.full((40, 80, 3), 50, np.uint8)).save(tmp_path / "wide.png")
    figure = freport.Figure(tmp_path / "wide.png", "w", "w.png", max_height=0.9)
    doc = freport.Document("t", [freport.SideBySide([freport.Para("left")], [figure], split=0.47)])
    pdf, _ = freport.render_pdf(doc, main_scale=0.9)
    width = TEXT_WIDTH
    column = width - (width * 0.47 - 6) - 12  # the right column: the rest of the width, less a 12 pt gap
    assert _drawn_images(pdf) == [[pytest.approx((column * 0.9, column * 0.45), abs=1e-3)]]


def test_html_and_markdown_keep_the_first_column_left_aligned_even_when_numeric():
    doc = freport.Document("t", [freport.Table(["epoch", "loss"], [["1", "0.5"], ["2", "0.4"]])])
    assert "<tr><th>epoch</th><th class=\"num\">loss</th></tr>" in freport.render_html(doc)
    assert "| --- | ---: |" in freport.render_markdown(doc)[0]


def _text_x(pdf: bytes, page: int) -> dict[str, float]:
    """Where each piece of text on a page of `pdf` first starts, in points from the left edge."""
    placed: dict[str, float] = {}
    for text, x, _, _ in _text_runs(pdf, page):
        placed.setdefault(text, x)
    return placed


def test_pdf_columns_start_where_their_share_of_the_width_ends(tmp_path):
    width, left = TEXT_WIDTH, TEXT_LEFT
    beside = freport.SideBySide([freport.Para("left")], [freport.Para("right")], split=0.47)
    placed = _text_x(freport.render_pdf(freport.Document("t", [beside]))[0], 0)
    assert placed["left"] == pytest.approx(left) and placed["right"] == pytest.approx(left + width * 0.47 - 6 + 12)
    for name in "bc":
        Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(tmp_path / f"{name}.png")
    pair = freport.FigureGrid([freport.Figure(tmp_path / "b.png", "first", "b.png"),
                               freport.Figure(tmp_path / "c.png", "second", "c.png")])
    placed = _text_x(freport.render_pdf(freport.Document("t", [freport.Heading("h", 0)], [pair]))[0], 1)
    assert placed["first"] == pytest.approx(left) and placed["second"] == pytest.approx(left + width / 2)



def test_the_best_epoch_falls_back_to_the_history_by_the_runs_selection_score(tmp_path):
    history = [{"epoch": 1, "val_acc": 0.5, "val_macro_f1": 0.4}, {"epoch": 2, "val_acc": 0.7, "val_macro_f1": 0.3},
               {"epoch": 3, "val_acc": 0.6, "val_macro_f1": 0.45}]
    assert fake_run(path=tmp_path, history=history, evals={}).best_epoch == 2  # val_acc unless the config says
    assert fake_run(path=tmp_path, config={"select_by": "val_macro_f1"}, history=history, evals={}).best_epoch == 3
    # run.json's, when it has one
    assert fake_run(path=tmp_path, info={"best_epoch": 1}, history=history, evals={}).best_epoch == 1
    assert fake_run(path=tmp_path, evals={}).best_epoch is None


@pytest.mark.parametrize("value, shown", [
    (0.05, "0.05"), (4.0, "4"), (0.0, "0"), (True, "true"), ([0.5, 2], "0.5,2"), ([], "none"), ("cnn", "cnn"),
    # these were rounded to 4 decimals: a learning rate of 2.5e-05 read 0.0000, and an average of 0.99995 1.0000
    (2.5e-05, "2.5e-05"), (0.99995, "0.99995"), (0.123456789, "0.123456789"), (1234567.0, "1234567.0")])
def test_config_values_are_shown_short_but_exact(value, shown):
    assert freport._value(value) == shown


def test_a_metrics_json_with_just_the_metrics_the_report_needs_is_read(world, tmp_path):
    copy = shutil.copytree(world["cnn"], tmp_path / "cnn")
    shutil.rmtree(copy / "eval" / "test")
    bare = {key: metrics(copy)[key] for key in ("accuracy", "macro_f1", "weighted_f1", "n")}
    (copy / "eval" / "test-tta" / "metrics.json").write_text(json.dumps(bare))
    assert freport.read_run(copy).metrics == bare


@pytest.mark.parametrize("recorded, shown", [
    ("/venv/bin/ferkit train a.csv --out 'my runs/x'", "ferkit train a.csv --out 'my runs/x'"),
    ("/src/ferkit/__main__.py run a.csv", "ferkit run a.csv"),  # python -m ferkit
    ("/venv/bin/pytest -q", "/venv/bin/pytest -q"), ('ferkit train "unclosed', 'ferkit train "unclosed'),
    ("/venv/lib/pytest/__main__.py -q", "/venv/lib/pytest/__main__.py -q"), ("/x/ferkit/cli.py", "/x/ferkit/cli.py"),
    ("", None), (None, None)])
def test_the_recorded_command_is_shortened_to_ferkit_and_kept_otherwise(recorded, shown):
    assert freport._command(recorded) == shown


@pytest.mark.parametrize("command, retargeted", [
    ("ferkit train a.csv --out runs/x --tta", "ferkit train a.csv --out new --tta"),
    ("ferkit train a.csv --out=runs/x --tta", "ferkit train a.csv --out=new --tta"),
    ("ferkit train a.csv --out", "ferkit train a.csv --out"),  # no folder to replace
    ('ferkit train "a.csv" --out runs/x', 'ferkit train "a.csv" --out new'),  # not shlex.join's: only --out changes
    ('ferkit train "a.csv --out runs/x', 'ferkit train "a.csv --out new'),  # no shell words at all
    ('ferkit train "a.csv', 'ferkit train "a.csv'),
    ("ferkit train a --out x --tta --out y", "ferkit train a --out x --tta --out new"),  # argparse takes the last
    ('ferkit train "a" --out x --out y', 'ferkit train "a" --out x --out new')])
def test_the_replica_command_changes_only_the_out_folder(command, retargeted):
    assert freport._with_out(command, "new") == retargeted


def test_an_extra_folders_hidden_files_and_folders_are_not_its_figures(tmp_path):
    folder = tmp_path / "features"
    (folder / ".cache").mkdir(parents=True)
    (folder / "sub").mkdir()
    (folder / "features.json").write_text("{}")
    for name in ("a.png", ".hidden.png", ".cache/b.png", "sub/c.png"):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(folder / name)
    extra = freport.read_extra(folder, "--features", "features.json", "ferkit features")
    assert extra.figures == [folder / "a.png", folder / "sub" / "c.png"]


def test_tensor_shapes_read_as_products():
    assert [freport._shape(s) for s in ([16, 48, 48], [7], [], None)] == ["16×48×48", "7", "-", "-"]
