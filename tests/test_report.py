"""Tests of `ferkit.report` and the `ferkit report` command.

A tiny CNN and a tiny MLP are trained for two epochs on a small generated dataset and evaluated;
the report is built once from them (with stand-in --features and --compare folders) and every test
reads what it wrote. The PDF is read back with pypdf to count its pages.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ferkit import cli
from ferkit import config as configs
from ferkit import report as freport
from ferkit.data import EMOTIONS
from ferkit.errors import FerkitError
from ferkit.evaluate import evaluate
from ferkit.train import train

from conftest import write_fer_csv

pypdf = pytest.importorskip("pypdf")

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
        train(csv_path, mlp, configs.resolve(overrides=dict(TINY, model="mlp", hidden="32")), progress=False)
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


def page_texts(pdf: Path) -> list[str]:
    return [page.extract_text() or "" for page in pypdf.PdfReader(str(pdf)).pages]


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
    rows = freport.layer_table(model)
    total = sum(p.numel() for p in model.parameters())
    assert sum(r["parameters"] for r in rows) == total
    assert rows[0]["type"] == "Conv2d" and rows[0]["output"] == (1, 4, 48, 48)
    assert rows[-1]["output"] == (1, len(EMOTIONS))
    compact = freport.compact_layers(rows)
    assert sum(b["parameters"] for b in compact) == total
    assert any("no module" in b["layer"] for b in compact)  # the global pooling of forward()
    assert f"{total:,}" in world["md"]


def test_compact_layers_collapse_repeats():
    from ferkit.models import get_model

    model = get_model("cnn", widths=[8, 16], depth=5, residual=True)
    compact = freport.compact_layers(freport.layer_table(model))
    assert [b["count"] for b in compact if b["count"] > 1] == [4, 4]
    assert sum(b["parameters"] for b in compact) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name, kwargs, dropout_rows", [
    ("cnn", {"widths": [8, 16], "dropout": 0.0}, []),
    ("cnn", {"widths": [8, 16], "dropout": 0.3}, ["Dropout p=0.3"]),
    ("mlp", {"hidden": [32, 16], "dropout": 0.0, "batch_norm": False}, []),
])
def test_layer_table_lists_only_layers_that_compute(name, kwargs, dropout_rows):
    from ferkit.models import get_model

    compact = freport.compact_layers(freport.layer_table(get_model(name, **kwargs)))
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
    run = freport.Run(Path("run"), cfg, {"finished": True, "best_epoch": 2}, history, {"test": {}}, {})
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
    run = freport.Run(tmp_path, cfg, {"best_epoch": 2}, history, {"test": {}}, {})
    caption = next(b.caption for b in freport._training_section(run) if isinstance(b, freport.Figure))
    assert ("augmented" in caption) is augment


@pytest.mark.parametrize("ema", [0.0, 0.999])
def test_procedure_names_the_weight_average_only_when_there_is_one(tmp_path, ema):
    from ferkit.config import TrainConfig

    history = [{"epoch": 1, "train_loss": 1.5, "train_acc": 0.5, "val_loss": 1.4, "val_acc": 0.55,
                "val_macro_f1": 0.5, "lr": 0.05, "seconds": 10.0}]
    run = freport.Run(tmp_path, dict(TrainConfig().to_dict(), ema=ema, epochs=1), {"best_epoch": 1}, history,
                      {"test": {}}, {})
    procedure = next(b.text for b in freport._training_section(run)
                     if isinstance(b, freport.Para) and b.text.startswith("**Procedure.**"))
    assert ("moving average of the trained weights, decay 0.999 per step" in procedure) is (ema > 0)


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


def test_mlp_without_metrics_names_the_command(world, tmp_path):
    bare = _without_eval(world["mlp"], tmp_path / "mlp-bare")
    with pytest.raises(FerkitError, match=r"--mlp .*mlp-bare.*ferkit evaluate"):
        freport.build_report(world["cnn"], tmp_path / "out", mlp=bare)


def test_missing_features_folder(world, tmp_path):
    with pytest.raises(FerkitError, match=r"--features .*nowhere: no such folder.*ferkit features"):
        freport.build_report(world["cnn"], tmp_path / "out", features=tmp_path / "nowhere")


def test_empty_compare_folder(world, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FerkitError, match=r"comparison.json.*ferkit compare"):
        freport.build_report(world["cnn"], tmp_path / "out", compare=tmp_path / "empty")


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


def test_overflowing_main_part_fails_loudly(world, tmp_path, monkeypatch):
    monkeypatch.setattr(freport, "MAIN_PAGES", 1)
    with pytest.raises(FerkitError, match="main part of the report needs"):
        freport.build_report(world["cnn"], tmp_path / "out")


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
