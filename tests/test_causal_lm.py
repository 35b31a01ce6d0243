"""Causal-LM pretraining and SFT through the one trainer: packed rows without cross-document targets, the loss on
the response only, bitwise resume, the same trajectory on 1 and 8 devices, and the trained decoder generating and
loading in transformers."""

import json

import jax
import numpy as np
import pytest
import torch
import transformers

from jaxlm import checkpoint, cli, hf, inference, train
from jaxlm import config as jaxlm_config
from jaxlm.data.causal_lm import CausalLMExamples, SFTExamples, _token_stream
from jaxlm.data.tokenizer import load_tokenizer


class _Chars:
    """Characters as tokens (ids = code points), end of text 0: rows read off by eye."""

    eos_id = pad_id = 0

    def encode(self, texts):
        return [np.array([ord(ch) for ch in t], np.int32) for t in texts]


def test_packed_rows_predict_every_token_once_and_never_across_documents():
    stream = _token_stream(["abcde", "", "fg", "hijklmn"], _Chars())
    examples = CausalLMExamples(stream["tokens"], stream["document_starts"], max_seq_length=4, pad_id=0)
    assert stream["tokens"].tolist() == [97, 98, 99, 100, 101, 0, 102, 103, 0, *range(104, 111), 0]
    assert len(examples) == 4  # 17 tokens: 16 targets in rows of 4
    b = examples.batch(np.array([0, 1, 2, 3, -1]), 0, 4)
    np.testing.assert_array_equal(b["targets"][:, :-1], b["input_ids"][:, 1:])  # next token
    np.testing.assert_array_equal(b["targets"][:3, -1], b["input_ids"][1:4, 0])  # across rows too
    # the first token of a document is no target, an end of text is
    first_of_document = [102, 104]
    weighted = b["targets"][b["target_weights"] > 0].tolist()
    assert sorted(weighted + first_of_document) == sorted(stream["tokens"][1:].tolist())
    np.testing.assert_array_equal(b["segment_ids"][1], [1, 1, 2, 2])  # 'e' <eos> | 'f' 'g'
    assert not b["attention_mask"][4].any() and not b["target_weights"][4].any()


def test_sft_rows_put_the_loss_on_the_response_and_its_end_only():
    tok = _Chars()
    examples = SFTExamples(tok.encode(["Q:", "Long pr"]), tok.encode(["ab", "xyz"]), 8, eos_id=0, pad_id=0)
    b = examples.batch(np.array([0, 1, -1]), 0, 8)
    np.testing.assert_array_equal(b["input_ids"][0], [ord(c) for c in "Q:ab"] + [0] * 4)
    np.testing.assert_array_equal(b["attention_mask"][0], [1, 1, 1, 1, 1, 0, 0, 0])  # with its end of text
    assert b["targets"][0][b["target_weights"][0] > 0].tolist() == [ord("a"), ord("b"), 0]
    # cut at 8 + 1 tokens: the response's tail and its end fall off, no target past the row
    assert b["targets"][1][b["target_weights"][1] > 0].tolist() == [ord("x"), ord("y")]
    assert not b["target_weights"][2].any()


def _config(bpe_dir, **fields):
    c = jaxlm_config.load("experiments/gpt_cpu.py:pretrain")
    fields = {"model.preset": "gpt-tiny", "model.max_position_embeddings": 64, "model.overrides": {"num_heads": 8},
              "data.max_seq_length": 32, "data.batch_size": 16, "data.eval_batch_size": 32,
              "data.tokenizer": str(bpe_dir), "data.eval_split": "validation[:32]", "optim.warmup_steps": 2,
              "train.num_steps": 16, "train.log_every": 1, "train.eval_every": 16, "train.checkpoint_every": 8,
              **fields}
    for key, value in fields.items():
        section, name = key.split(".")
        with c[section].ignore_type():
            c[section][name] = value
    return c


def _train_losses(workdir):
    return np.array([json.loads(line)["loss"] for line in (workdir / "metrics.jsonl").read_text().splitlines()
                     if json.loads(line)["split"] == "train"])


def test_causal_lm_trains_resumes_bitwise_matches_8_devices_generates_and_exports(bpe_dir, tmp_path, capsys):
    straight, resumed, sharded = tmp_path / "straight", tmp_path / "resumed", tmp_path / "sharded"
    result = train.train_and_evaluate(_config(bpe_dir, **{"mesh.data": 1}), straight)
    losses = _train_losses(straight)
    assert len(losses) == 16 and losses[-4:].mean() < losses[:4].mean() - 0.5
    assert result["eval"]["perplexity"] == pytest.approx(np.exp(result["eval"]["loss"]))
    assert "unigram_perplexity" in result["eval"]
    # stopped after 5 steps and resumed: bitwise the straight run
    train.train_and_evaluate(_config(bpe_dir, **{"mesh.data": 1, "train.stop_after": 5}), resumed)
    train.train_and_evaluate(_config(bpe_dir, **{"mesh.data": 1}), resumed)
    jax.tree.map(np.testing.assert_array_equal, checkpoint.restore_params(straight, prefer_best=False)[1],
                 checkpoint.restore_params(resumed, prefer_best=False)[1])
    # data x tensor parallel on 8 devices: the same trajectory
    train.train_and_evaluate(_config(bpe_dir, **{"mesh.data": 2, "mesh.tensor": 4}), sharded)
    np.testing.assert_allclose(_train_losses(sharded), losses, rtol=1e-5)

    # generation from the command line; greedy is reproducible, the prompt is echoed
    capsys.readouterr()
    argv = ["generate", "--workdir", str(straight), "--max-new-tokens", "8", "--temperature", "0", "A dog", "An"]
    assert cli.main(argv) == 0 and cli.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and lines[:2] == lines[2:] and lines[0].startswith("A dog\t")
    assert cli.main(["generate", "--workdir", str(straight), "--max-new-tokens", "64", "A dog"]) == 2
    assert "max_position_embeddings=64" in capsys.readouterr().err

    # exported: transformers' GPT2LMHeadModel and AutoTokenizer give jaxlm's ids and logits
    assert cli.main(["convert", "--to-hf", str(straight), "--out", str(tmp_path / "hf")]) == 0
    theirs, info = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    text = "The cat sat on a mat."
    ids = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")(text)["input_ids"]
    assert ids == load_tokenizer(bpe_dir).encode([text])[0].tolist()
    with torch.no_grad():
        reference = theirs.eval()(torch.tensor([ids])).logits.numpy()
    model = inference.load(straight)
    ours = model.experiment.model.apply({"params": model.params}, {"input_ids": np.array([ids], np.int32)})["logits"]
    np.testing.assert_allclose(np.asarray(ours), reference, atol=1e-4, rtol=1e-4)
    assert cli.main(["convert", "--from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "back")]) == 0
    greedy = model.generate(["A dog", "An", ""], 8, temperature=0)  # data parallel over the 8 devices
    assert inference.load(tmp_path / "back").generate(["A dog", "An", ""], 8, temperature=0) == greedy
    # heads (and their key/value cache) split over 4 devices: the same text
    assert inference.load(straight, "mesh.data=2", "mesh.tensor=4").generate(["A dog", "An", ""], 8,
                                                                             temperature=0) == greedy

    # SFT from the pretrained decoder on (prompt, chosen) pairs: the loss is on the responses and goes down
    pairs = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"Q: what is {i} plus one?", "chosen": f" A: {i + 1}.", "rejected": " A: no."}
            for i in range(40)]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sft = _config(bpe_dir, **{"task.name": "sft", "data.dataset": "local_preferences", "data.path": str(pairs),
                              "data.text_fields": ("prompt", "chosen"), "data.eval_split": "",
                              "model.init_from": f"jaxlm:{straight}", "data.tokenizer": "init",
                              "train.num_steps": 12, "optim.learning_rate": 3e-3})
    train.train_and_evaluate(sft, tmp_path / "sft")
    sft_losses = _train_losses(tmp_path / "sft")
    assert sft_losses[-3:].mean() < sft_losses[:3].mean() - 0.5
