"""Every option of the `ferkit` command reaches the function it calls (the functions are replaced by
stand-ins that record their arguments; the other test files run the commands for real)."""

from __future__ import annotations

import importlib

import pytest

from ferkit import cli


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


@pytest.mark.parametrize("argv", [["predict", "R", ""], ["data", "", "--out", "O"], ["train", "D", "--out", "R",
                                                                                      "--config", ""],
                                  ["run", "D", "--out", "S", "--set", ""]])
def test_an_empty_argument_is_refused_by_the_parser(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:  # "" is Path("."): predict would classify the whole folder
        cli.main(argv)
    assert exit_info.value.code == 2
    assert "empty (an unset shell variable?)" in capsys.readouterr().err


def test_version(capsys):
    from ferkit import __version__

    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert capsys.readouterr().out.strip() == f"ferkit {__version__}"


@pytest.mark.parametrize("argv", [["data", "D.csv", "--out", "O", "--seed", "-3"],
                                  ["features", "R", "--out", "O", "--seed", "-1"],
                                  ["compare", "R", "L.csv", "--out", "O", "--seed", "-1"]])
def test_a_negative_seed_is_refused(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"--seed {argv[-1]} must be in [0, 2**32)" in err and "Traceback" not in err
    assert not (tmp_path / "O").exists()
