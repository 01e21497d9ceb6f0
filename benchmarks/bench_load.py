"""How fast and how lean is `ferkit.data.load` against the usual ways of reading FER2013?

    python benchmarks/bench_load.py [icml_face_data.csv] [--repeat N]

Measures, for one plain FER2013 CSV (default: ../shared/fer2013/icml_face_data.csv.xz, decompressed
into a temporary file first), one after another in the same run:

  (a) naive:   pandas.read_csv + np.array(s.split(), dtype=np.uint8) per row
  (b) join:    pandas.read_csv + np.fromstring(" ".join(df.pixels), sep=" ")
  (c) ferkit cold:   ferkit.data.load(path, cache=False)  (reads, checksums, validates every value)
  (d) ferkit cached: ferkit.data.load(path, cache_dir=D), D primed by an earlier load

Each measurement runs in a fresh child process that does only that one load, so its peak memory
(resource.getrusage(RUSAGE_SELF).ru_maxrss) belongs to that load alone; the child also reports its
memory after the imports, before loading. The parent stays small (it decompresses in a child too),
since a child starts with its parent's peak RSS as its ru_maxrss. Only one child runs at a time. All four must give the
same images, labels and splits, or the script fails.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_XZ = ROOT.parent / "shared" / "fer2013" / "icml_face_data.csv.xz"
METHODS = {
    "naive": "(a) pandas + per-row split",
    "join": "(b) pandas + join/fromstring",
    "cold": "(c) ferkit load, cold",
    "cached": "(d) ferkit load, cached",
}
SPLITS = ("Training", "PublicTest", "PrivateTest")


# ---------------------------------------------------------------------------------------------
# The child: one load, then its time, peak memory and a fingerprint of the arrays on stdout


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6  # Linux: kB


def _read_with_pandas(path: str):
    import pandas as pd

    df = pd.read_csv(path)
    df.columns = df.columns.str.strip()  # Kaggle's header is "emotion, Usage, pixels"
    return df


def _naive(path: str):
    import numpy as np

    df = _read_with_pandas(path)
    images = np.stack([np.array(s.split(), dtype=np.uint8) for s in df["pixels"]]).reshape(-1, 48, 48)
    return images, df["emotion"].to_numpy(), df["Usage"].map(SPLITS.index).to_numpy()


def _join(path: str):
    import numpy as np

    df = _read_with_pandas(path)
    text = " ".join(df["pixels"])
    if hasattr(np, "fromstring"):
        flat = np.fromstring(text, dtype=np.uint8, sep=" ")
    else:  # NumPy without fromstring
        flat = np.array(text.split(), dtype=np.uint8)
    return flat.reshape(-1, 48, 48), df["emotion"].to_numpy(), df["Usage"].map(SPLITS.index).to_numpy()


def _ferkit(path: str, cache_dir: str | None):
    from ferkit.data import load

    dataset = load(path, cache=cache_dir is not None, cache_dir=cache_dir)
    if cache_dir is not None:
        assert dataset.from_cache, "the cached load parsed the file: the cache was not primed"
    return dataset.images, dataset.labels, dataset.splits


def child(method: str, path: str, cache_dir: str | None) -> None:
    if method in ("naive", "join"):
        import numpy  # noqa: F401
        import pandas  # noqa: F401
    else:
        import ferkit.data  # noqa: F401
    rss_imports = _rss_mb()
    started = time.perf_counter()
    if method == "naive":
        images, labels, splits = _naive(path)
    elif method == "join":
        images, labels, splits = _join(path)
    else:
        images, labels, splits = _ferkit(path, cache_dir if method == "cached" else None)
    seconds = time.perf_counter() - started
    peak = _rss_mb()  # before the fingerprint, which must not count
    import numpy as np

    fingerprint = hashlib.sha256()
    for array, dtype in ((images, np.uint8), (labels, np.int64), (splits, np.int64)):
        fingerprint.update(str(array.shape).encode())
        fingerprint.update(memoryview(np.ascontiguousarray(array, dtype=dtype)).cast("B"))
    print(json.dumps({"seconds": seconds, "peak_mb": peak, "imports_mb": rss_imports,
                      "rows": len(labels), "fingerprint": fingerprint.hexdigest()}))


# ---------------------------------------------------------------------------------------------
# The parent: runs the children one at a time and prints the table


def run_child(method: str, path: Path, cache_dir: Path) -> dict:
    command = [sys.executable, __file__, "--child", method, str(path), "--cache-dir", str(cache_dir)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"bench_load: the {method} child failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def cpu_model() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", nargs="?", help=f"a plain FER2013 CSV (default: {DEFAULT_XZ}, decompressed)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each method; the fastest is shown")
    parser.add_argument("--child", choices=list(METHODS), help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.csv, args.cache_dir)
        return 0

    with tempfile.TemporaryDirectory(prefix="bench_load.") as tmp:
        tmp = Path(tmp)
        if args.csv:
            path = Path(args.csv)
        else:
            if not DEFAULT_XZ.exists():
                sys.exit(f"bench_load: {DEFAULT_XZ} is absent; give a plain FER2013 CSV as argument")
            path = tmp / "icml_face_data.csv"
            print(f"decompressing {DEFAULT_XZ} into {path} ...", flush=True)
            # in a child: xz's 64 MB dictionary must not raise this process's peak RSS, which every
            # child started later inherits as its own starting ru_maxrss
            subprocess.run([sys.executable, "-c", "import lzma, shutil, sys\n"
                            "with lzma.open(sys.argv[1]) as src, open(sys.argv[2], 'wb') as dst:\n"
                            "    shutil.copyfileobj(src, dst, 1 << 22)", str(DEFAULT_XZ), str(path)], check=True)
        with open(path, "rb") as f:  # into the page cache, so that no method pays the first read
            while f.read(1 << 24):
                pass
        size_mb = path.stat().st_size / 1e6
        cache_dir = tmp / "cache"
        print(f"file: {args.csv or DEFAULT_XZ.name + ' (decompressed)'}, {size_mb:.0f} MB")
        print(f"machine: {cpu_model()}, {os.cpu_count()} cores; python {platform.python_version()}; "
              f"one child process per measurement, best of {args.repeat}", flush=True)

        results: dict[str, dict] = {}
        for method in METHODS:
            if method == "cached":  # prime the cache (untimed), so that every timed run is a second load
                subprocess.run([sys.executable, "-c", "import sys; from ferkit.data import load; "
                                "load(sys.argv[1], cache_dir=sys.argv[2])", str(path), str(cache_dir)],
                               check=True)
            runs = [run_child(method, path, cache_dir) for _ in range(args.repeat)]
            best = min(runs, key=lambda r: r["seconds"])
            best["peak_mb"] = max(r["peak_mb"] for r in runs)
            results[method] = best
            print(f"  {METHODS[method]}: {best['seconds']:.2f} s", flush=True)

    fingerprints = {r["fingerprint"] for r in results.values()}
    if len(fingerprints) != 1:
        sys.exit("bench_load: the methods disagree on the arrays: " + json.dumps(results, indent=1))

    cold = results["cold"]["seconds"]
    print()
    print(f"{'method':32}{'seconds':>9}{'peak RSS MB':>13}{'after imports MB':>18}{'ferkit cold faster by':>23}")
    for method, label in METHODS.items():
        r = results[method]
        ratio = f"{r['seconds'] / cold:.1f}x" if method in ("naive", "join") else ""
        print(f"{label:32}{r['seconds']:>9.2f}{r['peak_mb']:>13.0f}{r['imports_mb']:>18.0f}{ratio:>23}")
    rows = results["cold"]["rows"]
    print(f"\nall four give the same {rows:,} images, labels and splits")
    checks = [
        ("cold validated load <= 3 s", cold <= 3.0, f"{cold:.2f} s"),
        (">= 4x faster than the naive way", results["naive"]["seconds"] / cold >= 4,
         f"{results['naive']['seconds'] / cold:.1f}x"),
        ("cached load <= 0.3 s", results["cached"]["seconds"] <= 0.3, f"{results['cached']['seconds']:.2f} s"),
        ("peak memory of the cold load < 1 GB", results["cold"]["peak_mb"] < 1000,
         f"{results['cold']['peak_mb']:.0f} MB"),
    ]
    for name, ok, value in checks:
        print(f"  {'PASS' if ok else 'FAIL'}  {name}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
