"""The `ferkit` command: a thin layer over the Python API; each sub-command calls one function."""

from __future__ import annotations

import argparse
import errno
import io
import os
import shlex
import sys
from pathlib import Path
from typing import Callable

from ferkit.errors import FerkitError


def _cmd_data(args: argparse.Namespace) -> None:
    from ferkit.data import counts_table, summarize

    summary = summarize(args.path, args.out, seed=args.seed, cache=not args.no_cache)
    print(f"{summary['source']}: {summary['rows']:,} faces, sha256 {summary['sha256'][:16]}..., "
          f"loaded in {summary['load_seconds']:.2f} s{' (cache)' if summary['from_cache'] else ''}")
    print(counts_table(summary["counts"]))
    for note in summary["notes"]:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {args.out}/summary.json, samples.png, class_balance.png")


def _cmd_train(args: argparse.Namespace) -> None:
    from ferkit import config
    from ferkit.train import train

    if args.resume and not (args.config or args.model or args.profile):
        # a resume continues with the run's own config.yaml: train() refuses any --set but the device
        cfg = config.parse_overrides(args.set) or None
    else:  # train() refuses these on a resume too
        cfg = config.resolve(profile=args.profile or config.auto_profile(), config_file=args.config,
                             overrides=args.set, model=args.model)
        if args.profile and cfg.profile != args.profile:  # the file's or --set's profile won in silence
            where = "--set profile=..." if "profile" in config.parse_overrides(args.set) else f"--config {args.config}"
            raise FerkitError(f"--profile {args.profile}: {where} chooses the {cfg.profile} profile, which "
                              f"overrides it; drop one of them")
    info = train(args.data, args.out, cfg, resume=args.resume)
    stopped = (f"stopped early after {info['epochs_run']} epochs (no better validation score for "
               f"{info['epochs_run'] - info['best_epoch']}); " if info.get("stopped_early") else "")
    print(f"best epoch {info['best_epoch']} of {info['epochs_run']}; {stopped}{info['train_seconds']:.0f} s of "
          f"training; run in {args.out}")
    if info.get("snapshots_missed"):
        print(f"note: no {', '.join(f'at_{m}min' for m in info['snapshots_missed'])} checkpoint: the training took "
              f"{info['train_seconds']:.0f} s", file=sys.stderr)


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from ferkit.evaluate import evaluate

    metrics = evaluate(args.run_dir, split=args.split, tta=args.tta, data=args.data, out=args.out,
                       checkpoint=args.checkpoint, device=args.device)
    _print_metrics(metrics)
    if args.tta and metrics.get("tta") == "none":
        print("note: --tta: this run's tta setting is none, so each face was classified once", file=sys.stderr)


def _cmd_ensemble(args: argparse.Namespace) -> None:
    from ferkit.evaluate import ensemble

    metrics = ensemble(args.members, args.out, split=args.split, tta=args.tta, data=args.data, device=args.device)
    for member in metrics["members"]:
        print(f"  {member['run']} ({member['source']}, TTA {member['tta']}): accuracy {member['accuracy']:.4f}, "
              f"macro F1 {member['macro_f1']:.4f}")
    _print_metrics(metrics)


def _cmd_features(args: argparse.Namespace) -> None:
    from ferkit.features import features

    result = features(args.run_dir, args.data, args.out, n=args.n, seed=args.seed, embedding=args.embedding,
                      device=args.device, threads=args.threads)
    print(f"{result['model']} on {result['split']} ({result['faces']} faces): accuracy {result['accuracy']:.4f}; "
          f"{len(result['chosen'])} faces drawn; {len(result['figures'])} figures, features.json and embedding.csv "
          f"in {args.out} ({result['seconds']['total']:.0f} s)")


def _cmd_run(args: argparse.Namespace) -> None:
    from ferkit.pipeline import run_study

    record = run_study(args.data, args.out, profile=args.profile, cnn_overrides=args.set, mlp_overrides=args.mlp_set)
    results = record["results"]
    print(f"\nOn PrivateTest: CNN (TTA {results.get('cnn_tta')}) accuracy {results['cnn_test_accuracy_tta']:.4f}, "
          f"macro F1 {results['cnn_test_macro_f1_tta']:.4f}; MLP (TTA {results.get('mlp_tta')}) accuracy "
          f"{results['mlp_test_accuracy_tta']:.4f}, macro F1 {results['mlp_test_macro_f1_tta']:.4f}")
    print(f"everything is in {args.out}; the report is {args.out}/report/report.pdf")


def _cmd_predict(args: argparse.Namespace) -> None:
    from ferkit.predict import predict

    table, messages = predict(args.model, args.inputs, out=args.out, annotate=args.annotate,
                              detect=not args.no_detect, tta=args.tta)
    for message in messages:
        print(message, file=sys.stderr)
    if args.out:
        print(f"{len(table)} face(s) written to {args.out}")
    else:
        print(table.to_csv(index=False), end="")


def _cmd_export(args: argparse.Namespace) -> None:
    from ferkit.export import export_onnx

    path = export_onnx(args.run_dir, args.onnx)
    print(f"wrote {path} and {path.with_suffix('.json')} (input: pixels 0-255, float32 (batch, 1, 48, 48))")


def _print_metrics(metrics: dict) -> None:
    print(f"{metrics['name']} on {metrics['split']} ({metrics['n']} faces, TTA {metrics['tta']}): "
          f"accuracy {metrics['accuracy']:.4f}, macro F1 {metrics['macro_f1']:.4f}, "
          f"weighted F1 {metrics['weighted_f1']:.4f}; files in {metrics['folder']}")
    if metrics.get("note"):
        print(f"note: {metrics['note']}", file=sys.stderr)


def _cmd_label(args: argparse.Namespace) -> None:
    from ferkit.label import DEFAULT_PORT, export_with_truth, serve

    if args.export_with_truth:
        # the server's options: given here they would be ignored in silence
        serving = [f"--{name}" for name, default in (("n", None), ("seed", None), ("host", "127.0.0.1"),
                                                      ("port", DEFAULT_PORT)) if getattr(args, name) != default]
        if serving:
            one = len(serving) == 1
            raise FerkitError(f"{' and '.join(serving)} set{'s' if one else ''} the labelling server, which "
                              f"--export-with-truth does not start; leave {'it' if one else 'them'} out (the answers "
                              "keep their sample)")
        count = export_with_truth(args.data, args.out, args.export_with_truth)
        print(f"wrote {args.export_with_truth}: {count} answers of {args.out} with the true labels")
        return
    serve(args.data, args.out, n=args.n, seed=args.seed, host=args.host, port=args.port)


def _cmd_compare(args: argparse.Namespace) -> None:
    from ferkit.compare import compare, model_label

    result = compare(args.run_dir, args.labels, args.out, data=args.data, device=args.device, tta=args.tta,
                     resamples=args.bootstrap, seed=args.seed)
    network = model_label(result)
    print(f"{result['n']} faces ({result['sample_n']} in the sample); 95% intervals in brackets")
    for key, name in (("human", "human"), ("cnn", network)):
        scores = result[key]
        acc_low, acc_high = scores["accuracy_ci95"]
        f1_low, f1_high = scores["macro_f1_ci95"]
        print(f"  {name:5s} accuracy {scores['accuracy']:.3f} [{acc_low:.3f}, {acc_high:.3f}]  "
              f"macro F1 {scores['macro_f1']:.3f} [{f1_low:.3f}, {f1_high:.3f}]")
    kappas = {k: "n/a" if v is None else f"{v:.3f}" for k, v in result["kappa"].items()}
    test = result["mcnemar"]
    print(f"  kappa human-truth {kappas['human_vs_truth']}, human-{network} {kappas['human_vs_cnn']}; McNemar exact "
          f"p = {test['p_value']:.4g} (human right, {network} wrong: {test['human_correct_cnn_wrong']}; the reverse: "
          f"{test['human_wrong_cnn_correct']})")
    print(f"wrote {args.out}/comparison.json, confusion_matrices.png, disagreements.png, faces.csv")


def _cmd_report(args: argparse.Namespace) -> None:
    from ferkit.report import build_report

    result = build_report(args.run_dir, args.out, mlp=args.mlp, features=args.features, compare=args.compare)
    extras = f" + {result['extra_pages']:.1f} of extras" if result["pages"] > result["main_pages"] else ""
    print(f"wrote {result['pdf']} ({result['main_pages']} pages{extras}), {result['html']}, {result['md']}")
    for note in result["notes"]:
        print(note)


def _not_empty(text: str) -> str:
    if not text:  # Path("") is the current folder: `predict RUN "$PHOTO"` would classify everything in it
        raise argparse.ArgumentTypeError("empty (an unset shell variable?)")
    return text


class _Parser(argparse.ArgumentParser):
    """Every text argument (paths, KEY=VALUE) must be non-empty."""

    def add_argument(self, *args, **kwargs):
        if kwargs.get("action") in (None, "append") and "type" not in kwargs and "choices" not in kwargs:
            kwargs["type"] = _not_empty
        return super().add_argument(*args, **kwargs)


# Ctrl-C in these keeps what was done, and the same command goes on from there
_RESUMABLE = {"run": "resumes the study", "label": "resumes the labelling"}


def build_parser() -> argparse.ArgumentParser:
    from ferkit import __version__

    parser = argparse.ArgumentParser(prog="ferkit", description="Facial-expression recognition on FER2013.")
    parser.add_argument("--version", action="version", version=f"ferkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    def command(name: str, handler: Callable, help: str) -> argparse.ArgumentParser:
        # no abbreviated options: run.json records the command as typed, and its report edits that command's --out
        p = sub.add_parser(name, help=help, description=help, allow_abbrev=False)
        p.set_defaults(handler=handler, command_parser=p)
        return p

    p = command("data", _cmd_data, "load and validate a dataset; write its summary, sample faces and class balance")
    p.add_argument("path", help="icml_face_data.csv or fer2013.csv (plain, .gz, .xz, .bz2, .zip) or the image-folder "
                   "export (a folder, .zip, .tar, .tar.gz or .tar.xz)")
    p.add_argument("--out", required=True, help="folder for summary.json, samples.png, class_balance.png")
    p.add_argument("--seed", type=int, default=0, help="which sample faces to show")
    p.add_argument("--no-cache", action="store_true", help="parse the file even if a cached copy exists")

    p = command("train", _cmd_train, "train a model on Training, validating on PublicTest every epoch")
    p.add_argument("data", help="the dataset file or folder")
    p.add_argument("--out", required=True, help="the run folder (config, checkpoints, history, figures)")
    p.add_argument("--model", help="cnn (default) or mlp")
    p.add_argument("--profile", choices=("cpu", "gpu"), help="model size and schedule (default: gpu if CUDA is present)")
    p.add_argument("--config", help="a YAML file of config keys")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one config key (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out with its saved "
                   "config.yaml (only --set device=... may be given)")

    for name, handler, text in (("evaluate", _cmd_evaluate, "evaluate a run's checkpoint (the best by default)"),
                                ("ensemble", _cmd_ensemble, "average the probabilities of several runs")):
        p = command(name, handler, text)
        if name == "evaluate":
            p.add_argument("run_dir", help="the run folder `ferkit train --out` wrote")
            p.add_argument("--out", help="folder for the files (default RUN_DIR/eval/SPLIT[-tta][-CHECKPOINT]); one "
                                                "holding another model's evaluation is refused")
            p.add_argument("--checkpoint", default="best",
                           help="best, last, or a snapshot such as at_4min, of this run")
        else:
            p.add_argument("members", nargs="+", metavar="MEMBER",
                           help="a run folder, or an evaluation folder such as RUN/eval/test-tta whose "
                                "predictions.csv is averaged as saved")
            p.add_argument("--out", required=True, help="folder for the ensemble's evaluation files (not a member, "
                                                             "nor one holding an evaluation of other models)")
        p.add_argument("--split", choices=("test", "val"), default="test",
                       help="test = PrivateTest, val = PublicTest (it chose the best epoch: optimistic)")
        p.add_argument("--tta", action="store_true", help="test-time augmentation (the run's tta setting" + (
            "; saved predictions are used as they are)" if name == "ensemble" else ")"))
        p.add_argument("--data", help="the dataset (default: the file the run was trained on)")
        p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))

    p = command("features", _cmd_features, "what a CNN run's last conv layer sees on PrivateTest: activation maps, "
                "Grad-CAM, emotion-selective channels, a 2-D map of the penultimate features")
    p.add_argument("run_dir", help="a CNN run folder")
    p.add_argument("--data", help="the dataset (default: the file the run was trained on)")
    p.add_argument("--out", required=True, help="folder for the figures, features.json and embedding.csv")
    p.add_argument("--n", type=int, default=4, help="faces per emotion, correctly and wrongly classified, 1 to 16 (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="which faces to show; the t-SNE seed")
    p.add_argument("--embedding", choices=("tsne", "pca"), default="tsne",
                   help="the 2-D map: PCA to 50 then t-SNE (default), or PCA only")
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"),
                   help="default cpu, unlike the other commands' auto: pass auto (or cuda) to use a GPU")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice; 1 is much "
                   "faster on a machine that other jobs keep busy)")

    p = command("run", _cmd_run, "the whole study: data, CNN, MLP (each evaluated), features, report (resumable)")
    p.add_argument("data", help="the dataset file or folder")
    p.add_argument("--out", required=True, help="the study folder")
    p.add_argument("--profile", choices=("cpu", "gpu"), help="default: a resumed study's own profile; for a new one, "
                   "gpu if CUDA is present, else cpu")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a CNN config key (a "
                   "resumed study refuses other values, device and threads aside)")
    p.add_argument("--mlp-set", action="append", default=[], metavar="KEY=VALUE", help="override an MLP config key")

    p = command("predict", _cmd_predict, "classify the faces in your own photos")
    p.add_argument("model", help="a run folder (its best checkpoint) or a checkpoint file")
    p.add_argument("inputs", nargs="+", help="image files or folders (searched recursively for .jpg, .jpeg, .png, "
                   ".bmp, .webp, .tif, .tiff); each photo is classified once")
    p.add_argument("--out", help="CSV with one row per face (default: print it); not an image or a photo given")
    p.add_argument("--annotate", help="folder, outside the photos' own, for copies of the photos with boxes and "
                   "labels drawn; a rerun replaces only its own copies (listed in .ferkit-annotated.json)")
    p.add_argument("--no-detect", action="store_true", help="each input is already a face crop")
    p.add_argument("--tta", action="store_true", help="test-time augmentation: the run's tta setting (flips, and "
                   "shifts for crops)")

    p = command("export", _cmd_export, "export a run's best model to ONNX, with a .json sidecar beside it")
    p.add_argument("run_dir", help="a run folder or a checkpoint file")
    p.add_argument("--onnx", required=True, help="the .onnx file to write; its sidecar takes the same name with .json")

    p = command("label", _cmd_label, "label PrivateTest faces by hand in a local web page (resumable)")
    p.add_argument("data", help="the dataset file or folder")
    p.add_argument("--out", required=True, help="the answers' CSV (its sample is kept beside it in OUT.json, its lock "
                   "in OUT.lock)")
    p.add_argument("--n", type=int, help="how many faces to label (default 100; resuming: the recorded n)")
    p.add_argument("--seed", type=int, help="which faces, in which order (default 0; resuming: the recorded seed)")
    p.add_argument("--host", default="127.0.0.1",
                   help="IPv4 address to listen on (default 127.0.0.1: this computer only)")
    p.add_argument("--port", type=int, default=8765, help="port to listen on (0 picks a free one; default %(default)s)")
    p.add_argument("--export-with-truth", metavar="CSV", help="write the answers joined with the true labels to CSV "
                   "and exit (no server)")

    p = command("compare", _cmd_compare, "compare human labels with a run's CNN on the same faces")
    p.add_argument("run_dir", help="the run folder of the CNN")
    p.add_argument("labels", help="the labels CSV written by `ferkit label`")
    p.add_argument("--out", required=True, help="folder for comparison.json and the figures")
    p.add_argument("--data", help="the labelled dataset (default: the file recorded beside the labels, else the "
                   "run's data file)")
    p.add_argument("--tta", action="store_true", help="test-time augmentation for the CNN (the run's tta setting)")
    p.add_argument("--bootstrap", type=int, default=2000, metavar="N", help="bootstrap resamples (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))

    p = command("report", _cmd_report, "write report.pdf, report.html and report.md of an evaluated run")
    p.add_argument("run_dir", help="the run folder (evaluated with `ferkit evaluate RUN_DIR --tta`)")
    p.add_argument("--mlp", metavar="RUN_DIR", help="an evaluated MLP run to compare with (extras)")
    p.add_argument("--features", metavar="DIR", help="the output folder of `ferkit features` (extras; a CNN run "
                   "only)")
    p.add_argument("--compare", metavar="DIR", help="the output folder of `ferkit compare` (extras)")
    p.add_argument("--out", required=True, help="folder for report.pdf, report.html, report.md and figures/ "
                   "(not inside the --features or --compare folder)")
    return parser


# What to do about the system's refusals that a user can mend
_ELSEWHERE = "; choose a place you may write to (or read from)"
_WAY_OUT = {errno.EACCES: _ELSEWHERE, errno.EPERM: _ELSEWHERE,
            errno.EROFS: "; the disk is read-only: choose another place",
            errno.ENOSPC: "; the disk is full: free some space, or choose another disk",
            errno.ENOENT: "; check the path"}


def _unrecognized(extra: list[str], args: argparse.Namespace) -> str:
    """argparse's message for words no option took, with the way to write what the user meant: a config key
    as an option of its own (`--epochs 2`), or a --set value after a space (`--set epochs 2`)."""
    from dataclasses import fields

    from ferkit.config import TrainConfig

    message = f"unrecognized arguments: {' '.join(extra)}"
    options = [option for option in ("set", "mlp_set") if hasattr(args, option)]
    if not options:
        return message
    flags = " (or --mlp-set, for the MLP)" if "mlp_set" in options else ""
    for option in options:  # `--set epochs 2`: argparse took `epochs` as the value and left `2`
        if spaced := next((item for item in getattr(args, option) if "=" not in item), None):
            flag = "--" + option.replace("_", "-")
            return f"{message}; write {flag} {spaced}={extra[0]}, with no space around the ="
    keys = {f.name for f in fields(TrainConfig)}
    for i, word in enumerate(extra):
        key, _, value = word.lstrip("-").partition("=")
        if word.startswith("--") and key.replace("-", "_") in keys:
            value = value or (extra[i + 1] if i + 1 < len(extra) else "VALUE")
            return f"{message}; a config key goes through --set: --set {key.replace('-', '_')}={value}{flags}"
    return message


def main(argv: list[str] | None = None) -> int:
    args, extra = build_parser().parse_known_args(argv)
    if extra:
        args.command_parser.error(_unrecognized(extra, args))
    if isinstance(sys.stdout, io.TextIOWrapper):
        # a file name that is not UTF-8 is printed as the bytes it has, as the files ferkit writes hold it: a UTF-8
        # locale's stdout is strict, and such a name raised UnicodeEncodeError once the work was done
        sys.stdout.reconfigure(errors="surrogateescape")
    try:
        args.handler(args)
    except FerkitError as exc:
        print(f"ferkit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `ferkit data ... | head -1`: the reader has what it wanted, and the files are written
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's flush at exit would fail again
        return 0
    except OSError as exc:  # a path the system refuses (no space, no permission, a file for a folder): no traceback
        where = f"{exc.filename}: " if exc.filename else ""
        todo = _WAY_OUT.get(exc.errno or 0, "")
        print(f"ferkit {args.command}: error: {where}{exc.strerror or exc}{todo}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # train refuses a second start in a run folder that has a checkpoint: name the flag that continues it
        resumable = args.command == "train" and (Path(args.out) / "checkpoints" / "last.pt").exists()
        if resumable:
            again = f"`ferkit train {shlex.quote(args.data)} --out {shlex.quote(args.out)} --resume` continues it"
        elif args.command in _RESUMABLE:
            again = f"the same command {_RESUMABLE[args.command]}"
        else:
            again = "the same command starts it again"
        print(f"\nferkit {args.command}: interrupted; {again}", file=sys.stderr)
        return 130
    return 0
