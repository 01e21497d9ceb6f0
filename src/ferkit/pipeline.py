"""`ferkit run`: the whole study in order, resumable stage by stage.

DIR/data (summary, figures) -> DIR/cnn (training) -> DIR/cnn/eval/test and test-tta -> DIR/mlp
(training, evaluation) -> DIR/features -> DIR/report. DIR/pipeline.json records each finished
stage; running the same command again skips those (but one whose files are gone, and the stages
that read them) and resumes the unfinished one.
"""

from __future__ import annotations

import os
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable

from ferkit import config as configs
from ferkit.data import Dataset, load, require_recorded
from ferkit.errors import FerkitError
from ferkit.fileio import (folder_lock, output_folder, read_json, read_record, remove_stale_temporaries,
                           require_only, require_outside, write_json)


def _stage_banner(number: int, total: int, name: str) -> None:
    print(f"\n[{number}/{total}] {name}", flush=True)


# What a study folder holds (see the module docstring)
_STUDY_ENTRIES = {"pipeline.json", "data", "cnn", "mlp", "features", "report"}
_PLACE_KEYS = configs.PLACE_KEYS  # a study may resume with other values of these
# The evaluations each evaluate stage writes: both models without and with TTA, so that the report compares them
# like for like
_EVALUATIONS = {f"evaluate_{model}": (f"{model}/eval/test", f"{model}/eval/test-tta") for model in ("cnn", "mlp")}
# The files without which a finished stage is done again (deleted, or a study begun before the MLP's TTA): a
# deleted report was skipped as done, and the command named its report.pdf, which was not there. A run counts as
# gone with its folder (config.yaml, its first file), not with its checkpoints: `ferkit train` cannot train again
# in a folder that holds its history, so a finished study whose checkpoints were removed (to save space) stopped
_OUTPUTS = {"data": ("data/summary.json",), "train_cnn": ("cnn/config.yaml",), "train_mlp": ("mlp/config.yaml",),
            **{key: tuple(f"{folder}/metrics.json" for folder in folders) for key, folders in _EVALUATIONS.items()},
            "features": ("features/features.json",),
            "report": ("report/report.pdf", "report/report.html", "report/report.md")}
# The stages that read what a stage writes, done again after it
_READERS = {"train_cnn": {"evaluate_cnn", "features", "report"}, "train_mlp": {"evaluate_mlp", "report"},
            "evaluate_cnn": {"report"}, "evaluate_mlp": {"report"}, "features": {"report"}}


def _require_same_config(run: Path, cfg: configs.TrainConfig, option: str) -> None:
    """Stop when a run the study already started used other settings than this command asks for:
    resuming it would quietly ignore them."""
    saved_path = run / "config.yaml"
    if not saved_path.exists():
        return
    saved, wanted = configs.load(saved_path).to_dict(), cfg.to_dict()
    fitted = read_record(run / "run.json", "restore it, or choose another --out").get("fit_minutes") \
        if (run / "run.json").exists() else None
    if fitted:  # config.yaml holds the epochs that fit the minutes: compare what the study asked for
        saved.update(epochs=fitted["epochs_asked"], fit_minutes=fitted["minutes"], shortened=[])
    if changed := _changed(saved, wanted):
        raise FerkitError(f"{run} was started with other settings: {changed}. Resume it with the "
                          f"{option} and --profile options it was started with, or choose another --out")


def _changed(saved: dict[str, Any], wanted: dict[str, Any]) -> str:
    """The settings of `saved` that `wanted` changes, but where a run executes; "" when none."""
    return "; ".join(f"{key} {saved[key]} (now {wanted[key]})" for key in saved
                     if key in wanted and saved[key] != wanted[key] and key not in _PLACE_KEYS)


def _require_same_asked(record: dict[str, Any], out: Path, asked: dict[str, dict[str, Any]]) -> None:
    """Stop when the study asked its models for other settings when it started (pipeline.json's `asked`): a run
    not started yet took the new ones in silence, while the report replicates the study by its first command."""
    for model, option in (("cnn", "--set"), ("mlp", "--mlp-set")):
        before = record["asked"].get(model) if isinstance(record.get("asked"), dict) else None  # hand-edited: unread
        if isinstance(before, dict) and (changed := _changed(before, asked[model])):
            raise FerkitError(f"{out} was started with other settings for its {model}: {changed}. Resume it with "
                              f"the {option} and --profile options it was started with, or choose another --out")


def _study_record(record_path: Path, dataset: Dataset, data: str | os.PathLike, out: Path) -> dict[str, Any]:
    """The study's pipeline.json, or a new record; a study of other data is refused."""
    record = read_record(record_path, "restore it, or choose another --out") if record_path.exists() else {
        "data": str(Path(data).resolve()), **dataset.checksums(), "stages": {}}
    require_recorded(dataset, record, f"the study {out} was run on", record.get("data"),
                     todo="choose another --out, or resume it with that file")
    return record


def _require_same_configs(out: Path, cnn_cfg: configs.TrainConfig, mlp_cfg: configs.TrainConfig) -> None:
    for model, cfg, option in (("cnn", cnn_cfg, "--set"), ("mlp", mlp_cfg, "--mlp-set")):
        _require_same_config(out / model, cfg, option)


def run_study(data: str | os.PathLike, out: str | os.PathLike, profile: str | None = None,
              cnn_overrides: list[str] | dict[str, Any] | None = None,
              mlp_overrides: list[str] | dict[str, Any] | None = None,
              progress: bool = True) -> dict[str, Any]:
    """Run (or resume) every stage of the study into `out`; returns the pipeline record.

    Example: ``ferkit run icml_face_data.csv --out runs/study``
    """
    with ExitStack() as lock:
        return _run_study(data, out, profile, cnn_overrides, mlp_overrides, progress, lock)


def _run_study(data: str | os.PathLike, out: str | os.PathLike, profile: str | None,
               cnn_overrides: list[str] | dict[str, Any] | None, mlp_overrides: list[str] | dict[str, Any] | None,
               progress: bool, lock: ExitStack) -> dict[str, Any]:
    from ferkit import evaluate as evaluation
    from ferkit.data import summarize
    from ferkit.train import train

    out = output_folder(out, create=False)
    require_outside(data, out)
    require_only(out, _STUDY_ENTRIES, "a study needs a new or empty folder, or the folder of a study to resume")
    record_path = out / "pipeline.json"
    dataset = load(data)
    record = _study_record(record_path, dataset, data, out)
    # a resumed study keeps its profile unless one is named, also on a machine that would pick another
    chosen = profile or record.get("profile") or configs.auto_profile()
    record["profile"] = chosen
    for model, overrides, option in (("cnn", cnn_overrides, "--set"), ("mlp", mlp_overrides, "--mlp-set")):
        pairs = overrides if isinstance(overrides, dict) else configs.parse_overrides(overrides or [], option)
        if "model" in pairs and str(pairs["model"]).strip() != model:  # each stage trains its own
            raise FerkitError(f"{option} model={pairs['model']}: this stage of the study trains the {model}; leave "
                              f"`model` out of {option}")
        other, other_option = ("mlp", "--mlp-set") if model == "cnn" else ("cnn", "--set")
        if shaping := [key for key in configs.MODEL_KEYS[other] if key in pairs]:
            raise FerkitError(f"{option} {shaping[0]}=...: shapes the {other}, and {option} sets the study's {model}; "
                              f"give it to {other_option}")
    cnn_cfg = configs.resolve(profile=chosen, overrides=cnn_overrides)
    mlp_pairs = mlp_overrides if isinstance(mlp_overrides, dict) else \
        configs.parse_overrides(mlp_overrides or [], "--mlp-set")
    # Augmentation costs the MLP 2.7 points on PublicTest (43.9% vs 46.6%, cpu profile, two seeds; macro F1
    # 0.39 vs 0.46; with 3x the epochs it gains 1.8 points of accuracy but still loses 1.7 of macro F1): it has
    # no translation invariance to gain from shifted faces, so its baseline trains without it, and its
    # test-time views are flips only (the gpu profile's shifted crops cut its macro F1 from 0.45 to 0.38).
    mlp_cfg = configs.resolve(profile=chosen, overrides={"model": "mlp", "augment": False, "tta": "flip", **mlp_pairs},
                              option="--mlp-set")  # the MLP's own settings, which a user may change
    _require_same_configs(out, cnn_cfg, mlp_cfg)
    output_folder(out)
    lock.enter_context(folder_lock(out, "`ferkit run`"))
    # checked again under the lock: a study that ended meanwhile may have recorded stages or started runs
    record = dict(_study_record(record_path, dataset, data, out), profile=chosen)
    _require_same_configs(out, cnn_cfg, mlp_cfg)
    asked = {"cnn": cnn_cfg.to_dict(), "mlp": mlp_cfg.to_dict()}
    _require_same_asked(record, out, asked)
    if not isinstance(record.get("asked"), dict):  # a study recorded before `asked` takes this command's
        record["asked"] = asked
    for folder in (out / "data", out / "features", out / "report", out / "cnn" / "eval", out / "mlp" / "eval"):
        remove_stale_temporaries(folder, recursive=True)  # what a kill in an atomic write left (train cleans its own)

    def train_stage(folder: Path, cfg: configs.TrainConfig) -> Callable[[], Any]:
        def run() -> Any:
            resume = (folder / "checkpoints" / "last.pt").exists()
            if resume:
                print(f"resuming the interrupted run in {folder}")
            if resume and (saved := configs.load(folder / "config.yaml")).threads != cfg.threads:
                print(f"note: {folder} keeps threads={saved.threads}, which it started with (a CPU run's numbers "
                      f"depend on it), not threads={cfg.threads}")
            place = {key: getattr(cfg, key) for key in configs.RESUME_KEYS}  # this command's device
            return train(data, folder, place if resume else cfg, resume=resume, progress=progress)
        return run

    def features_stage() -> Any:
        from ferkit.features import features
        return features(out / "cnn", data, out / "features")

    def report_stage() -> None:
        from ferkit.report import build_report
        result = build_report(out / "cnn", mlp=out / "mlp", features=out / "features", out=out / "report")
        for note in result["notes"]:
            print(note)

    stages: list[tuple[str, str, Callable[[], Any]]] = [
        ("data", "data summary and figures", lambda: summarize(data, out / "data")),
        ("train_cnn", f"train the CNN ({chosen} profile)", train_stage(out / "cnn", cnn_cfg)),
        ("evaluate_cnn", "evaluate the CNN on PrivateTest, without and with TTA",
         lambda: [evaluation.evaluate(out / "cnn", data=data), evaluation.evaluate(out / "cnn", data=data, tta=True)]),
        ("train_mlp", "train the MLP baseline by the same pipeline", train_stage(out / "mlp", mlp_cfg)),
        ("evaluate_mlp", "evaluate the MLP on PrivateTest, without and with TTA",
         lambda: [evaluation.evaluate(out / "mlp", data=data), evaluation.evaluate(out / "mlp", data=data, tta=True)]),
        ("features", "last-conv-layer activations and Grad-CAM", features_stage),
        ("report", "the report (PDF, HTML, Markdown)", report_stage),
    ]
    redo: set[str] = set()
    for number, (key, title, action) in enumerate(stages, 1):
        # a stage whose files are gone is done again, and the stages that read them with it
        missing = [name for name in _OUTPUTS.get(key, ()) if not (out / name).is_file()]
        if record["stages"].get(key, {}).get("done") and not missing and key not in redo:
            print(f"[{number}/{len(stages)}] {title}: done already, skipped")
            continue
        redo |= _READERS.get(key, set())
        _stage_banner(number, len(stages), title)
        started = time.perf_counter()
        action()
        record["stages"][key] = {"done": True, "seconds": round(time.perf_counter() - started, 1)}
        write_json(record_path, record)
    cnn = read_json(out / "cnn" / "eval" / "test-tta" / "metrics.json")
    mlp = read_json(out / "mlp" / "eval" / "test-tta" / "metrics.json")
    record["results"] = {"cnn_test_accuracy_tta": cnn["accuracy"], "cnn_test_macro_f1_tta": cnn["macro_f1"],
                         "mlp_test_accuracy_tta": mlp["accuracy"], "mlp_test_macro_f1_tta": mlp["macro_f1"],
                         "cnn_tta": cnn.get("tta"), "mlp_tta": mlp.get("tta")}  # the views, none where tta is none
    record["total_seconds"] = round(sum(s["seconds"] for s in record["stages"].values()), 1)
    write_json(record_path, record)
    return record
