"""This checkout's `heimdall bench pipeline` and `heimdall bench model` against another commit's, interleaved.

Each round runs both trees' benches back to back (the order alternates from round to round), each in its own
process with its own tree first on ``sys.path``, so machine load falls on both alike. It prints the median of
each figure per tree and this tree's figure over the other's: a ratio near 1 means no change beyond the noise
that the spread across rounds shows. Use it when a change moves code around and must not cost speed.

    .venv/bin/python benchmarks/bench_against_tree.py --ref c578c3f --rounds 5
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Figure name -> (bench, regular expression with one group: the number).
FIGURES = {
    "pipeline CPU per real-time second (cores)": ("pipeline", r"CPU per real-time second\s+([0-9.]+)"),
    "pipeline per-window p50 CPU (ms)": ("pipeline", r"per-window processing\s+p50 ([0-9.]+) ms"),
    "pipeline per-window p99 CPU (ms)": ("pipeline", r"per-window processing\s+p50 [0-9.]+ ms\s+p99 ([0-9.]+) ms"),
    # The baseline changed on 2026-12-06 (numpy's FFT over one tiled array -> the best single-thread FFT over the
    # same blocks), and the CPU figures went from the main thread's to the process's: compare across that date
    # with care.
    "pipeline / FFT baseline": ("pipeline", r"pipeline / (?:raw|best) FFT\s+([0-9.]+)"),
    "model p50 (ms)": ("model", r'"p50_ms":\s*([0-9.]+)'),
    "model p99 (ms)": ("model", r'"p99_ms":\s*([0-9.]+)'),
}


def bench_commands(args) -> dict[str, list[str]]:
    return {
        "pipeline": ["bench", "pipeline", "--receivers", str(args.receivers), "--rate", str(args.rate),
                     "--windows", str(args.windows)],
        "model": ["bench", "model", "--receivers", str(args.receivers), "--iterations", str(args.iterations), "--json"],
    }


def run_bench(tree: Path, argv: list[str]) -> str:
    env = dict(os.environ, PYTHONPATH=str(tree))
    done = subprocess.run([sys.executable, "-m", "streamer", *argv], cwd=tree, env=env, capture_output=True,
                          text=True, timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"{tree}: heimdall {' '.join(argv)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    return done.stdout + done.stderr


def figures_of(output: str, bench: str) -> dict[str, float]:
    found = {}
    for name, (kind, pattern) in FIGURES.items():
        if kind != bench:
            continue
        match = re.search(pattern, output)
        if match is None:
            raise SystemExit(f"bench {bench}: no {name!r} in its output:\n{output[-2000:]}")
        found[name] = float(match.group(1))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", required=True, help="commit to compare with (checked out into a temporary worktree)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--receivers", type=int, default=7)
    parser.add_argument("--rate", type=float, default=2.4e6)
    parser.add_argument("--windows", type=int, default=40)
    parser.add_argument("--iterations", type=int, default=2000)
    args = parser.parse_args(argv)
    commands = bench_commands(args)
    with tempfile.TemporaryDirectory(prefix="heimdall-bench-ref-") as scratch:
        other = Path(scratch) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(other), args.ref], check=True)
        try:
            trees = {"this": ROOT, args.ref: other}
            results: dict[str, dict[str, list[float]]] = {t: {n: [] for n in FIGURES} for t in trees}
            for r in range(args.rounds):
                order = list(trees) if r % 2 == 0 else list(trees)[::-1]
                for label in order:
                    for bench, bench_argv in commands.items():
                        for name, value in figures_of(run_bench(trees[label], bench_argv), bench).items():
                            results[label][name].append(value)
                print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(other)], check=False)
    print(f"this tree against {args.ref}: {args.rounds} interleaved rounds, {args.receivers} receivers x "
          f"{args.rate / 1e6:g} MS/s, {args.windows} windows; model {args.iterations} iterations")
    print(f"  {'figure':44s} {'this (median, range)':>26s} {args.ref + ' (median, range)':>30s} {'ratio':>7s}")
    for name in FIGURES:
        mine, theirs = results["this"][name], results[args.ref][name]
        ratio = statistics.median(mine) / statistics.median(theirs)
        print(f"  {name:44s} {statistics.median(mine):9.3f} ({min(mine):.3f}-{max(mine):.3f}) "
              f"{statistics.median(theirs):12.3f} ({min(theirs):.3f}-{max(theirs):.3f}) {ratio:7.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
