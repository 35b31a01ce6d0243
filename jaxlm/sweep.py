"""Hyperparameter sweeps: an experiment file's `get_sweep()` -> trials, run N at a time, results in one table.

    jaxlm sweep --config experiments/sweep_FILE.py --workdir DIR [--parallel N] [--dry-run] [--config.F=V ...]

`get_sweep()` returns a dict:

    variant     the get_config() variant every trial starts from ('' = the default)
    grid        {config field: [values]}: every combination
    random      {config field: ('log_uniform' | 'uniform' | 'int', low, high) or ('choice', [values])}
    num_random  samples of the random fields (drawn once from `random_seed`, crossed with the grid)
    random_seed the seed of those draws
    seeds       [config.train.seed of each repetition]
    metric      what to compare, a dotted path into each trial's results.json (e.g. 'test.accuracy')
    mode        'max' or 'min': which way `metric` is better

Each trial is a `jaxlm train` subprocess in DIR/<trial>/run, its output in DIR/<trial>/log.txt and
its outcome in DIR/<trial>/trial.json. Run again, the sweep skips finished trials and resumes the others from
their checkpoints (each trial's own workdir); a crashed trial is reported and the others go on. SIGTERM or
Ctrl-C stops the running trials at their next step with a checkpoint. The results: DIR/results.csv (one row
per trial), DIR/summary.csv (printed: the median over seeds of each setting), DIR/sweep.png.
"""

from __future__ import annotations

import csv
import importlib.util
import itertools
import json
import math
import pathlib
import random
import shlex
import signal
import statistics
import subprocess
import sys
import time
from typing import Any

from jaxlm import config as jaxlm_config
from jaxlm import storage
from jaxlm import workdir as jaxlm_workdir

KEYS = {"variant", "grid", "random", "num_random", "random_seed", "seeds", "metric", "mode"}
DISTRIBUTIONS = ("log_uniform", "uniform", "int", "choice")


def load_spec(path: str) -> dict:
    """The validated `get_sweep()` of an experiment file."""
    file = pathlib.Path(path)
    if not file.is_file():
        raise jaxlm_config.ConfigError(f"--config {path}: no such file")
    module_spec = importlib.util.spec_from_file_location(f"jaxlm_sweep_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_sweep"):
        raise jaxlm_config.ConfigError(f"{file}: defines no get_sweep() (see jaxlm/sweep.py for its fields)")
    spec = dict(module.get_sweep())
    unknown, missing = sorted(set(spec) - KEYS), sorted(KEYS - set(spec))
    if unknown or missing:
        raise jaxlm_config.ConfigError(f"{file}: get_sweep() has unknown keys {unknown} and lacks {missing}; "
                                       f"expected {sorted(KEYS)}")
    if spec["mode"] not in ("max", "min"):
        raise jaxlm_config.ConfigError(f"{file}: get_sweep()['mode']={spec['mode']!r}: expected 'max' or 'min'")
    for field, dist in spec["random"].items():
        why = _bad_distribution(dist)
        if why:
            raise jaxlm_config.ConfigError(f"{file}: get_sweep()['random'][{field!r}]={dist!r}: {why}")
    if not spec["seeds"]:
        raise jaxlm_config.ConfigError(f"{file}: get_sweep()['seeds'] is empty")
    return spec


def _bad_distribution(dist) -> str | None:
    """What is wrong with a distribution of get_sweep()['random'], or None."""
    if not isinstance(dist, (tuple, list)) or not dist or dist[0] not in DISTRIBUTIONS:
        return f"expected a tuple whose first item is one of {DISTRIBUTIONS}"
    kind, *args = dist
    if kind == "choice":
        return None if len(args) == 1 and isinstance(args[0], (list, tuple)) and args[0] else \
            "expected ('choice', [value, ...]) with at least one value"
    if len(args) != 2 or not all(isinstance(a, (int, float)) and math.isfinite(a) for a in args) or args[0] > args[1]:
        return f"expected ({kind!r}, low, high) with finite numbers low <= high"
    if kind == "int" and not all(isinstance(a, int) for a in args):
        return "expected ('int', low, high) with integers"
    if kind == "log_uniform" and args[0] <= 0:
        return "expected ('log_uniform', low, high) with 0 < low <= high"
    return None


def _draw(rng: random.Random, dist) -> Any:
    kind, *args = dist
    if kind == "choice":
        return rng.choice(list(args[0]))
    low, high = args
    if kind == "int":
        return rng.randint(low, high)
    value = math.exp(rng.uniform(math.log(low), math.log(high))) if kind == "log_uniform" else rng.uniform(low, high)
    return float(f"{value:.3g}")  # readable trial names; three digits are finer than any sweep resolves


def _text(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def trials(spec: dict) -> list[dict]:
    """[{'name', 'fields': {config field: value}, 'seed'}] of a spec: grid x random samples x seeds."""
    grid = [dict(zip(spec["grid"], values)) for values in itertools.product(*spec["grid"].values())]
    rng = random.Random(spec["random_seed"])
    samples = [{f: _draw(rng, d) for f, d in spec["random"].items()} for _ in range(spec["num_random"])] or [{}]
    settings = [{**g, **s} for g in grid for s in samples]
    fields = [*spec["grid"], *spec["random"]]
    short = {f: f.rsplit(".", 1)[-1] for f in fields}
    if len(set(short.values())) < len(fields):  # two fields end alike: name trials by full paths
        short = {f: f for f in fields}
    out = []
    for setting in settings:
        for seed in spec["seeds"]:
            parts = [f"{short[f]}={_text(v)}" for f, v in setting.items()] + [f"seed={seed}"]
            out.append({"name": ",".join(parts).replace("/", "_"), "fields": setting, "seed": seed})
    return out


class Trial:
    """One trial's directory: DIR/<name>/{run/, log.txt, trial.json}."""

    def __init__(self, root: pathlib.Path, trial: dict, config_spec: str, overrides: list[str]):
        self.name, self.fields, self.seed = trial["name"], trial["fields"], trial["seed"]
        self.dir = root / self.name
        self.workdir = self.dir / "run"
        assignments = overrides + [f"{k}={_text(v)}" for k, v in self.fields.items()] + [f"train.seed={self.seed}"]
        jaxlm_config.override(jaxlm_config.load(config_spec), assignments)  # checks every field
        self.command = [sys.executable, "-m", "jaxlm.cli", "train", "--config", config_spec,
                        "--workdir", str(self.workdir), *(f"--config.{a}" for a in assignments)]
        self.process: subprocess.Popen | None = None
        self.started = 0.0

    @property
    def status(self) -> dict:
        path = self.dir / "trial.json"
        return json.loads(path.read_text()) if path.exists() else {"status": "new"}

    def results(self, since: float = 0.0) -> dict:
        """The run's results.json; {} if there is none, or none written since `since` (a time.time())."""
        path = self.workdir / "results.json"
        return json.loads(path.read_text()) if path.exists() and path.stat().st_mtime >= since else {}

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        log = open(self.dir / "log.txt", "a")
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(self.command)}\n")
        log.flush()
        # Its own session: Ctrl-C reaches the sweep, which stops the trials with SIGTERM (they checkpoint).
        self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.started = time.time()
        self._write("running")

    def finish(self, interrupted: bool) -> str:
        code = self.process.returncode
        stopped = self.results(since=self.started).get("stopped")  # not an earlier attempt's
        if code == 0 and stopped != "preempted":
            status = "done"
        elif interrupted or stopped == "preempted":
            status = "interrupted"
        else:
            status = "crashed"
        self._write(status, code)
        return status

    def last_line(self) -> str:
        lines = [line for line in (self.dir / "log.txt").read_text(errors="replace").splitlines() if line.strip()]
        return lines[-1][:300] if lines else ""

    def _write(self, status: str, code: int | None = None) -> None:
        record = {"name": self.name, "fields": self.fields, "seed": self.seed, "status": status,
                  "returncode": code, "seconds": round(time.time() - self.started, 1), "command": self.command}
        storage.write_whole(self.dir / "trial.json", json.dumps(record, indent=2) + "\n")  # whole for any reader


def run(config_file: str, workdir: str | pathlib.Path, *, parallel: int = 1, overrides: list[str] = (),
        dry_run: bool = False, poll_s: float = 0.5) -> int:
    """Run (or continue) the sweep of `config_file` in `workdir`; 0 when every trial is done, else 1."""
    if parallel < 1:
        raise ValueError(f"--parallel {parallel}: expected at least 1")
    spec = load_spec(config_file)
    config_spec = f"{config_file}:{spec['variant']}" if spec["variant"] else config_file
    root = pathlib.Path(workdir)
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"--workdir {root}: exists and is not a directory")
    all_trials = [Trial(root, t, config_spec, list(overrides)) for t in trials(spec)]
    todo = [t for t in all_trials if t.status["status"] != "done"]
    print(f"sweep {config_file}: {len(all_trials)} trials, {len(all_trials) - len(todo)} done, "
          f"{len(todo)} to run, {parallel} at a time, in {root}", flush=True)
    if dry_run:
        for t in todo:
            print(shlex.join(t.command))
        return 0
    root.mkdir(parents=True, exist_ok=True)
    with jaxlm_workdir.hold(root):  # one sweep at a time in it (each trial holds its own workdir too)
        (root / "sweep.json").write_text(json.dumps({"config": config_file, "spec": spec, "overrides": list(overrides)},
                                                    indent=2) + "\n")
        running: list[Trial] = []
        stopping = []

        def stop(signum, frame):
            stopping.append(signum)
            for t in running:
                if t.process.poll() is None:
                    t.process.send_signal(signal.SIGTERM)

        previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            queue = list(todo)
            while queue or running:
                while queue and len(running) < parallel and not stopping:
                    t = queue.pop(0)
                    t.start()
                    running.append(t)
                    print(f"  started  {t.name}", flush=True)
                if stopping and not running:
                    break
                time.sleep(poll_s)
                for t in [t for t in running if t.process.poll() is not None]:
                    running.remove(t)
                    status = t.finish(interrupted=bool(stopping))
                    detail = f": exit {t.process.returncode}, {t.last_line()} (log: {t.dir / 'log.txt'})" \
                        if status == "crashed" else ""
                    print(f"  {status:8} {t.name}{detail}", flush=True)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        print(format_summary(gather(all_trials, spec, root)))
        statuses = [t.status["status"] for t in all_trials]
        crashed = [t.name for t in all_trials if t.status["status"] == "crashed"]
        if crashed:
            print(f"{len(crashed)} crashed (run the sweep again to retry them): {', '.join(crashed)}")
        if stopping:
            print("sweep interrupted: run the same command again to continue")
        print(f"results: {root / 'results.csv'}, {root / 'summary.csv'}, {root / 'sweep.png'}")
        return 0 if all(s == "done" for s in statuses) else 1


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[prefix + key] = value
    return out


def gather(all_trials: list[Trial], spec: dict, root: pathlib.Path) -> list[dict]:
    """One row per trial (its fields, seed, status and final metrics) -> results.csv, summary.csv, sweep.png.
    Returns the summary: the median over seeds per setting."""
    fields = [*spec["grid"], *spec["random"]]
    rows = []
    for t in all_trials:
        row = {"trial": t.name, "status": t.status["status"], **t.fields, "seed": t.seed}
        if row["status"] == "done":
            row.update(_flat(t.results()))
        rows.append(row)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    _write_csv(root / "results.csv", columns, rows)
    summary = summarize(rows, fields, spec["metric"], spec["mode"])
    _write_csv(root / "summary.csv", list(summary[0]) if summary else [], summary)
    plot(rows, fields, spec["metric"], root / "sweep.png")
    return summary


def summarize(rows: list[dict], fields: list[str], metric: str, mode: str) -> list[dict]:
    """Per setting (the fields' values): the median of `metric` over the seeds done, best first."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(_text(r[f]) for f in fields), []).append(r)
    out = []
    for key, members in groups.items():
        values = [r[metric] for r in members if r["status"] == "done" and metric in r]
        out.append({**dict(zip(fields, key)), f"median {metric}": statistics.median(values) if values else None,
                    "min": min(values, default=None), "max": max(values, default=None),
                    "seeds done": f"{len(values)}/{len(members)}"})
    sign = -1 if mode == "max" else 1
    return sorted(out, key=lambda r: (r[f"median {metric}"] is None, sign * (r[f"median {metric}"] or 0)))


def format_summary(table: list[dict]) -> str:
    if not table:
        return "no trials"
    cells = [[_text(v) if not isinstance(v, float) else f"{v:.4g}" for v in r.values()] for r in table]
    cells = [[c if c != "None" else "-" for c in row] for row in cells]
    header = list(table[0])
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _write_csv(path: pathlib.Path, columns: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)


def plot(rows: list[dict], fields: list[str], metric: str, path: pathlib.Path) -> None:
    """`metric` against the first swept field: one line (the median over seeds) per setting of the others."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["status"] == "done" and metric in r]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if done and fields:
        x_field, others = fields[0], fields[1:]
        series: dict[tuple, dict[Any, list[float]]] = {}
        for r in done:
            series.setdefault(tuple(r[f] for f in others), {}).setdefault(r[x_field], []).append(r[metric])
        for key, points in sorted(series.items(), key=lambda kv: str(kv[0])):
            xs = sorted(points)
            label = ", ".join(f"{f.rsplit('.', 1)[-1]}={_text(v)}" for f, v in zip(others, key)) or metric
            line, = ax.plot(xs, [statistics.median(points[x]) for x in xs], marker="o", label=label)
            for x in xs:
                ax.scatter([x] * len(points[x]), points[x], color=line.get_color(), alpha=0.35, s=14)
        numeric = all(isinstance(r[x_field], (int, float)) and r[x_field] > 0 for r in done)
        if numeric and max(r[x_field] for r in done) / min(r[x_field] for r in done) >= 10:
            ax.set_xscale("log")
        ax.set_xlabel(x_field)
        ax.legend(fontsize=8)
    ax.set_ylabel(f"{metric} (median over seeds; dots: seeds)")
    ax.grid(alpha=0.3)
    ax.set_title(path.parent.name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
