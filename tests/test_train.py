"""The training machinery on tiny data: it learns, resumes exactly, reproduces, and round-trips."""

from __future__ import annotations

import dataclasses
import gzip
import itertools
import json
import os
import re
import shutil
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score

from ferkit import config, pipeline, train, visualize
from ferkit import data as fdata
from ferkit.cli import main
from ferkit.data import EMOTIONS, load
from ferkit.errors import FerkitError
from ferkit.evaluate import compute_metrics, ensemble, evaluate, is_evaluation_folder, write_evaluation
from ferkit.models import BasicBlock, get_model, list_models, preprocess

from conftest import Faces, write_export

TINY = {"widths": "8,16", "batch_size": 32, "eval_batch_size": 64, "threads": 1}


def same_last_weights(run: Path, other: Path) -> bool:
    """Whether two runs ended with the same weights, tensor for tensor (their last.pt)."""
    first, second = (torch.load(r / "checkpoints" / "last.pt", weights_only=True)["model"] for r in (run, other))
    return all(torch.equal(first[k], second[k]) for k in first)


def tiny_config(**overrides):
    tiny = {k: v for k, v in TINY.items() if k != "widths" or overrides.get("model", "cnn") == "cnn"}  # a CNN's
    return config.resolve(overrides={**tiny, **overrides})


def each_epoch_takes(seconds: float, monkeypatch) -> None:
    """A clock on which every epoch of train() takes `seconds`: it reads the clock at each epoch's start
    and end, so the clock moves on at every second reading."""
    calls = itertools.count()
    monkeypatch.setattr(train, "time", types.SimpleNamespace(perf_counter=lambda: seconds * ((next(calls) + 1) // 2)))


@pytest.fixture(scope="module")
def trained_run(tiny_csv, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "cnn"
    info = train.train(tiny_csv, run, tiny_config(epochs=6, lr=0.05, batch_size=16, augment=False), progress=False)
    return run, info


def test_loss_falls_and_model_learns(trained_run):
    run, info = trained_run
    history = train.read_history(run / "history.csv")
    assert len(history) == 6 and info["epochs_run"] == 6
    assert history[-1]["train_loss"] < history[0]["train_loss"] * 0.8
    assert max(r["val_acc"] for r in history) > 0.5  # chance is 1/7


def test_run_folder_is_complete_and_self_describing(trained_run):
    run, _ = trained_run
    for name in ("config.yaml", "run.json", "history.csv", "learning_curves.png", "checkpoints/best.pt",
                 "checkpoints/last.pt"):
        assert (run / name).exists(), name
    info = json.loads((run / "run.json").read_text())
    assert len(info["data"]["sha256"]) == 64 and info["environment"]["versions"]["torch"] == torch.__version__
    checkpoint = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    for key in ("model_name", "model_kwargs", "config", "classes", "epoch", "metrics", "data_sha256"):
        assert key in checkpoint
    assert checkpoint["epoch"] == info["best_epoch"]
    assert config.load(run / "config.yaml").to_dict() == checkpoint["config"]


def test_checkpoint_round_trip_gives_same_predictions(trained_run, tiny_csv):
    run, _ = trained_run
    model, checkpoint = train.load_model(run)
    images = load(tiny_csv).images[:16]
    first = train.predict_proba(model, images)
    again, _ = train.load_model(run / "checkpoints" / "best.pt")
    np.testing.assert_array_equal(first, train.predict_proba(again, images))
    assert first.shape == (16, 7) and np.allclose(first.sum(1), 1, atol=1e-5)


def test_seed_reproduces_bit_for_bit(tiny_csv, tmp_path):
    cfg = tiny_config(epochs=2, train_limit=96)
    train.train(tiny_csv, tmp_path / "a", cfg, progress=False)
    train.train(tiny_csv, tmp_path / "b", cfg, progress=False)
    assert same_last_weights(tmp_path / "a", tmp_path / "b")
    other = tiny_config(epochs=2, train_limit=96, seed=1)
    train.train(tiny_csv, tmp_path / "c", other, progress=False)
    assert not same_last_weights(tmp_path / "a", tmp_path / "c")


def test_a_run_trained_on_crops_sees_whole_faces_everywhere_else(tiny_csv, tmp_path, monkeypatch):
    shapes = []
    augment = train.augment_batch
    monkeypatch.setattr(train, "augment_batch", lambda x, cfg, generator: shapes.append(
        tuple((out := augment(x, cfg, generator)).shape[1:])) or out)
    cfg = tiny_config(epochs=2, train_limit=96, train_crop=40, tta="crops")
    train.train(tiny_csv, tmp_path / "a", cfg, progress=False)
    assert set(shapes) == {(1, 40, 40)}
    train.train(tiny_csv, tmp_path / "b", cfg, progress=False)
    assert same_last_weights(tmp_path / "a", tmp_path / "b")  # a seed still fixes the run
    metrics = evaluate(tmp_path / "a", tta=True)
    assert metrics["tta"] and metrics["n"] == len(pd.read_csv(Path(metrics["folder"]) / "predictions.csv")) > 0


def test_a_runs_threads_do_not_outlive_it(tiny_csv, tmp_path, monkeypatch):
    """`ferkit run --set threads=1` trained the MLP after the CNN on the CNN's thread, but on torch's default
    when resumed in a new process: two different MLPs from one seed."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)  # what the caller had set
    given = []
    monkeypatch.setattr(torch, "set_num_threads", given.append)
    train.train(tiny_csv, tmp_path / "cnn", tiny_config(epochs=1, train_limit=64, threads=1), progress=False)
    train.train(tiny_csv, tmp_path / "mlp", tiny_config(model="mlp", epochs=1, train_limit=64, threads=0),
                progress=False)
    assert given == [1, 3, 3]  # the CNN's one thread, then the caller's count back after each run


@pytest.mark.parametrize("ema, decay_norm_and_bias", [(0.0, True), (0.9, True), (0.0, False)])
def test_resume_after_interruption_equals_uninterrupted(tiny_csv, tmp_path, monkeypatch, ema, decay_norm_and_bias):
    cfg = tiny_config(epochs=3, train_limit=96, mixup=0.4, ema=ema, decay_norm_and_bias=decay_norm_and_bias)
    train.train(tiny_csv, tmp_path / "whole", cfg, progress=False)

    real_write = train.write_history
    calls = {"n": 0}

    def interrupt_after_second_epoch(path, history):
        real_write(path, history)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(train, "write_history", interrupt_after_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train.train(tiny_csv, tmp_path / "cut", cfg, progress=False)
    monkeypatch.setattr(train, "write_history", real_write)
    assert len(train.read_history(tmp_path / "cut" / "history.csv")) == 2
    train.train(tiny_csv, tmp_path / "cut", resume=True, progress=False)

    whole = torch.load(tmp_path / "whole" / "checkpoints" / "last.pt", weights_only=True)
    cut = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)
    for weights in ("model", "trained_model") if ema else ("model",):
        assert all(torch.equal(whole[weights][k], cut[weights][k]) for k in whole[weights])
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("seconds", "images_per_second")} for r in rows]  # noqa: E731
    assert strip(whole["history"]) == strip(cut["history"])


def test_weight_average_follows_training_without_changing_it(tiny_csv, tmp_path):
    plain = get_model("cnn", widths=[4, 8])
    average = train.WeightAverage(plain)
    for p in average.model.state_dict().values():
        p.zero_()
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    average.update(decay=0.75)
    for key, value in average.model.state_dict().items():
        expected = 0.25 * before[key] if value.is_floating_point() else before[key]  # batch counters are copied
        torch.testing.assert_close(value, expected)
    assert all(torch.equal(before[k], v) for k, v in plain.state_dict().items())
    with torch.no_grad():  # an optimizer step changes the weights in place: the average must follow them
        for p in plain.parameters():
            p.add_(1.0)
    average.update(decay=0.5)
    for key, value in average.model.named_parameters():
        torch.testing.assert_close(value.detach(), 0.5 * 0.25 * before[key] + 0.5 * (before[key] + 1.0))
    assert train.ema_decay(tiny_config(ema=0.999), 0) == 0.1 and train.ema_decay(tiny_config(ema=0.999), 10**6) == 0.999

    cfg = tiny_config(epochs=2, train_limit=96)
    train.train(tiny_csv, tmp_path / "plain", cfg, progress=False)
    info = train.train(tiny_csv, tmp_path / "ema", tiny_config(epochs=2, train_limit=96, ema=0.9), progress=False)
    plain_last = torch.load(tmp_path / "plain" / "checkpoints" / "last.pt", weights_only=True)
    ema_last = torch.load(tmp_path / "ema" / "checkpoints" / "last.pt", weights_only=True)
    # the same training, seed for seed; the average is what is validated and saved
    assert all(torch.equal(plain_last["model"][k], ema_last["trained_model"][k]) for k in plain_last["model"])
    assert not all(torch.equal(ema_last["model"][k], ema_last["trained_model"][k]) for k in ema_last["model"])
    model, best = train.load_model(tmp_path / "ema")

    dataset = load(tiny_csv)
    val = dataset.indices("PublicTest")
    probs = train.predict_proba(model, dataset.images[val])
    val_loss = -np.log(probs[np.arange(len(val)), dataset.labels[val]]).mean()
    assert best["epoch"] == info["best_epoch"] and val_loss == pytest.approx(best["metrics"]["val_loss"], rel=1e-5)
    with pytest.raises(FerkitError, match="'ema'"):
        tiny_config(ema=1.0)


def test_existing_run_is_not_overwritten_and_resume_needs_a_run(tiny_csv, trained_run, tmp_path):
    run, _ = trained_run
    with pytest.raises(FerkitError, match="--resume"):
        train.train(tiny_csv, run, tiny_config(epochs=1), progress=False)
    with pytest.raises(FerkitError, match="nothing to resume"):
        train.train(tiny_csv, tmp_path / "empty", resume=True, progress=False)
    mine = tmp_path / "mine"  # somebody's folder: a run would write its history.csv over theirs
    mine.mkdir()
    (mine / "history.csv").write_text("my notes")
    (mine / "thesis.tex").write_text("my thesis")
    with pytest.raises(FerkitError, match=r"--out .*mine: holds other files \(thesis.tex\); a run needs a new"):
        train.train(tiny_csv, mine, tiny_config(epochs=1), progress=False)
    assert (mine / "history.csv").read_text() == "my notes"


def test_resuming_a_finished_run_says_so_and_changes_nothing(trained_run, tiny_csv, capsys):
    run, info = trained_run
    before = (run / "run.json").read_text()
    assert main(["train", str(tiny_csv), "--out", str(run), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "the run had finished already; nothing more to train" in out
    assert f"best epoch {info['best_epoch']} of {info['epochs_run']}" in out
    assert (run / "run.json").read_text() == before  # no "resumed" entry, no new "finished" time


def test_resume_removes_what_a_kill_left_half_written(tiny_csv, tmp_path, monkeypatch):
    run = tmp_path / "r"
    cfg = tiny_config(epochs=2, train_limit=64)
    original = train.save_checkpoint

    def killed_after_the_first_epoch(path, payload):
        original(path, payload)
        if payload["epoch"] == 1 and path.name == "last.pt":
            (path.parent / ".last.pt.abc123.tmp").write_bytes(b"half a checkpoint")  # as a kill -9 leaves it
            (run / ".history.csv.def456.tmp").write_text("epoch")
            raise KeyboardInterrupt

    monkeypatch.setattr(train, "save_checkpoint", killed_after_the_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        train.train(tiny_csv, run, cfg, progress=False)
    monkeypatch.setattr(train, "save_checkpoint", original)
    train.train(tiny_csv, run, resume=True, progress=False)
    assert not list(run.rglob("*.tmp"))


def test_checkpoint_names_and_run_folders_as_a_user_types_them(trained_run, tiny_csv, tmp_path):
    run, _ = trained_run
    by_name = evaluate(run, checkpoint="last", out=tmp_path / "a")
    for typed in ("last.pt", "checkpoints/last.pt"):
        assert evaluate(run, checkpoint=typed, out=tmp_path / "b")["accuracy"] == by_name["accuracy"]
    with pytest.raises(FerkitError, match="tiny.csv: is a file, not a run folder"):
        evaluate(tiny_csv)


def test_no_output_lands_in_a_run_folder_or_its_own_files(trained_run, tiny_csv, tmp_path, capsys):
    run, _ = trained_run
    evaluate(run, split="test", tta=True)
    own = {p.relative_to(run): p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    commands = [
        ["evaluate", str(run), "--out", str(run / "eval" / "test-tta")],
        ["ensemble", str(run), "--out", str(run / "checkpoints")],
        ["ensemble", str(run), "--out", str(run)],
        ["data", str(tiny_csv), "--out", str(run)],
        ["features", str(run), "--out", str(run)],
        ["report", str(run), "--out", str(run)],
        ["run", str(tiny_csv), "--out", str(run)],
        ["predict", str(run), str(tiny_csv), "--no-detect", "--out", str(run / "eval" / "test" / "faces.csv")],
    ]
    for command in commands:
        assert main(command) == 2, command
        err = capsys.readouterr().err
        assert "Traceback" not in err and ("is a training run's folder" in err or "where the run keeps its own" in err
                                           ), (command, err)
    with pytest.raises(FerkitError, match="--out is empty"):  # the command line refuses "" before this
        evaluate(run, out="")
    assert {p.relative_to(run): p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == own
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    assert main(["run", str(tiny_csv), "--out", str(tmp_path / "mine")]) == 2
    assert "holds other files (notes.txt); a study needs a new or empty folder" in capsys.readouterr().err
    assert main(["evaluate", str(run), "--out", str(run / "report")]) == 0  # a folder of its own inside the run


def test_early_stopping_fires(tiny_csv, tmp_path):
    info = train.train(tiny_csv, tmp_path / "r", tiny_config(epochs=8, patience=1, lr=0.0, train_limit=64),
                       progress=False)
    assert info["stopped_early"] and info["epochs_run"] == 2


@pytest.mark.parametrize("imbalance", ["weighted_loss", "none"])
def test_imbalance_modes_train(tiny_csv, tmp_path, imbalance):
    info = train.train(tiny_csv, tmp_path / imbalance, tiny_config(epochs=1, imbalance=imbalance, train_limit=64),
                       progress=False)
    assert info["epochs_run"] == 1


@pytest.mark.parametrize("power, rare_share", [(1.0, 0.5), (0.5, 0.25)])
def test_sampler_draws_each_class_in_proportion_to_its_weight(power, rare_share):
    labels = np.array([0] * 900 + [1] * 100)
    weight = torch.tensor(train.class_weights(labels, power)[labels], dtype=torch.float32)
    order = train.epoch_order(weight, 20_000, torch.Generator().manual_seed(0), "cpu")
    # weights (900/100)^power: 9x per face balances the classes, 3x gives the rare one 300/1200
    assert len(order) == 20_000
    assert (labels[order.numpy()] == 1).mean() == pytest.approx(rare_share, abs=0.015)


def test_without_the_sampler_an_epoch_sees_every_image_once():
    order = train.epoch_order(None, 1000, torch.Generator().manual_seed(0), "cpu")
    assert sorted(order.tolist()) == list(range(1000))


@pytest.mark.parametrize("model_name", ["cnn", "mlp"])
def test_batch_norm_switch_reaches_the_model_and_its_checkpoint(tiny_csv, tmp_path, model_name):
    run = tmp_path / model_name
    train.train(tiny_csv, run, tiny_config(model=model_name, epochs=1, batch_norm=False, train_limit=64),
                progress=False)
    model, checkpoint = train.load_model(run)
    assert checkpoint["model_kwargs"]["batch_norm"] is False
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in get_model(model_name).modules())


def test_metrics_match_scikit_learn():
    rng = np.random.default_rng(3)
    y_true = rng.integers(0, 7, 500)
    y_pred = np.where(rng.random(500) < 0.6, y_true, rng.integers(0, 7, 500))
    metrics = compute_metrics(y_true, y_pred)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert metrics["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert metrics["weighted_f1"] == pytest.approx(f1_score(y_true, y_pred, average="weighted"))
    assert sum(c["support"] for c in metrics["per_class"].values()) == 500
    assert np.trace(np.array(metrics["confusion_matrix"])) == (y_true == y_pred).sum()


def test_evaluate_and_ensemble_write_consistent_files(trained_run, tmp_path):
    run, _ = trained_run
    metrics = evaluate(run, split="test", tta=True)
    folder = run / "eval" / "test-tta"
    assert metrics["folder"] == str(folder) and "folder" not in json.loads((folder / "metrics.json").read_text())
    predictions = pd.read_csv(folder / "predictions.csv")
    assert list(predictions.columns[:3]) == ["line", "true", "pred"] and len(predictions) == 60
    assert predictions["line"].min() >= 2  # 1-based CSV lines; the header is line 1
    assert metrics["accuracy"] == pytest.approx((predictions["true"] == predictions["pred"]).mean())
    assert metrics["split"] == "PrivateTest" and metrics["tta"] == "flip"
    for name in ("metrics.json", "classification_report.txt", "confusion_matrix.png", "learning_curves.png"):
        assert (folder / name).exists()
    alone = ensemble(str(run), tmp_path / "ens")  # one member may be given alone, not in a list
    plain = evaluate(run, split="test")
    assert alone["accuracy"] == pytest.approx(plain["accuracy"])
    assert alone["members"][0]["source"] == "its best checkpoint"
    with pytest.raises(FerkitError, match="is listed twice .again as .*; each member counts once"):
        ensemble([run, run / "." / ".." / run.name], tmp_path / "twice")


def test_ensemble_averages_saved_predictions_and_checks_they_fit_the_data(trained_run, tiny_csv, tmp_path,
                                                                          capsys):
    run, _ = trained_run
    evaluate(run, split="test", tta=True)
    saved = run / "eval" / "test-tta"
    alone = ensemble([saved], tmp_path / "alone")  # the data file is found through RUN/run.json
    assert alone["accuracy"] == pytest.approx(json.loads((saved / "metrics.json").read_text())["accuracy"])
    assert alone["members"][0]["tta"] == "flip"

    happy = tmp_path / "elsewhere" / "happy"  # moved away from its run: it needs --data
    shutil.copytree(saved, happy)
    table = pd.read_csv(happy / "predictions.csv")
    table[list(EMOTIONS)] = np.eye(len(EMOTIONS))[EMOTIONS.index("Happy")]
    table.to_csv(happy / "predictions.csv", index=False)
    with pytest.raises(FerkitError, match="hold the same model .checkpoint sha256"):  # still the run's own model
        ensemble([happy, run], tmp_path / "mixed", data=tiny_csv)
    recorded = json.loads((happy / "metrics.json").read_text())
    del recorded["checkpoint_sha256"]  # now another model's predictions, as far as the ensemble can tell
    (happy / "metrics.json").write_text(json.dumps(recorded))
    with pytest.raises(FerkitError, match="pass --data"):
        ensemble([happy, run], tmp_path / "mixed")
    mixed = ensemble([happy, run], tmp_path / "mixed", data=tiny_csv)  # the run's member predicts without TTA
    averaged = pd.read_csv(tmp_path / "mixed" / "predictions.csv")[list(EMOTIONS)].to_numpy()
    evaluate(run, split="test", out=tmp_path / "plain")
    plain = pd.read_csv(tmp_path / "plain" / "predictions.csv")[list(EMOTIONS)].to_numpy()
    assert averaged == pytest.approx((table[list(EMOTIONS)].to_numpy() + plain) / 2, abs=2e-6)
    assert mixed["tta"] == "flip, none"

    other = tmp_path / "other.csv"  # one pixel changed: another data file, whose faces are in the same places
    lines = tiny_csv.read_text().splitlines()
    lines[-1] = lines[-1][:-1] + ("1" if lines[-1][-1] != "1" else "2")
    other.write_text("\n".join(lines) + "\n")
    with pytest.raises(FerkitError, match="other faces, labels or splits than the data the predictions in"):
        ensemble([saved], tmp_path / "other", data=other)

    with pytest.raises(FerkitError, match="are on PrivateTest, the ensemble is on PublicTest"):
        ensemble([saved], tmp_path / "val", split="val")
    table.sample(frac=1, random_state=0).to_csv(happy / "predictions.csv", index=False)
    with pytest.raises(FerkitError, match="not the PrivateTest faces of this data file in their order"):
        ensemble([happy], tmp_path / "shuffled", data=tiny_csv)
    table.drop(columns="Fear").to_csv(happy / "predictions.csv", index=False)
    assert main(["ensemble", str(happy), "--out", str(tmp_path / "cli"), "--data", str(tiny_csv)]) == 2
    assert "no column Fear" in capsys.readouterr().err
    assert main(["ensemble", str(saved), str(run), "--tta", "--out", str(tmp_path / "cli")]) == 2  # one model
    assert "hold the same model" in capsys.readouterr().err
    assert main(["ensemble", str(saved), "--tta", "--out", str(tmp_path / "cli")]) == 0
    assert main(["ensemble", str(run), "--tta", "--out", str(tmp_path / "cli2")]) == 0
    printed = capsys.readouterr().out
    assert "(saved predictions, TTA flip): accuracy" in printed and "(its best checkpoint, TTA flip)" in printed


def test_a_run_folder_is_never_taken_for_saved_predictions(trained_run, tmp_path):
    run, _ = trained_run
    evaluate(run, split="test")
    for out in (run, tmp_path / "file"):
        (tmp_path / "file").touch()
        with pytest.raises(FerkitError, match=r"is a training run's folder|is a file, not a folder"):
            ensemble([run], out)
        with pytest.raises(FerkitError, match=r"is a training run's folder|is a file, not a folder"):
            evaluate(run, out=out)
    copy = tmp_path / "copy"  # evaluation files that landed in a run folder some other way
    shutil.copytree(run, copy)
    for name in ("metrics.json", "predictions.csv"):
        shutil.copy(run / "eval" / "test" / name, copy / name)
    assert not is_evaluation_folder(copy)
    assert ensemble([copy], tmp_path / "ens")["members"][0]["source"] == "its best checkpoint"


@pytest.mark.parametrize("name", list_models())
def test_registry_models_shapes_and_gradients(name):
    model = get_model(name)
    x = torch.randn(4, 1, 48, 48)
    logits = model(x)
    assert logits.shape == (4, 7) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    features = model.forward_features(x)
    assert model.forward_head(features, pre_logits=True).shape == (4, model.num_features)


def test_registry_and_config_reject_unknown_names():
    with pytest.raises(FerkitError, match="known models are"):
        get_model("resnet1000")
    with pytest.raises(FerkitError, match=r"unknown config key 'epoch' \(did you mean 'epochs'\?\); known keys: mod"):
        config.resolve(overrides=["epoch=3"])
    with pytest.raises(FerkitError, match="unknown config key 'zzz'; known keys: model,"):  # nothing close: no guess
        config.resolve(overrides=["zzz=3"])
    with pytest.raises(FerkitError, match="not a valid whole number"):
        config.resolve(overrides=["epochs=three"])
    assert config.resolve(profile="gpu").widths == (64, 128, 256, 512)
    assert config.resolve(profile="gpu", overrides=["widths=8,16"]).widths == (8, 16)
    with pytest.raises(FerkitError, match="'residual_block': 'basic' is not one of branch_relu, resnet"):
        config.resolve(overrides=["residual_block=basic"])
    with pytest.raises(FerkitError, match="unknown residual_block 'basic'"):
        get_model("cnn", residual=True, residual_block="basic")


@pytest.mark.parametrize("override, message", [
    ("lr=-1", "'lr': -1.0 must be in \\[0, 100\\]"),
    ("lr=nan", "'lr': 'nan' is not a valid finite number"),
    ("weight_decay=inf", "not a valid finite number"),
    ("weight_decay=1e39", "'weight_decay': 1e\\+39 must be in \\[0, 1\\]"),
    ("dropout=1.5", "'dropout': 1.5 must be in \\[0, 1\\)"),
    ("label_smoothing=2", "'label_smoothing': 2.0 must be in"),
    ("erase_prob=2", "'erase_prob': 2.0 must be in \\[0, 1\\]"),
    ("threads=-1", "'threads': -1 must be in \\[0, 1024\\] \\(0 = torch's choice\\)"),
    ("threads=1e6", "'threads': 1000000 must be in \\[0, 1024\\]"),  # libgomp aborted the process
    ("train_limit=-5", "'train_limit': -5 must not be negative \\(0 = all\\)"),
    ("val_limit=-1", "'val_limit': -1 must not be negative"),
    ("depth=0", "'depth': 0 must be at least 1 \\(the default is 2\\)"),
    ("widths=", "'widths' is empty"),
    ("widths=16,0", "'widths': 16,0 must hold integers of at least 1"),
    ("mixup=-1", "'mixup': -1.0 must not be negative"),
    ("warmup_epochs=-1", "'warmup_epochs': -1.0 must not be negative"),
    ("patience=0", "'patience': 0 must be at least 1"),
    ("seed=1e30", "'seed': .* must be in \\[0, 2\\*\\*32\\)"),
    ("seed=-1", "'seed': -1 must be in"),
    ("seed=4294967296", "'seed': 4294967296 must be in \\[0, 2\\*\\*32\\)"),  # one past NumPy's largest seed
    ("lr=1e300", "'lr': 1e\\+300 must be in \\[0, 100\\]"),
    ("imbalance_power=1e9", "'imbalance_power': .* must be in \\[0, 10\\]"),
    ("snapshot_minutes=-1", "'snapshot_minutes': -1 must hold minutes that are not negative \\(the default is empty\\)"),
    ("epochs=2.5", "'epochs': '2.5' is not a valid whole number"),  # not 2 without a word
    ("shortened=0,5", "'shortened': 0,5 must hold epochs of at least 1"),  # a change before the first epoch
])
def test_config_rejects_values_out_of_range(override, message):
    with pytest.raises(FerkitError, match=message):
        config.resolve(overrides=[override])


def test_config_takes_lists_in_brackets_and_as_many_stages_as_a_face_has_pixels_for():
    with pytest.raises(FerkitError, match=r"--set widths=\.\.\.: shapes the cnn, but this run trains the mlp; leave "
                                          r"it out, or train the cnn \(--model cnn\)"):  # --model wins over --set
        config.resolve(overrides=["widths=8,16", "model=cnn"], model="mlp")
    for text in ("8,16", "[8, 16]", "(8,16)", "8,16,", "8 16", " 8  16 "):  # spaces joined "8 16" into 816
        assert config.resolve(overrides=[f"widths={text}"]).widths == (8, 16), text
    assert config.resolve(overrides=["snapshot_minutes=1 5"]).snapshot_minutes == (1, 5)
    assert config.resolve(overrides=["epochs = 3"]).epochs == 3  # --set "epochs = 3": one word, spaces and all
    cfg = config.resolve(overrides=["widths=4,4,4,4,4,4"])  # 48, 24, 12, 6, 3 and 1 pixels
    assert get_model("cnn", **cfg.model_kwargs())(torch.zeros(2, 1, 48, 48)).shape == (2, 7)


def test_config_accepts_both_ends_of_each_closed_range_and_picks_the_gpu_profile_where_cuda_is(monkeypatch):
    cfg = config.resolve(overrides=["erase_prob=1", "weight_decay=1", "lr=100", "imbalance_power=10", "seed=4294967295"])
    assert (cfg.erase_prob, cfg.weight_decay, cfg.lr, cfg.imbalance_power, cfg.seed) == (1, 1, 100, 10, 2**32 - 1)
    assert config.auto_profile() == ("gpu" if torch.cuda.is_available() else "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert config.auto_profile() == "gpu"


def test_a_residual_block_is_refused_for_a_cnn_without_residual_stages(tmp_path):
    """--set residual_block=resnet on the cpu profile (residual=false) was saved and changed nothing."""
    with pytest.raises(FerkitError, match=r"--set residual_block=\.\.\.: shapes the residual blocks, but this cnn "
                                          r"has none \(residual=false\)"):
        config.resolve(overrides=["residual_block=resnet"])
    assert config.resolve(profile="gpu", overrides=["residual_block=resnet"]).residual_block == "resnet"
    (tmp_path / "c.yaml").write_text("residual_block: resnet\n")  # as a saved config.yaml holds it: no --set
    assert config.resolve(config_file=tmp_path / "c.yaml").residual_block == "resnet"


def test_config_rejects_an_unknown_model_and_a_residual_stage_of_even_depth():
    with pytest.raises(FerkitError, match="'model': unknown model 'cnnn'; known models are cnn, mlp"):
        config.resolve(model="cnnn")
    with pytest.raises(FerkitError, match="odd depth .* not 2; use 1 or 3"):  # a stage would lose a conv
        config.resolve(overrides=["residual=true"])
    with pytest.raises(FerkitError, match="odd depth"):
        get_model("cnn", residual=True, depth=4)
    convs = lambda model: sum(isinstance(m, torch.nn.Conv2d) for m in model.features[0].modules())  # noqa: E731
    for depth in (1, 3, 5):
        for block in ("branch_relu", "resnet"):
            assert convs(get_model("cnn", widths=[4], depth=depth, residual=True, residual_block=block)) == depth
        assert convs(get_model("cnn", widths=[4], depth=depth)) == depth


def test_registry_defaults_are_the_cpu_profiles_model_and_only_wrong_arguments_are_user_errors():
    assert get_model("cnn").config == dict(config.TrainConfig().model_kwargs(), num_classes=7)
    assert get_model("mlp").config == dict(config.TrainConfig(model="mlp").model_kwargs(), num_classes=7)
    with pytest.raises(FerkitError, match="model 'cnn': got an unexpected keyword argument 'width'"):
        get_model("cnn", width=8)
    with pytest.raises(TypeError):  # a wrong value reaches the model: a bug in the caller, with its traceback
        get_model("cnn", widths=5)


def test_resume_takes_no_settings(trained_run, tiny_csv, capsys):
    run, _ = trained_run
    with pytest.raises(FerkitError, match="continues with its saved config.yaml"):
        train.train(tiny_csv, run, tiny_config(epochs=9), resume=True, progress=False)
    before = (run / "run.json").read_text()
    assert main(["train", str(tiny_csv), "--out", str(run), "--resume", "--set", "epochs=9"]) == 2
    assert "resume without settings (drop --model/--profile/--config/--set)" in capsys.readouterr().err
    assert (run / "run.json").read_text() == before


def test_config_file_values_keep_their_type(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: yes\n")  # YAML reads `yes` as true, which is no number of epochs
    with pytest.raises(FerkitError, match="'epochs': True is not a valid whole number"):
        config.resolve(config_file=path)
    path.write_text("epochs: 3\nwidths: [8, 16]\nhidden: []\nlr: 0\n")  # lr 0 trains nothing, but is allowed
    cfg = config.resolve(config_file=path)
    assert (cfg.epochs, cfg.widths, cfg.hidden, cfg.lr) == (3, (8, 16), (), 0.0)


def test_resnet_block_starts_as_the_identity_and_its_branch_learns():
    x = torch.randn(4, 1, 48, 48)
    torch.manual_seed(0)
    model = get_model("cnn", widths=[8, 16], depth=5, residual=True, residual_block="resnet")
    stage = model.features[0]
    assert torch.equal(stage(x), stage.entry(x))  # entry ends in a ReLU, so ReLU(entry + 0) is entry
    model(x).logsumexp(1).sum().backward()
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 4 and all(b.branch[-1][-1].weight.grad.abs().sum() > 0 for b in blocks)
    torch.manual_seed(0)
    branch_relu = get_model("cnn", widths=[8, 16], depth=5, residual=True).features[0]
    assert not torch.equal(branch_relu(x), branch_relu.entry(x))


def test_cli_train_and_evaluate(tiny_csv, tmp_path, capsys):
    run = tmp_path / "cli"
    assert main(["train", str(tiny_csv), "--out", str(run), "--set", "epochs=1", "--set", "widths=4,8",
                 "--set", "batch_size=32"]) == 0
    assert main(["evaluate", str(run), "--split", "val"]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert main(["train", str(tiny_csv), "--out", str(tmp_path / "x"), "--set", "nope=1"]) == 2
    assert "unknown config key 'nope'" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "typo")]) == 2
    assert "typo: no such run folder" in capsys.readouterr().err
    assert main(["ensemble", str(run), str(tmp_path / "typo"), "--out", str(tmp_path / "ens")]) == 2
    assert "typo: no such folder; a member is a run folder" in capsys.readouterr().err


def test_cli_names_resume_after_ctrl_c(tiny_csv, tmp_path, capsys, monkeypatch):
    run = tmp_path / "my run"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "train", interrupted)
    assert main(["train", str(tiny_csv), "--out", str(run)]) == 130  # in the first epoch: nothing saved yet
    assert "interrupted; the same command starts it again\n" in capsys.readouterr().err
    for command, module, function, text in (("run", pipeline, "run_study", "the same command resumes the study"),
                                            ("data", fdata, "summarize", "the same command starts it again")):
        monkeypatch.setattr(module, function, interrupted)
        assert main([command, str(tiny_csv), "--out", str(tmp_path / command)]) == 130
        assert f"ferkit {command}: interrupted; {text}\n" in capsys.readouterr().err

    def interrupted_later(*args, **kwargs):
        (run / "checkpoints").mkdir(parents=True)
        (run / "checkpoints" / "last.pt").touch()
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "train", interrupted_later)
    assert main(["train", str(tiny_csv), "--out", str(run)]) == 130
    assert f"`ferkit train {tiny_csv} --out '{run}' --resume` continues it" in capsys.readouterr().err


def test_gpu_profile_runs_on_cpu_with_tiny_settings(tiny_csv, tmp_path):
    """The gpu profile's residual network, bf16 autocast and snapshots must also work on a CPU."""
    cfg = config.resolve(profile="gpu", overrides={"epochs": 2, "train_limit": 64, "val_limit": 32,
                                                   "batch_size": 32, "eval_batch_size": 64, "device": "cpu",
                                                   "snapshot_minutes": "0", "threads": 1})
    assert cfg.residual and cfg.widths == (64, 128, 256, 512)
    info = train.train(tiny_csv, tmp_path / "gpu", cfg, progress=False)
    assert info["epochs_run"] == 2
    assert (tmp_path / "gpu" / "checkpoints" / "at_0min.pt").exists()
    metrics = evaluate(tmp_path / "gpu", tta=True, checkpoint="at_0min")
    assert metrics["tta"] == "crops" and (tmp_path / "gpu" / "eval" / "test-tta-at_0min" / "metrics.json").exists()


def test_training_that_diverges_stops_and_says_what_to_change(tiny_csv, tmp_path, monkeypatch):
    # a NaN in the batches is what a diverging run produces, and it does so whatever the data
    monkeypatch.setattr(train, "augment_batch", lambda x, cfg, generator: x * float("nan"))
    with pytest.raises(FerkitError, match=r"training diverged in epoch 1: the training loss is nan, the validation "
                                          r"loss nan; start again with a lower learning rate \(now --set lr=0.05\) "
                                          r"\(the same --out will do: nothing was saved\)"):
        train.train(tiny_csv, tmp_path / "r", tiny_config(epochs=2), progress=False)
    assert not (tmp_path / "r" / "checkpoints").exists()  # nothing of the diverged epoch is kept
    monkeypatch.undo()
    train.train(tiny_csv, tmp_path / "r", tiny_config(epochs=1), progress=False)  # as the message says


def test_a_run_that_diverged_after_its_first_epoch_is_evaluated_and_reported_as_such(tiny_csv, tmp_path, monkeypatch):
    """Its evaluation said "not finished: evaluate it again once the run has ended", which it never would."""
    from ferkit import report

    real, calls = train.validate, itertools.count(1)
    monkeypatch.setattr(train, "validate", lambda *args: {**real(*args), **({"val_loss": float("nan")}
                                                                          if next(calls) == 2 else {})})
    run = tmp_path / "r"
    with pytest.raises(FerkitError, match="training diverged in epoch 2"):
        train.train(tiny_csv, run, tiny_config(epochs=3, train_limit=64), progress=False)
    assert evaluate(run)["note"] == ("the run diverged in epoch 2 and stopped there: this is its best checkpoint, of "
                                     "epoch 1")
    text = report._unfinished(report.read_run(run))
    assert text.startswith("**Training diverged** in epoch 2 (a loss that is not finite) and stopped: 1 of 3 epochs")
    assert "note" not in ensemble([run], tmp_path / "e")  # it ended


def test_a_diverged_run_resumed_past_its_divergence_is_no_longer_said_to_have_stopped(tiny_csv, tmp_path,
                                                                                        monkeypatch):
    """A resume (on another device, say) that trains past the epoch that diverged: evaluate still said the run
    stopped there, and a resume interrupted again passed for an ended run."""
    real, calls = train.validate, itertools.count(1)
    with monkeypatch.context() as patch:
        patch.setattr(train, "validate", lambda *args: {**real(*args), **({"val_loss": float("nan")}
                                                                          if next(calls) == 2 else {})})
        with pytest.raises(FerkitError, match="training diverged in epoch 2"):
            train.train(tiny_csv, tmp_path / "r", tiny_config(epochs=3, train_limit=64), progress=False)
    info = train.train(tiny_csv, tmp_path / "r", resume=True, progress=False)
    assert info["epochs_run"] == 3 and "diverged_epoch" not in info
    assert "note" not in evaluate(tmp_path / "r")


@pytest.mark.parametrize("step, loss", [("train_one_epoch", "train_loss"), ("validate", "val_loss")])
def test_either_loss_alone_going_non_finite_stops_the_run(tiny_csv, tmp_path, monkeypatch, step, loss):
    real = getattr(train, step)
    monkeypatch.setattr(train, step, lambda *args, **kwargs: {**real(*args, **kwargs), loss: float("inf")})
    with pytest.raises(FerkitError, match=r"training diverged in epoch 1: the training loss is \S+, the validation "
                                          r"loss \S+;"):
        train.train(tiny_csv, tmp_path / "r", tiny_config(epochs=1, train_limit=64), progress=False)


def test_images_per_second_is_all_images_over_all_the_time(trained_run):
    run, info = trained_run
    history = train.read_history(run / "history.csv")
    images = sum(row["images_per_second"] * row["seconds"] for row in history)
    # not the mean of the epochs' rates, which weighs a slow epoch as much as a long one
    assert info["train_images_per_second"] == pytest.approx(images / sum(row["seconds"] for row in history), rel=1e-2)


@pytest.mark.parametrize("faces, trained", [(70, 64), (20, 20)])
def test_images_per_second_counts_the_faces_each_epoch_trains(tiny_csv, tmp_path, monkeypatch, faces, trained):
    """Full batches of 32 only (64 of 70 faces), or the whole set when it is smaller than a batch; every epoch
    takes half a second on this clock."""
    each_epoch_takes(0.5, monkeypatch)
    info = train.train(tiny_csv, tmp_path / "r", tiny_config(epochs=2, train_limit=faces), progress=False)
    rates = [row["images_per_second"] for row in train.read_history(tmp_path / "r" / "history.csv")]
    assert rates == [2.0 * trained] * 2 and info["train_images_per_second"] == 2.0 * trained


def test_a_run_finds_its_data_from_any_folder_and_accepts_a_copy(tiny_csv, tmp_path, monkeypatch):
    monkeypatch.chdir(tiny_csv.parent)
    run = tmp_path / "r"
    train.train(tiny_csv.name, run, tiny_config(epochs=1, train_limit=64), progress=False)  # a relative path
    assert json.loads((run / "run.json").read_text())["data"]["path"] == str(tiny_csv.resolve())
    monkeypatch.chdir(tmp_path)
    plain = evaluate(run, out=tmp_path / "plain")

    packed = tmp_path / "copy.csv.gz"  # another file (another sha256), the same faces
    with open(tiny_csv, "rb") as source, gzip.open(packed, "wb") as target:
        shutil.copyfileobj(source, target)
    again = evaluate(run, data=packed, out=tmp_path / "again")
    assert again["accuracy"] == plain["accuracy"] and again["data_sha256"] != plain["data_sha256"]
    assert again["data_faces_sha256"] == plain["data_faces_sha256"]
    assert ensemble([tmp_path / "plain"], tmp_path / "ens", data=packed)["n"] == plain["n"]
    assert ensemble([run], tmp_path / "ens-run", data=packed)["accuracy"] == plain["accuracy"]

    other = tmp_path / "other.csv"  # one label changed: other data
    lines = tiny_csv.read_text().splitlines()
    lines[1] = ("1" if lines[1][0] != "1" else "2") + lines[1][1:]
    other.write_text("\n".join(lines) + "\n")
    with pytest.raises(FerkitError, match=f"other faces, labels or splits than the data the run {run} was trained on "
                                          f"\\({tiny_csv.resolve()}, sha256"):
        evaluate(run, data=other, out=tmp_path / "other")


def test_checkpoint_mistakes_name_what_there_is(trained_run, tiny_csv, capsys):
    run, _ = trained_run
    with pytest.raises(FerkitError, match=r"foo.pt: no checkpoint here; this run has best, last: give the file of "
                                        r"one \(such as .*last.pt\), or to `ferkit evaluate` its name "
                                        r"\(--checkpoint last\)"):
        evaluate(run, checkpoint="foo")
    assert main(["predict", str(tiny_csv), str(tiny_csv)]) == 2
    err = capsys.readouterr().err
    assert "not a ferkit checkpoint; give a run folder or a .pt file" in err and "Traceback" not in err


def test_an_unreadable_checkpoint_is_not_called_foreign(trained_run, monkeypatch):
    run, _ = trained_run

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(train.torch, "load", refuse)
    with pytest.raises(FerkitError, match=r"best.pt: cannot read the checkpoint \(Permission denied\)$"):
        train.load_checkpoint(run)


class Executable:
    """Stands for any object a pickle would build, and could run code while doing so."""


def test_a_checkpoint_holding_more_than_tensors_is_refused(trained_run, tmp_path):
    run, _ = trained_run
    payload = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    torch.save({**payload, "extra": Executable()}, tmp_path / "odd.pt")
    with pytest.raises(FerkitError, match="odd.pt: not a ferkit checkpoint"):
        train.load_checkpoint(tmp_path / "odd.pt")


def test_device_auto_takes_cuda_when_present_and_a_missing_gpu_is_named(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert train.pick_device("auto") == torch.device("cpu") and train.pick_device("cpu") == torch.device("cpu")
    with pytest.raises(FerkitError, match=r"device 'cuda' was asked for, but PyTorch sees no CUDA GPU; use the CPU"):
        train.pick_device("cuda")
    assert torch.backends.cudnn.benchmark is False  # only a GPU run lets cuDNN pick its kernels
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert train.pick_device("auto") == torch.device("cuda") and torch.backends.cudnn.benchmark is True


def test_epoch_seeds_stay_as_recorded_runs_drew_them():
    """Every epoch's augmentation and order come from this seed: another formula, however random, would
    change every run that RESULTS.md records as repeating bit for bit."""
    assert [train._epoch_seed(0, epoch) for epoch in (1, 2)] == [7919, 15838]
    assert train._epoch_seed(3, 5) == 3 * 1_000_003 + 5 * 7919
    assert train._epoch_seed(2**62, 0) == 2**62 * 1_000_003 % (2**63 - 1)  # a large seed wraps into torch's range


@pytest.mark.parametrize("channels_last", [True, False])
def test_each_epoch_draws_from_its_pinned_seeds_with_the_model_as_configured(tiny_csv, tmp_path, monkeypatch,
                                                                              channels_last):
    """Epoch e's order and augmentation come from _epoch_seed(seed, e), its dropout from the global generator
    seeded one above: the draws that recorded runs repeat. The model is laid out as `channels_last` says, and
    not compiled unless `compile` asks."""
    seen = []
    real = train.train_one_epoch

    def recording(forward, optimizer, x_train, y_train, order, steps, total_steps, cfg, generator, *args, **kwargs):
        last_conv = [m for m in forward.modules() if isinstance(m, torch.nn.Conv2d)][-1]  # one of several channels
        seen.append((generator.initial_seed(), torch.initial_seed(),
                     last_conv.weight.is_contiguous(memory_format=torch.channels_last), hasattr(forward, "_orig_mod")))
        return real(forward, optimizer, x_train, y_train, order, steps, total_steps, cfg, generator, *args, **kwargs)

    monkeypatch.setattr(train, "train_one_epoch", recording)
    train.train(tiny_csv, tmp_path / "r", tiny_config(epochs=2, train_limit=64, seed=3, channels_last=channels_last),
                progress=False)
    assert seen == [(train._epoch_seed(3, epoch), train._epoch_seed(3, epoch) + 1, channels_last, False)
                    for epoch in (1, 2)]


def test_bad_output_paths_stop_before_any_work(trained_run, tiny_csv, tmp_path, capsys):
    run, _ = trained_run
    evaluate(run, split="test", tta=True)  # what `report` needs
    a_file = tmp_path / "a_file"
    a_file.touch()
    a_folder = tmp_path / "a_folder"
    a_folder.mkdir()
    commands = [
        ["data", str(tiny_csv), "--out", str(a_file)],
        ["train", str(tiny_csv), "--out", str(a_file)],
        ["evaluate", str(run), "--out", str(a_file)],
        ["evaluate", str(run), "--out", str(a_file / "below")],
        ["ensemble", str(run), "--out", str(a_file)],
        ["features", str(run), "--out", str(a_file)],
        ["report", str(run), "--out", str(a_file)],
        ["predict", str(run), str(tiny_csv), "--annotate", str(a_file)],
        ["predict", str(run), str(tiny_csv), "--no-detect", "--out", str(a_folder)],
        ["export", str(run), "--onnx", str(a_folder)],
    ]
    for command in commands:
        assert main(command) == 2, command
        err = capsys.readouterr().err
        assert "Traceback" not in err and ("is a file, not a folder" in err or "lies inside the file" in err
                                           or "is a folder; name the file" in err), (command, err)
    assert main(["evaluate", str(run), "--out", str(a_file / "below")]) == 2
    assert f"--out {a_file / 'below'}: lies inside the file {a_file}; name another folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "a_folder"] and not any(a_folder.iterdir())


def test_every_command_predicts_with_the_runs_own_settings(trained_run, tiny_csv):
    """evaluate, ensemble, compare and predict share predict_as_trained: the run's TTA mode, batch size,
    memory format and precision, with TrainConfig's defaults for keys an older checkpoint lacks."""
    run, _ = trained_run
    model, state = train.load_model(run)
    images = load(tiny_csv).images[:40]
    probs, mode = train.predict_as_trained(model, state, images, tta=True)
    assert mode == state["config"]["tta"]
    assert np.array_equal(probs, train.predict_proba(model, images, tta=mode))
    older = dict(state, config={k: v for k, v in state["config"].items() if k not in ("tta", "eval_batch_size")})
    assert train.predict_as_trained(model, older, images, tta=True)[1] == config.TrainConfig().tta
    plain = dict(state, config=dict(state["config"], channels_last=False, tta="crops"))
    probs, mode = train.predict_as_trained(model, plain, images, tta=True)
    assert mode == "crops" and probs.shape == (40, 7) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert np.allclose(probs, train.predict_proba(model, images, tta="crops", channels_last=False), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Gaps found by mutation testing: each of these fails on a one-line bug the tests above let through.


def test_each_epoch_draws_its_own_order(tiny_csv, tmp_path, monkeypatch):
    """Every epoch draws a new order (and augmentation) from (seed, epoch): a generator seeded the
    same way each epoch would repeat epoch 1's batches, and still reproduce and resume exactly."""
    orders = []
    real = train.epoch_order

    def recording(*args, **kwargs):
        orders.append(real(*args, **kwargs).tolist())
        return torch.tensor(orders[-1])

    monkeypatch.setattr(train, "epoch_order", recording)
    train.train(tiny_csv, tmp_path / "r", tiny_config(epochs=3, train_limit=64, imbalance="none"), progress=False)
    assert len(orders) == 3 and orders[0] != orders[1] and orders[1] != orders[2]
    assert all(sorted(order) == list(range(64)) for order in orders)


def test_resume_keeps_the_early_stopping_count(tiny_csv, tmp_path, monkeypatch):
    """A run cut after an epoch without improvement stops, once resumed, where the uninterrupted run
    stopped: the epochs without a better validation score are part of the saved state."""
    # lr 0 and no batch norm: the model never changes, so only epoch 1 improves the score
    cfg = tiny_config(epochs=8, patience=2, lr=0.0, batch_norm=False, train_limit=64)
    whole = train.train(tiny_csv, tmp_path / "whole", cfg, progress=False)
    assert whole["stopped_early"] and whole["epochs_run"] == 3
    ended = train.train(tiny_csv, tmp_path / "ended", dataclasses.replace(cfg, epochs=3), progress=False)
    assert not ended["stopped_early"] and ended["epochs_run"] == 3  # its patience ran out with its last epoch
    real_write = train.write_history

    def interrupt_after_second_epoch(path, history):
        real_write(path, history)
        if len(history) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(train, "write_history", interrupt_after_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train.train(tiny_csv, tmp_path / "cut", cfg, progress=False)
    monkeypatch.setattr(train, "write_history", real_write)
    resumed = train.train(tiny_csv, tmp_path / "cut", resume=True, progress=False)
    assert (resumed["epochs_run"], resumed["best_epoch"], resumed["stopped_early"]) == (3, 1, True)


def test_weight_average_is_updated_during_training(tiny_csv, tmp_path):
    """The saved average follows the trained weights: it is nearer to them than the initial weights
    are (an average that is never updated stays at the initial weights)."""
    cfg = tiny_config(epochs=2, train_limit=96, ema=0.9)
    torch.manual_seed(cfg.seed)  # train() builds its model right after this same call
    initial = get_model(cfg.model, **cfg.model_kwargs()).state_dict()
    train.train(tiny_csv, tmp_path / "ema", cfg, progress=False)
    last = torch.load(tmp_path / "ema" / "checkpoints" / "last.pt", weights_only=True)
    averaged, trained = last["model"], last["trained_model"]
    for key, value in trained.items():
        if not value.is_floating_point():  # batch counters are copied
            assert torch.equal(averaged[key], value), key
        elif not torch.equal(initial[key], value):
            assert (averaged[key] - value).norm() < 0.5 * (initial[key] - value).norm(), key


def test_validation_scores_in_the_history_are_accuracy_and_macro_f1(tiny_csv, tmp_path):
    run = tmp_path / "r"  # one short epoch: a model that is right on some faces only, so that
    train.train(tiny_csv, run, tiny_config(epochs=1, train_limit=64), progress=False)  # macro != weighted F1
    model, best = train.load_model(run)
    dataset = load(tiny_csv)
    val = dataset.indices("PublicTest")
    truth, pred = dataset.labels[val], train.predict_proba(model, dataset.images[val]).argmax(1)
    expected = f1_score(truth, pred, average="macro", labels=np.unique(truth), zero_division=0)
    assert expected != pytest.approx(f1_score(truth, pred, average="weighted", labels=range(7), zero_division=0))
    assert best["metrics"]["val_macro_f1"] == pytest.approx(expected, abs=1e-12)
    assert best["metrics"]["val_acc"] == pytest.approx((pred == truth).mean(), abs=1e-12)


@pytest.mark.parametrize("tta", ["flip", "crops"])
def test_tta_averages_the_probabilities_of_the_mirrored_and_shifted_faces(tiny_csv, tta):
    """`flip` is the mean of the face's and its left-right mirror's probabilities; `crops` adds the
    four 4-pixel shifts of the edge-padded face and their mirrors."""
    torch.manual_seed(0)
    model = get_model("cnn", widths=[4, 8]).eval()
    faces = load(tiny_csv).images[:6]
    views = [faces, faces[:, :, ::-1]]
    if tta == "crops":
        padded = np.pad(faces, ((0, 0), (2, 2), (2, 2)), mode="edge")
        for dy, dx in ((0, 0), (0, 4), (4, 0), (4, 4)):
            shifted = padded[:, dy:dy + 48, dx:dx + 48]
            views += [shifted, shifted[:, :, ::-1]]
    expected = np.mean([train.predict_proba(model, np.ascontiguousarray(v)) for v in views], axis=0)
    np.testing.assert_allclose(train.predict_proba(model, faces, tta=tta), expected, atol=1e-6)


def test_learning_rate_warms_up_linearly_then_follows_the_cosine():
    cfg = tiny_config(lr=0.1, warmup_epochs=2, schedule="cosine")
    lrs = [train.learning_rate(cfg, step, 100, 10) for step in range(100)]
    assert lrs[0] == pytest.approx(0.1 / 20) and lrs[9] == pytest.approx(0.05) and lrs[19] == pytest.approx(0.1)
    assert all(a < b for a, b in zip(lrs[:19], lrs[1:20]))  # rises over the 20 warmup steps
    assert all(a >= b for a, b in zip(lrs[20:], lrs[21:])) and lrs[-1] < 1e-3
    assert lrs[60] == pytest.approx(0.1 * 0.5 * (1 + np.cos(np.pi * 40 / 80)))
    assert lrs[20] == pytest.approx(0.1) and max(lrs) == pytest.approx(0.1)  # the cosine starts where warmup ends


def test_one_epoch_trains_on_consecutive_batches_of_its_order_and_counts_what_it_got_right():
    cfg = tiny_config(batch_size=4, augment=False, schedule="constant", lr=0.1, label_smoothing=0.0)
    x_train = torch.arange(0, 240, 20, dtype=torch.uint8).view(12, 1, 1, 1).expand(12, 1, 48, 48).contiguous()
    y_train = torch.tensor([0, 1, 2] * 4)
    order = torch.tensor([11, 3, 7, 0, 5, 9, 1, 2, 10, 4, 8, 6])
    offset = torch.nn.Parameter(torch.zeros(()))  # no gradient reaches the logits: they stay fixed
    logits = torch.tensor([4.0, 0, 0, 0, 0, 0, 0])  # always Angry
    batches = []

    def forward(x):
        batches.append(x[:, 0, 0, 0].clone())
        return logits.expand(len(x), 7) + 0 * offset

    optimizer = torch.optim.SGD([offset], lr=cfg.lr)
    generator = torch.Generator().manual_seed(0)
    result = train.train_one_epoch(forward, optimizer, x_train, y_train, order, range(2), 2, cfg, generator)
    assert [b.tolist() for b in batches] == [preprocess(x_train[order[k * 4:(k + 1) * 4], 0, 0, 0]).tolist()
                                            for k in range(2)]  # 2 steps: the first 8 of the order
    assert result["train_acc"] == pytest.approx(float((y_train[order[:8]] == 0).float().mean()))
    loss = torch.nn.functional.cross_entropy(logits.expand(8, 7), y_train[order[:8]])
    assert result["train_loss"] == pytest.approx(float(loss)) and result["lr"] == 0.1


def test_one_cycle_ramps_from_4_percent_to_its_peak_at_30_percent_then_decays_to_a_floor():
    cfg = tiny_config(lr=0.1, schedule="onecycle")
    lrs = [train.learning_rate(cfg, step, 100, 10) for step in range(100)]
    assert lrs[0] == pytest.approx(0.004) and lrs[15] == pytest.approx(0.1 * (0.04 + 0.96 * 15 / 30))
    assert lrs[30] == pytest.approx(0.1 + 1e-5) and max(lrs) == lrs[30]
    assert lrs[65] == pytest.approx(0.1 * 0.5 * (1 + np.cos(np.pi * 35 / 70)) + 1e-5)
    assert 1e-5 < lrs[-1] < 1e-4  # never zero, never below the floor
    assert [train.learning_rate(cfg, step, 4, 4) for step in range(2)] == pytest.approx([0.004, 0.1 + 1e-5])  # peak at step 1


def test_confusion_matrix_rows_are_the_true_class():
    metrics = compute_metrics(np.array([0, 0, 0, 1]), np.array([1, 1, 0, 1]))
    matrix = np.array(metrics["confusion_matrix"])
    assert matrix[0, 1] == 2 and matrix[1, 0] == 0 and matrix[0, 0] == 1 and matrix[1, 1] == 1
    assert metrics["per_class"]["Angry"] == {"precision": 1.0, "recall": pytest.approx(1 / 3),
                                             "f1": pytest.approx(0.5), "support": 3}
    assert metrics["per_class"]["Disgust"]["support"] == 1 and metrics["per_class"]["Neutral"]["support"] == 0


def test_evaluate_uses_the_checkpoint_and_split_it_is_asked_for(tiny_csv, tmp_path):
    run = tmp_path / "r"  # lr 0 and no batch norm: only epoch 1 improves, so best is epoch 1 and last epoch 2
    train.train(tiny_csv, run, tiny_config(epochs=2, lr=0.0, batch_norm=False, train_limit=64), progress=False)
    assert evaluate(run, checkpoint="last", out=tmp_path / "last")["epoch"] == 2
    assert evaluate(run, out=tmp_path / "best")["epoch"] == 1
    dataset = load(tiny_csv)
    for split, name in (("test", "PrivateTest"), ("val", "PublicTest")):
        metrics = evaluate(run, split=split, out=tmp_path / split)
        lines = pd.read_csv(tmp_path / split / "predictions.csv")["line"].tolist()
        assert metrics["split"] == name and lines == dataset.origins(dataset.indices(name))
    assert main(["evaluate", str(run), "--split", "val", "--tta"]) == 0
    saved = json.loads((run / "eval" / "val-tta" / "metrics.json").read_text())
    assert (saved["split"], saved["tta"]) == ("PublicTest", "flip")


@pytest.mark.parametrize("row", [
    "double",  # every row sums to 2
    [1.2, -0.2, 0, 0, 0, 0, 0],  # sums to 1, but a negative value
    [0.501, 0.5, 0, 0, 0, 0, 0],  # off by 1e-3: more than the 6 saved decimals can lose
])
def test_saved_predictions_that_are_not_probabilities_are_refused(trained_run, tiny_csv, tmp_path, row):
    run, _ = trained_run
    evaluate(run, split="test", out=tmp_path / "saved")
    table = pd.read_csv(tmp_path / "saved" / "predictions.csv")
    if row == "double":
        table[list(EMOTIONS)] = table[list(EMOTIONS)] * 2
    else:
        table.loc[3, list(EMOTIONS)] = row
    table.to_csv(tmp_path / "saved" / "predictions.csv", index=False)
    with pytest.raises(FerkitError, match="rows that are not probabilities"):
        ensemble([tmp_path / "saved"], tmp_path / "ens", data=tiny_csv)


@pytest.mark.parametrize("override, message", [
    ("momentum=1.5", "'momentum': 1.5 must be in \\[0, 1\\)"),
    ("max_scale=1", "'max_scale': 1.0 must be in \\[0, 1\\)"),
])
def test_config_rejects_more_values_out_of_range(override, message):
    with pytest.raises(FerkitError, match=message):
        config.resolve(overrides=[override])


def test_config_reads_switches_and_the_profile_of_a_file(tmp_path):
    for text, expected in (("false", False), ("no", False), ("0", False), ("off", False), ("true", True), ("1", True)):
        assert config.resolve(overrides=[f"augment={text}"]).augment is expected, text
    with pytest.raises(FerkitError, match="'augment': 'maybe' is not a valid true/false"):
        config.resolve(overrides=["augment=maybe"])
    path = tmp_path / "c.yaml"
    path.write_text("profile: gpu\nepochs: 3\n")
    cfg = config.resolve(config_file=path)
    assert (cfg.profile, cfg.widths, cfg.epochs) == ("gpu", (64, 128, 256, 512), 3)


def test_dropout_reaches_the_models():
    for name in list_models():
        rates = [m.p for m in get_model(name, dropout=0.3).modules() if isinstance(m, torch.nn.Dropout)]
        assert rates and all(p == 0.3 for p in rates), name
        assert not any(isinstance(m, torch.nn.Dropout) for m in get_model(name, dropout=0.0).modules())


def test_config_layers_apply_in_the_documented_order(tmp_path):
    """defaults < profile < YAML file < --set < explicit argument (such as train --model)."""
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 3\nlr: 0.2\nbatch_size: 64\nmodel: cnn\n")
    cfg = config.resolve(profile="gpu", config_file=path, overrides=["epochs=5", "model=cnn"], model="mlp")
    assert (cfg.dropout, cfg.batch_size, cfg.lr, cfg.epochs, cfg.model) == (0.3, 64, 0.2, 5, "mlp")


def test_snapshots_and_times_follow_the_training_clock_across_a_resume(tiny_csv, tmp_path, monkeypatch):
    each_epoch_takes(45.0, monkeypatch)  # of training time: 45, 90, 135
    run = tmp_path / "r"
    original = train.save_checkpoint

    def killed_after_the_second_epoch(path, payload):
        original(path, payload)
        if payload["epoch"] == 2 and path.name == "last.pt":
            raise KeyboardInterrupt

    monkeypatch.setattr(train, "save_checkpoint", killed_after_the_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train.train(tiny_csv, run, tiny_config(epochs=3, train_limit=64, snapshot_minutes="1,2,3"), progress=False)
    monkeypatch.setattr(train, "save_checkpoint", original)
    info = train.train(tiny_csv, run, resume=True, progress=False)
    folder = run / "checkpoints"
    assert sorted(p.name for p in folder.glob("at_*")) == ["at_1min.pt", "at_2min.pt"]
    assert info["snapshots_missed"] == [3]
    assert torch.load(folder / "at_1min.pt", weights_only=True)["epoch"] == 2  # 45 s <= 60 s < 90 s
    assert torch.load(folder / "at_2min.pt", weights_only=True)["epoch"] == 3  # 90 s <= 120 s < 135 s
    history = train.read_history(run / "history.csv")
    assert [row["seconds"] for row in history] == [45.0, 45.0, 45.0]
    assert info["train_seconds"] == 135.0
    assert info["train_images_per_second"] == pytest.approx(history[0]["images_per_second"], rel=1e-3)


def test_a_snapshot_is_the_first_model_trained_past_its_mark(tiny_csv, tmp_path, monkeypatch):
    """An epoch that ends on a mark leaves it to the next: with epochs of 60 s, at_1min is epoch 2's model,
    and a run that ends at 120 s has no at_2min (as at_0min is epoch 1's, never the untrained model)."""
    each_epoch_takes(60.0, monkeypatch)
    info = train.train(tiny_csv, tmp_path / "r", tiny_config(epochs=2, train_limit=64, snapshot_minutes="0,1,2"),
                       progress=False)
    epochs = {p.name: torch.load(p, weights_only=True)["epoch"] for p in (tmp_path / "r" / "checkpoints").glob("at_*")}
    assert epochs == {"at_0min.pt": 1, "at_1min.pt": 2} and info["snapshots_missed"] == [2]


def test_class_weights_follow_the_power_and_average_one_over_the_training_images():
    labels = np.array([0] * 900 + [1] * 100 + [3] * 300)
    for power in (1.0, 0.5):
        raw = np.array([1.0, 9.0, 9.0, 3.0, 9.0, 9.0, 9.0]) ** power  # absent classes count as size 1: 900/1
        raw[[2, 4, 5, 6]] = 900.0 ** power
        weights = train.class_weights(labels, power)
        np.testing.assert_allclose(weights, raw / raw[labels].mean())
        assert weights[labels].mean() == pytest.approx(1.0)


@pytest.mark.parametrize("imbalance", ["sampler", "weighted_loss", "none"])
def test_class_weights_reach_the_sampler_or_the_loss_and_only_the_one_asked_for(tiny_csv, tmp_path, monkeypatch,
                                                                                imbalance):
    seen = {}
    real_order = train.epoch_order

    def spy_order(sample_weight, n, *args, **kwargs):
        seen["sample_weight"] = None if sample_weight is None else sample_weight.cpu().numpy()
        return real_order(sample_weight, n, *args, **kwargs)

    def spy_epoch(*args, **kwargs):  # no training: only what it is given matters here
        seen["loss_weight"] = args[9] if len(args) > 9 else kwargs.get("loss_weight")
        return {"train_loss": 1.0, "train_acc": 0.0, "lr": 0.0}

    monkeypatch.setattr(train, "epoch_order", spy_order)
    monkeypatch.setattr(train, "train_one_epoch", spy_epoch)
    info = train.train(tiny_csv, tmp_path / "r", tiny_config(epochs=1, imbalance=imbalance, imbalance_power=0.7,
                                                           train_limit=100), progress=False)
    dataset = load(tiny_csv)
    y = dataset.labels[dataset.indices("Training")[:100]]
    expected = train.class_weights(y, 0.7)
    np.testing.assert_allclose(info["class_weights"], expected, rtol=1e-6)
    if imbalance == "sampler":
        np.testing.assert_allclose(seen["sample_weight"], expected[y], rtol=1e-6)
    else:
        assert seen["sample_weight"] is None
    if imbalance == "weighted_loss":
        np.testing.assert_allclose(seen["loss_weight"].cpu().numpy(), expected, rtol=1e-6)
    else:
        assert seen["loss_weight"] is None


def test_evaluation_files_name_each_class_with_its_own_numbers(trained_run, tmp_path):
    run, _ = trained_run
    model, _ = train.load_model(run)
    dataset = load(json.loads((run / "run.json").read_text())["data"]["path"])
    rows = dataset.indices("PublicTest")
    probs = train.predict_proba(model, dataset.images[rows])
    metrics = evaluate(run, split="val", out=tmp_path / "e")
    table = pd.read_csv(tmp_path / "e" / "predictions.csv")
    assert list(table.columns) == ["line", "true", "pred", *EMOTIONS]
    np.testing.assert_allclose(table[list(EMOTIONS)].to_numpy(), probs, atol=2e-6)
    assert (table["pred"] == table[list(EMOTIONS)].to_numpy().argmax(1)).all()
    report = {}
    for line in (tmp_path / "e" / "classification_report.txt").read_text().splitlines():
        words = line.split()
        if words and words[0] in EMOTIONS:
            report[words[0]] = [float(w) for w in words[1:]]
    assert list(report) == list(EMOTIONS)
    for name, (precision, recall, f1, support) in report.items():
        expected = metrics["per_class"][name]
        assert (precision, recall, f1) == pytest.approx((expected["precision"], expected["recall"], expected["f1"]),
                                                        abs=6e-5)
        assert support == expected["support"] == (dataset.labels[rows] == EMOTIONS.index(name)).sum()


def test_learning_curves_of_an_evaluation_mark_the_best_epoch(tiny_csv, tmp_path, monkeypatch):
    run = tmp_path / "r"
    info = train.train(tiny_csv, run, tiny_config(epochs=8, patience=1, lr=0.0, train_limit=64), progress=False)
    assert (info["best_epoch"], info["epochs_run"]) == (1, 2)
    marks = []
    real = visualize.learning_curves
    monkeypatch.setattr(visualize, "learning_curves",
                        lambda history, path, best_epoch=None, **kw: marks.append(best_epoch) or
                        real(history, path, best_epoch=best_epoch, **kw))
    evaluate(run, split="val")
    assert marks == [1]


def test_config_file_must_be_a_mapping_of_values(tmp_path):
    path = tmp_path / "c.yaml"
    for text in ("- epochs\n- 3\n", "epochs 3\n"):  # a list; a line without the colon is one string
        path.write_text(text)
        with pytest.raises(FerkitError, match="c.yaml: expected a mapping of key: value"):
            config.resolve(config_file=path)
    path.write_text("lr: 0.1\nepochs: [3\n")
    with pytest.raises(FerkitError, match=r"c.yaml, line 3, column 1: not valid YAML \(expected ',' or ']'"):
        config.resolve(config_file=path)
    for key in ("epochs", "tta", "widths"):  # a key left empty is a mistake, not the default; not 'None' either
        path.write_text(f"lr: 0.1\n{key}:\n")
        with pytest.raises(FerkitError, match=f"c.yaml, line 2: config key '{key}' has no value$"):
            config.resolve(config_file=path)
    path.write_text("lr: 0.1\n\nepochs: two\n")
    with pytest.raises(FerkitError, match="c.yaml, line 3: config key 'epochs': 'two' is not a valid whole number"):
        config.resolve(config_file=path)
    for key, kind in (("yes", "bool"), ("1", "int"), ("~", "null")):  # difflib's guess at a key raised a TypeError
        path.write_text(f"lr: 0.1\n{key}: 3\n")
        with pytest.raises(FerkitError, match=f"c.yaml, line 2: '{key}' is no config key \\(YAML reads it as {kind}"):
            config.resolve(config_file=path)
    path.write_text("epochs: 2\nlr: 0.1\nepochs: 3\n")  # YAML itself would keep the 3 without a word
    with pytest.raises(FerkitError, match="c.yaml, line 3: 'epochs' is set twice \\(also on line 1\\); keep one"):
        config.resolve(config_file=path)
    path.write_text("epochs: 3\nlr: -1\nschedule: cosine\n")
    with pytest.raises(FerkitError, match=r"c.yaml, line 2: config key 'lr': -1.0 must be in \[0, 100\]"):
        config.resolve(config_file=path)
    path.write_bytes(b"epochs: 3\n# caf\xe9\n")
    with pytest.raises(FerkitError, match="c.yaml: byte 16 is not UTF-8 text"):
        config.resolve(config_file=path)
    path.write_text("")
    assert config.resolve(config_file=path) == config.resolve()


def test_override_mistakes_name_the_option_that_made_them():
    with pytest.raises(FerkitError, match=r"--mlp-set: config key 'lr': -1.0 must be in \[0, 100\]"):
        config.resolve(overrides=["lr=-1"], option="--mlp-set")
    with pytest.raises(FerkitError, match="--mlp-set: config key 'schedule': 'x' is not one of"):
        config.resolve(overrides=["schedule=x"], option="--mlp-set")
    with pytest.raises(FerkitError, match="--mlp-set: unknown config key 'epoch'"):
        config.resolve(overrides=["epoch=2"], option="--mlp-set")
    with pytest.raises(FerkitError, match="--mlp-set: config key 'epochs': 'x' is not a valid whole number"):
        config.resolve(overrides=["epochs=x"], option="--mlp-set")
    with pytest.raises(FerkitError, match="--mlp-set: config key 'lr': '=0.1' is not a valid finite number"):
        config.resolve(overrides=["lr==0.1"], option="--mlp-set")
    with pytest.raises(FerkitError, match="--mlp-set 'epochs': expected key=value, e.g. --mlp-set epochs=5"):
        config.resolve(overrides=["epochs"], option="--mlp-set")


def test_a_key_given_twice_with_two_values_is_refused_and_with_one_is_taken():
    with pytest.raises(FerkitError, match="--set lr is given twice, as 0.1 and as 0.2: keep the one you mean"):
        config.resolve(overrides=["lr=0.1", " lr = 0.2"])
    assert config.resolve(overrides=["lr=0.2", "lr= 0.2"]).lr == 0.2


def test_a_folder_that_is_no_run_and_a_run_without_its_records_get_advice(trained_run, tiny_csv, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for data in (None, tiny_csv):  # the advice must not depend on --data
        with pytest.raises(FerkitError, match="empty: not a trained ferkit run \\(no checkpoints/\\)"):
            evaluate(empty, data=data)
    run, _ = trained_run
    bare = tmp_path / "bare"
    (bare / "checkpoints").mkdir(parents=True)
    (bare / "checkpoints" / "last.pt").write_bytes((run / "checkpoints" / "last.pt").read_bytes())
    with pytest.raises(FerkitError, match="bare: cannot resume without the run's run.json and config.yaml"):
        train.train(tiny_csv, bare, resume=True, progress=False)
    early = tmp_path / "early"  # Ctrl-C in the first epoch: run.json and config.yaml, no checkpoint yet
    early.mkdir()
    for name in ("run.json", "config.yaml"):
        shutil.copy(run / name, early / name)
    from ferkit.export import export_onnx
    from ferkit.features import features
    from ferkit.predict import predict

    # predict, export and features said "no checkpoint here; train one with `ferkit train`"
    for command in (lambda: evaluate(early), lambda: predict(early, tiny_csv),
                    lambda: features(early, tiny_csv, tmp_path / "f"), lambda: export_onnx(early, tmp_path / "m.onnx")):
        with pytest.raises(FerkitError, match="early: its training stopped before its first epoch ended, so it has "
                                              "no checkpoint yet; run the same `ferkit train` command again"):
            command()
    train.train(tiny_csv, early, tiny_config(epochs=1, train_limit=64), progress=False)  # which starts it anew
    assert (early / "checkpoints" / "best.pt").exists()


def test_too_few_rows_name_the_limits_that_cut_them(tiny_csv, tmp_path):
    with pytest.raises(FerkitError, match="needs at least 2 Training and 1 PublicTest rows \\(found 1 and 3 with "
                                          "train_limit=1 and val_limit=3\\)"):
        train.train(tiny_csv, tmp_path / "r", {"train_limit": 1, "val_limit": 3}, progress=False)
    least = train.train(tiny_csv, tmp_path / "least", tiny_config(epochs=1, train_limit=2, val_limit=1),
                        progress=False)  # the fewest rows that train
    assert (least["data"]["train_images"], least["data"]["val_images"], least["epochs_run"]) == (2, 1, 1)


def test_the_classification_report_says_which_classes_macro_f1_averages(tiny_csv, tmp_path):
    dataset = load(tiny_csv)
    rows = dataset.indices("PrivateTest")
    rows = rows[dataset.labels[rows] != 1]  # no Disgust among these faces
    probs = np.eye(7)[(dataset.labels[rows] + 1) % 7 * (np.arange(len(rows)) % 3 == 0) + dataset.labels[rows] *
                      (np.arange(len(rows)) % 3 != 0)]
    metrics = write_evaluation(tmp_path, dataset, rows, probs, {"split": "PrivateTest"})
    present = np.unique(dataset.labels[rows])
    assert metrics["macro_f1"] == pytest.approx(f1_score(dataset.labels[rows], probs.argmax(1), labels=present,
                                                         average="macro"))
    text = (tmp_path / "classification_report.txt").read_text()
    assert (f"Disgust: no face of this split here, so metrics.json's macro F1 ({metrics['macro_f1']:.4f}) averages "
            f"the other {len(present)} classes") in text


def test_a_re_evaluation_cut_short_leaves_no_evaluation_for_ensemble_to_misread(tiny_csv, tmp_path, monkeypatch):
    """metrics.json is written last: cut short, the folder held new numbers beside the old predictions."""
    import ferkit.visualize

    dataset = load(tiny_csv)
    rows = dataset.indices("PrivateTest")
    write_evaluation(tmp_path, dataset, rows, np.eye(7)[dataset.labels[rows]], {"split": "PrivateTest"})
    assert is_evaluation_folder(tmp_path)

    def cut_short(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ferkit.visualize, "confusion_matrices", cut_short)
    with pytest.raises(KeyboardInterrupt):
        write_evaluation(tmp_path, dataset, rows, np.full((len(rows), 7), 1 / 7), {"split": "PrivateTest"})
    assert not is_evaluation_folder(tmp_path) and not (tmp_path / "metrics.json").exists()


# ---------------------------------------------------------------------------------------------
# Found by an audit of evaluate, ensemble and compare


def test_an_ensemble_counts_each_model_once_and_never_writes_over_a_member(trained_run, tiny_csv, tmp_path, capsys):
    run, _ = trained_run
    plain = evaluate(run, out=tmp_path / "plain")
    evaluate(run, tta=True, out=tmp_path / "tta")
    assert plain["checkpoint_sha256"] == train.checkpoint_sha256(run)
    for members in ([run, tmp_path / "plain"], [tmp_path / "plain", tmp_path / "tta"]):
        with pytest.raises(FerkitError, match="hold the same model"):
            ensemble(members, tmp_path / "never", data=tiny_csv)
    other = tmp_path / "other"
    train.train(tiny_csv, other, tiny_config(epochs=1, train_limit=64, seed=5), progress=False)
    pair = ensemble([other, tmp_path / "plain"], tmp_path / "pair", data=tiny_csv)
    with pytest.raises(FerkitError, match="hold the same model"):  # an ensemble of ensembles, too
        ensemble([tmp_path / "pair", tmp_path / "tta"], tmp_path / "never", data=tiny_csv)
    before = (tmp_path / "plain" / "predictions.csv").read_bytes()
    with pytest.raises(FerkitError, match="is the member .*plain, whose predictions.csv the ensemble's would replace"):
        ensemble([other, tmp_path / "plain"], tmp_path / "plain", data=tiny_csv)
    assert (tmp_path / "plain" / "predictions.csv").read_bytes() == before and pair["n"] == plain["n"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FerkitError, match="empty: neither a trained run folder .* nor an evaluation folder"):
        ensemble([tmp_path / "empty"], tmp_path / "never", data=tiny_csv)


def test_an_ensemble_counts_the_best_and_last_checkpoints_of_one_epoch_once(tiny_csv, tmp_path):
    """best.pt and last.pt of the same epoch are one model in two files of other checksums: their saved
    predictions were averaged as two models."""
    run = tmp_path / "run"
    train.train(tiny_csv, run, tiny_config(epochs=1, train_limit=64), progress=False)
    last = evaluate(run, checkpoint="last", out=tmp_path / "last")
    best = evaluate(run, out=tmp_path / "best")
    assert last["epoch"] == best["epoch"] == 1 and last["checkpoint_sha256"] != best["checkpoint_sha256"]
    for members in ([tmp_path / "best", tmp_path / "last"], [run, tmp_path / "last"], [tmp_path / "last", run]):
        with pytest.raises(FerkitError, match="hold the same model \\(the epoch-1 checkpoint of "):
            ensemble(members, tmp_path / "never", data=tiny_csv)


def test_evaluate_and_ensemble_never_replace_files_of_the_users_of_their_names(trained_run, tiny_csv, tmp_path):
    run, _ = trained_run
    for name, text in (("metrics.json", '{"mine": 1}'), ("predictions.csv", "id,score\n1,0.5\n")):
        folder = tmp_path / name
        folder.mkdir()
        (folder / name).write_text(text)
        with pytest.raises(FerkitError, match=f"holds {name}, which `ferkit evaluate` did not write"):
            evaluate(run, out=folder)
        with pytest.raises(FerkitError, match=f"holds {name}, which `ferkit ensemble` did not write"):
            ensemble([run], folder, data=tiny_csv)
        assert (folder / name).read_text() == text
    cut_short = tmp_path / "cut"
    evaluate(run, out=cut_short)
    (cut_short / "metrics.json").unlink()  # as an evaluation cut short leaves it: its own predictions.csv alone
    assert evaluate(run, out=cut_short)["n"] > 0


def test_an_ensemble_refuses_one_network_trained_twice_under_two_checksums(tiny_csv, tmp_path):
    """Trained again with the same seed and config, a run is the same network in a file of another checksum (it
    records its times): averaged, one model counted as two, with or without its saved predictions."""
    for name, seed in (("first", 0), ("again", 0), ("other", 1)):
        train.train(tiny_csv, tmp_path / name, tiny_config(epochs=1, train_limit=64, seed=seed), progress=False)
    assert train.checkpoint_sha256(tmp_path / "first") != train.checkpoint_sha256(tmp_path / "again")
    evaluate(tmp_path / "again", out=tmp_path / "again-saved")
    for twin in ("again", "again-saved"):
        with pytest.raises(FerkitError, match=f"{twin} and .*first give every face the same probabilities: one "
                                              "network trained twice"):
            ensemble([tmp_path / "first", tmp_path / "other", tmp_path / twin], tmp_path / "never", data=tiny_csv)
    assert ensemble([tmp_path / "first", tmp_path / "other"], tmp_path / "pair", data=tiny_csv)["n"] > 0


def test_a_hand_edited_saved_evaluation_is_named_not_a_traceback(trained_run, tiny_csv, tmp_path):
    run, _ = trained_run
    saved = tmp_path / "saved"
    evaluate(run, out=saved)
    table = (saved / "predictions.csv").read_text().splitlines()
    cells = table[1].split(",")
    cells[-1] = "abc"
    (saved / "predictions.csv").write_text("\n".join([table[0], ",".join(cells), *table[2:]]) + "\n")
    with pytest.raises(FerkitError, match="rows that are not probabilities"):
        ensemble([saved], tmp_path / "never", data=tiny_csv)
    (saved / "metrics.json").write_text("[]")
    with pytest.raises(FerkitError, match="metrics.json: not the metrics of an evaluation"):
        ensemble([saved], tmp_path / "never", data=tiny_csv)


def test_an_older_evaluation_without_a_checkpoint_sha256_is_the_model_of_its_run_and_epoch(trained_run, tiny_csv,
                                                                                           tmp_path):
    """Evaluations saved before the checksum was recorded are named by the run folder around them
    and their epoch: with that run beside them, an ensemble would count one model twice."""
    run, _ = trained_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("eval"))
    old = Path(evaluate(copy)["folder"])
    recorded = json.loads((old / "metrics.json").read_text())
    del recorded["checkpoint_sha256"]
    (old / "metrics.json").write_text(json.dumps(recorded))
    epoch = recorded["epoch"]
    for members in ([old, copy], [copy, old]):
        with pytest.raises(FerkitError, match=f"hold the same model \\(the epoch-{epoch} checkpoint of "
                                              f"{re.escape(str(copy.resolve()))}, with or without TTA\\)"):
            ensemble(members, tmp_path / "never", data=tiny_csv)


def test_a_run_whose_data_file_is_gone_asks_for_data(trained_run, tiny_csv, tmp_path):
    run, _ = trained_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("eval"))
    info = json.loads((copy / "run.json").read_text())
    info["data"]["path"] = str(tmp_path / "moved.csv")
    (copy / "run.json").write_text(json.dumps(info))
    for act in (lambda: evaluate(copy), lambda: ensemble([copy], tmp_path / "ens")):
        with pytest.raises(FerkitError, match=re.escape(f"{tmp_path / 'moved.csv'} (the run's data file) is gone; "
                                                        "pass --data PATH")):
            act()
    (copy / "run.json").unlink()  # a damaged run: it is still a run folder, not saved predictions
    with pytest.raises(FerkitError, match="no run.json with the data path; pass --data"):
        ensemble([copy], tmp_path / "ens")
    assert evaluate(copy, data=tiny_csv, out=tmp_path / "given")["n"] == 60


def test_predictions_made_on_a_csv_are_refused_for_the_image_export_of_the_same_faces(trained_run, tiny_csv,
                                                                                     tmp_path):
    run, _ = trained_run
    saved = Path(evaluate(run, out=tmp_path / "saved")["folder"])
    faces = fdata.load(tiny_csv)
    export = write_export(tmp_path / "export", Faces(faces.images, faces.labels, faces.splits,
                                                     ids=np.arange(1, len(faces) + 1)), "folder")  # PNG: the same faces
    assert fdata.load(export).is_recorded_as(json.loads((saved / "metrics.json").read_text()))
    with pytest.raises(FerkitError, match=re.escape("these predictions were made on a CSV (rows named by line), and "
                                                    f"{export} is the image-folder export; pass --data with the file "
                                                    "or folder they were made on")):
        ensemble([saved], tmp_path / "ens", data=export)


def test_evaluate_names_the_checkpoint_it_marks_and_refuses_another_runs(trained_run, tmp_path, monkeypatch):
    run, _ = trained_run
    marks = []
    real = visualize.learning_curves
    monkeypatch.setattr(visualize, "learning_curves", lambda *a, mark, **k: marks.append(mark) or real(*a, mark=mark, **k))
    evaluate(run, checkpoint="last", out=tmp_path / "last")
    evaluate(run, out=tmp_path / "best")
    assert marks == ["evaluated: epoch {epoch} (last checkpoint)", "best epoch {epoch}"]
    other = tmp_path / "other"
    shutil.copytree(run, other)
    with pytest.raises(FerkitError, match="--checkpoint .*other/checkpoints/best.pt: not a checkpoint of"):
        evaluate(run, checkpoint=str(other / "checkpoints" / "best.pt"), out=tmp_path / "never")
    assert evaluate(run, checkpoint=str(run / "checkpoints" / "last.pt"), out=tmp_path / "own")["checkpoint"] == "last"


def test_evaluate_on_publictest_says_it_chose_the_model(trained_run, tmp_path, capsys):
    run, _ = trained_run
    assert "so these scores are optimistic" in evaluate(run, split="val", out=tmp_path / "val")["note"]
    assert "note" not in evaluate(run, out=tmp_path / "test")
    assert main(["evaluate", str(run), "--split", "val", "--out", str(tmp_path / "val2")]) == 0
    assert "note: PublicTest validated the run every epoch" in capsys.readouterr().err
    assert "so these scores are optimistic" in ensemble([run], tmp_path / "ens-val", split="val")["note"]
    assert "note" not in ensemble([run], tmp_path / "ens-test")


@pytest.mark.parametrize("limit, chose", [(20, "its first 20 faces chose"), (60, "it chose"), (500, "it chose")])
def test_the_publictest_note_says_how_many_faces_chose_the_model(trained_run, tmp_path, monkeypatch, limit, chose):
    """val_limit validated on the first faces only when PublicTest has more (tiny_csv has 60)."""
    trained = train.load_run_model

    def with_val_limit(*args, **kwargs):
        model, state, sha = trained(*args, **kwargs)
        return model, dict(state, config=dict(state["config"], val_limit=limit)), sha

    monkeypatch.setattr(train, "load_run_model", with_val_limit)
    run, _ = trained_run
    note = evaluate(run, split="val", out=tmp_path / "val")["note"]
    assert note.startswith(f"PublicTest validated the run every epoch ({chose} the best epoch and when to stop)")


def test_an_ensemble_in_a_folder_of_an_earlier_evaluation_leaves_no_learning_curves(trained_run, tiny_csv, tmp_path):
    run, _ = trained_run
    evaluate(run, out=tmp_path / "x")
    assert (tmp_path / "x" / "learning_curves.png").exists()
    ensemble([run], tmp_path / "x")
    assert not (tmp_path / "x" / "learning_curves.png").exists()  # they were the run's, not the ensemble's


def test_a_checkpoint_replaced_while_it_is_read_is_refused(trained_run, tmp_path, monkeypatch):
    run, _ = trained_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    real = train.load_model

    def training_saves_meanwhile(*args, **kwargs):
        loaded = real(*args, **kwargs)
        shutil.copy(copy / "checkpoints" / "last.pt", copy / "checkpoints" / "best.pt.new")
        (copy / "checkpoints" / "best.pt").write_bytes(b"another model")
        return loaded

    monkeypatch.setattr(train, "load_model", training_saves_meanwhile)
    with pytest.raises(FerkitError, match="its best checkpoint changed while it was read"):
        evaluate(copy, out=tmp_path / "never")


def test_evaluate_names_a_damaged_history(trained_run, tmp_path):
    run, _ = trained_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    lines = (copy / "history.csv").read_text().splitlines()
    (copy / "history.csv").write_text("\n".join([lines[0], lines[1].replace(",", ",x", 1), *lines[2:]]) + "\n")
    with pytest.raises(FerkitError, match="history.csv: unreadable"):
        evaluate(copy, out=tmp_path / "never")
    without_val_acc = [",".join(cells[:4] + cells[5:]) for cells in (line.split(",") for line in lines)]
    (copy / "history.csv").write_text("\n".join(without_val_acc) + "\n")  # a column cut out: a KeyError in the plot
    with pytest.raises(FerkitError, match=r"history.csv: no column val_acc in its header \(line 1\)"):
        evaluate(copy, out=tmp_path / "never")
    assert not is_evaluation_folder(tmp_path / "never")


def test_a_kill_after_the_last_checkpoint_leaves_a_history_that_the_resume_completes(tiny_csv, tmp_path, monkeypatch):
    cfg = tiny_config(epochs=2, train_limit=64)
    real_write = train.write_history

    def killed_before_the_last_history(path, history):
        if len(history) == 2:  # last.pt of the final epoch is saved; history.csv not yet
            raise KeyboardInterrupt
        real_write(path, history)

    monkeypatch.setattr(train, "write_history", killed_before_the_last_history)
    with pytest.raises(KeyboardInterrupt):
        train.train(tiny_csv, tmp_path / "r", cfg, progress=False)
    monkeypatch.setattr(train, "write_history", real_write)
    train.train(tiny_csv, tmp_path / "r", resume=True, progress=False)
    assert [row["epoch"] for row in train.read_history(tmp_path / "r" / "history.csv")] == [1, 2]


def test_a_run_without_last_pt_is_neither_resumed_nor_written_over(trained_run, tiny_csv, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(trained_run[0], run, ignore=lambda folder, names: [n for n in names if folder == str(trained_run[0])
                                                                          and n not in train.RUN_FOLDER_ENTRIES])
    (run / "eval").mkdir(exist_ok=True)
    (run / "checkpoints" / "last.pt").unlink()
    best = (run / "checkpoints" / "best.pt").read_bytes()
    with pytest.raises(FerkitError, match="last.pt is missing"):
        train.train(tiny_csv, run, resume=True, progress=False)
    with pytest.raises(FerkitError, match="without checkpoints/last.pt"):
        train.train(tiny_csv, run, tiny_config(epochs=1), progress=False)
    assert (run / "checkpoints" / "best.pt").read_bytes() == best


def test_two_trainings_into_one_folder_at_once_are_refused(tiny_csv, tmp_path, monkeypatch):
    run, real = tmp_path / "r", train.train_one_epoch
    refused = []

    def second_start(*args, **kwargs):
        if not refused:
            with pytest.raises(FerkitError, match="another `ferkit train` is writing") as caught:
                train.train(tiny_csv, run, tiny_config(epochs=1, seed=7), progress=False)
            refused.append(caught)
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "train_one_epoch", second_start)
    train.train(tiny_csv, run, tiny_config(epochs=1, train_limit=64), progress=False)
    assert refused and config.load(run / "config.yaml").seed == 0


def _interrupted_after_epoch_1(tiny_csv, run, monkeypatch) -> None:
    """A 2-epoch run stopped (as by Ctrl-C) once epoch 1 is written: resumable."""
    real_write = train.write_history

    def interrupted(path, history):
        real_write(path, history)
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(train, "write_history", interrupted)
        with pytest.raises(KeyboardInterrupt):
            train.train(tiny_csv, run, tiny_config(epochs=2, train_limit=64), progress=False)


def test_an_ensemble_of_saved_predictions_says_when_their_run_has_moved_on(trained_run, tiny_csv, tmp_path):
    """Predictions saved from an epoch-1 checkpoint were averaged in silence after the run had trained on."""
    run, _ = trained_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    saved = tmp_path / "saved"
    evaluate(copy, out=saved)
    assert "note" not in ensemble([saved], tmp_path / "now", data=tiny_csv)
    best = torch.load(copy / "checkpoints" / "best.pt", weights_only=True)
    torch.save(dict(best, epoch=best["epoch"] + 1), copy / "checkpoints" / "best.pt")  # it trained on
    note = ensemble([saved], tmp_path / "later", data=tiny_csv)["note"]
    assert note == (f"{saved} holds the predictions of an earlier best checkpoint of {os.path.realpath(copy)} than "
                    "the run holds now (it trained on, or again); they were averaged as saved: evaluate the run "
                    "again, or give its folder")


def test_evaluating_an_unfinished_run_says_so(tiny_csv, tmp_path, monkeypatch):
    run = tmp_path / "r"
    _interrupted_after_epoch_1(tiny_csv, run, monkeypatch)
    note = evaluate(run)["note"]
    assert note == ("the run has not finished training (interrupted, or still running): this is its best checkpoint "
                    "so far, of epoch 1; evaluate it again once the run has ended")
    assert evaluate(run, split="val")["note"].endswith("held-out estimate; " + note)
    train.train(tiny_csv, run, resume=True, progress=False)
    assert "note" not in evaluate(run)


def test_an_ensemble_of_an_unfinished_run_says_so_for_the_run_and_for_its_saved_predictions(tiny_csv, tmp_path,
                                                                                          monkeypatch):
    run = tmp_path / "r"
    _interrupted_after_epoch_1(tiny_csv, run, monkeypatch)
    saved = evaluate(run)["folder"]
    for member, out in ((run, "of-run"), (saved, "of-saved")):
        assert ensemble([member], tmp_path / out)["note"] == (
            f"the run of {member} has not finished training (interrupted, or still running): the ensemble holds its "
            "best checkpoint so far, of epoch 1; make the ensemble again once the run has ended")
    train.train(tiny_csv, run, resume=True, progress=False)
    assert "note" not in ensemble([run], tmp_path / "of-run")


def test_a_resume_with_other_libraries_is_recorded_and_reported(tiny_csv, tmp_path, monkeypatch):
    """run.json kept the start's device and versions only: the report described the first session alone."""
    from ferkit import report

    run = tmp_path / "r"
    _interrupted_after_epoch_1(tiny_csv, run, monkeypatch)
    real = train.environment

    def upgraded():
        env = real()
        return dict(env, versions=dict(env["versions"], torch="9.9.9+cu999"))

    monkeypatch.setattr(train, "environment", upgraded)
    info = train.train(tiny_csv, run, resume=True, progress=False)
    (elsewhere,) = info["resumed_elsewhere"]
    assert elsewhere["versions"]["torch"] == "9.9.9+cu999" and elsewhere["at"] == info["resumed"][0]
    assert elsewhere["device"] == info["device"] == "cpu"
    evaluate(run)
    text = report._resumed(report.read_run(run))
    first = info["environment"]["versions"]["torch"]
    assert f"but it went on elsewhere (from {elsewhere['at'][:16]}: torch 9.9.9+cu999 (first {first}))" in text

    monkeypatch.setattr(train, "environment", real)
    again = tmp_path / "again"
    _interrupted_after_epoch_1(tiny_csv, again, monkeypatch)
    assert "resumed_elsewhere" not in train.train(tiny_csv, again, resume=True, progress=False)  # the same machine


def test_a_resume_on_another_processor_is_recorded_and_one_of_a_run_that_named_none_is_not(tiny_csv, tmp_path,
                                                                                           monkeypatch):
    """The processor's name and torch's kernels are recorded from 2026-12-02 on: the same seed gives other last
    digits on another processor, while a run from before, which lacks them, resumes as on the same machine."""
    from ferkit import report

    older = tmp_path / "older"
    _interrupted_after_epoch_1(tiny_csv, older, monkeypatch)
    info = json.loads((older / "run.json").read_text())
    for key in ("cpu_model", "cpu_capability"):
        del info["environment"][key]
    (older / "run.json").write_text(json.dumps(info))
    assert "resumed_elsewhere" not in train.train(tiny_csv, older, resume=True, progress=False)

    run = tmp_path / "r"
    _interrupted_after_epoch_1(tiny_csv, run, monkeypatch)
    real = train.environment
    monkeypatch.setattr(train, "environment", lambda: dict(real(), cpu_model="Another CPU", cpu_capability="DEFAULT"))
    info = train.train(tiny_csv, run, resume=True, progress=False)
    (elsewhere,) = info["resumed_elsewhere"]
    first = info["environment"]
    assert (elsewhere["cpu_model"], elsewhere["cpu_capability"]) == ("Another CPU", "DEFAULT")
    evaluate(run)
    assert (f"cpu_model Another CPU (first {first['cpu_model']}), cpu_capability DEFAULT (first "
            f"{first['cpu_capability']})") in report._resumed(report.read_run(run))


def test_a_resume_records_where_the_data_is_only_when_the_file_has_moved(tiny_csv, tmp_path, monkeypatch):
    """Resumed with a copy, a run keeps the file it recorded while that file exists; once the file has
    moved, run.json records where it is now, where evaluate, features and report look for it."""
    recorded, copy, moved_to = tmp_path / "faces.csv", tmp_path / "copy.csv", tmp_path / "elsewhere.csv"
    shutil.copy(tiny_csv, recorded)
    shutil.copy(tiny_csv, copy)
    for run in ("kept", "moved"):
        _interrupted_after_epoch_1(recorded, tmp_path / run, monkeypatch)
    train.train(copy, tmp_path / "kept", resume=True, progress=False)
    recorded.rename(moved_to)
    train.train(moved_to, tmp_path / "moved", resume=True, progress=False)
    paths = [json.loads((tmp_path / run / "run.json").read_text())["data"]["path"] for run in ("kept", "moved")]
    assert paths == [str(recorded.resolve()), str(moved_to.resolve())]


def test_a_resumed_run_shows_its_progress_from_the_steps_already_trained(tiny_csv, tmp_path, monkeypatch, capsys):
    _interrupted_after_epoch_1(tiny_csv, tmp_path / "r", monkeypatch)  # 2 epochs of 2 steps (64 faces, batches of 32)
    train.train(tiny_csv, tmp_path / "r", resume=True)
    said = capsys.readouterr()
    bar = said.err.split("\r")
    assert "2/4 " in bar[1] and "4/4 " in bar[-1]
    assert re.search(r"^epoch   2/2  train loss [\d.]+ acc [\d.]+  val loss [\d.]+ acc [\d.]+ macro-F1 [\d.]+  lr \S+  "
                     r"[\d.]+s", said.out, re.MULTILINE)


@pytest.mark.parametrize("text, message", [
    ('{"data": ', "unreadable \\(Expecting value"),  # a copy cut short
    ("[]", "expected a JSON object, found list"),
    ("{}", "no data path in it"),
])
def test_a_damaged_run_json_is_named_on_resume(tiny_csv, tmp_path, monkeypatch, text, message):
    run = tmp_path / "r"
    _interrupted_after_epoch_1(tiny_csv, run, monkeypatch)
    (run / "run.json").write_text(text)
    with pytest.raises(FerkitError, match=f"run.json: {message}.*restore it, or train again in another --out"):
        train.train(tiny_csv, run, resume=True, progress=False)


def test_a_resume_may_change_the_device_only(tiny_csv, tmp_path, monkeypatch):
    run = tmp_path / "r"
    _interrupted_after_epoch_1(tiny_csv, run, monkeypatch)
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("device: auto", "device: cuda"))
    with pytest.raises(FerkitError, match="continues with its saved config.yaml"):
        train.train(tiny_csv, run, {"threads": 2}, resume=True, progress=False)
    assert main(["train", str(tiny_csv), "--out", str(run), "--resume", "--set", "epochs=3"]) == 2
    assert main(["train", str(tiny_csv), "--out", str(run), "--resume", "--set", "device=cpu"]) == 0
    assert config.load(run / "config.yaml").device == "cpu"


@pytest.mark.parametrize("edit, message", [
    (("- 8\n", "- 6\n"), "line 3: widths is 6,16, but the run trained with 8,16"),  # was a load_state_dict traceback
    (("lr: 0.05", "lr: 0.2"), "line 19: lr is 0.2, but the run trained with 0.05"),  # went on in silence
])
def test_a_resume_refuses_a_config_yaml_edited_since_last_pt(tiny_csv, tmp_path, monkeypatch, edit, message):
    """The epochs so far were trained with last.pt's config: an edited config.yaml would go on as another run."""
    run = tmp_path / "r"
    _interrupted_after_epoch_1(tiny_csv, run, monkeypatch)
    text = (run / "config.yaml").read_text()
    assert edit[0] in text
    (run / "config.yaml").write_text(text.replace(edit[0], edit[1], 1))
    with pytest.raises(FerkitError, match=f"config.yaml, {message} \\(checkpoints/last.pt\\); a resumed run goes on"):
        train.train(tiny_csv, run, resume=True, progress=False)


@pytest.mark.parametrize("override, message", [
    (["model=mlp", "batch_size=1"], "batch norm needs batches of at least 2"),
    (["widths=4,4,4,4,4,4", "batch_size=1"], "the cnn's last stage of 6 is 1 pixel, where batch norm needs batches"),
    (["widths=8,8,8,8,8,8,8"], "at most 6 fit"),
    (["widths=8,8,8,8,8,8", "train_crop=24"], "24 pixels halve to nothing over 6 stages; use at least 32"),
    (["model=mlp", "train_crop=40"], "the mlp takes whole 48x48 faces"),
    (["augment=false", "train_crop=40"], "part of the augmentation, which augment=false turns off"),
    (["train_crop=49"], "must be in \\[0, 48\\]"),
])
def test_config_rejects_what_would_fail_inside_pytorch(override, message):
    with pytest.raises(FerkitError, match=message):
        config.resolve(overrides=override)


def test_a_yaml_word_read_as_a_boolean_is_explained(tmp_path):
    (tmp_path / "c.yaml").write_text("tta: no\n")
    with pytest.raises(FerkitError, match='quote the word'):
        config.resolve(config_file=tmp_path / "c.yaml")


def test_a_damaged_last_checkpoint_says_what_still_serves(tiny_csv, tmp_path, monkeypatch):
    run = tmp_path / "r"
    _interrupted_after_epoch_1(tiny_csv, run, monkeypatch)
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:100])
    with pytest.raises(FerkitError, match="last.pt: damaged, so the run cannot continue \\(its best.pt still serves"):
        train.train(tiny_csv, run, resume=True, progress=False)


def test_a_fresh_start_clears_what_a_kill_in_the_first_epoch_left(tiny_csv, tmp_path, capsys):
    run = tmp_path / "r"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / ".last.pt.x1y2z3.tmp").write_bytes(b"half a checkpoint")
    assert main(["train", str(tiny_csv), "--out", str(run), "--set", "epochs=4", "--set", "train_limit=64",
                 "--set", "widths=4,8", "--set", "lr=0", "--set", "patience=1"]) == 0
    assert not list(run.rglob("*.tmp"))
    assert "stopped early after 2 epochs (no better validation score for 1)" in capsys.readouterr().out


@pytest.mark.parametrize("text, message", [("profile: tpu\n", "c.yaml, line 1: unknown profile 'tpu'"),
                                           ("epochs: 2\nmodel: [cnn]\n", "c.yaml, line 2: config key 'model'")])
def test_a_wrong_profile_or_model_in_yaml_names_its_line(tmp_path, text, message):
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(FerkitError, match=re.escape(message)):
        config.resolve(config_file=tmp_path / "c.yaml")


def test_snapshot_marks_the_training_never_reached_are_named(tiny_csv, tmp_path, capsys):
    assert main(["train", str(tiny_csv), "--out", str(tmp_path / "r"), "--set", "epochs=1", "--set", "train_limit=64",
                 "--set", "widths=4,8", "--set", "snapshot_minutes=5,10"]) == 0
    assert "note: no at_5min, at_10min checkpoint: the training took" in capsys.readouterr().err
    assert json.loads((tmp_path / "r" / "run.json").read_text())["snapshots_missed"] == [5, 10]
    assert not list((tmp_path / "r" / "checkpoints").glob("at_*"))


def test_a_warmup_longer_than_the_run_is_named(tiny_csv, tmp_path, capsys):
    train.train(tiny_csv, tmp_path / "r", tiny_config(epochs=1, train_limit=64, warmup_epochs=4), progress=True)
    assert "note: warmup_epochs 4 is longer than the 1 epochs: the learning rate ends its warmup at 25% of lr" in \
        capsys.readouterr().out  # where training prints its epochs


def test_a_class_without_a_training_face_is_named(tiny_csv, tmp_path, capsys):
    """A small train_limit (Disgust is 1.5% of FER2013) trained a model never shown a class, without a word."""
    labels = fdata.load(tiny_csv).labels[fdata.load(tiny_csv).indices("Training")][:4]
    absent = [name for i, name in enumerate(fdata.EMOTIONS) if i not in labels]
    assert absent
    train.train(tiny_csv, tmp_path / "r", tiny_config(epochs=1, train_limit=4), progress=True)
    assert f"note: no {', '.join(absent)} face among the 4 training faces (the first 4: train_limit): the model is " \
           "never shown one" in capsys.readouterr().out
    train.train(tiny_csv, tmp_path / "all", tiny_config(epochs=1), progress=True)
    assert "training faces" not in capsys.readouterr().out


@pytest.mark.parametrize("schedule, warmup, epochs, note", [
    ("cosine", 3, 3, "warmup_epochs 3 is as long as the 3 epochs: the learning rate ends its warmup at 100% of lr"),
    ("cosine", 2.5, 3, ""),
    ("onecycle", 5, 3, ""),  # one-cycle has no warmup_epochs
    ("constant", 5, 3, ""),
])
def test_the_warmup_note_comes_only_when_a_cosine_run_would_never_decay(schedule, warmup, epochs, note, capsys):
    train._note_long_warmup(tiny_config(schedule=schedule, warmup_epochs=warmup, epochs=epochs))
    out = capsys.readouterr().out
    assert (note in out) if note else out == ""


@pytest.mark.parametrize("device, overrides, seconds, minutes", [
    ("cpu", {}, 80.0, 21),  # 16 epochs of 80 s: 21.3 minutes
    ("cpu", {"epochs": 8}, 160.0, 21),
    ("cpu", {}, 75.0, None),  # exactly 20 minutes: within the budget
    ("cuda", {}, 80.0, None),
    ("cpu", {"profile": "gpu"}, 80.0, None),  # 120 epochs: the gpu profile was not made for a CPU
    ("cpu", {"model": "mlp"}, 80.0, None),
])
def test_a_slow_first_cpu_epoch_names_the_recipe_that_trains_within_20_minutes(device, overrides, seconds, minutes,
                                                                                 capsys):
    cfg = config.resolve(profile=overrides.pop("profile", "cpu"), overrides=overrides,
                         model=overrides.pop("model", "cnn"))
    train._note_slow_cpu(cfg, torch.device(device), seconds)
    out = capsys.readouterr().out
    if minutes is None:
        assert out == ""
    else:
        assert (f"note: at {seconds:.0f} s an epoch, the {cfg.epochs} epochs take about {minutes} minutes; to train "
                "within 20 on this machine, start again in a new --out folder with --set fit_minutes=20 --set "
                "widths=16,32,64,128 --set schedule=onecycle") in out


def test_a_run_notes_a_slow_first_epoch_once_and_not_when_fit_minutes_sized_it(tiny_csv, tmp_path, monkeypatch,
                                                                                 capsys):
    each_epoch_takes(700.0, monkeypatch)  # 2 epochs: 23 minutes
    train.train(tiny_csv, tmp_path / "slow", tiny_config(epochs=2, train_limit=64), progress=True)
    assert capsys.readouterr().out.count("note: at 700 s an epoch, the 2 epochs take about 23 minutes") == 1
    calls = itertools.count()  # fit_minutes reads the clock too: every reading 700 s on, so an epoch takes 700 s
    monkeypatch.setattr(train, "time", types.SimpleNamespace(perf_counter=lambda: 700.0 * next(calls)))
    train.train(tiny_csv, tmp_path / "fitted", tiny_config(epochs=2, train_limit=64, fit_minutes=50), progress=True)
    out = capsys.readouterr().out  # the start's timing (1,400 s an epoch) and the first epoch both size 2 epochs
    assert "the first epoch took 700.0 s, so 2 of 2 epochs fit" in out and "note: at" not in out


def test_an_out_folder_holding_another_models_evaluation_is_never_written_over(trained_run, tiny_csv, tmp_path):
    run, _ = trained_run
    other = tmp_path / "other"
    train.train(tiny_csv, other, tiny_config(epochs=1, train_limit=64, seed=5), progress=False)
    evaluate(run, out=tmp_path / "mine")
    evaluate(run, checkpoint="last", tta=True, out=tmp_path / "mine")  # a re-run replaces its own
    before = (tmp_path / "mine" / "predictions.csv").read_bytes()
    with pytest.raises(FerkitError, match=r"--out .*mine: holds the evaluation of cnn \(.*cnn\), not of the run .*other"):
        evaluate(other, out=tmp_path / "mine")
    with pytest.raises(FerkitError, match=r"mine: holds the evaluation of cnn .*not of an ensemble of .*other"):
        ensemble([other], tmp_path / "mine")
    ensemble([other, tmp_path / "mine"], tmp_path / "pair")
    ensemble([run, other], tmp_path / "pair")  # an ensemble grows or changes in its folder
    with pytest.raises(FerkitError, match="pair: holds the evaluation of ensemble of 2, not of the run"):
        evaluate(run, out=tmp_path / "pair")  # one model never replaces an ensemble
    ensemble([run], tmp_path / "mine")  # one of its members' evaluation may become the ensemble's
    (tmp_path / "pair" / "metrics.json").write_text("{")
    with pytest.raises(FerkitError, match="pair: holds an evaluation whose metrics.json cannot be read"):
        ensemble([run, other], tmp_path / "pair")
    assert (tmp_path / "mine" / "predictions.csv").read_bytes() != before


def test_class_weights_weigh_each_face_not_each_class_of_its_smoothed_target():
    """imbalance=weighted_loss scales a face's loss by its class's weight, so a face's best output stays
    its smoothed target. Weighing each class's term instead (cross_entropy's weight=) asked every face
    for w_c-fold shares of the smoothing's 0.1/7: 18% Disgust on a Happy face at imbalance_power 1."""
    cfg = tiny_config(augment=False, label_smoothing=0.1, batch_size=4, lr=1.0, schedule="constant",
                      channels_last=False)
    target = torch.full((7,), 0.1 / 7)
    target[3] += 0.9  # a Happy face's smoothed target

    class FreeLogits(torch.nn.Module):
        def __init__(self, start):
            super().__init__()
            self.logits = torch.nn.Parameter(start.clone())

        def forward(self, x):
            return self.logits.expand(len(x), 7)

    weight = torch.tensor([1.03, 9.41, 1.0, 0.57, 0.85, 1.29, 0.83])  # (max/size)^1 on FER2013's Training
    x, y = torch.zeros(4, 1, 48, 48, dtype=torch.uint8), torch.full((4,), 3)
    model = FreeLogits(target.log())
    row = train.train_one_epoch(model, torch.optim.SGD(model.parameters(), lr=1.0), x, y, torch.arange(4), range(1),
                                1, cfg, torch.Generator(), weight)
    torch.testing.assert_close(model.logits.detach(), target.log(), atol=1e-6, rtol=0)  # the target is the optimum
    assert row["train_loss"] == pytest.approx(0.57 * float(-(target * target.log()).sum()), rel=1e-5)
    # without smoothing and mixing: cross_entropy's own class weighting, as before
    logits = torch.randn(4, 7)
    model = FreeLogits(logits[0])
    row = train.train_one_epoch(model, torch.optim.SGD(model.parameters(), lr=0.0), x, torch.tensor([0, 1, 3, 3]),
                                torch.arange(4), range(1), 1, tiny_config(augment=False, label_smoothing=0.0,
                                                                          batch_size=4, channels_last=False),
                                torch.Generator(), weight)
    expected = torch.nn.functional.cross_entropy(logits[:1].expand(4, 7), torch.tensor([0, 1, 3, 3]), weight=weight,
                                                 reduction="sum") / 4
    assert row["train_loss"] == pytest.approx(float(expected), rel=1e-5)


def test_the_cnn_without_batch_norm_learns(tiny_csv, tmp_path):
    """The no-batch-norm ablation of the cpu profile's 8 convs learns (at PyTorch's default init its logits
    barely depended on the face and it never left the majority class)."""
    info = train.train(tiny_csv, tmp_path / "r", tiny_config(widths="16,32,96,192", batch_norm=False, augment=False,
                                                             epochs=3, lr=0.01, imbalance="none"), progress=False)
    history = train.read_history(tmp_path / "r" / "history.csv")
    assert info["epochs_run"] == 3 and history[-1]["val_acc"] > 0.5


def test_sgd_takes_momentum_zero_that_the_config_allows():
    for momentum, nesterov in ((0.0, False), (0.9, True)):
        optimizer = train.make_optimizer(get_model("cnn", widths=[4]), tiny_config(momentum=momentum))
        assert optimizer.param_groups[0]["momentum"] == momentum and optimizer.param_groups[0]["nesterov"] == nesterov


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_batch_norm_and_biases_may_go_without_weight_decay(optimizer):
    model = get_model("cnn", widths=[4, 8])
    groups = train.make_optimizer(model, tiny_config(optimizer=optimizer, decay_norm_and_bias=False)).param_groups
    vectors = {id(p) for module in model.modules() if isinstance(module, torch.nn.BatchNorm2d)
               for p in module.parameters()} | {id(model.classifier.bias)}
    assert [group["weight_decay"] for group in groups] == [tiny_config().weight_decay, 0.0]
    assert {id(p) for p in groups[1]["params"]} == vectors and sum(len(g["params"]) for g in groups) == \
        len(list(model.parameters()))
    whole = train.make_optimizer(model, tiny_config(optimizer=optimizer))  # the default: one group
    assert len(whole.param_groups) == 1 and len(whole.param_groups[0]["params"]) == len(list(model.parameters()))
    assert type(whole) is {"sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}[optimizer]


def test_an_out_folder_is_owned_by_the_run_it_evaluated_not_by_a_relative_path_or_a_folder(trained_run, tiny_csv,
                                                                                           tmp_path, monkeypatch):
    """metrics.json's `run` is as typed: read from another working folder it named another run, whose
    evaluation then replaced this one's; and the same models moved, or as runs instead of their saved
    evaluations, were refused."""
    run, _ = trained_run
    for place in ("a", "b"):
        (tmp_path / place).mkdir()
    train.train(tiny_csv, tmp_path / "b" / "r", tiny_config(epochs=1, train_limit=64, seed=5), progress=False)
    shutil.copytree(run, tmp_path / "a" / "r")
    monkeypatch.chdir(tmp_path / "a")
    evaluate("r", out=tmp_path / "e")
    monkeypatch.chdir(tmp_path / "b")
    with pytest.raises(FerkitError, match="holds the evaluation of cnn"):
        evaluate("r", out=tmp_path / "e")  # another run, also typed "r"
    evaluate(tmp_path / "a" / "r", checkpoint="last", out=tmp_path / "e")  # the same run, typed otherwise
    evaluate(tmp_path / "a" / "r", out=tmp_path / "e")
    ensemble([tmp_path / "e"], tmp_path / "pair", data=tiny_csv)
    ensemble([tmp_path / "a" / "r"], tmp_path / "pair")  # the same model, from its run
    shutil.move(tmp_path / "a" / "r", tmp_path / "a" / "moved")
    ensemble([tmp_path / "a" / "moved"], tmp_path / "pair")  # the same model, moved


def test_only_epochs_inside_the_cosine_warmup_or_a_constant_rate_are_warmup_only():
    cosine = tiny_config(schedule="cosine", warmup_epochs=1.5)
    assert [train.warmup_only(cosine, 10, epochs) for epochs in (1, 2)] == [True, False]  # 15 warmup steps
    assert not train.warmup_only(tiny_config(schedule="onecycle"), 10)
    assert train.warmup_only(tiny_config(schedule="constant"), 10, 5)
    shortened = tiny_config(schedule="cosine", warmup_epochs=1.5, epochs=2, shortened="1,3")  # after 1 of 3
    assert not train.warmup_only(shortened, 10)  # a cut schedule is no longer the plain one


def test_fit_minutes_trains_the_epochs_that_fit_and_saves_them(tiny_csv, tmp_path, monkeypatch):
    """fit_minutes sizes the epochs from a timing on a copy of the network: with room for every epoch the
    run is the very run without it, tensor for tensor; with room for fewer, config.yaml holds the epochs
    chosen, so that the saved config repeats the run exactly."""
    cfg = dict(epochs=3, train_limit=96, mixup=0.4)
    train.train(tiny_csv, tmp_path / "plain", tiny_config(**cfg), progress=False)
    info = train.train(tiny_csv, tmp_path / "roomy", tiny_config(**cfg, fit_minutes=600), progress=False)
    assert info["fit_minutes"]["epochs"] == info["fit_minutes"]["epochs_asked"] == 3
    assert info["fit_minutes"]["epoch_seconds"] > 0 and info["epochs_run"] == 3
    assert 0 < info["fit_minutes"]["timing_seconds"] < 60  # the timing's own cost, in seconds
    assert same_last_weights(tmp_path / "plain", tmp_path / "roomy")

    # a machine on which the timing at the start makes room for 3 epochs, but the first epoch for 2 only: the
    # run trains 2, its schedule ends with them, and it is the very run of 2 epochs (the first is warmup alone)
    fits = iter([3, 2])
    monkeypatch.setattr(train, "epochs_that_fit", lambda minutes, seconds, asked: next(fits))
    info = train.train(tiny_csv, tmp_path / "short", tiny_config(**cfg, fit_minutes=2), progress=False)
    assert info["fit_minutes"]["epochs_timed"] == 3 and info["fit_minutes"]["first_epoch_seconds"] > 0
    assert info["fit_minutes"]["epochs"] == 2 and info["epochs_run"] == 2
    saved = config.load(tmp_path / "short" / "config.yaml")
    assert (saved.epochs, saved.fit_minutes) == (2, 0)
    history = train.read_history(tmp_path / "short" / "history.csv")
    # the last step's learning rate is a 2-epoch schedule's, not the one a cut 3-epoch schedule would have had
    steps = train.steps_per_epoch(96, saved.batch_size)
    assert history[-1]["lr"] == train.learning_rate(saved, 2 * steps - 1, 2 * steps, steps)
    assert history[-1]["lr"] < train.learning_rate(saved, 2 * steps - 1, 3 * steps, steps)
    train.train(tiny_csv, tmp_path / "again", saved, progress=False)
    assert same_last_weights(tmp_path / "short", tmp_path / "again")

    # one-cycle's first steps depend on the number of epochs: only the timing at the start sizes it
    fits = iter([2])
    info = train.train(tiny_csv, tmp_path / "onecycle", tiny_config(**cfg, fit_minutes=2, schedule="onecycle"),
                       progress=False)
    assert info["epochs_run"] == 2 and "first_epoch_seconds" not in info["fit_minutes"]


def test_a_run_cut_short_runs_the_rest_of_its_schedule_faster():
    """shortened=(after, planned): the planned rates up to the cut, then the rest of the planned schedule,
    run faster to end with the steps left: no jump, the same end, and a one-cycle run cut during its ramp
    (which a cut during the ramp of a run sized to its minutes' edge is) still reaches its peak."""
    steps = 10
    for schedule in ("cosine", "onecycle"):
        planned = tiny_config(epochs=8, schedule=schedule)
        cut = tiny_config(epochs=5, schedule=schedule, shortened="3,8")
        rates = [train.learning_rate(cut, s, 5 * steps, steps) for s in range(5 * steps)]
        assert rates[:31] == [train.learning_rate(planned, s, 8 * steps, steps) for s in range(31)]  # no jump
        assert all(a > b for a, b in zip(rates[30:], rates[31:])) and rates[-1] < 0.01 * rates[30]
    # 15 epochs planned, cut after the first to 14: one-cycle's peak, at 30% of the steps, still comes
    planned = tiny_config(epochs=15, schedule="onecycle")
    cut = tiny_config(epochs=14, schedule="onecycle", shortened="1,15")
    rates = [train.learning_rate(cut, s, 14 * steps, steps) for s in range(14 * steps)]
    assert rates[:11] == [train.learning_rate(planned, s, 15 * steps, steps) for s in range(11)]
    assert max(rates) == pytest.approx(cut.lr, rel=0.02) and 30 < rates.index(max(rates)) < 50
    assert rates[-1] < 0.01 * cut.lr
    with pytest.raises(FerkitError, match="'shortened': 5,8 should be empty or pairs of epochs"):
        tiny_config(epochs=5, shortened="5,8")
    # odd, out of order, twice after one epoch, at an end, past the end
    for malformed in ("3", "3,8,2,5", "3,8,3,7", "3,8,6,6", "3,8,4,9,7,5"):
        with pytest.raises(FerkitError, match=f"'shortened': {malformed} should be"):
            tiny_config(epochs=6, shortened=malformed)


def test_other_epochs_for_a_saved_shortened_config_are_refused_unless_its_cuts_go_too(tmp_path):
    """`--config RUN/config.yaml --set epochs=20` replayed RUN's first epochs on its old schedule, then went on
    with 20: a schedule no one asked for."""
    saved = tmp_path / "config.yaml"
    config.save(tiny_config(epochs=2, shortened="1,3"), saved)
    with pytest.raises(FerkitError, match=re.escape(f"--set epochs=5: {saved}, line ") + r"\d+: shortened=1,3 "
                                          "records how fit_minutes changed an earlier run's epochs, whose schedule "
                                          "this run would replay; add --set shortened= \\(empty\\) for a run of 5"):
        config.resolve(config_file=saved, overrides=["epochs=5"])
    assert config.resolve(config_file=saved, overrides=["epochs=5", "shortened="]).shortened == ()
    assert config.resolve(config_file=saved).shortened == (1, 3)  # the run as it was, replayed


def test_a_saved_shortened_config_is_refused_with_fit_minutes():
    """`--config RUN/config.yaml --set fit_minutes=...` kept RUN's cuts while fit_minutes sized the run again: to 1
    epoch here, saving a config.yaml that its own resume and --config refused (after 1 is no cut of 1 epoch)."""
    with pytest.raises(FerkitError, match="--set: config key 'shortened': 1,3 records how fit_minutes changed an "
                                          "earlier run's epochs, but fit_minutes=0.001 sizes this run again"):
        tiny_config(epochs=2, shortened="1,3", fit_minutes=0.001)
    assert tiny_config(epochs=2, shortened="", fit_minutes=0.001).shortened == ()


def test_a_run_whose_epochs_change_twice_spreads_the_rest_of_its_schedule_each_time():
    """shortened=(after, planned, after, planned): cut from 14 to 9 epochs after epoch 6, lengthened to 11 after
    epoch 7 (the measured run below): the rates of the single cut until the second change, then the rest of the
    first plan spread over the steps left, without a jump, never rising, and down to the same end."""
    steps = 10
    once = tiny_config(epochs=9, shortened="6,14")
    twice = tiny_config(epochs=11, shortened="6,14,7,9")
    rates = [train.learning_rate(twice, s, 11 * steps, steps) for s in range(11 * steps)]
    assert rates[:71] == [train.learning_rate(once, s, 9 * steps, steps) for s in range(71)]
    decay = rates[steps:]  # after the one-epoch warmup
    assert all(a >= b for a, b in zip(decay, decay[1:])) and rates[-1] < 0.01 * rates[0]
    jumps = [a - b for a, b in zip(decay, decay[1:])]
    assert max(jumps[60:]) < 1.01 * max(jumps[:60]) + 1e-12  # no step at either change bigger than cosine's steepest
    # lengthened, the decay slows: the rates after epoch 7 stay above the once-cut run's
    assert all(a > b for a, b in zip(rates[71:90], [train.learning_rate(once, s, 9 * steps, steps)
                                                    for s in range(71, 90)]))


def test_fit_minutes_guard_keeps_the_epochs_that_still_fit():
    """At the slower of the mean and the latest epoch: a run whose epochs slow from 81 to 90 s (as one did on a
    shared 2-core machine) keeps 13 of its 14 planned epochs in 20 minutes; a steady one keeps all 14."""
    assert train.epochs_within_budget(20, [81.4, 87.0, 90.0], 14, least=4) == (13, 90.0)
    assert train.epochs_within_budget(20, [83.1, 84.0], 14, least=3) == (14, 84.0)
    assert train.epochs_within_budget(20, [1300.0], 14, least=2) == (2, 1300.0)  # one more epoch, to decay
    # the measured run of a machine busy for 4 minutes: epoch 6 took 190 s, epoch 7 112 s, then 80 again; sized
    # to 14, the guard cuts to 9, then takes back 2 and 1 as the pace recovers
    busy, planned, kept = [82.0, 78.3, 75.3, 79.3, 78.3, 189.9], 14, []
    for after in ([], [111.8], [111.8, 79.7], [111.8, 79.7, 83.6]):
        planned, _ = train.epochs_within_budget(20, busy + after, planned, least=len(busy + after) + 1, sized=14)
        kept.append(planned)
    assert kept == [9, 11, 12, 12]
    # at its budget's edge (14 epochs of about 86 s are 20.1 minutes), a run cut to 13 keeps 13: after epoch 2,
    # 14 fit at the pace, but not at a pace 5% slower, so the run does not swing between 13 and 14
    edge = [87.2, 83.2]
    assert train.epochs_within_budget(20, edge, 14, least=3)[0] == 14
    assert train.epochs_within_budget(20, edge, 13, least=3, sized=14)[0] == 13
    assert train.epochs_within_budget(20, edge, 12, least=3, sized=14)[0] == 13


def test_fit_minutes_cuts_a_run_that_falls_behind_and_the_saved_config_repeats_it(tiny_csv, tmp_path, monkeypatch,
                                                                                   capsys):
    """Planned for 4 epochs, a run that falls behind its minutes after its first epoch ends after its second:
    one-cycle, whose rates depend on the epochs, records the cut in config.yaml, which repeats the run; a cosine
    run still in its warmup changes its epochs outright and is the very run of 3 epochs."""
    monkeypatch.setattr(train, "epochs_that_fit", lambda minutes, seconds, asked: 4)
    cfg = dict(epochs=6, train_limit=96, fit_minutes=0.0001)  # 6 ms: every epoch is behind time
    info = train.train(tiny_csv, tmp_path / "onecycle", tiny_config(**cfg, schedule="onecycle"), progress=False)
    assert info["epochs_run"] == 2 and info["fit_minutes"]["epochs"] == 2
    assert [(c["after_epoch"], c["from_epochs"], c["epochs"]) for c in info["fit_minutes"]["shortened"]] == [(1, 4, 2)]
    saved = config.load(tmp_path / "onecycle" / "config.yaml")
    assert (saved.epochs, saved.shortened, saved.fit_minutes) == (2, (1, 4), 0)
    history = train.read_history(tmp_path / "onecycle" / "history.csv")
    steps = train.steps_per_epoch(96, saved.batch_size)  # the rate comes down to 0 at the new end, not the planned
    assert history[-1]["lr"] == train.learning_rate(saved, 2 * steps - 1, 2 * steps, steps)
    assert history[-1]["lr"] < 0.5 * train.learning_rate(tiny_config(**{**cfg, "epochs": 4}, schedule="onecycle"),
                                                         2 * steps - 1, 4 * steps, steps)
    train.train(tiny_csv, tmp_path / "again", saved, progress=False)
    assert same_last_weights(tmp_path / "onecycle", tmp_path / "again")

    info = train.train(tiny_csv, tmp_path / "warmup", tiny_config(**cfg, warmup_epochs=2))
    assert info["epochs_run"] == 3 and info["fit_minutes"]["shortened"][0]["after_epoch"] == 2
    assert re.search(r"behind time after epoch 2 \(.*\), so the run ends after epoch 3 instead of 4\n",
                     capsys.readouterr().out)  # exact: nothing is spread
    saved = config.load(tmp_path / "warmup" / "config.yaml")
    assert (saved.epochs, saved.shortened) == (3, ())
    train.train(tiny_csv, tmp_path / "plain", tiny_config(epochs=3, train_limit=96, warmup_epochs=2), progress=False)
    assert same_last_weights(tmp_path / "warmup", tmp_path / "plain")


def test_fit_minutes_takes_back_epochs_when_a_run_catches_up_and_the_saved_config_repeats_it(tiny_csv, tmp_path,
                                                                                             monkeypatch, capsys):
    """A run sized to 6 epochs that falls behind after its first (cut to 3) and catches up after its second
    (back to 5) trains 5 epochs; the guard is asked each time with the epochs then planned and the 6 it was sized
    to, its ceiling; config.yaml records both changes and repeats the run tensor for tensor. The progress bar
    follows: it ends full, at the 5 epochs' steps."""
    monkeypatch.setattr(train, "epochs_that_fit", lambda minutes, seconds, asked: 6)
    verdicts, asked = iter([3, 5, 5, 5]), []

    def budget(minutes, seconds, planned, least, sized):
        asked.append((planned, sized))
        return next(verdicts), 1.0

    monkeypatch.setattr(train, "epochs_within_budget", budget)
    cfg = tiny_config(epochs=8, train_limit=96, fit_minutes=1, schedule="onecycle")
    info = train.train(tiny_csv, tmp_path / "run", cfg)
    assert info["epochs_run"] == 5 and asked == [(6, 6), (3, 6), (5, 6), (5, 6)]
    shown = capsys.readouterr()
    said = re.findall(r"fit_minutes 1: (.*)", shown.out)
    assert re.fullmatch(r"behind time after epoch 1 \([\d.]+ minutes, 1.0 s an epoch\), so the run ends after epoch 3 "
                        r"instead of 6, the rest of its learning-rate schedule spread over them", said[-2])
    assert re.fullmatch(r"back on time after epoch 2 \([\d.]+ minutes, 1.0 s an epoch\), so the run goes on to epoch 5 "
                        r"instead of 3, the rest of its learning-rate schedule spread over them", said[-1])
    assert [(c["after_epoch"], c["from_epochs"], c["epochs"]) for c in info["fit_minutes"]["shortened"]] == \
        [(1, 6, 3), (2, 3, 5)]
    saved = config.load(tmp_path / "run" / "config.yaml")
    assert (saved.epochs, saved.shortened, saved.fit_minutes) == (5, (1, 6, 2, 3), 0)
    history = train.read_history(tmp_path / "run" / "history.csv")
    steps = train.steps_per_epoch(96, saved.batch_size)
    assert [row["lr"] for row in history] == [train.learning_rate(saved, (e + 1) * steps - 1, 5 * steps, steps)
                                              for e in range(5)]
    assert re.findall(r"(\d+)/(\d+) \[", shown.err)[-1] == (str(5 * steps), str(5 * steps))
    train.train(tiny_csv, tmp_path / "again", saved, progress=False)
    assert same_last_weights(tmp_path / "run", tmp_path / "again")


def test_fit_minutes_takes_back_what_a_slow_first_epoch_cut(tiny_csv, tmp_path, monkeypatch):
    """A GPU's first epoch also builds its kernels (on an H200, 1.4-2.0 times the median epoch): sized to 6 epochs
    at the start and to 3 by its first epoch, a run whose pace then recovers is lengthened up to the start's 6, not
    held at 3. Still in its warmup, the change is exact: the run is the very run of 5 epochs."""
    fits, verdicts, asked, guard = iter([6, 3]), iter([5, 5, 5]), [], train.epochs_within_budget
    monkeypatch.setattr(train, "epochs_that_fit", lambda minutes, seconds, asked: next(fits))

    def budget(minutes, seconds, planned, least, sized):
        asked.append((planned, sized))
        return next(verdicts), 1.0

    monkeypatch.setattr(train, "epochs_within_budget", budget)
    cfg = dict(train_limit=96, warmup_epochs=2)
    info = train.train(tiny_csv, tmp_path / "run", tiny_config(**cfg, epochs=8, fit_minutes=1), progress=False)
    assert info["epochs_run"] == 5 and asked[0] == (3, 6)
    assert info["fit_minutes"]["epochs_timed"] == 6 and info["fit_minutes"]["shortened"][0]["epochs"] == 5
    saved = config.load(tmp_path / "run" / "config.yaml")
    assert (saved.epochs, saved.shortened) == (5, ())
    train.train(tiny_csv, tmp_path / "plain", tiny_config(**cfg, epochs=5), progress=False)
    assert same_last_weights(tmp_path / "run", tmp_path / "plain")
    # the guard itself, on the pace of the four H200 runs scaled to one (3.3 s, then 1.64 s), 7.5 minutes: 173 of
    # the 264 epochs the start allowed, where the first epoch's 136 were the ceiling before
    assert guard(7.5, [3.3, 1.64], 136, least=3, sized=264)[0] == 173


def test_a_resumed_run_keeps_to_its_minutes(tiny_csv, tmp_path, monkeypatch):
    """The guard goes on after a resume, from run.json's minutes: a run killed after its first epoch, on a
    machine where it is behind time, is cut after its second."""
    monkeypatch.setattr(train, "epochs_that_fit", lambda minutes, seconds, asked: 5)
    real_budget = train.epochs_within_budget
    monkeypatch.setattr(train, "epochs_within_budget", lambda minutes, seconds, planned, least, sized: (planned, 1.0))
    real_write = train.write_history

    def interrupt(path, history):
        real_write(path, history)
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "write_history", interrupt)
    cfg = tiny_config(epochs=6, train_limit=96, fit_minutes=0.0001, schedule="onecycle")
    with pytest.raises(KeyboardInterrupt):
        train.train(tiny_csv, tmp_path / "run", cfg, progress=False)
    monkeypatch.setattr(train, "write_history", real_write)
    monkeypatch.setattr(train, "epochs_within_budget", real_budget)
    info = train.train(tiny_csv, tmp_path / "run", resume=True, progress=False)
    assert info["epochs_run"] == 3 and info["fit_minutes"]["shortened"][0]["after_epoch"] == 2
    assert config.load(tmp_path / "run" / "config.yaml").shortened == (2, 5)


def test_fit_epochs_scales_with_the_time_of_a_step():
    """The epochs that fit are the minutes over the timed seconds of an epoch: steps and validation."""
    model = get_model("cnn", widths=[4, 8])
    x = torch.zeros(64, 1, 48, 48, dtype=torch.uint8)
    y = torch.zeros(64, dtype=torch.long)
    cfg = tiny_config(epochs=100, batch_size=16, eval_batch_size=8)
    val = np.zeros((16, 48, 48), np.uint8), np.zeros(16, np.int64)
    fitted = train.fit_epochs(1, model, cfg, x, y, *val)
    # epoch_seconds is recorded to 0.01 s, fit_epochs divides by the time unrounded: either end of the rounding
    fewest, most = (max(1, min(100, int(60 / (fitted["epoch_seconds"] + d)))) for d in (0.005, -0.005))
    assert fewest <= fitted["epochs"] <= most and fitted["epochs_asked"] == 100
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train.fit_epochs(1, model, cfg, x, y, *val)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the copy trained, not the model


def test_fit_epochs_doubles_the_timed_steps_until_a_timing_takes_two_seconds_and_adds_the_validation(monkeypatch):
    """On a clock where a step takes 0.3 s and a validated face 0.01 s: 4 steps (1.2 s) are too short a timing, 8
    (2.4 s) are enough, and an epoch is its 16 steps plus its 16 faces."""
    clock = [0.0]

    def step(trial, optimizer, x, y, order, steps, *rest):
        clock[0] += 0.3 * len(steps)

    def validate(trial, images, labels, device, cfg):
        clock[0] += 0.01 * len(images)

    monkeypatch.setattr(train.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(train, "train_one_epoch", step)
    monkeypatch.setattr(train, "validate", validate)
    x, y = torch.zeros(256, 1, 48, 48, dtype=torch.uint8), torch.zeros(256, dtype=torch.long)
    val = np.zeros((16, 48, 48), np.uint8), np.zeros(16, np.int64)
    fitted = train.fit_epochs(1, get_model("cnn", widths=[4, 8]), tiny_config(epochs=100, batch_size=16), x, y, *val)
    assert fitted["timed_steps"] == 8 and fitted["epoch_seconds"] == pytest.approx(16 * 0.3 + 16 * 0.01)
    assert fitted["epochs"] == int(60 / 4.96)


def test_fit_minutes_trains_at_least_one_epoch_and_never_more_than_asked():
    assert train.epochs_that_fit(20, 100.0, 16) == 12
    assert train.epochs_that_fit(20, 60.0, 16) == 16
    assert train.epochs_that_fit(0.5, 100.0, 16) == 1  # a budget shorter than an epoch: no run of 0 epochs


def test_fit_minutes_names_a_warmup_longer_than_the_epochs_it_fitted(tiny_csv, tmp_path, monkeypatch, capsys):
    fits = iter([3, 1])
    monkeypatch.setattr(train, "epochs_that_fit", lambda minutes, seconds, asked: next(fits))
    train.train(tiny_csv, tmp_path / "run", tiny_config(epochs=3, train_limit=96, warmup_epochs=2, fit_minutes=2))
    out = capsys.readouterr().out
    assert "fit_minutes 2: 3 of 3 epochs fit (about" in out and "even one epoch takes longer" not in out
    assert "the first epoch took" in out and "warmup_epochs 2 is longer than the 1 epochs" in out
    monkeypatch.undo()  # a machine whose epoch takes 45 s, given half a minute
    monkeypatch.setattr(train, "fit_epochs", lambda *args: {"minutes": 0.5, "epochs_asked": 1, "epochs": 1,
                                                            "epoch_seconds": 45.0, "timing_seconds": 12.3})
    train.train(tiny_csv, tmp_path / "tight", tiny_config(epochs=1, train_limit=96, fit_minutes=0.5))
    assert ("fit_minutes 0.5: 1 of 1 epochs fit (about 45.0 s an epoch, timed in 12 s): even one epoch takes longer\n"
            in capsys.readouterr().out)
    monkeypatch.setattr(train, "fit_epochs", lambda *args: {"minutes": 1, "epochs_asked": 9, "epochs": 9,
                                                            "epoch_seconds": 6.67, "timing_seconds": 0.1})
    train.train(tiny_csv, tmp_path / "fits", tiny_config(epochs=9, train_limit=64, fit_minutes=1))
    out = capsys.readouterr().out  # 9 epochs of 6.666 s fit a minute: their rounded 6.67 s must not say otherwise
    assert "fit_minutes 1: 9 of 9 epochs fit" in out and "even one epoch takes longer" not in out
