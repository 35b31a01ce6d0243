"""What a researcher watches: TensorBoard events, metrics.jsonl, a progress bar, PNG plots, and (train.wandb_project)
a Weights & Biases run.

Only process 0 writes (every process computes the same global metrics). MFU has one definition, here:

    MFU = model FLOPs per second / (devices x peak FLOP/s per device)
    model FLOPs per step = 6 x matmul FLOPs of the forward pass per token x tokens, plus attention
                           (see `train_flops_per_example`); the MLM head counts only the masked positions.
"""

from __future__ import annotations

import json
import logging
import time

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from jaxlm import storage

log = logging.getLogger(__name__)

# Dense bf16 peak FLOP/s per device, by `device_kind` prefix. CPU: measured at start-up (float32 matmul).
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100": 312e12,
}


def train_flops_per_example(cfg, length: int, predictions: int | None) -> float:
    """Model FLOPs of one training example (forward + backward = 3x forward) of a BERT of config `cfg`.

    Per token and layer: QKV + output projections 4 h^2, MLP 2 h i, attention scores and values 2 L h,
    each a multiply-add (2 FLOPs). MLM head: transform h^2 + decoder h V at `predictions` positions
    (all `length` positions when None).
    """
    h, i, n_layers, vocab = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers, cfg.vocab_size
    per_token_layer = 2 * (4 * h * h + 2 * h * i + 2 * length * h)
    head_positions = length if predictions is None else predictions
    forward = length * n_layers * per_token_layer + 2 * head_positions * (h * h + h * vocab)
    return 3.0 * forward


def peak_flops_per_device() -> float:
    device = jax.devices()[0]
    for prefix, peak in PEAK_FLOPS.items():
        if device.device_kind.startswith(prefix):
            return peak
    if device.platform != "cpu":
        log.warning("no peak FLOP/s known for %s; MFU measured against a local matmul", device.device_kind)
    return measured_matmul_peak()


def measured_matmul_peak(n: int = 1024, repeats: int = 5) -> float:
    """FLOP/s of a float32 n x n matmul on the default device (the CPU's practical peak)."""
    x = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(x).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(x).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / jax.local_device_count()


class WandbRun:
    """One Weights & Biases run per workdir: its id is run.json's, so a resume continues the same W&B run. It gets
    the config, the scalars TensorBoard gets (x-axis `step`), the samples as a table, and the results as its
    summary. WANDB_MODE=offline writes it under WORKDIR/wandb for `wandb sync` (./wandb for a gs:// workdir)."""

    def __init__(self, run):
        self.run = run

    @classmethod
    def start(cls, project: str, workdir: epath.Path, run_id: str | None, config) -> "WandbRun | None":
        if not project or jax.process_index() != 0:
            return None
        try:
            import wandb
        except ImportError:
            raise ImportError(f"config.train.wandb_project={project!r}: needs wandb (pip install 'jaxlm[wandb]')") \
                from None
        run = wandb.init(project=project, dir=None if storage.is_remote(workdir) else str(workdir), id=run_id,
                         resume="allow", reinit="create_new", name=workdir.name,
                         config=json.loads(config.to_json_best_effort()))
        run.define_metric("*", step_metric="step")  # a resume re-logs steps after its checkpoint: keep them
        return cls(run)

    def log(self, step: int, split: str, metrics: dict[str, float]) -> None:
        self.run.log({"step": step, **{f"{split}/{k}": v for k, v in metrics.items()}})

    def samples(self, step: int, records: list[dict]) -> None:
        import wandb

        keys = list(records[0])
        self.run.log({"step": step, "samples": wandb.Table(columns=keys, data=[[r[k] for k in keys]
                                                                             for r in records])})

    def finish(self, results: dict) -> None:
        self.run.summary.update({f"{split}/{k}": v for split, metrics in results.items() if isinstance(metrics, dict)
                                 for k, v in metrics.items()})
        self.run.summary.update({k: v for k, v in results.items() if not isinstance(v, dict)})
        self.run.finish()


class Monitor:
    """Writes metrics to TensorBoard, metrics.jsonl, the progress bar (and a W&B run); plots them at the end."""

    def __init__(self, workdir: epath.Path, *, total_steps: int, start_step: int, enabled: bool,
                 wandb: WandbRun | None = None):
        self.workdir, self.enabled, self._wandb = workdir, enabled, wandb
        self._bar = self._tb = self._jsonl = self._samples = None
        if not enabled:
            return
        from tensorboardX import SummaryWriter
        from tqdm import tqdm

        workdir.mkdir(parents=True, exist_ok=True)
        self._tb_dir = storage.Mirror(workdir / "tensorboard")  # (on gs://, uploaded at each flush)
        self._tb = SummaryWriter(str(self._tb_dir.local))
        self._jsonl = storage.Lines(workdir / "metrics.jsonl")
        self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                         desc=workdir.name)

    def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "split": split, "time": time.time(), **metrics}
        self._jsonl.write([json.dumps(record) + "\n"])
        for key, value in metrics.items():
            self._tb.add_scalar(f"{split}/{key}", value, step)
        self._tb.flush()
        self._tb_dir.sync()
        if self._wandb:
            self._wandb.log(step, split, metrics)
        if split == "train":
            shown = {k: metrics[k] for k in ("loss", "tokens_per_s", "steps_per_s", "mfu") if k in metrics}
            self._bar.set_postfix({k: f"{v:.3g}" for k, v in shown.items()}, refresh=False)
        else:
            self._bar.write(f"[{split} @ step {step}] " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))

    def samples(self, step: int, records: list[dict]) -> None:
        """Texts a task made (a rollout's completions), to samples.jsonl and TensorBoard's text tab."""
        if not self.enabled or not records:
            return
        if self._samples is None:
            self._samples = storage.Lines(self.workdir / "samples.jsonl")
        self._samples.write([json.dumps({"step": step, **r}) + "\n" for r in records])

        def cell(v) -> str:  # a markdown table's cell
            return f"{v:.3g}" if isinstance(v, float) else str(v).replace("|", "\\|").replace("\n", " ")

        keys = list(records[0])
        table = [" | ".join(keys), " | ".join("---" for _ in keys), *(" | ".join(cell(r[k]) for k in keys)
                                                                      for r in records)]
        self._tb.add_text("samples", "\n".join(table), step)
        self._tb.flush()
        self._tb_dir.sync()
        if self._wandb:
            self._wandb.samples(step, records)

    def advance(self, step: int) -> None:
        if self.enabled:
            self._bar.update(step - self._bar.n)

    def message(self, text: str) -> None:
        if self.enabled:
            self._bar.write(text)

    def close(self) -> None:
        if not self.enabled:
            return
        self._bar.close()
        self._tb.close()
        self._tb_dir.sync()
        self._tb_dir.close()
        self._jsonl.close()
        if self._samples is not None:
            self._samples.close()
        plot_metrics(self.workdir)

    def finish(self, results: dict) -> None:
        """After close, once the results are known: the W&B run's summary, and its end."""
        if self._wandb:
            self._wandb.finish(results)


def plot_metrics(workdir: epath.Path) -> list[epath.Path]:
    """PNG plots of the loss and accuracy curves (train and eval) from workdir/metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line]
    written = []
    for kind in ("loss", "accuracy"):
        keys = sorted({k for r in records for k in r if k.endswith(kind) or k == kind})
        if not keys:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for split in ("train", "eval"):
            for key in keys:
                points = [(r["step"], r[key]) for r in records if r["split"] == split and key in r]
                if points:
                    steps, values = np.array(points).T
                    ax.plot(steps, values, marker="o" if split == "eval" else None, markersize=3,
                            label=f"{split} {key}")
        ax.set_xlabel("step")
        ax.set_ylabel(kind)
        ax.set_title(f"{workdir.name}: {kind}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = workdir / f"{kind}.png"
        with path.open("wb") as f:
            fig.savefig(f, format="png", dpi=110)
        plt.close(fig)
        written.append(path)
    return written
