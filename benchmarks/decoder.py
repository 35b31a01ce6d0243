"""A GPT-2 decoder, jaxlm beside transformers + torch on the same machine, same weights, same hour: greedy decoding
tokens/s with each side's KV cache, and causal-LM training tokens/s (AdamW, loss at every position).

    python benchmarks/decoder.py                        # GPT-2 small (124M), batch 1 and 16, 128 new tokens
    python benchmarks/decoder.py --preset gpt-mini --batches 1 4 --new-tokens 32 --train-batch 4   # a quick look

Decoding: 16-token random prompts; jaxlm's `jaxlm.generate.generate` (prefill, then one jitted lax.while_loop)
against `GPT2LMHeadModel.generate(do_sample=False, use_cache=True)` with min_new_tokens = max_new_tokens, so both
write every token; the first call of each shape (jaxlm's compile, torch's warm-up) is not timed. Both sides must
write the same tokens (the match is printed). Training: one AdamW step on (batch, 128) tokens, cross-entropy at
every position; jaxlm's `jaxlm.steps` train step against a plain torch loop (eager, float32).
Goals (issue 15): decoding >= 1.5x torch at batch 1, >= 1.0x at batch 16; training >= 1.1x.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def _best(fn, repeats: int) -> float:
    fn()  # compile / warm up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="gpt2")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--prompt", type=int, default=16)
    p.add_argument("--train-batch", type=int, default=8)
    p.add_argument("--train-length", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    import types

    import jax
    import torch
    import transformers

    from jaxlm import generate as gen
    from jaxlm import hf, optim, sharding, steps, train_state
    from jaxlm.models import gpt
    from jaxlm.tasks.causal_lm import CausalLM

    torch.set_num_threads(os.cpu_count())
    shape = gpt.PRESETS[args.preset]
    hf_config = transformers.GPT2Config(
        vocab_size=shape["vocab_size"], n_positions=shape["max_position_embeddings"], n_embd=shape["hidden_size"],
        n_layer=shape["num_layers"], n_head=shape["num_heads"], n_inner=shape["intermediate_size"],
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    theirs = transformers.GPT2LMHeadModel(hf_config).eval()
    with tempfile.TemporaryDirectory() as d:
        theirs.save_pretrained(d)
        config, params = hf.from_pretrained(d, hidden_dropout=0.0, attention_dropout=0.0)
    model = gpt.GPTLMHeadModel(config)
    params = jax.device_put(params)
    print(f"{args.preset}: {sum(x.size for x in jax.tree.leaves(params)) / 1e6:.0f}M parameters, "
          f"jax {jax.__version__} on {jax.devices()[0].device_kind}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads)")

    print(f"\ndecoding, greedy, {args.prompt}-token prompts, {args.new_tokens} new tokens")
    print(f"{'batch':>5} {'jaxlm tok/s':>12} {'torch tok/s':>12} {'ratio':>6} {'same tokens':>12}")
    rng = np.random.default_rng(0)
    for batch in args.batches:
        ids = rng.integers(1, shape["vocab_size"], (batch, args.prompt)).astype(np.int32)
        mask = np.ones_like(ids)
        ours = {}

        def run_jax():
            out = gen.generate(model, params, ids, mask, jax.random.key(0), max_new_tokens=args.new_tokens,
                               sampling=gen.Sampling(temperature=0.0))
            ours["tokens"] = np.asarray(jax.block_until_ready(out["tokens"]))

        mine = _best(run_jax, args.repeats)
        ref = {}

        def run_torch():
            with torch.inference_mode():
                ref["tokens"] = theirs.generate(
                    input_ids=torch.as_tensor(ids, dtype=torch.long), attention_mask=torch.as_tensor(mask),
                    max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False, use_cache=True,
                    pad_token_id=0)[:, args.prompt:].numpy()

        other = _best(run_torch, args.repeats)
        tokens = batch * args.new_tokens
        same = float((ours["tokens"] == ref["tokens"]).mean())
        print(f"{batch:>5} {tokens / mine:>12.1f} {tokens / other:>12.1f} {other / mine:>5.2f}x {same:>12.3f}")

    b, length = args.train_batch, args.train_length
    print(f"\ncausal-LM training, AdamW, batch {b} x {length} tokens, loss at every position (float32)")
    ids = rng.integers(1, shape["vocab_size"], (b, length + 1)).astype(np.int32)
    arrays = {"input_ids": ids[:, :-1], "attention_mask": np.ones((b, length), np.int32),
              "segment_ids": np.ones((b, length), np.int32), "targets": ids[:, 1:],
              "target_weights": np.ones((b, length), np.float32)}

    tx, _ = optim.make_optimizer(types.SimpleNamespace(
        name="adamw", learning_rate=1e-4, warmup_steps=0, num_steps=1_000_000, schedule="constant",
        weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-6, clip_norm=1.0))
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    state, shardings = train_state.init(model, tx, mesh, jax.random.key(0), max_seq_length=length)
    with sharding.mesh_context(mesh):
        step = steps.jit_train_step(model, CausalLM.loss, tx, mesh, shardings, accumulate=1)
        batch_arrays = jax.device_put(arrays, sharding.batch_sharding(mesh))
        box = {"state": state}

        def run_jax_step():
            box["state"], metrics = step(box["state"], batch_arrays, jax.random.key(1))
            jax.block_until_ready(metrics)

        mine = _best(run_jax_step, args.repeats)

    torch_model = transformers.GPT2LMHeadModel(hf_config).train()
    opt = torch.optim.AdamW(torch_model.parameters(), lr=1e-4, weight_decay=0.01, eps=1e-6)
    inputs, labels = torch.as_tensor(ids[:, :-1], dtype=torch.long), torch.as_tensor(ids[:, 1:], dtype=torch.long)

    def run_torch_step():
        logits = torch_model(input_ids=inputs).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(torch_model.parameters(), 1.0)
        opt.step()

    other = _best(run_torch_step, args.repeats)
    tokens = b * length
    print(f"{'':>5} {'jaxlm tok/s':>12} {'torch tok/s':>12} {'ratio':>6}")
    print(f"{'':>5} {tokens / mine:>12.1f} {tokens / other:>12.1f} {other / mine:>5.2f}x")


if __name__ == "__main__":
    main()
