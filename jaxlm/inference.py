"""A trained workdir as a Python object: restored once, compiled once, run on this machine's devices.

    model = jaxlm.load("workdirs/demo/finetune")          # or load(workdir, "mesh.tensor=2", "data.dataset=...")
    model.predict(["a small furry animal"], top=3)       # [[(label, probability), ...]] per text
    model.evaluate("test")                               # the task's metrics on a split of config.data.dataset
    model.embed(texts, pooling="mean")                   # (texts, hidden) float32: 'pooled' or 'mean'
    model.score(texts)                                   # (texts,) float32: a reward model's rewards
    model.generate(["Once upon a time"], max_new_tokens=64, temperature=0.7, top_p=0.9)   # a decoder's

The model runs data parallel over the local devices unless `mesh.*` overrides say otherwise, with the attention
path of this platform ('auto'): a model trained on a data=2 x tensor=4 mesh gives the same numbers on one CPU.
`jaxlm evaluate`, `jaxlm predict` and `jaxlm generate` are this object's methods on the command line.
"""

from __future__ import annotations

import functools
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm import checkpoint, sharding, storage
from jaxlm.data import pipeline
from jaxlm.experiment import Experiment

log = logging.getLogger(__name__)


def load(workdir: str | os.PathLike, *overrides: str) -> "Model":
    """The best (else latest) parameters of a jaxlm workdir, ready to predict, evaluate and embed. `overrides`:
    'FIELD=VALUE' of config.data.*, config.mesh.* or config.model.attention."""
    return Model(workdir, list(overrides))


class Model:
    def __init__(self, workdir: str | os.PathLike, overrides: list[str] = ()):
        from jaxlm.data.tokenizer import load_tokenizer

        if jax.process_count() > 1:
            raise ValueError("jaxlm.load runs in one process (it was started as one of several)")
        self.workdir = storage.path(workdir)
        self.experiment = exp = Experiment.from_workdir(self.workdir, overrides)
        self.config, self.label_names = exp.config, exp.label_names
        self.tokenizer = load_tokenizer(self.workdir / "tokenizer")
        _, self.params = checkpoint.restore_params(self.workdir, exp.abstract_params())
        param_shardings = jax.tree.map(lambda x: x.sharding, self.params)
        self._eval = exp.eval_fn(param_shardings)
        rows = sharding.batch_sharding(exp.mesh)
        self._outputs = jax.jit(lambda p, b: exp.model.apply({"params": p}, b), in_shardings=(param_shardings, rows))

    # ------------------------------------------------------------------ the task's metrics

    def evaluate(self, split: str) -> dict[str, float]:
        """The task's metrics on `split` of config.data.dataset (every example once)."""
        if not self.config.data.dataset:
            raise ValueError(f"{self.workdir} has no data: give it with --config.data.dataset=... (and "
                             "config.data.text_fields, label_field, path as the data needs)")
        examples = self.experiment.task.examples(self.tokenizer, split)
        return self.experiment.evaluate(self._eval, self.params, examples, self.config.data.eval_batch_size)

    # ------------------------------------------------------------------ texts

    def generate(self, prompts: list[str], max_new_tokens: int = 64, *, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int = 0) -> list[str]:
        """Each prompt's continuation by a decoder (task 'causal_lm' or 'sft'), up to `max_new_tokens` tokens or
        its end of text: greedy with temperature 0, else sampled (top-k, top-p), reproducible from `seed`. An empty
        prompt starts from the end-of-text token, as GPT-2's unconditional samples do."""
        from jaxlm import generate as gen
        from jaxlm.data.causal_lm import require_eos
        from jaxlm.models.gpt import GPTLMHeadModel

        model, mesh = self.experiment.model, self.experiment.mesh
        if not isinstance(model, GPTLMHeadModel):
            raise ValueError(f"{self.workdir}: generate needs a decoder (task 'causal_lm' or 'sft'), this workdir "
                             f"holds task {self.config.task.name!r}")
        require_eos(self.tokenizer, f"{self.workdir / 'tokenizer'}")
        sampling = gen.Sampling(temperature, top_k, top_p)
        eos = self.tokenizer.eos_id
        encoded = [ids.tolist() or [eos] for ids in self.tokenizer.encode(prompts)]
        longest = max(map(len, encoded), default=0)
        gen.check_lengths(longest, max_new_tokens, model.config.max_position_embeddings)
        length = min(-(-longest // 16) * 16, model.config.max_position_embeddings - max_new_tokens)  # fewer shapes
        unit = sharding.batch_unit(mesh)
        size = min(self.config.data.eval_batch_size, -(-len(prompts) // unit) * unit)
        texts = []
        with sharding.mesh_context(mesh):
            for start in range(0, len(encoded), size):
                chunk = encoded[start:start + size]
                ids, mask = gen.left_pad(chunk + [[eos]] * (size - len(chunk)), eos, length)
                batch = sharding.global_batch({"input_ids": ids, "attention_mask": mask}, mesh)
                out = gen.generate(model, self.params, batch["input_ids"], batch["attention_mask"],
                                   jax.random.fold_in(jax.random.key(seed), start), max_new_tokens=max_new_tokens,
                                   sampling=sampling, eos_id=eos)
                tokens, lengths = np.asarray(out["tokens"]), np.asarray(out["lengths"])
                texts += [self.tokenizer.decode(tokens[i, :lengths[i]]) for i in range(len(chunk))]
        return texts

    def predict(self, texts: list[str], top: int = 1) -> list[list[tuple[str, float]]]:
        """For each text (a 'text_a\\ttext_b' pair when the task has two text fields), its `top` most probable
        (label, probability), most probable first; [('value', v)] for a regression."""
        if top < 1:
            raise ValueError(f"--top {top}: expected a number of labels >= 1")
        if not self.label_names:
            raise ValueError(f"{self.workdir}: predict needs a fine-tuned classifier (task 'classify')")
        given = [i for i, t in enumerate(texts) if t.strip()]  # an empty text has no prediction: []
        head = lambda outputs, batch: self.experiment.task.predict(outputs)  # noqa: E731
        scores = iter(self._run([texts[i] for i in given], head))
        ranked = [[] for _ in texts]
        for i in given:
            p = next(scores)
            ranked[i] = [(self.label_names[j], float(p[j])) for j in np.argsort(-p, kind="stable")[:top]]
        return ranked

    def score(self, texts: list[str]) -> np.ndarray:
        """(texts,) float32: a reward model's reward of each text (task 'reward'; unnormalised, its
        reward_normalization.json has the mean and std over training pairs)."""
        from jaxlm.models.bert import BertRewardModel

        if not isinstance(self.experiment.model, BertRewardModel):
            raise ValueError(f"{self.workdir}: score needs a reward model (task 'reward'), this workdir holds task "
                             f"{self.config.task.name!r}")
        if not texts:
            return np.zeros(0, np.float32)
        return self._run(texts, lambda outputs, batch: outputs["reward"]).astype(np.float32)

    def embed(self, texts: list[str], pooling: str = "pooled") -> np.ndarray:
        """(texts, hidden) float32: BERT's pooled output ('pooled': tanh dense on [CLS]) or the mean of the last
        hidden states over each text's tokens ('mean', as sentence-transformers pool)."""
        if pooling not in ("pooled", "mean"):
            raise ValueError(f"pooling={pooling!r}: expected 'pooled' or 'mean'")
        return self._run(texts, functools.partial(_pool, pooling))

    def _run(self, texts: list[str], head) -> np.ndarray:
        """head(model outputs, batch) of every text, in order, batched through the jitted model: batches of
        config.data.eval_batch_size (or fewer texts, rounded up to the mesh's batch unit), the last one padded."""
        from tqdm import tqdm

        from jaxlm.data.classification import ClassificationExamples, tokenize_examples
        from jaxlm.data.inputs import SpecialIds

        d, mesh = self.config.data, self.experiment.mesh
        if not texts:
            return np.zeros((0, 0), np.float32)
        fields = list(d.text_fields)
        rows = [dict(zip(fields, t.split("\t", 1) if len(fields) == 2 else [t])) for t in texts]
        for r in rows:
            r.setdefault(fields[-1], "")
        arrays = tokenize_examples(rows, self.tokenizer, fields, None, d.max_seq_length, False)
        examples = ClassificationExamples(arrays, d.max_seq_length, (), SpecialIds.of(self.tokenizer))
        if examples.num_truncated:
            log.warning("%d of %d texts are longer than data.max_seq_length=%d tokens: cut to fit (their ends unread)",
                        examples.num_truncated, len(texts), d.max_seq_length)
        unit = sharding.batch_unit(mesh)
        size = min(d.eval_batch_size, -(-len(texts) // unit) * unit)  # one text: a batch of `unit` rows, not 256
        batches = -(-len(texts) // size)
        out = []
        with sharding.mesh_context(mesh):
            for batch in tqdm(pipeline.eval_batches(examples, size), total=batches, desc="predict", unit="batch",
                              disable=batches < 2):  # in order; the last batch padded with weight-0 rows
                real = batch["example_weight"] > 0
                batch = sharding.global_batch(batch, mesh)
                out.append(np.asarray(head(self._outputs(self.params, batch), batch))[real])
        return np.concatenate(out)


def _pool(pooling: str, outputs: dict, batch: dict) -> jax.Array:
    if pooling == "pooled":
        return outputs["pooled"].astype(jnp.float32)
    mask = batch["attention_mask"][..., None].astype(jnp.float32)  # (batch, length, 1)
    return jnp.sum(outputs["hidden"].astype(jnp.float32) * mask, 1) / jnp.maximum(jnp.sum(mask, 1), 1)
