"""Training configuration: every default in one place, hardware profiles, strict overrides.

Resolution order: defaults < profile < YAML file < `--set key=value`. Unknown keys are rejected
with the list of known ones (and the closest, when one is close); the resolved config is saved in the
run folder as config.yaml.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

import yaml

from ferkit.errors import FerkitError


@dataclass
class TrainConfig:
    # what to train
    model: str = "cnn"
    profile: str = "cpu"  # cpu | gpu: model size and schedule for the hardware
    widths: tuple[int, ...] = (16, 32, 96, 192)  # cnn: channels per stage (48, 24, 12, 6 px)
    depth: int = 2  # cnn: 3x3 convs per stage (odd with `residual`: one sets the width, pairs get shortcuts)
    residual: bool = False  # cnn: identity shortcuts around pairs of convs
    # branch_relu | resnet: see models.ResidualStage; resnet removed the gpu network's slow start on a CPU
    # stand-in, but led by only 0.3 points of PublicTest on an H200, two seeds each (benchmarks/RESULTS.md)
    residual_block: str = "branch_relu"
    hidden: tuple[int, ...] = (1024, 512)  # mlp: hidden layer widths
    # 0 beat 0.3 at the full cpu budget (+1.5 and +2.8 points of validation accuracy, two seeds;
    # benchmarks/RESULTS.md): augmentation and weight decay are regulariser enough for 16 epochs
    dropout: float = 0.0
    batch_norm: bool = True  # batch norm after every conv (cnn) or hidden layer (mlp)
    # optimisation
    epochs: int = 16
    # > 0: at its start, a run times a few training steps and a validation batch on a copy of the network and
    # trains only as many of `epochs` as fit this many minutes, sized again by the first epoch's own time where
    # that epoch is warmup alone (cosine); config.yaml saves the epochs chosen (and 0 here), so that the saved
    # config repeats the run exactly, as the command cannot on a machine of another speed
    fit_minutes: float = 0.0
    # fit_minutes' guard: (epoch, epochs) for each time a run planned for `epochs` epochs changed them after
    # `epoch` to keep to its minutes (fewer when it fell behind, more when it caught up, never more than the
    # timing at the start allowed): from there the rest of its first learning-rate schedule was spread over the
    # epochs then left. Written by the run into config.yaml, so that the saved config repeats it exactly; ()
    # otherwise
    shortened: tuple[int, ...] = ()
    batch_size: int = 128
    optimizer: str = "sgd"  # sgd (Nesterov momentum) | adamw
    lr: float = 0.05  # peak learning rate
    momentum: float = 0.9
    weight_decay: float = 5e-4
    decay_norm_and_bias: bool = True  # false: batch-norm scales and shifts and biases take no weight decay
    label_smoothing: float = 0.1
    schedule: str = "cosine"  # cosine (linear warmup, cosine decay) | onecycle | constant
    # exponential moving average of the weights, e.g. 0.998 per step, validated and saved in their place.
    # On the cpu profile +2 to +5 points mid-run, nothing at the end of the cosine schedule
    # (benchmarks/RESULTS.md): it pays for runs cut short, so 0 (none) by default
    ema: float = 0.0
    warmup_epochs: float = 1.0  # cosine only: onecycle ramps over its first 30% of steps, constant not at all
    patience: int = 12  # early stopping: epochs without a better validation score
    select_by: str = "val_acc"  # val_acc | val_macro_f1: what "best" means
    # class imbalance (Disgust is 1.5% of training)
    # sampler beat weighted_loss on validation macro F1 at both 8 and 16 epochs (benchmarks/RESULTS.md)
    imbalance: str = "sampler"  # sampler | weighted_loss | none
    imbalance_power: float = 0.5  # class weight = (largest class / class size) ** power
    # augmentation, applied to whole batches on the device
    augment: bool = True
    flip: bool = True
    max_shift: float = 4.0  # pixels
    max_rotate: float = 10.0  # degrees
    max_scale: float = 0.1  # relative zoom in or out
    erase_prob: float = 0.5  # random erasing of one rectangle
    # cnn: train on a random square of this many pixels of each augmented face (0: the whole 48), cheaper by
    # about crop²/48²; validation, testing and prediction see whole faces, which global pooling allows
    train_crop: int = 0
    mixup: float = 0.0  # Beta(alpha, alpha) mixing; 0 turns it off
    cutmix: float = 0.0  # Beta(alpha, alpha) box mixing; 0 turns it off
    tta: str = "flip"  # flip | crops (flip and 4 shifts) | none: what `evaluate --tta` does
    # run
    seed: int = 0
    device: str = "auto"  # auto (cuda when present) | cpu | cuda
    threads: int = 0  # CPU threads; 0 leaves torch's default
    train_limit: int = 0  # use only the first N training images (smoke tests); 0 = all
    val_limit: int = 0  # use only the first N validation images; 0 = all
    channels_last: bool = True
    amp: bool = True  # bfloat16 autocast on CUDA (ignored on CPU)
    compile: bool = False  # torch.compile the model
    eval_batch_size: int = 512
    snapshot_minutes: tuple[int, ...] = ()  # also keep the model as it is after these minutes of training

    def model_kwargs(self) -> dict[str, Any]:
        if self.model == "cnn":
            return {"widths": list(self.widths), "depth": self.depth, "residual": self.residual, "dropout": self.dropout,
                    "batch_norm": self.batch_norm, "residual_block": self.residual_block}
        if self.model == "mlp":
            return {"hidden": list(self.hidden), "dropout": self.dropout, "batch_norm": self.batch_norm}
        return {}

    def to_dict(self) -> dict[str, Any]:
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}


# Where a run executes, not what it computes: a resumed study may take other values of these (a new stage
# uses them); a resumed run takes another device only, which it may need to continue at all (a CPU run's
# numbers depend on its thread count, so a resumed run keeps its threads to end where it would have).
PLACE_KEYS = ("device", "threads")
RESUME_KEYS = ("device",)
RESIDUAL_BLOCKS = ("branch_relu", "resnet")  # models.ResidualStage builds both
MODEL_KEYS = {"cnn": ("widths", "depth", "residual", "residual_block"), "mlp": ("hidden",)}  # one model's shape
MAX_STAGES = 6  # cnn: 48, 24, 12, 6, 3, 1 pixels; a seventh stage would pool 1 pixel to 0

# Each profile overrides only what differs from the defaults above (which are the cpu profile).
PROFILES: dict[str, dict[str, Any]] = {
    "cpu": {},
    "gpu": {
        "widths": (64, 128, 256, 512), "depth": 5, "residual": True, "dropout": 0.3, "epochs": 120,
        "batch_size": 256, "lr": 0.1, "warmup_epochs": 3.0, "patience": 30, "tta": "crops", "eval_batch_size": 2048,
    },
}
_CHOICES = {
    "profile": tuple(PROFILES), "optimizer": ("sgd", "adamw"),
    "schedule": ("cosine", "onecycle", "constant"), "select_by": ("val_acc", "val_macro_f1"),
    "imbalance": ("sampler", "weighted_loss", "none"), "residual_block": RESIDUAL_BLOCKS, "tta": ("flip", "crops", "none"),
    "device": ("auto", "cpu", "cuda"),
}

# key -> (test of one value, the rule in words): every number a user can set is checked here, so that
# a wrong one stops before training instead of deep inside PyTorch, or not at all.
_AT_LEAST_1 = (lambda v: v >= 1, "must be at least 1")
_NOT_NEGATIVE = (lambda v: v >= 0, "must not be negative")
_FRACTION = (lambda v: 0 <= v < 1, "must be in [0, 1)")
_RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    **dict.fromkeys(("epochs", "batch_size", "eval_batch_size", "depth", "patience"), _AT_LEAST_1),
    **dict.fromkeys(("widths", "hidden"), (lambda v: v >= 1, "must hold integers of at least 1")),
    "snapshot_minutes": (lambda v: v >= 0, "must hold minutes that are not negative"),
    "shortened": (lambda v: v >= 1, "must hold epochs of at least 1"),
    **dict.fromkeys(("train_limit", "val_limit"), (lambda v: v >= 0, "must not be negative (0 = all)")),
    # a thread count beyond a machine's made libgomp abort the process on its first operation (1e6, say)
    "threads": (lambda v: 0 <= v <= 1024, "must be in [0, 1024] (0 = torch's choice)"),
    "train_crop": (lambda v: 0 <= v <= 48, "must be in [0, 48]: pixels of a 48-pixel face (0 = the whole face)"),
    **dict.fromkeys(("dropout", "label_smoothing", "momentum", "max_scale", "ema"), _FRACTION),
    "erase_prob": (lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    **dict.fromkeys(("warmup_epochs", "max_shift", "max_rotate", "mixup", "cutmix", "fit_minutes"), _NOT_NEGATIVE),
    # upper bounds far beyond any useful value, where float32 or the sampler would overflow
    "lr": (lambda v: 0 <= v <= 100, "must be in [0, 100]"),
    "imbalance_power": (lambda v: 0 <= v <= 10, "must be in [0, 10]"),
    "weight_decay": (lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    "seed": (lambda v: 0 <= v < 2**32, "must be in [0, 2**32)"),
}


def check_seed(seed: int, flag: str = "--seed") -> None:
    """Stop unless `seed` is one that NumPy and torch take, as the training config's `seed` must be."""
    test, rule = _RANGES["seed"]
    if not test(seed):
        raise FerkitError(f"{flag} {seed} {rule}")


def _parse_value(name: str, text: Any, default: Any) -> Any:
    """Convert a --set string (or a YAML value) to the type of the field's default."""
    if text is None:  # `epochs:` with nothing after it in a YAML file; str() made it 'None' for `tta:` or `widths:`
        raise FerkitError(f"config key {name!r} has no value")
    try:
        if isinstance(default, bool):
            if isinstance(text, bool):
                return text
            lowered = str(text).strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if isinstance(text, bool) and not isinstance(default, str):  # YAML reads `yes` as True, not 1
            raise ValueError
        if isinstance(text, bool):  # `tta: no` in YAML: the word became false before it reached us
            raise FerkitError(f"config key {name!r}: YAML reads an unquoted yes/no/on/off/true/false as {text}; "
                              f"quote the word, e.g. {name}: \"no\"")
        if isinstance(default, tuple):
            # commas or spaces between the items: "16 32" is two widths, not 1632
            items = text if isinstance(text, (list, tuple)) else re.split(r"[,\s]+", str(text).strip().strip("()[]"))
            return tuple(_parse_value(name, v, 0) for v in items if str(v) != "")
        if isinstance(default, (int, float)):
            value = float(text)
            if not math.isfinite(value) or (isinstance(default, int) and value != int(value)):
                raise ValueError
            return int(value) if isinstance(default, int) else value
        return str(text)
    except (TypeError, ValueError):
        kind = "true/false" if isinstance(default, bool) else "comma-separated integers" if isinstance(default, tuple) \
            else "whole number" if isinstance(default, int) else "finite number" if isinstance(default, float) \
            else "text"
        raise FerkitError(f"config key {name!r}: {text!r} is not a valid {kind}") from None


def resolve(profile: str | None = None, config_file: str | os.PathLike | None = None,
            overrides: list[str] | dict[str, Any] | None = None, option: str = "--set", **explicit: Any) -> TrainConfig:
    """Build a TrainConfig from defaults, a profile, a YAML file and key=value overrides (`option`
    names them in messages: --set, or --mlp-set for the study's MLP)."""
    defaults = TrainConfig()
    known = {f.name: getattr(defaults, f.name) for f in fields(TrainConfig)}
    layers: list[tuple[dict[str, str], dict[str, Any]]] = []  # (where each key was set, values)
    if config_file:
        loaded, lines = _read_yaml(Path(config_file))
        layers.append(({key: f"{config_file}, line {line}" for key, line in lines.items()}, loaded))
    if overrides:
        pairs = dict(overrides) if isinstance(overrides, dict) else parse_overrides(overrides, option)
        layers.append((dict.fromkeys(pairs, option), pairs))
    layers.append(({}, {k: v for k, v in explicit.items() if v is not None}))

    for origins, values in layers:
        for key in values:
            if key not in known:
                guess = difflib.get_close_matches(key, known, n=1)
                raise FerkitError(f"{origins.get(key, 'argument')}: unknown config key {key!r}"
                                  + (f" (did you mean {guess[0]!r}?)" if guess else "")
                                  + f"; known keys: {', '.join(known)}")
    # The profile is chosen first: later layers override what it sets.
    chosen, chosen_by = profile, "--profile"
    for origins, values in layers:
        if "profile" in values:
            chosen, chosen_by = values["profile"], origins.get("profile", "argument")
    chosen = chosen or "cpu"
    if chosen not in PROFILES:
        raise FerkitError(f"{chosen_by}: unknown profile {chosen!r}: use one of {', '.join(PROFILES)}")
    resolved = dict(known, **PROFILES[chosen], profile=chosen)
    set_by: dict[str, str] = {}  # where the value each key ends with was given, for the messages

    def where(key: str) -> str:
        return f"{set_by[key]}: " if key in set_by else ""

    for origins, values in layers:
        for key, value in values.items():
            if key in origins:
                set_by[key] = origins[key]
            try:
                resolved[key] = _parse_value(key, value, known[key])
            except FerkitError as exc:
                raise FerkitError(f"{where(key)}{exc}") from None
    for key, choices in _CHOICES.items():
        if resolved[key] not in choices:
            raise FerkitError(f"{where(key)}config key {key!r}: {resolved[key]!r} is not one of {', '.join(choices)}")
    for key, (allowed, rule) in _RANGES.items():
        values = resolved[key] if isinstance(resolved[key], tuple) else (resolved[key],)
        if not all(allowed(v) for v in values):
            shown = ",".join(map(str, values)) if isinstance(resolved[key], tuple) else resolved[key]
            raise FerkitError(f"{where(key)}config key {key!r}: {shown} {rule} (the default is "
                              f"{_shown_default(key)})")
    from ferkit.models import list_models  # models imports this module, so not at the top

    if resolved["model"] not in list_models():
        raise FerkitError(f"{where('model')}config key 'model': unknown model {resolved['model']!r}; known models are "
                          f"{', '.join(list_models())}")
    for model, keys in MODEL_KEYS.items():  # accepted and saved, they would change nothing
        given = [key for key in keys if set_by.get(key) == option]
        if resolved["model"] != model and given:
            # --model (an explicit value) wins over --set model=...
            other = f", or train the {model} (--model {model})" if explicit.get("model") else \
                f", or set model={model}" if option == "--set" else ""
            raise FerkitError(f"{option} {given[0]}=...: shapes the {model}, but this run trains the "
                              f"{resolved['model']}; leave it out{other}")
    if resolved["model"] == "cnn" and not resolved["residual"] and set_by.get("residual_block") == option:
        # the block of residual stages only: without them it was saved, and changed nothing (the cpu profile)
        raise FerkitError(f"{option} residual_block=...: shapes the residual blocks, but this cnn has none "
                          f"(residual=false); leave it out, or set residual=true with an odd depth (the gpu profile "
                          f"uses 5)")
    if resolved["model"] == "cnn" and resolved["residual"] and resolved["depth"] % 2 == 0:
        raise FerkitError(f"config keys 'residual' and 'depth': {residual_depth_message(resolved['depth'])}")
    if resolved["model"] == "cnn" and len(resolved["widths"]) > MAX_STAGES:
        raise FerkitError(f"{where('widths')}config key 'widths': {len(resolved['widths'])} stages, but a 48-pixel face "
                          f"halves after each stage but the last, so at most {MAX_STAGES} fit (48 to 1 pixel)")
    if resolved["model"] == "mlp" and resolved["batch_norm"] and resolved["batch_size"] < 2:
        raise FerkitError(f"{where('batch_size')}config key 'batch_size': the mlp's batch norm needs batches of at "
                          "least 2 faces; raise it, or set batch_norm=false")
    if resolved["model"] == "cnn" and resolved["batch_norm"] and resolved["batch_size"] < 2 \
            and len(resolved["widths"]) == MAX_STAGES:
        raise FerkitError(f"{where('batch_size')}config key 'batch_size': the cnn's last stage of {MAX_STAGES} is 1 "
                          "pixel, where batch norm needs batches of at least 2 faces; raise it, use fewer stages, or "
                          "set batch_norm=false")
    if resolved["train_crop"]:
        _check_train_crop(resolved, where("train_crop"))
    if (changes := resolved["shortened"]) and not _valid_changes(changes, resolved["epochs"]):
        raise FerkitError(f"{where('shortened')}config key 'shortened': {','.join(map(str, changes))} should be empty "
                          f"or pairs of epochs, in order: the epoch after which a run's epochs changed and the epochs "
                          f"planned until then, each such epoch later than the one before and below the epochs planned "
                          f"before and after it (epochs now {resolved['epochs']}); fit_minutes writes it")
    if changes and set_by.get("epochs") == option and set_by.get("shortened") != option:
        # `--config RUN/config.yaml --set epochs=20`: the saved changes replayed the old run's first epochs on its
        # schedule, then went on with 20, a schedule no one asked for
        raise FerkitError(f"{option} epochs={resolved['epochs']}: {where('shortened')}shortened="
                          f"{','.join(map(str, changes))} records how fit_minutes changed an earlier run's epochs, "
                          f"whose schedule this run would replay; add {option} shortened= (empty) for a run of "
                          f"{resolved['epochs']} epochs")
    if changes and resolved["fit_minutes"]:
        # fit_minutes sizes the run again from its start, after which these changes fell at other epochs or broke the
        # order that config.yaml must keep: `--config RUN/config.yaml --set fit_minutes=5` saved one refused back
        raise FerkitError(f"{where('shortened')}config key 'shortened': {','.join(map(str, changes))} records how "
                          f"fit_minutes changed an earlier run's epochs, but fit_minutes={resolved['fit_minutes']:g} "
                          f"sizes this run again; set shortened= (empty) with it, or fit_minutes=0 to repeat that run")
    if not resolved["widths"]:
        raise FerkitError(f"config key 'widths' is empty: give the channels of each stage (the default is "
                          f"{_shown_default('widths')})")
    return TrainConfig(**resolved)


def _check_train_crop(resolved: dict[str, Any], where: str) -> None:
    """Stop where a crop cannot train: an MLP (a weight per pixel of the whole face), no augmentation (of which
    the crop is part), or a crop that the network's pooling would shrink below one pixel."""
    crop = resolved["train_crop"]
    if resolved["model"] != "cnn":
        raise FerkitError(f"{where}config key 'train_crop': the {resolved['model']} takes whole 48x48 faces (one "
                          "input per pixel); leave train_crop at 0")
    if not resolved["augment"]:
        raise FerkitError(f"{where}config key 'train_crop': the crop is part of the augmentation, which augment=false "
                          "turns off; set augment=true, or leave train_crop at 0")
    if crop < (least := 2 ** (len(resolved["widths"]) - 1)):
        raise FerkitError(f"{where}config key 'train_crop': {crop} pixels halve to nothing over "
                          f"{len(resolved['widths'])} stages; use at least {least}")


def _read_yaml(path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """A YAML file of config keys, and the line of each key; a key given twice is refused (YAML
    would silently keep the last)."""
    try:
        loader = yaml.SafeLoader(path.read_text(encoding="utf-8"))
        try:  # what yaml.safe_load does, keeping the node tree for the line of each key
            node = loader.get_single_node()
            values = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except OSError as exc:
        raise FerkitError(f"{path}: cannot read the config file ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise FerkitError(f"{path}: byte {exc.start + 1} is not UTF-8 text; save the file as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise FerkitError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
    if node is None:
        return {}, {}
    if not isinstance(node, yaml.MappingNode):
        raise FerkitError(f"{path}: expected a mapping of key: value")
    lines: dict[str, int] = {}
    for key_node, _ in node.value:
        if key_node.tag != "tag:yaml.org,2002:str":  # `yes:` or `1:`: YAML made it a boolean or a number
            raise FerkitError(f"{path}, line {key_node.start_mark.line + 1}: {_yaml_text(key_node)} is no config key "
                              f"(YAML reads it as {key_node.tag.rsplit(':', 1)[-1]}); keys are names such as epochs")
        if key_node.value in lines:
            raise FerkitError(f"{path}, line {key_node.start_mark.line + 1}: {key_node.value!r} is set twice (also "
                              f"on line {lines[key_node.value]}); keep one")
        lines[key_node.value] = key_node.start_mark.line + 1
    return values, lines


def key_line(path: str | os.PathLike, key: str) -> int | None:
    """The line of `key` in the YAML config file `path`, None where the file does not set it."""
    return _read_yaml(Path(path))[1].get(key)


def _yaml_text(node: yaml.Node) -> str:
    """A YAML node as typed, for a message: a scalar's text, or the kind of a list or mapping."""
    return repr(node.value) if isinstance(node, yaml.ScalarNode) else f"a {node.id}"


def parse_overrides(items: list[str], option: str = "--set") -> dict[str, str]:
    """`key=value` words (of --set or --mlp-set, named `option` in messages) as a dict."""
    pairs = {}
    for item in items:
        if "=" not in item:
            raise FerkitError(f"{option} {item!r}: expected key=value, e.g. {option} epochs=5")
        key, value = (word.strip() for word in item.split("=", 1))
        # the later of two values would win in silence, and a run's config would not be the one the user read
        if pairs.get(key, value) != value:
            raise FerkitError(f"{option} {key} is given twice, as {pairs[key]} and as {value}: keep the one you mean")
        pairs[key] = value
    return pairs


def auto_profile() -> str:
    """The profile for this machine: gpu when PyTorch sees a CUDA GPU, else cpu."""
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def residual_depth_message(depth: int) -> str:
    return (f"a residual stage has an odd depth (one conv that sets the width, then pairs of convs around a "
            f"shortcut), not {depth}; use {depth - 1} or {depth + 1} (the gpu profile uses 5)")


def epoch_changes(shortened: tuple[int, ...], epochs: int) -> list[tuple[int, int, int]]:
    """`shortened` read as fit_minutes' changes: for each, the epoch after which, the epochs planned until then,
    and the epochs planned from then (the next pair's, or the run's `epochs` for the last)."""
    plans = shortened[1::2]
    return list(zip(shortened[::2], plans, (*plans[1:], epochs)))


def _valid_changes(changes: tuple[int, ...], epochs: int) -> bool:
    """Whether `shortened`'s (epoch, planned) pairs can be a run's: each change after a later epoch than the last,
    and before the end planned before it and the one after it."""
    read = epoch_changes(changes, epochs)
    return (len(changes) % 2 == 0 and all(a[0] < b[0] for a, b in zip(read, read[1:]))
            and all(after < min(before, then) for after, before, then in read))


def _shown_default(key: str) -> str:
    value = getattr(TrainConfig, key)
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "empty"
    return str(value)


def save(config: TrainConfig, path: str | os.PathLike) -> None:
    from ferkit.fileio import write_text

    write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


def load(path: str | os.PathLike) -> TrainConfig:
    """Read a saved config.yaml back (all keys present)."""
    return resolve(config_file=path)
