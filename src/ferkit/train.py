"""Training: the whole training split lives on the device as uint8; batches are slices of a seeded
order of the epoch (the class sampler's weighted draws with replacement by default, else a
permutation), augmented on the device. Validation on PublicTest after every epoch picks the best
checkpoint and stops early; PrivateTest is never touched here.

A run folder holds config.yaml, run.json, history.csv, checkpoints/{last,best}.pt,
learning_curves.png and .ferkit.lock. Every epoch draws its randomness from (seed, epoch) alone, so a run resumed
from `last.pt` ends exactly where an uninterrupted run would have.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import itertools
import math
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import get_ema_multi_avg_fn
from tqdm.auto import tqdm

from ferkit import __version__
from ferkit import config as configs
from ferkit import data as fdata
from ferkit.augment import augment_batch, mix
from ferkit.config import RESUME_KEYS, TrainConfig
from ferkit.errors import FerkitError
from ferkit.evaluate import macro_f1
from ferkit.fileio import (atomic_path, check_folder_path, environment, folder_lock, is_run_folder, read_record,
                           remove_stale_temporaries, require_not_study, require_only, require_outside,
                           require_run_folder, sha256_file, write_csv, write_json)
from ferkit.models import count_parameters, get_model, preprocess

# What a run folder holds; any other entry means the folder belongs to something else.
RUN_FOLDER_ENTRIES = {"config.yaml", "run.json", "history.csv", "checkpoints", "learning_curves.png", "eval"}
HISTORY_FIELDS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_macro_f1", "lr", "seconds",
                  "images_per_second")


# ---------------------------------------------------------------------------------------------
# Devices, seeds, checkpoints


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise FerkitError("device 'cuda' was asked for, but PyTorch sees no CUDA GPU; use the CPU (--device cpu, or "
                          "--set device=cpu when training)")
    device = torch.device(name)
    if device.type == "cuda":  # every batch has the same shape: let cuDNN time its kernels once and keep the fastest
        torch.backends.cudnn.benchmark = True
    return device


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919) % (2**63 - 1)


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """torch.save to a temporary file, then an atomic rename: a kill never leaves half a checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        require_not_study(path)
        path = path / "checkpoints" / "best.pt"
    if not path.exists():
        there = sorted(p.stem for p in path.parent.glob("*.pt"))
        example = path.parent / f"{'last' if 'last' in there else next(iter(there), '')}.pt"
        # predict and export take a checkpoint's file; only evaluate takes its name
        hint = (f"this run has {', '.join(there)}: give the file of one (such as {example}), or to `ferkit evaluate` "
                f"its name (--checkpoint {example.stem})" if there else
                "train one with `ferkit train DATA --out RUN_DIR`")
        raise FerkitError(f"{path}: no checkpoint here; {hint}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise FerkitError(f"{path}: cannot read the checkpoint ({exc.strerror or exc})") from None
    except Exception:  # foreign or damaged bytes make torch raise anything from EOFError to KeyError
        checkpoint = None
    if not isinstance(checkpoint, dict) or not {"model_name", "model_kwargs", "model"} <= checkpoint.keys():
        raise FerkitError(f"{path}: not a ferkit checkpoint; give a run folder or a .pt file from its checkpoints/ "
                          f"folder (a damaged one must be trained again)")
    return checkpoint


def checkpoint_sha256(run: str | os.PathLike, which: str = "best") -> str | None:
    """The checksum of a run folder's checkpoint file, None without one: `features` and `compare`
    record it, so that `report` can tell whether their files describe this run's model."""
    path = Path(run) / "checkpoints" / f"{checkpoint_name(which, run)}.pt"
    return sha256_file(path) if path.is_file() else None


def checkpoint_name(which: str, run: str | os.PathLike | None = None) -> str:
    """A checkpoint's name (best, last, at_4min) from what a user may type: also "last.pt" or
    "checkpoints/last.pt". The folder is dropped, so with `run` a file of another run's folder is
    refused rather than read as the same name of this run."""
    typed = Path(which)
    if run is not None and typed.parent not in (Path("."), Path("checkpoints")) and \
            os.path.realpath(typed.parent) != os.path.realpath(Path(run) / "checkpoints"):
        raise FerkitError(f"--checkpoint {which}: not a checkpoint of {run}; name one of its checkpoints "
                          f"(best, last, at_4min), or evaluate the run that holds this file")
    return typed.name.removesuffix(".pt")


def load_model(run_or_checkpoint: str | os.PathLike, which: str = "best",
               device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the model of a run folder (its `which` checkpoint) or of a checkpoint file."""
    path = Path(run_or_checkpoint)
    if path.is_dir():
        require_run_folder(path, needs=("checkpoints/",))  # a study, or a run stopped in its first epoch, named so
        path = path / "checkpoints" / f"{checkpoint_name(which, path)}.pt"
    checkpoint = load_checkpoint(path)
    model = get_model(checkpoint["model_name"], **checkpoint["model_kwargs"])
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval(), checkpoint


def load_run_model(run: str | os.PathLike, which: str = "best", device: str | torch.device = "cpu"
                   ) -> tuple[torch.nn.Module, dict[str, Any], str | None]:
    """load_model for a run folder, plus the sha256 of the checkpoint file it read, for the record. A
    run still training may replace the file meanwhile: the checksum is taken before and after, and a
    change is refused, so that a record never pairs one model's numbers with another's checksum."""
    before = checkpoint_sha256(run, which)
    model, checkpoint = load_model(run, which=which, device=device)
    if checkpoint_sha256(run, which) != before:
        raise FerkitError(f"{run}: its {checkpoint_name(which)} checkpoint changed while it was read (the run is "
                          "still training); run the same command again")
    return model, checkpoint, before


# ---------------------------------------------------------------------------------------------
# Prediction (shared with evaluation)


@torch.no_grad()
def predict_proba(model: torch.nn.Module, images: np.ndarray | torch.Tensor, device: torch.device | str = "cpu",
                  batch_size: int = 512, tta: str = "none", channels_last: bool = True, amp: bool = True) -> np.ndarray:
    """Class probabilities (N, 7) for uint8 images (N, 48, 48); `tta` averages flips and shifts; `amp`
    runs the model in bfloat16 on CUDA, as training does."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    images = torch.as_tensor(images)
    out = []
    for start in range(0, len(images), batch_size):
        x = preprocess(images[start:start + batch_size].to(device))
        views = _tta_views(x, tta)
        probs = 0
        for view in views:
            if channels_last:
                view = view.contiguous(memory_format=torch.channels_last)
            with _autocast(device, amp):
                probs = probs + F.softmax(model(view).float(), dim=1)
        out.append((probs / len(views)).cpu())
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, len(fdata.EMOTIONS)), np.float32)


def predict_as_trained(model: torch.nn.Module, checkpoint: dict[str, Any], images: np.ndarray,
                       device: torch.device | str = "cpu", tta: bool = False) -> tuple[np.ndarray, str]:
    """Class probabilities as the run's validation computed them: its batch size, memory format and
    precision, and its `tta` mode when `tta`; returns them and the TTA mode used."""
    cfg = {**TrainConfig().to_dict(), **checkpoint.get("config", {})}  # an older run may lack newer keys
    mode = cfg["tta"] if tta else "none"
    if cfg["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    probs = predict_proba(model, images, device, cfg["eval_batch_size"], tta=mode, channels_last=cfg["channels_last"],
                          amp=cfg["amp"])
    return probs, mode


def _tta_views(x: torch.Tensor, tta: str) -> list[torch.Tensor]:
    if tta == "none":
        return [x]
    views = [x, x.flip(3)]
    if tta == "crops":
        padded = F.pad(x, (2, 2, 2, 2), mode="replicate")
        h, w = x.shape[2:]
        for dy, dx in ((0, 0), (0, 4), (4, 0), (4, 4)):
            shifted = padded[:, :, dy:dy + h, dx:dx + w]
            views += [shifted, shifted.flip(3)]
    return views


def _autocast(device: torch.device, enabled: bool = True) -> torch.autocast:
    if device.type == "cuda" and enabled:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


# ---------------------------------------------------------------------------------------------
# The schedule is a pure function of the step


ONECYCLE_PEAK_AT = 0.3  # one-cycle: the fraction of the steps at which the learning rate peaks
ONECYCLE_START = 0.04  # one-cycle: the first step's learning rate, as a fraction of the peak
EMA_RAMP = 10  # the weight average's decay starts at 1/EMA_RAMP and rises towards cfg.ema
FIT_WARMUP_STEPS = 3  # fit_minutes: steps not timed, as the first ones build kernels (oneDNN, cuDNN's benchmark)
FIT_TAKE_BACK_MARGIN = 0.05  # fit_minutes' guard: epochs come back only if they fit at a pace this much slower


def steps_per_epoch(images: int, batch_size: int) -> int:
    """Full batches only (what is left of an epoch's order is not trained on: no tiny last batch for batch
    norm, one shape for every step), and one step for a set smaller than a batch."""
    return images // batch_size if images >= batch_size else 1


def learning_rate(cfg: TrainConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    if cfg.shortened:
        # fit_minutes' guard changed the epochs after epoch `after` of the `planned` then in force, once or more:
        # from each change the rest of the first plan's schedule is spread over the steps then left, so that the
        # rate never jumps and a one-cycle run cut during its ramp still reaches its peak
        changes = configs.epoch_changes(cfg.shortened, cfg.epochs)
        planned_steps = changes[0][1] * steps_per_epoch
        position, since, until = 0.0, 0, planned_steps  # where the schedule stood at step `since`, the plan's end
        for after, _, then in changes:
            cut = after * steps_per_epoch
            if step <= cut:
                break
            position += (cut - since) * (planned_steps - position) / max(1, until - since)
            since, until = cut, then * steps_per_epoch
        step = position + (step - since) * (planned_steps - position) / max(1, until - since)
        total_steps = planned_steps
    return _planned_rate(cfg, step, total_steps, steps_per_epoch)


def _planned_rate(cfg: TrainConfig, step: float, total_steps: int, steps_per_epoch: int) -> float:
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "onecycle":
        peak = max(1, int(ONECYCLE_PEAK_AT * total_steps))
        if step < peak:
            return cfg.lr * (ONECYCLE_START + (1 - ONECYCLE_START) * step / peak)
        progress = (step - peak) / max(1, total_steps - peak)
        return cfg.lr * (0.5 * (1 + math.cos(math.pi * progress))) + 1e-5
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def ema_decay(cfg: TrainConfig, step: int) -> float:
    """`cfg.ema`, lowered over the first steps so that the average does not hold on to the untrained start."""
    return min(cfg.ema, (1 + step) / (EMA_RAMP + step))


class WeightAverage:
    """An exponential moving average of `model`'s weights and batch-norm statistics, held in `self.model`."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = copy.deepcopy(model)
        # Gathered once, not every step: optimizers and load_state_dict change these tensors in place.
        pairs = list(zip(self.model.state_dict().values(), model.state_dict().values(), strict=True))
        self._averaged = [a for a, _ in pairs if a.is_floating_point()]
        self._current = [m for a, m in pairs if a.is_floating_point()]
        self._counters = [(a, m) for a, m in pairs if not a.is_floating_point()]  # batch counters: copied

    @torch.no_grad()
    def update(self, decay: float) -> None:
        """average = decay * average + (1 - decay) * model."""
        get_ema_multi_avg_fn(decay)(self._averaged, self._current, None)
        for averaged, current in self._counters:
            averaged.copy_(current)


def class_weights(labels: np.ndarray, power: float, num_classes: int = len(fdata.EMOTIONS)) -> np.ndarray:
    """(largest class / class size) ** power, scaled to mean 1 over the training images."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = (counts.max() / np.maximum(counts, 1)) ** power
    return weights / (weights[labels].mean() if len(labels) else 1)


def epoch_order(sample_weight: torch.Tensor | None, n: int, generator: torch.Generator,
                device: torch.device | str) -> torch.Tensor:
    """The training images of one epoch, as indices: n draws with replacement in proportion to
    `sample_weight` (the class-balancing sampler), or a permutation of all n when it is None."""
    if sample_weight is not None:
        return torch.multinomial(sample_weight, n, replacement=True, generator=generator)
    return torch.randperm(n, generator=generator, device=device)


def fit_epochs(minutes: float, model: torch.nn.Module, cfg: TrainConfig, x_train: torch.Tensor, y_train: torch.Tensor,
               val_images: np.ndarray, val_labels: np.ndarray, loss_weight: torch.Tensor | None = None
               ) -> dict[str, Any]:
    """How many of `cfg.epochs` fit `minutes` of training and validation on this machine, timed on a copy of
    `model`: training steps (after a few untimed ones, which build the kernels), doubled until a timing
    takes 2 s, and a validation batch. The run's network, optimizer and random streams are untouched."""
    device = x_train.device
    epoch_steps = steps_per_epoch(len(x_train), cfg.batch_size)
    batch = min(cfg.batch_size, len(x_train))
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        trial = copy.deepcopy(model)
        optimizer = make_optimizer(trial, cfg)
        generator = torch.Generator(device=device).manual_seed(0)

        def seconds_for(steps: int) -> float:
            order = torch.randint(len(x_train), (steps * batch,), generator=generator, device=device)
            start = time.perf_counter()
            train_one_epoch(trial, optimizer, x_train, y_train, order, range(steps), epoch_steps * cfg.epochs, cfg,
                            generator, loss_weight)  # returns floats: the device has finished
            return time.perf_counter() - start

        seconds_for(min(FIT_WARMUP_STEPS, epoch_steps))
        steps = min(4, epoch_steps)
        while (step_seconds := seconds_for(steps) / steps) * steps < 2 and steps < epoch_steps:
            steps = min(2 * steps, epoch_steps)
        faces = min(len(val_images), cfg.eval_batch_size)
        for _ in range(2):  # the first builds the evaluation's kernels
            start = time.perf_counter()
            validate(trial, val_images[:faces], val_labels[:faces], device, cfg)
        face_seconds = (time.perf_counter() - start) / faces
    epoch_seconds = epoch_steps * step_seconds + len(val_images) * face_seconds
    return {"minutes": minutes, "epochs_asked": cfg.epochs,
            "epochs": epochs_that_fit(minutes, epoch_seconds, cfg.epochs),
            "epoch_seconds": round(epoch_seconds, 2), "timed_steps": steps,
            "timing_seconds": round(time.perf_counter() - started, 1)}


def epochs_that_fit(minutes: float, epoch_seconds: float, asked: int) -> int:
    """As many of the `asked` epochs as fit `minutes`, and at least one."""
    return max(1, min(asked, int(minutes * 60 / epoch_seconds)))


def warmup_only(cfg: TrainConfig, epoch_steps: int, epochs: int = 1) -> bool:
    """Whether the first `epochs` epochs' learning rates are the same whatever the number of epochs: the cosine
    schedule's warmup, as long as they lie in it, or a constant rate (one-cycle's peak is a share of all the
    steps). Such a run can change its epochs and still be the very run that had them from the start."""
    return cfg.schedule == "constant" or (cfg.schedule == "cosine" and not cfg.shortened
                                          and int(cfg.warmup_epochs * epoch_steps) >= epochs * epoch_steps)


def epochs_within_budget(minutes: float, epoch_seconds: list[float], planned: int, least: int,
                         sized: int | None = None) -> tuple[int, float]:
    """fit_minutes' guard, after the epochs that took `epoch_seconds`: how many epochs fit the minutes when the
    rest go at the pace of the slower of the mean and the latest epoch (epochs on a shared machine slow down by
    5-10%, beyond what the first epoch shows); and that pace. Fewer than the `planned` ones when those no longer
    fit, but at least `least`; more, up to `sized`, only when they fit even at a pace FIT_TAKE_BACK_MARGIN
    slower, so that a run at its budget's edge does not swing between two lengths."""
    spent, done = sum(epoch_seconds), len(epoch_seconds)
    pace = max(spent / done, epoch_seconds[-1])

    def fit(seconds: float) -> int:
        return done + int((60 * minutes - spent) / seconds)

    if fit(pace) < planned:
        return max(least, fit(pace)), pace
    return max(planned, min(sized or planned, fit(pace * (1 + FIT_TAKE_BACK_MARGIN)))), pace


def guard_least(schedule: str, epoch: int) -> int:
    """The fewest epochs fit_minutes' guard keeps after `epoch`: one more, in which a decaying schedule comes
    down (a constant rate may stop at once)."""
    return epoch if schedule == "constant" else epoch + 1


def sized_epochs(fitted: dict[str, Any]) -> int:
    """The epochs fit_minutes sized a run to (run.json's `fit_minutes`), before its guard changed them."""
    changes = fitted.get("shortened")
    return changes[0]["from_epochs"] if changes else fitted["epochs"]


def guard_ceiling(fitted: dict[str, Any]) -> int:
    """The most epochs fit_minutes' guard takes a run back to: those sized, or the start's timing's where that
    allowed more. A GPU's first epoch also builds kernels and tunes cuDNN (1.4-2.0 times the median epoch in four H200
    runs side by side), so that epoch's own time can size a run far too short; the pace after it is what counts."""
    return max(sized_epochs(fitted), fitted.get("epochs_timed", 0))


def _note_long_warmup(cfg: TrainConfig) -> None:
    if cfg.schedule == "cosine" and cfg.warmup_epochs >= cfg.epochs:
        length = "longer than" if cfg.warmup_epochs > cfg.epochs else "as long as"
        tqdm.write(f"note: warmup_epochs {cfg.warmup_epochs:g} is {length} the {cfg.epochs} epochs: the learning "
                   f"rate ends its warmup at {cfg.epochs / cfg.warmup_epochs:.0%} of lr {cfg.lr:g} and never decays")


def _note_absent_classes(counts: np.ndarray, cfg: TrainConfig) -> None:
    """Name the classes without a training face (`counts`: faces per class): the model is never shown one, and
    whatever it predicts of them is a guess (a small train_limit of FER2013 can leave out Disgust, 1.5% of it)."""
    if absent := [name for name, count in zip(fdata.EMOTIONS, counts) if not count]:
        limit = f" (the first {cfg.train_limit:,}: train_limit)" if cfg.train_limit else ""
        tqdm.write(f"note: no {', '.join(absent)} face among the {int(counts.sum()):,} training faces{limit}: the "
                   "model is never shown one")


SLOW_CPU_MINUTES = 20  # the training budget the README's recipe for slow machines keeps to


def _note_slow_cpu(cfg: TrainConfig, device: torch.device, first_epoch_seconds: float) -> None:
    """After the first epoch of a cpu-profile CNN (not sized by fit_minutes) whose pace puts its epochs past
    `SLOW_CPU_MINUTES`: the recipe that trains within them, which a user on a slow machine would otherwise learn
    of only from the README."""
    minutes = first_epoch_seconds * cfg.epochs / 60
    if device.type == "cpu" and cfg.profile == "cpu" and cfg.model == "cnn" and minutes > SLOW_CPU_MINUTES:
        tqdm.write(f"note: at {first_epoch_seconds:.0f} s an epoch, the {cfg.epochs} epochs take about {minutes:.0f} "
                   f"minutes; to train within {SLOW_CPU_MINUTES} on this machine, start again in a new --out folder "
                   f"with --set fit_minutes={SLOW_CPU_MINUTES} --set widths=16,32,64,128 --set schedule=onecycle "
                   f"(about 64% on PrivateTest in the README's runs), or let this run go on")


# ---------------------------------------------------------------------------------------------
# The training run


def train(data_path: str | os.PathLike, out_dir: str | os.PathLike, cfg: TrainConfig | dict[str, Any] | None = None,
          resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train `cfg.model` on Training, validate on PublicTest, write the run into `out_dir`; return
    what run.json records. `cfg` is a TrainConfig (`ferkit.config.resolve`), a dict of config keys
    over the defaults (the cpu profile), or None for the defaults. With `resume`, `cfg` is None or
    {"device": ...}: the run continues with its saved config.yaml (its threads too), and its
    history.csv is rewritten from last.pt. One training at a time holds `out_dir` (.ferkit.lock).

    Example: ``train("icml_face_data.csv", "runs/cnn", {"epochs": 30})``, which is
    ``ferkit train icml_face_data.csv --out runs/cnn --profile cpu --set epochs=30``
    """
    out = check_folder_path(out_dir)
    require_outside(data_path, out)
    created = not out.exists()
    threads = torch.get_num_threads()  # a run's `threads` hold for it alone, not for a training after it
    try:
        with folder_lock(out, "`ferkit train`"):
            return _train(data_path, out, cfg, resume, progress)
    except FerkitError:
        if created and out.is_dir() and {p.name for p in out.iterdir()} <= {".ferkit.lock"}:
            (out / ".ferkit.lock").unlink(missing_ok=True)  # a refused start leaves no folder behind
            out.rmdir()
        raise
    finally:
        torch.set_num_threads(threads)


def _train(data_path: str | os.PathLike, out: Path, cfg: TrainConfig | dict[str, Any] | None, resume: bool,
           progress: bool) -> dict[str, Any]:
    last_path = out / "checkpoints" / "last.pt"
    if resume:
        place = {}
        if cfg is not None:
            if not isinstance(cfg, dict) or not set(cfg) <= set(RESUME_KEYS):
                raise FerkitError(f"{out}: a resumed run continues with its saved config.yaml; resume without settings "
                                  f"(drop --model/--profile/--config/--set); only --set device=... may change "
                                  "where it goes on")
            place = cfg
        if not last_path.exists():
            require_not_study(out)
            if (out / "history.csv").exists():  # epochs were recorded: last.pt was deleted, not never written
                raise FerkitError(f"{out}: cannot resume, checkpoints/last.pt is missing (the run's other files "
                                  "stay as they are); train again in another --out")
            raise FerkitError(f"{out}: nothing to resume (no checkpoints/last.pt); start it without --resume")
        if not is_run_folder(out):
            raise FerkitError(f"{out}: cannot resume without the run's run.json and config.yaml, which `ferkit train` "
                              "wrote first; restore them, or start a new run in another folder")
        todo = "restore it, or train again in another --out"
        run_info = read_record(out / "run.json", todo)
        if not isinstance(run_info.get("data"), dict) or not isinstance(run_info["data"].get("path"), str):
            raise FerkitError(f"{out / 'run.json'}: no data path in it; {todo}")
        if "finished" in run_info:  # nothing left to train: the record stays as it is
            if progress:
                tqdm.write(f"{out}: the run had finished already; nothing more to train")
            return run_info
        saved = configs.load(out / "config.yaml")
        cfg = configs.resolve(config_file=out / "config.yaml", overrides=place) if place else saved
        try:
            state = load_checkpoint(last_path)
        except FerkitError:
            raise FerkitError(f"{last_path}: damaged, so the run cannot continue (its best.pt still serves "
                              "`ferkit evaluate`); train again in another --out") from None
        guarded = ("epochs", "shortened") if "fit_minutes" in run_info else ()  # the guard's, in config.yaml first
        _require_config_of(state, saved, out, changing=RESUME_KEYS + guarded)
    else:
        if last_path.exists():
            raise FerkitError(f"{out} already holds a run: continue it with --resume, or choose another --out")
        require_only(out, RUN_FOLDER_ENTRIES, "a run needs a new or empty folder")
        # epochs recorded (history.csv) or an evaluation: a run whose last.pt is gone, not one killed in its
        # first epoch; a new start would replace its best.pt and leave its eval/ describing another model
        kept = [name for name in ("history.csv", "eval") if (out / name).exists()]
        if kept:
            raise FerkitError(f"{out} holds a run ({', '.join(kept)}) without checkpoints/last.pt: it cannot be "
                              "resumed, and a new run would replace its files; choose another --out")
        cfg = configs.resolve(overrides=cfg) if isinstance(cfg, dict) else cfg or TrainConfig()
        state = None

    for folder in (out, out / "checkpoints"):  # what a kill in the middle of an atomic write left
        remove_stale_temporaries(folder)
    dataset = fdata.load(data_path)
    if state is not None:
        fdata.require_recorded(dataset, state, f"the run {out} was trained on", run_info["data"]["path"],
                               todo="resume with that file")
        if not Path(run_info["data"]["path"]).exists():  # moved: evaluate, features and report look for it there
            run_info["data"]["path"] = str(Path(data_path).resolve())
    device = pick_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)

    train_idx = dataset.indices("Training")
    val_idx = dataset.indices("PublicTest")
    if cfg.train_limit:
        train_idx = train_idx[:cfg.train_limit]
    if cfg.val_limit:
        val_idx = val_idx[:cfg.val_limit]
    if len(train_idx) < 2 or len(val_idx) < 1:
        limits = [f"{key}={value}" for key, value in (("train_limit", cfg.train_limit), ("val_limit", cfg.val_limit))
                  if value]
        raise FerkitError(f"{data_path}: training needs at least 2 Training and 1 PublicTest rows (found "
                          f"{len(train_idx)} and {len(val_idx)}" + (f" with {' and '.join(limits)}" if limits else "")
                          + ")")

    model = get_model(cfg.model, **cfg.model_kwargs()).to(device)
    model = model.to(memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
    optimizer = make_optimizer(model, cfg)
    forward = torch.compile(model) if cfg.compile else model
    # what is validated and saved: the average of the weights when cfg.ema asks for one
    average = WeightAverage(model) if cfg.ema else None
    evaluated = average.model if average is not None else model

    x_train = torch.from_numpy(dataset.images[train_idx]).to(device).unsqueeze(1)  # (N, 1, 48, 48) uint8
    y_train_np = dataset.labels[train_idx]
    train_counts = np.bincount(y_train_np, minlength=len(fdata.EMOTIONS))  # the faces trained on, per class
    y_train = torch.from_numpy(y_train_np).to(device)
    weights = class_weights(y_train_np, cfg.imbalance_power)
    loss_weight = torch.tensor(weights, dtype=torch.float32, device=device) if cfg.imbalance == "weighted_loss" else None
    sample_weight = (torch.tensor(weights[y_train_np], dtype=torch.float32, device=device)
                     if cfg.imbalance == "sampler" else None)

    val_images = dataset.images[val_idx]
    val_labels = dataset.labels[val_idx]
    fitted = run_info.get("fit_minutes") if state is not None else None  # a resumed run keeps to its minutes
    if state is None and cfg.fit_minutes:
        fitted = fit_epochs(cfg.fit_minutes, model, cfg, x_train, y_train, val_images, val_labels, loss_weight)
        # config.yaml holds the epochs chosen, so that it repeats this run exactly on any machine
        cfg = dataclasses.replace(cfg, epochs=fitted["epochs"], fit_minutes=0.0)
        if progress:
            tqdm.write(f"fit_minutes {fitted['minutes']:g}: {fitted['epochs']} of {fitted['epochs_asked']} epochs fit "
                       f"(about {fitted['epoch_seconds']:.1f} s an epoch, timed in {fitted['timing_seconds']:.0f} s)"
                       # only of one epoch: epoch_seconds is rounded, so that 9 epochs of 6.666 s, which fit a
                       # minute, made 9 * 6.67 > 60 and said so
                       + (": even one epoch takes longer" if fitted["epochs"] == 1
                          and fitted["epoch_seconds"] > 60 * fitted["minutes"] else ""))
    if progress:
        _note_long_warmup(cfg)
        _note_absent_classes(train_counts, cfg)
    n = len(train_idx)
    epoch_steps = steps_per_epoch(n, cfg.batch_size)
    epoch_images = epoch_steps * min(cfg.batch_size, n)

    if state is None:
        configs.save(cfg, out / "config.yaml")
        history: list[dict[str, Any]] = []
        best_score, best_epoch, bad_epochs, start_epoch, train_seconds = -1.0, 0, 0, 1, 0.0
        run_info = {
            "started": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            # absolute: evaluate, features and report find the file from any working folder
            "data": {"path": str(Path(data_path).resolve()), "sha256": dataset.sha256,
                     "faces_sha256": dataset.faces_sha256, "layout": dataset.layout,
                     "counts": dataset.counts(), "train_images": int(n), "val_images": int(len(val_idx)),
                     # the faces trained on per class: under train_limit not the whole file's
                     "train_counts": train_counts.tolist()},
            "model": {"name": cfg.model, "kwargs": cfg.model_kwargs(), "parameters": count_parameters(model)},
            "class_weights": weights.tolist(),
            **({"fit_minutes": fitted} if fitted else {}),
            "device": str(device),
            "environment": environment(),
        }
        write_json(out / "run.json", run_info)
    else:
        model.load_state_dict(state.get("trained_model", state["model"]))
        if average is not None:
            average.model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history = state["history"]
        best_score, best_epoch, bad_epochs = state["best_score"], state["best_epoch"], state["bad_epochs"]
        start_epoch, train_seconds = state["epoch"] + 1, state["train_seconds"]
        resumed_at = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        run_info.setdefault("resumed", []).append(resumed_at)
        # it goes on past the epoch that diverged (on another device, say): evaluate said it stopped there, and a
        # resume interrupted again passed for an ended run
        run_info.pop("diverged_epoch", None)
        # run.json describes where the run started; a session elsewhere (another device, library or code) is
        # recorded beside it, since its epochs match an unbroken run's only on the same machine and versions
        here = run_session(str(device), environment())
        first = run_session(run_info.get("device"), run_info.get("environment"))
        if any(here.get(key) != value for key, value in first.items()):  # what the first session recorded
            run_info.setdefault("resumed_elsewhere", []).append({"at": resumed_at, **here})
        if cfg != saved:  # another device: config.yaml says where the run goes on
            configs.save(cfg, out / "config.yaml")
        write_json(out / "run.json", run_info)
        write_history(out / "history.csv", history)  # a kill between last.pt and history.csv left it an epoch short

    stopped_early = bool(state and state.get("stopped_early"))
    bar = tqdm(total=epoch_steps * cfg.epochs, initial=(start_epoch - 1) * epoch_steps, disable=not progress,
               desc=f"train {cfg.model}", unit="step", dynamic_ncols=True,
               smoothing=0)  # the average rate: validation pauses would make a smoothed ETA swing

    def replanned(new: TrainConfig) -> TrainConfig:
        """`new`, whose epochs fit_minutes now goes on to: the bar follows, and config.yaml, before last.pt, so
        that a resume goes on with them."""
        bar.total = epoch_steps * new.epochs
        configs.save(new, out / "config.yaml")
        return new

    for epoch in itertools.count(start_epoch):
        if stopped_early or epoch > cfg.epochs:  # fit_minutes may change cfg.epochs after the first epoch
            break
        started = time.perf_counter()
        generator = torch.Generator(device=device).manual_seed(_epoch_seed(cfg.seed, epoch))
        torch.manual_seed(_epoch_seed(cfg.seed, epoch) + 1)  # dropout draws from the global generator
        order = epoch_order(sample_weight, n, generator, device)
        model.train()
        steps = range((epoch - 1) * epoch_steps, epoch * epoch_steps)
        trained = train_one_epoch(forward, optimizer, x_train, y_train, order, steps, epoch_steps * cfg.epochs, cfg,
                                  generator, loss_weight, average, on_step=lambda: bar.update(1))
        validated = validate(evaluated, val_images, val_labels, device, cfg)
        seconds = time.perf_counter() - started
        train_seconds += seconds
        row = {"epoch": epoch, **trained, **validated, "seconds": round(seconds, 3),
               "images_per_second": round(epoch_images / seconds, 1)}
        if not (math.isfinite(row["train_loss"]) and math.isfinite(row["val_loss"])):
            bar.close()
            # nothing of this epoch is saved: last.pt keeps the previous one, which --resume would only repeat
            where = "in a new --out folder (this one keeps the epochs before)" if last_path.exists() else \
                "(the same --out will do: nothing was saved)"
            if last_path.exists():  # so that evaluate says the run ended here, not that it is still to finish
                run_info["diverged_epoch"] = epoch
                write_json(out / "run.json", run_info)
            raise FerkitError(f"training diverged in epoch {epoch}: the training loss is {row['train_loss']}, the "
                              f"validation loss {row['val_loss']}; start again with a lower learning rate "
                              f"(now --set lr={cfg.lr}) {where}")
        history.append(row)
        if fitted and epoch == 1 and warmup_only(cfg, epoch_steps):
            # the first epoch's own time sizes the run again: exactly, as its warmup does not depend on the epochs
            fitted.update(first_epoch_seconds=round(seconds, 2), epochs_timed=fitted["epochs"],
                          epochs=epochs_that_fit(fitted["minutes"], seconds, fitted["epochs_asked"]))
            resized = fitted["epochs"] != cfg.epochs
            if resized:
                cfg = replanned(dataclasses.replace(cfg, epochs=fitted["epochs"]))
            write_json(out / "run.json", run_info)
            if progress:
                tqdm.write(f"fit_minutes {fitted['minutes']:g}: the first epoch took {seconds:.1f} s, so "
                           f"{cfg.epochs} of {fitted['epochs_asked']} epochs fit")
                if resized:
                    _note_long_warmup(cfg)
        # the guard follows the pace after every epoch, both ways but never past guard_ceiling: a change is exact
        # when the rates so far do not depend on the epochs, and otherwise recorded, so the saved config repeats it
        elif fitted and epoch < cfg.epochs:
            kept, pace = epochs_within_budget(fitted["minutes"], [r["seconds"] for r in history], cfg.epochs,
                                              least=guard_least(cfg.schedule, epoch),
                                              sized=guard_ceiling(fitted))
            if kept != cfg.epochs:
                exact = warmup_only(cfg, epoch_steps, epoch)
                fitted.setdefault("shortened", []).append({
                    "after_epoch": epoch, "from_epochs": cfg.epochs, "epochs": kept, "pace_seconds": round(pace, 2),
                    "spent_seconds": round(train_seconds, 1)})
                fitted["epochs"] = kept
                if progress:
                    how = ("behind time", "ends after") if kept < cfg.epochs else ("back on time", "goes on to")
                    tqdm.write(f"fit_minutes {fitted['minutes']:g}: {how[0]} after epoch {epoch} "
                               f"({train_seconds / 60:.1f} minutes, {pace:.1f} s an epoch), so the run {how[1]} "
                               f"epoch {kept} instead of {cfg.epochs}"
                               + ("" if exact else ", the rest of its learning-rate schedule spread over them"))
                cfg = replanned(dataclasses.replace(cfg, epochs=kept,
                                                    shortened=() if exact else (*cfg.shortened, epoch, cfg.epochs)))
                write_json(out / "run.json", run_info)
        score = row[cfg.select_by]
        improved = score > best_score
        if improved:
            best_score, best_epoch, bad_epochs = score, epoch, 0
        else:
            bad_epochs += 1
        stopped_early = bad_epochs >= cfg.patience and epoch < cfg.epochs
        payload = {
            "model_name": cfg.model, "model_kwargs": cfg.model_kwargs(), "model": evaluated.state_dict(),
            "config": cfg.to_dict(), "classes": list(fdata.EMOTIONS), "epoch": epoch, "metrics": row,
            **dataset.checksums(), "ferkit_version": __version__,
        }
        if improved:
            save_checkpoint(out / "checkpoints" / "best.pt", payload)
        for minutes in cfg.snapshot_minutes:  # accuracy-versus-time figures: the model at each mark
            if train_seconds - seconds <= minutes * 60 < train_seconds:
                save_checkpoint(out / "checkpoints" / f"at_{minutes}min.pt", payload)
        resume_state = {"trained_model": model.state_dict()} if average is not None else {}
        save_checkpoint(last_path, dict(payload, **resume_state, optimizer=optimizer.state_dict(), history=history,
                                        best_score=best_score, best_epoch=best_epoch, bad_epochs=bad_epochs,
                                        train_seconds=train_seconds, stopped_early=stopped_early))
        write_history(out / "history.csv", history)
        bar.set_postfix(epoch=epoch, loss=f"{row['train_loss']:.3f}", val_acc=f"{row['val_acc']:.3f}")
        if progress:
            tqdm.write(f"epoch {epoch:3d}/{cfg.epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}  "
                       f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f} macro-F1 {row['val_macro_f1']:.4f}  "
                       f"lr {row['lr']:.4g}  {seconds:.1f}s{'  *' if improved else ''}")
            if epoch == 1 and not fitted:
                _note_slow_cpu(cfg, device, seconds)
    bar.close()

    from ferkit.visualize import curve_notes, learning_curves

    learning_curves(history, out / "learning_curves.png", best_epoch=best_epoch,
                    title=f"{cfg.model} ({cfg.profile} profile): best validation epoch {best_epoch}",
                    **curve_notes(cfg.to_dict()))
    run_info.update({
        "finished": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "epochs_run": len(history), "best_epoch": best_epoch, "best_" + cfg.select_by: best_score,
        "stopped_early": stopped_early, "train_seconds": round(train_seconds, 1),
        # marks the training never reached: no at_<N>min checkpoint for them
        "snapshots_missed": [m for m in cfg.snapshot_minutes if m * 60 >= train_seconds],
        # all the images over all the time (validation included), not a mean of the epochs' rates,
        # which a slow first epoch would distort
        "train_images_per_second": round(len(history) * epoch_images / train_seconds, 1)
                                   if history else None,
    })
    write_json(out / "run.json", run_info)
    return run_info


def _require_config_of(state: dict[str, Any], saved: TrainConfig, out: Path, changing: tuple[str, ...]) -> None:
    """Stop a resume whose config.yaml was edited since `state` (last.pt) was saved: other widths made
    load_state_dict fail with a traceback, and another lr or augmentation went on in silence with a run that no
    config describes. `changing` may differ: the device, and the epochs that fit_minutes' guard writes into
    config.yaml just before last.pt."""
    trained = state.get("config", {})
    for key, value in saved.to_dict().items():
        if key in trained and key not in changing and trained[key] != value:
            line = configs.key_line(out / "config.yaml", key)
            shown = [",".join(map(str, v)) if isinstance(v, list) else v for v in (value, trained[key])]
            raise FerkitError(f"{out / 'config.yaml'}{f', line {line}' if line else ''}: {key} is {shown[0]}, but "
                              f"the run trained with {shown[1]} (checkpoints/last.pt); a resumed run goes on with the "
                              f"config it started with: set {key} back to {shown[1]}, or train again in another --out")


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params: Any = model.parameters()
    if not cfg.decay_norm_and_bias:  # vectors (batch-norm scales and shifts, biases) apart, without decay
        vectors = [p for p in model.parameters() if p.ndim <= 1]
        params = [{"params": [p for p in model.parameters() if p.ndim > 1]}, {"params": vectors, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        # Nesterov needs momentum: torch refuses nesterov=True with momentum 0, which the config allows
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
                               weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def train_one_epoch(forward: Callable[[torch.Tensor], torch.Tensor], optimizer: torch.optim.Optimizer,
                    x_train: torch.Tensor, y_train: torch.Tensor, order: torch.Tensor, steps: range, total_steps: int,
                    cfg: TrainConfig, generator: torch.Generator, loss_weight: torch.Tensor | None = None,
                    average: WeightAverage | None = None, on_step: Callable[[], Any] | None = None) -> dict[str, float]:
    """One pass over `order` (indices into x_train (N, 1, 48, 48) uint8 and y_train), a batch per step
    of `steps` (the run's global step numbers, which set the learning rate); returns the training
    loss and accuracy, as the network was while it trained, and the last step's learning rate."""
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    loss_sum = torch.zeros((), device=x_train.device)  # summed on the device: no sync per step
    correct = torch.zeros((), device=x_train.device)
    seen, lr = 0, cfg.lr
    for k, global_step in enumerate(steps):
        lr = learning_rate(cfg, global_step, total_steps, len(steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = order[k * cfg.batch_size:(k + 1) * cfg.batch_size]
        x = augment_batch(preprocess(x_train[batch]), cfg, generator)
        y = y_train[batch]
        targets = F.one_hot(y, len(fdata.EMOTIONS)).float()
        x, targets = mix(x, targets, cfg, generator)
        x = x.contiguous(memory_format=memory_format)
        with _autocast(x.device, cfg.amp):
            logits = forward(x)
        if loss_weight is None:
            loss = F.cross_entropy(logits.float(), targets, label_smoothing=cfg.label_smoothing)
        else:
            # each face's loss times its class's weight (a mixed face: its classes' weights, mixed alike), so
            # that a face's best output stays its target. cross_entropy's weight= weighs each class's term
            # instead, the label smoothing's 0.1/7 too, which asked every face for more of the heavy classes:
            # on a Happy face 5% Disgust at imbalance_power 0.5, 18% at 1, for a smoothed target's 1.4%
            loss = (F.cross_entropy(logits.float(), targets, label_smoothing=cfg.label_smoothing, reduction="none")
                    * (targets @ loss_weight)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if average is not None:
            average.update(ema_decay(cfg, global_step))
        loss_sum += loss.detach() * len(batch)
        correct += (logits.argmax(1) == y).sum()
        seen += len(batch)
        if on_step is not None:
            on_step()
    return {"train_loss": float(loss_sum) / seen, "train_acc": float(correct) / seen, "lr": lr}


def validate(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, device: torch.device,
             cfg: TrainConfig) -> dict[str, float]:
    """Loss, accuracy and macro F1 of `model` on the validation faces, without TTA."""
    probs = predict_proba(model, images, device, cfg.eval_batch_size, channels_last=cfg.channels_last, amp=cfg.amp)
    pred = probs.argmax(1)
    return {
        "val_loss": float(F.nll_loss(torch.log(torch.from_numpy(probs).clamp_min(1e-12)), torch.from_numpy(labels))),
        "val_acc": float((pred == labels).mean()),
        "val_macro_f1": macro_f1(labels, pred),
    }


def write_history(path: str | os.PathLike, history: list[dict[str, Any]]) -> None:
    write_csv(path, HISTORY_FIELDS, ([row[field] for field in HISTORY_FIELDS] for row in history))


def run_session(device: str | None, env: dict[str, Any] | None) -> dict[str, Any]:
    """What a run's numbers depend on besides its config: the device, the machine, the library versions and
    ferkit's commit (`env`: what `fileio.environment` recorded)."""
    env = env or {}
    return {"device": device, **{key: env.get(key) for key in SESSION_KEYS if key in env or key not in LATER_KEYS}}


# what run_session compares; LATER_KEYS were recorded from 2026-12-02 on, so an older run lacks them
SESSION_KEYS = ("versions", "git_commit", "platform", "cpu", "cpu_model", "cpu_capability", "gpu")
LATER_KEYS = ("cpu_model", "cpu_capability")


def read_history(path: str | os.PathLike) -> list[dict[str, float]]:
    """The rows of a run's history.csv; a damaged one (a hand edit) is named, not a traceback."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if missing := [name for name in HISTORY_FIELDS if name not in (reader.fieldnames or ())]:
            raise FerkitError(f"{path}: no column {', '.join(missing)} in its header (line 1); restore it or train "
                              "the run again")
        try:
            return [{k: float(v) if k != "epoch" else int(v) for k, v in row.items()} for row in reader]
        except (ValueError, TypeError) as exc:  # TypeError: a short row's missing cells are None
            raise FerkitError(f"{path}: unreadable ({exc}); restore it or train the run again") from None
