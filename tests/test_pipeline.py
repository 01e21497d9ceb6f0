"""`ferkit run`'s bookkeeping, with every stage replaced by a stand-in that records its call (fast;
test_predict.py's end-to-end test runs the real stages)."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest

from ferkit import config, data, evaluate, features, pipeline, report
from ferkit import train as ftrain
from ferkit.errors import FerkitError


class Broken(Exception):
    pass


@pytest.fixture
def stand_ins(monkeypatch):
    calls: list[tuple[str, object]] = []

    def fake_train(data_path, folder, cfg, resume=False, progress=True):
        calls.append(("train", Path(folder).name, cfg))
        (Path(folder) / "checkpoints").mkdir(parents=True, exist_ok=True)
        config.save(cfg, Path(folder) / "config.yaml")
        (Path(folder) / "checkpoints" / "best.pt").write_bytes(b"")

    def fake_evaluate(run, data=None, tta=False, **kwargs):
        calls.append(("evaluate", Path(run).name, tta))
        folder = Path(run) / "eval" / ("test-tta" if tta else "test")
        folder.mkdir(parents=True, exist_ok=True)
        accuracy = 0.5 if Path(run).name == "cnn" else 0.25
        (folder / "metrics.json").write_text(json.dumps({"accuracy": accuracy, "macro_f1": accuracy - 0.1}))

    state = {"features_fail": True}

    def written(folder: Path, *names: str) -> None:  # the files by which the study sees a stage's work
        Path(folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            (Path(folder) / name).write_text("{}")

    def fake_summarize(data_path, out):
        calls.append(("data", None, None))
        written(out, "summary.json")

    def fake_features(run, data_path, out, **kwargs):
        calls.append(("features", None, None))
        if state["features_fail"]:
            raise Broken
        written(out, "features.json")

    def fake_report(run, out, **kwargs):
        calls.append(("report", None, None))
        written(out, "report.pdf", "report.html", "report.md")
        return {"commands_left_out": False, "notes": []}

    monkeypatch.setattr(ftrain, "train", fake_train)
    monkeypatch.setattr(evaluate, "evaluate", fake_evaluate)
    monkeypatch.setattr(data, "summarize", fake_summarize)
    monkeypatch.setattr(features, "features", fake_features)
    monkeypatch.setattr(report, "build_report", fake_report)
    return calls, state


def test_a_failed_stage_is_not_recorded_and_the_resume_keeps_profile_and_settings(tiny_csv, tmp_path, monkeypatch,
                                                                                  stand_ins):
    calls, state = stand_ins
    out = tmp_path / "study"
    with pytest.raises(Broken):
        pipeline.run_study(tiny_csv, out, profile="cpu", cnn_overrides=["widths=4,8", "epochs=2"],
                           mlp_overrides=["hidden=32", "epochs=3"], progress=False)
    record = json.loads((out / "pipeline.json").read_text())
    assert list(record["stages"]) == ["data", "train_cnn", "evaluate_cnn", "train_mlp", "evaluate_mlp"]
    trained = {folder: cfg for kind, folder, cfg in calls if kind == "train"}
    assert (trained["cnn"].widths, trained["cnn"].epochs, trained["cnn"].augment) == ((4, 8), 2, True)
    assert (trained["mlp"].model, trained["mlp"].hidden, trained["mlp"].epochs, trained["mlp"].augment) == \
        ("mlp", (32,), 3, False)
    assert [c for c in calls if c[0] == "evaluate"] == [("evaluate", "cnn", False), ("evaluate", "cnn", True),
                                                        ("evaluate", "mlp", False), ("evaluate", "mlp", True)]
    # the resume, on a machine that would pick the gpu profile, keeps the study's cpu profile and runs
    # only the stages that did not finish
    monkeypatch.setattr(config, "auto_profile", lambda: "gpu")
    state["features_fail"] = False
    calls.clear()
    record = pipeline.run_study(tiny_csv, out, cnn_overrides=["widths=4,8", "epochs=2"],
                                mlp_overrides=["hidden=32", "epochs=3"], progress=False)
    assert [c[0] for c in calls] == ["features", "report"]
    assert record["profile"] == "cpu" and all(s["done"] for s in record["stages"].values())
    assert record["results"] == {"cnn_test_accuracy_tta": 0.5, "cnn_test_macro_f1_tta": 0.4,
                                 "mlp_test_accuracy_tta": 0.25, "mlp_test_macro_f1_tta": 0.15, "cnn_tta": None,
                                 "mlp_tta": None}
    # an evaluation whose files are gone, as in a study begun before the MLP was evaluated with TTA, is done again
    shutil.rmtree(out / "mlp" / "eval" / "test-tta")
    calls.clear()
    pipeline.run_study(tiny_csv, out, cnn_overrides=["widths=4,8", "epochs=2"], mlp_overrides=["hidden=32", "epochs=3"],
                       progress=False)
    assert calls == [("evaluate", "mlp", False), ("evaluate", "mlp", True), ("report", None, None)]  # shown anew


def test_a_study_stopped_before_its_mlp_refuses_other_mlp_settings(tiny_csv, tmp_path, monkeypatch, stand_ins):
    """The MLP not started yet took the new --mlp-set in silence, while the report replicates the study by the
    command that started it."""
    calls, state = stand_ins
    state["features_fail"] = False
    out = tmp_path / "study"
    settings = dict(profile="cpu", cnn_overrides=["widths=4,8", "epochs=1"], progress=False)
    stand_in = ftrain.train

    def stopped_at_the_mlp(data_path, folder, *args, **kwargs):  # as by a Ctrl-C as the MLP's stage begins
        if Path(folder).name == "mlp":
            raise KeyboardInterrupt
        return stand_in(data_path, folder, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(ftrain, "train", stopped_at_the_mlp)
        with pytest.raises(KeyboardInterrupt):
            pipeline.run_study(tiny_csv, out, mlp_overrides=["hidden=32"], **settings)
    assert not (out / "mlp").exists()
    with pytest.raises(FerkitError, match=re.escape(f"{out} was started with other settings for its mlp: hidden [32] "
                                                    "(now [64]). Resume it with the --mlp-set and --profile")):
        pipeline.run_study(tiny_csv, out, mlp_overrides=["hidden=64"], **settings)
    calls.clear()
    pipeline.run_study(tiny_csv, out, mlp_overrides=["hidden=32", "threads=1"], **settings)  # where it runs may change
    assert [call[:2] for call in calls if call[0] == "train"] == [("train", "mlp")]
    record = json.loads((out / "pipeline.json").read_text())
    (out / "pipeline.json").write_text(json.dumps(dict(record, asked=["edited"])))  # by hand: read as unrecorded
    assert pipeline.run_study(tiny_csv, out, mlp_overrides=["hidden=32"], **settings)["asked"] == record["asked"]


@pytest.mark.parametrize("gone, redone", [("report", ["report"]), ("report/report.html", ["report"]),
                                          ("features", ["features", "report"]), ("data", ["data"]),
                                          ("cnn", ["train", "evaluate", "evaluate", "features", "report"]),
                                          ("mlp", ["train", "evaluate", "evaluate", "report"]),
                                          # removed to save space: `ferkit train` refuses the run's folder then
                                          ("cnn/checkpoints", []), ("mlp/checkpoints", [])])
def test_a_finished_stage_whose_files_are_gone_is_done_again(tiny_csv, tmp_path, stand_ins, gone, redone):
    """A deleted report was skipped as done, and the command then named its report.pdf, which was not there."""
    calls, state = stand_ins
    state["features_fail"] = False
    out = tmp_path / "study"
    settings = dict(profile="cpu", cnn_overrides=["widths=4,8", "epochs=1"], mlp_overrides=["hidden=8", "epochs=1"],
                    progress=False)
    pipeline.run_study(tiny_csv, out, **settings)
    if (out / gone).is_dir():
        shutil.rmtree(out / gone)
    else:
        (out / gone).unlink()
    calls.clear()
    pipeline.run_study(tiny_csv, out, **settings)
    assert [call[0] for call in calls] == redone
    assert (out / "report" / "report.pdf").is_file() and (out / "data" / "summary.json").is_file()


def test_a_resumed_study_removes_what_a_kill_in_an_atomic_write_left(tiny_csv, tmp_path, stand_ins):
    calls, state = stand_ins
    out = tmp_path / "study"
    settings = dict(profile="cpu", cnn_overrides=["widths=4,8", "epochs=1"], mlp_overrides=["hidden=8", "epochs=1"],
                    progress=False)
    with pytest.raises(Broken):
        pipeline.run_study(tiny_csv, out, **settings)
    stale = [out / "features" / "maps" / ".activation_maps.png.k3j2x9.tmp", out / "report" / ".report.pdf.a1b2c3.tmp",
             out / "cnn" / "eval" / "test-tta" / ".metrics.json.z8y7w6.tmp"]
    kept = out / "features" / ".notes.tmp.txt"  # no temporary's name
    for path in (*stale, kept):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("half of it")
    state["features_fail"] = False
    pipeline.run_study(tiny_csv, out, **settings)
    assert [path for path in stale if path.exists()] == [] and kept.exists()


def test_mlp_settings_are_named_as_such_and_may_be_a_dict(tiny_csv, tmp_path, monkeypatch):
    with pytest.raises(config.FerkitError, match="--mlp-set: unknown config key 'epoch'"):
        pipeline.run_study(tiny_csv, tmp_path / "study", mlp_overrides=["epoch=2"])
    seen = []
    monkeypatch.setattr(pipeline, "_require_same_config", lambda folder, cfg, option: seen.append(cfg))
    real_output_folder = pipeline.output_folder

    def output_folder(path, create=True):
        if create:
            raise RuntimeError("stop")
        return real_output_folder(path, create=False)

    monkeypatch.setattr(pipeline, "output_folder", output_folder)
    with pytest.raises(RuntimeError, match="stop"):  # stopped once both configs are resolved
        pipeline.run_study(tiny_csv, tmp_path / "study", cnn_overrides={"epochs": 2},
                           mlp_overrides={"hidden": (8, 4), "augment": True})
    assert [(c.model, c.epochs) for c in seen] == [("cnn", 2), ("mlp", seen[1].epochs)]
    assert seen[1].hidden == (8, 4) and seen[1].augment  # a user may turn the MLP's augmentation back on


def test_the_mlp_trained_without_augmentation_is_tested_on_flips_only(tiny_csv, tmp_path, stand_ins):
    """The gpu profile's shifted crops are views the MLP never trained on (they cut its macro F1 from 0.45 to 0.38)."""
    calls, state = stand_ins
    state["features_fail"] = False
    pipeline.run_study(tiny_csv, tmp_path / "study", profile="gpu", cnn_overrides=["widths=4,8", "epochs=1"],
                       mlp_overrides=["hidden=8", "epochs=1"], progress=False)
    trained = {folder: cfg for kind, folder, cfg in calls if kind == "train"}
    assert (trained["cnn"].tta, trained["mlp"].tta, trained["mlp"].augment) == ("crops", "flip", False)


def test_a_study_sized_by_fit_minutes_resumes_with_the_same_command(tiny_csv, tmp_path):
    """config.yaml holds the epochs fit_minutes chose; the study's resume compares what was asked for."""
    run = tmp_path / "study" / "cnn"
    cfg = config.resolve(overrides={"widths": "8,16", "epochs": 3, "train_limit": 64, "fit_minutes": 600})
    ftrain.train(tiny_csv, run, cfg, progress=False)
    assert config.load(run / "config.yaml").fit_minutes == 0
    pipeline._require_same_config(run, cfg, "--set")  # the same settings: no complaint
    # cut short by fit_minutes' guard: config.yaml holds the cut too, which the command did not ask for
    config.save(dataclasses.replace(config.load(run / "config.yaml"), epochs=2, shortened=(1, 3)), run / "config.yaml")
    pipeline._require_same_config(run, cfg, "--set")
    with pytest.raises(config.FerkitError, match="fit_minutes 600.0 \\(now 5.0\\)"):
        pipeline._require_same_config(run, config.resolve(overrides={"widths": "8,16", "epochs": 3, "train_limit": 64,
                                                                     "fit_minutes": 5}), "--set")


def test_a_study_resumes_with_another_device_or_thread_count_but_not_other_settings(tmp_path):
    """Where a run executes is not what it computes: a study started with 2 threads on the CPU may go on with 1,
    or on another device; other epochs would be quietly ignored, so they stop it."""
    run = tmp_path / "study" / "cnn"
    run.mkdir(parents=True)
    config.save(config.resolve(overrides={"epochs": 3, "threads": 2, "device": "cpu"}), run / "config.yaml")
    for place in ({"threads": 1, "device": "cpu"}, {"threads": 2, "device": "auto"}):
        pipeline._require_same_config(run, config.resolve(overrides={"epochs": 3, **place}), "--set")
    with pytest.raises(config.FerkitError, match="started with other settings: epochs 3 \\(now 4\\)\\. Resume"):
        pipeline._require_same_config(run, config.resolve(overrides={"epochs": 4, "threads": 1}), "--set")


@pytest.mark.parametrize("cnn_overrides, mlp_overrides, message", [
    (["hidden=64"], None, "--set hidden=...: shapes the mlp, and --set sets the study's cnn; give it to --mlp-set"),
    (None, ["widths=4,8"], "--mlp-set widths=...: shapes the cnn, and --mlp-set sets the study's mlp; give it to "
                           "--set"),
])
def test_a_key_given_to_the_other_models_option_names_the_right_one(tiny_csv, tmp_path, stand_ins, cnn_overrides,
                                                                    mlp_overrides, message):
    """The refusal of ferkit train ('or set model=mlp') was advice the study then refused too."""
    with pytest.raises(FerkitError, match=re.escape(message)):
        pipeline.run_study(tiny_csv, tmp_path / "study", profile="cpu", cnn_overrides=cnn_overrides,
                           mlp_overrides=mlp_overrides, progress=False)
    assert stand_ins[0] == []
