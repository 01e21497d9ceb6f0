"""Every option of the `ferkit` command reaches the function it calls, and what the function returns
or raises is printed as it should be (the functions are replaced by stand-ins that record their
arguments; the other test files run the commands for real)."""

from __future__ import annotations

import importlib

import pytest

from ferkit import cli
from ferkit import config as configs
from ferkit.errors import FerkitError


class Called(Exception):
    pass


CASES = [
    (["train", "D", "--out", "R", "--model", "mlp", "--profile", "gpu", "--set", "epochs=3"],
     "ferkit.train", "train", {"resume": False},
     lambda args: (args[2].model, args[2].profile, args[2].epochs) == ("mlp", "gpu", 3)),
    (["evaluate", "R", "--split", "val", "--tta", "--data", "D", "--out", "O", "--checkpoint", "last",
      "--device", "cpu"], "ferkit.evaluate", "evaluate",
     {"split": "val", "tta": True, "data": "D", "out": "O", "checkpoint": "last", "device": "cpu"}, None),
    (["ensemble", "R1", "R2", "--out", "O", "--split", "val", "--tta", "--data", "D", "--device", "cpu"],
     "ferkit.evaluate", "ensemble", {"split": "val", "tta": True, "data": "D", "device": "cpu"}, None),
    (["features", "R", "--data", "D", "--out", "O", "--n", "3", "--seed", "5", "--embedding", "pca",
      "--device", "auto", "--threads", "2"], "ferkit.features", "features",
     {"n": 3, "seed": 5, "embedding": "pca", "device": "auto", "threads": 2}, None),
    (["run", "D", "--out", "S", "--profile", "cpu", "--set", "epochs=2", "--mlp-set", "hidden=8"],
     "ferkit.pipeline", "run_study", {"profile": "cpu", "cnn_overrides": ["epochs=2"], "mlp_overrides": ["hidden=8"]},
     None),
    (["predict", "R", "a.png", "b", "--out", "f.csv", "--annotate", "A", "--no-detect", "--tta"],
     "ferkit.predict", "predict", {"out": "f.csv", "annotate": "A", "detect": False, "tta": True},
     lambda args: list(args[1]) == ["a.png", "b"]),
    (["predict", "R", "a.png"], "ferkit.predict", "predict", {"detect": True, "tta": False}, None),
    (["label", "D", "--out", "L.csv", "--n", "5", "--seed", "2", "--host", "0.0.0.0", "--port", "0"],
     "ferkit.label", "serve", {"n": 5, "seed": 2, "host": "0.0.0.0", "port": 0}, None),
    (["compare", "R", "L.csv", "--out", "O", "--data", "D", "--tta", "--bootstrap", "50", "--seed", "7",
      "--device", "cpu"], "ferkit.compare", "compare",
     {"data": "D", "tta": True, "resamples": 50, "seed": 7, "device": "cpu"}, None),
    (["report", "R", "--out", "O", "--mlp", "M", "--features", "F", "--compare", "C"], "ferkit.report",
     "build_report", {"mlp": "M", "features": "F", "compare": "C"}, None),
    (["data", "D", "--out", "O", "--seed", "4", "--no-cache"], "ferkit.data", "summarize", {"seed": 4, "cache": False},
     None),
    (["label", "D", "--out", "L.csv", "--export-with-truth", "T.csv"], "ferkit.label", "export_with_truth", {},
     lambda args: args == ("D", "L.csv", "T.csv")),
    (["export", "R", "--onnx", "m.onnx"], "ferkit.export", "export_onnx", {}, lambda args: args == ("R", "m.onnx")),
    # the defaults
    (["data", "D", "--out", "O"], "ferkit.data", "summarize", {"seed": 0, "cache": True}, None),
    (["evaluate", "R"], "ferkit.evaluate", "evaluate",
     {"split": "test", "tta": False, "data": None, "out": None, "checkpoint": "best", "device": "auto"}, None),
    (["features", "R", "--out", "O"], "ferkit.features", "features",
     {"data": None, "n": 4, "seed": 0, "embedding": "tsne", "device": "cpu", "threads": 0}, None),
    (["run", "D", "--out", "S"], "ferkit.pipeline", "run_study", {"profile": None, "cnn_overrides": [],
                                                                  "mlp_overrides": []}, None),
    (["label", "D", "--out", "L.csv"], "ferkit.label", "serve", {"n": None, "seed": None, "host": "127.0.0.1",
                                                                  "port": 8765}, None),
    (["compare", "R", "L.csv", "--out", "O"], "ferkit.compare", "compare",
     {"data": None, "tta": False, "resamples": 2000, "seed": 0, "device": "auto"}, None),
    # a resume takes the run's saved config: only overrides (train refuses all but the device) or nothing
    (["train", "D", "--out", "R", "--resume"], "ferkit.train", "train", {"resume": True},
     lambda args: args[2] is None),
    (["train", "D", "--out", "R", "--resume", "--set", "device=cpu"], "ferkit.train", "train", {"resume": True},
     lambda args: args[2] == {"device": "cpu"}),
    # a config, a model or a profile with --resume is resolved as for a new run, for train to refuse
    (["train", "D", "--out", "R", "--resume", "--profile", "cpu"], "ferkit.train", "train", {"resume": True},
     lambda args: args[2].profile == "cpu"),
    (["train", "D", "--out", "R", "--resume", "--model", "mlp"], "ferkit.train", "train", {"resume": True},
     lambda args: args[2].model == "mlp"),
    (["train", "D", "--out", "R"], "ferkit.train", "train", {"resume": False},
     lambda args: args[2].profile == configs.auto_profile() and args[2].model == "cnn"),
]


@pytest.mark.parametrize("argv, module, function, expected, check", CASES, ids=[" ".join(c[0][:1] + c[0][-2:])
                                                                              for c in CASES])
def test_every_option_reaches_the_function(argv, module, function, expected, check, monkeypatch):
    seen = {}

    def stand_in(*args, **kwargs):
        seen.update(args=args, kwargs=kwargs)
        raise Called

    monkeypatch.setattr(importlib.import_module(module), function, stand_in)
    with pytest.raises(Called):
        cli.main(argv)
    assert {key: seen["kwargs"].get(key) for key in expected} == expected
    assert check is None or check(seen["args"])


# ---------------------------------------------------------------------------------------------
# Mistakes stopped before any work, with one message and no traceback


def refused_by_the_parser(argv: list[str], capsys) -> str:
    """What argparse says when it stops `argv` with status 2."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("argv", [["predict", "R", ""], ["data", "", "--out", "O"], ["train", "D", "--out", "R",
                                                                                      "--config", ""],
                                  ["run", "D", "--out", "S", "--set", ""]])
def test_an_empty_argument_is_refused_by_the_parser(argv, capsys):
    # "" is Path("."): predict would classify the whole folder
    assert "empty (an unset shell variable?)" in refused_by_the_parser(argv, capsys)


def test_version(capsys):
    from ferkit import __version__

    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert capsys.readouterr().out.strip() == f"ferkit {__version__}"


@pytest.mark.parametrize("extra, where", [(["--config", "c.yaml"], "--config c.yaml"),
                                          (["--set", "profile=gpu"], "--set profile=...")])
def test_a_profile_that_overrides_the_profile_flag_is_refused(extra, where, tmp_path, monkeypatch, capsys):
    """--profile cpu with a config file (or --set) of profile gpu trained the gpu profile in silence."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text("profile: gpu\n")
    monkeypatch.setattr(importlib.import_module("ferkit.train"), "train", lambda *args, **kwargs: pytest.fail())
    assert cli.main(["train", "D", "--out", "R", "--profile", "cpu", *extra]) == 2
    assert f"--profile cpu: {where} chooses the gpu profile, which overrides it" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["data", "D.csv", "--out", "O", "--seed", "-3"],
                                  ["features", "R", "--out", "O", "--seed", "-1"],
                                  ["compare", "R", "L.csv", "--out", "O", "--seed", "-1"]])
def test_a_negative_seed_is_refused(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"--seed {argv[-1]} must be in [0, 2**32)" in err and "Traceback" not in err
    assert not (tmp_path / "O").exists()


@pytest.mark.parametrize("argv, missing", [(["data", "D"], "--out"), (["train", "D"], "--out"),
                                           (["ensemble", "R1", "R2"], "--out"), (["features", "R"], "--out"),
                                           (["run", "D"], "--out"), (["export", "R"], "--onnx"),
                                           (["label", "D"], "--out"), (["compare", "R", "L.csv"], "--out"),
                                           (["report", "R"], "--out"), ([], "COMMAND")])
def test_a_missing_required_argument_is_refused_by_the_parser(argv, missing, capsys):
    assert f"the following arguments are required: {missing}" in refused_by_the_parser(argv, capsys)


@pytest.mark.parametrize("argv", [["train", "D", "--o", "R"], ["run", "D", "--ou", "S"]])
def test_an_abbreviated_option_is_refused(argv, capsys):
    """run.json records the command as typed, and the report's replica swaps its --out: `--o R` stayed R."""
    assert "the following arguments are required: --out" in refused_by_the_parser(argv, capsys)


@pytest.mark.parametrize("argv, usage, advice", [
    (["train", "D", "--out", "R", "--epochs", "2"], "ferkit train",
     "unrecognized arguments: --epochs 2; a config key goes through --set: --set epochs=2"),
    (["run", "D", "--out", "S", "--warmup-epochs=3"], "ferkit run",
     "--set warmup_epochs=3 (or --mlp-set, for the MLP)"),
    (["train", "D", "--out", "R", "--set", "epochs", "2"], "ferkit train",
     "unrecognized arguments: 2; write --set epochs=2, with no space around the ="),
    (["run", "D", "--out", "S", "--mlp-set", "hidden", "8"], "ferkit run", "write --mlp-set hidden=8"),
    (["data", "D", "--out", "O", "--epochs", "2"], "ferkit data", "unrecognized arguments: --epochs 2\n"),
])
def test_an_unknown_option_is_refused_by_its_commands_parser_with_the_way_to_set_a_key(argv, usage, advice, capsys):
    """The top-level usage and a bare "unrecognized arguments" sent a user who typed `--epochs 2` nowhere."""
    err = refused_by_the_parser(argv, capsys)
    assert err.startswith(f"usage: {usage} ") and advice in err


# ---------------------------------------------------------------------------------------------
# What each command prints, from what its function returns


def printed(argv: list[str], module: str, function: str, result, monkeypatch, capsys) -> tuple[str, str]:
    monkeypatch.setattr(importlib.import_module(module), function, lambda *args, **kwargs: result)
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    return captured.out, captured.err


@pytest.mark.parametrize("info, out, err", [
    ({"best_epoch": 3, "epochs_run": 8, "train_seconds": 12.4, "stopped_early": True, "snapshots_missed": [4, 8]},
     "best epoch 3 of 8; stopped early after 8 epochs (no better validation score for 5); 12 s of training; run in R\n",
     "note: no at_4min, at_8min checkpoint: the training took 12 s\n"),
    ({"best_epoch": 8, "epochs_run": 8, "train_seconds": 99.6, "stopped_early": False, "snapshots_missed": []},
     "best epoch 8 of 8; 100 s of training; run in R\n", "")])
def test_train_prints_the_best_epoch_and_what_is_missing(info, out, err, monkeypatch, capsys):
    assert printed(["train", "D", "--out", "R"], "ferkit.train", "train", info, monkeypatch, capsys) == (out, err)


@pytest.mark.parametrize("note, err", [("the run is unfinished", "note: the run is unfinished\n"), (None, "")])
def test_evaluate_prints_the_scores_and_a_note_if_any(note, err, monkeypatch, capsys):
    metrics = {"name": "cnn", "split": "test", "n": 42, "tta": True, "accuracy": 0.61234, "macro_f1": 0.5, "note": note,
               "weighted_f1": 0.6, "folder": "R/eval/test-tta"}
    assert printed(["evaluate", "R"], "ferkit.evaluate", "evaluate", metrics, monkeypatch, capsys) == (
        "cnn on test (42 faces, TTA True): accuracy 0.6123, macro F1 0.5000, weighted F1 0.6000; files in "
        "R/eval/test-tta\n", err)


def test_evaluate_tta_on_a_run_without_tta_says_so_and_an_ensemble_on_publictest_is_called_optimistic(monkeypatch,
                                                                                                        capsys):
    metrics = {"name": "cnn", "split": "PublicTest", "n": 9, "tta": "none", "accuracy": 0.5, "macro_f1": 0.5,
               "weighted_f1": 0.5, "folder": "E"}
    _, err = printed(["evaluate", "R", "--tta"], "ferkit.evaluate", "evaluate", metrics, monkeypatch, capsys)
    assert err == "note: --tta: this run's tta setting is none, so each face was classified once\n"
    ensembled = dict(metrics, members=[], note="these scores are optimistic")
    _, err = printed(["ensemble", "R1", "R2", "--split", "val", "--out", "E"], "ferkit.evaluate", "ensemble",
                     ensembled, monkeypatch, capsys)
    assert err == "note: these scores are optimistic\n"


def test_run_prints_each_models_test_scores_with_the_views_it_was_classified_by(monkeypatch, capsys):
    """With --mlp-set tta=none, the MLP's line said 'with TTA' of faces classified once."""
    results = {"cnn_test_accuracy_tta": 0.65671, "cnn_test_macro_f1_tta": 0.6224, "mlp_test_accuracy_tta": 0.4742,
               "mlp_test_macro_f1_tta": 0.474, "cnn_tta": "flip", "mlp_tta": "none"}
    out, _ = printed(["run", "D", "--out", "S"], "ferkit.pipeline", "run_study", {"results": results}, monkeypatch,
                     capsys)
    assert out.splitlines()[1] == ("On PrivateTest: CNN (TTA flip) accuracy 0.6567, macro F1 0.6224; MLP (TTA none) "
                                   "accuracy 0.4742, macro F1 0.4740")


def test_predict_prints_the_table_as_csv_unless_given_a_file(monkeypatch, capsys):
    import pandas as pd

    table = pd.DataFrame({"file": ["a.png", "b.png"], "emotion": ["Happy", "Sad"]})
    result = (table, ["b.png: no face found"])
    assert printed(["predict", "R", "a.png"], "ferkit.predict", "predict", result, monkeypatch, capsys) == (
        "file,emotion\na.png,Happy\nb.png,Sad\n", "b.png: no face found\n")
    assert printed(["predict", "R", "a.png", "--out", "f.csv"], "ferkit.predict", "predict", result, monkeypatch,
                   capsys) == ("2 face(s) written to f.csv\n", "b.png: no face found\n")


def test_compare_prints_n_a_for_a_kappa_that_is_undefined(monkeypatch, capsys):
    scores = {"accuracy": 0.6, "accuracy_ci95": [0.5, 0.7], "macro_f1": 0.55, "macro_f1_ci95": [0.45, 0.65]}
    result = {"n": 50, "sample_n": 60, "human": scores, "cnn": scores, "model": {"name": "cnn"},
              "kappa": {"human_vs_truth": None, "human_vs_cnn": 0.41234},
              "mcnemar": {"p_value": 0.5, "human_correct_cnn_wrong": 3, "human_wrong_cnn_correct": 4}}
    out, _ = printed(["compare", "R", "L.csv", "--out", "O"], "ferkit.compare", "compare", result, monkeypatch, capsys)
    assert "kappa human-truth n/a, human-CNN 0.412; McNemar exact p = 0.5" in out


@pytest.mark.parametrize("pages, shown", [(4, "wrote O/report.pdf (3 pages + 0.8 of extras), "),
                                          (3, "wrote O/report.pdf (3 pages), ")])
def test_report_prints_its_pages_and_the_extras_pages_if_any(pages, shown, monkeypatch, capsys):
    result = {"pdf": "O/report.pdf", "html": "O/report.html", "md": "O/report.md", "pages": pages, "main_pages": 3,
              "extra_pages": 0.8 if pages > 3 else 0.0, "notes": ["a note"]}
    out, _ = printed(["report", "R", "--out", "O"], "ferkit.report", "build_report", result, monkeypatch, capsys)
    assert out == shown + "O/report.html, O/report.md\na note\n"


@pytest.mark.parametrize("error, message", [
    (FerkitError("D: line 3, column 2: not a number"), "D: line 3, column 2: not a number"),
    (OSError(28, "No space left on device", "O/summary.json"), "O/summary.json: No space left on device; the disk "
     "is full: free some space, or choose another disk"),
    (OSError(13, "Permission denied"), "Permission denied; choose a place you may write to (or read from)"),
    (OSError(5, "Input/output error", "O/a.png"), "O/a.png: Input/output error"),  # nothing a user can mend
    (OSError("image file is truncated"), "image file is truncated")])
def test_a_user_error_is_one_line_and_status_2(error, message, monkeypatch, capsys):
    def failing(*args, **kwargs):
        raise error

    monkeypatch.setattr(importlib.import_module("ferkit.data"), "summarize", failing)
    assert cli.main(["data", "D", "--out", "O"]) == 2
    assert capsys.readouterr().err == f"ferkit data: error: {message}\n"


def test_a_reader_that_stops_early_ends_the_command_quietly():
    """`ferkit data ... | head -1`: the closed pipe is no error, and no traceback follows at exit."""
    import subprocess
    import sys

    child = (  # the summary's stand-in prints far more than a pipe holds, so the writes hit the closed pipe
        "import sys\nimport ferkit.data\nfrom ferkit import cli\n"
        "def summarize(*args, **kwargs):\n"
        "    for _ in range(20000):\n        print('x' * 100)\n"
        "    raise AssertionError('the pipe never broke')\n"
        "ferkit.data.summarize = summarize\n"
        "sys.exit(cli.main(['data', 'D', '--out', 'O']))\n")
    process = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout.readline() == b"x" * 100 + b"\n"
    process.stdout.close()
    assert process.wait(timeout=60) == 0
    assert process.stderr.read() == b""


@pytest.mark.parametrize("argv", [
    ["evaluate", "{study}"], ["ensemble", "{study}", "--out", "{tmp}/e"], ["features", "{study}", "--out", "{tmp}/f"],
    ["report", "{study}", "--out", "{tmp}/r"], ["predict", "{study}", "{tmp}/photo.png"],
    ["export", "{study}", "--onnx", "{tmp}/m.onnx"], ["train", "{tmp}/data.csv", "--out", "{study}", "--resume"]])
def test_a_study_given_for_a_run_is_named_with_its_runs(argv, tmp_path, capsys):
    """Given a `ferkit run` study, these commands said to train a run there, or that it held no checkpoint."""
    study = tmp_path / "study"
    study.mkdir()
    (study / "pipeline.json").write_text("{}")
    (tmp_path / "photo.png").write_bytes(b"")
    (tmp_path / "data.csv").write_bytes(b"")
    assert cli.main([arg.format(study=study, tmp=tmp_path) for arg in argv]) == 2
    assert capsys.readouterr().err.strip().endswith(f"{study}: is a `ferkit run` study, not a run; give one of its "
                                                    f"runs: {study / 'cnn'} (or {study / 'mlp'})")


@pytest.mark.parametrize("extra, named", [(["--n", "50"], "--n sets"), (["--seed", "3", "--port", "0"],
                                                                          "--seed and --port set")])
def test_server_options_with_export_with_truth_are_refused_not_ignored(extra, named, monkeypatch, capsys):
    monkeypatch.setattr("ferkit.label.export_with_truth", lambda *args: pytest.fail("exported"))
    assert cli.main(["label", "D", "--out", "L.csv", "--export-with-truth", "T.csv", *extra]) == 2
    assert f"error: {named} the labelling server, which --export-with-truth does not start" in capsys.readouterr().err
