"""The causal decoder: parity with transformers' GPT2LMHeadModel (logits, import/export, greedy `generate`), its
byte-level BPE, causal masking on every attention path with padding and packing, and KV-cache generation."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from jaxlm import generate as gen
from jaxlm import hf
from jaxlm.data.tokenizer import ByteLevelBPETokenizer, load_tokenizer, train_tokenizer_from_dataset
from jaxlm.models import gpt, transformer

# An odd shape: 3 heads of 12, an MLP of 100, 53 positions.
SHAPE = dict(n_embd=36, n_layer=3, n_head=3, n_inner=100, n_positions=53)
MLP_IN_STD = 0.3
TEXTS = ["The quick brown fox jumps over the lazy dog.", "naïve café,  two  spaces", "Hi", "\tTabs\nand lines 42"]


@pytest.fixture(scope="module")
def bpe(data_env, tmp_path_factory):
    return train_tokenizer_from_dataset("embedded_corpus", vocab_size=300, model_type="byte_bpe",
                                        out_dir=tmp_path_factory.mktemp("bpe"), max_sentences=3000)


def _randomise(model: torch.nn.Module, seed=0):
    """Weights drawn large (std 0.5-1; HF's 0.02 hides most mistakes), the MLP's input projection so that its
    pre-activations are O(1), where tanh and erf GELU differ most; embeddings small (std 2e-3) so that the first
    LayerNorm's input variance is near its eps; a large final LayerNorm scale so that logits are O(1)."""
    gen_ = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("wte.weight", "wpe.weight")):
                std = 2e-3
            elif name == "transformer.ln_f.weight":
                std = 300.0
            elif name.endswith("c_fc.weight"):
                std = MLP_IN_STD
            else:
                std = 0.5 + 0.5 * torch.rand(1, generator=gen_).item()
            p.copy_(torch.randn(p.shape, generator=gen_) * std)


@pytest.fixture(scope="module")
def hf_gpt2(bpe, tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=bpe.vocab_size, bos_token_id=bpe.eos_id, eos_token_id=bpe.eos_id,
                                     **SHAPE)
    model = transformers.GPT2LMHeadModel(config).eval()
    _randomise(model)
    path = tmp_path_factory.mktemp("hf_gpt2")
    model.save_pretrained(path)
    bpe.save(path)
    return model, path


def _left_padded(bpe, texts=TEXTS):
    return gen.left_pad([list(ids) for ids in bpe.encode(texts)], bpe.pad_id)


def _torch_logits(model, ids, mask):
    position_ids = np.maximum(np.cumsum(mask, 1) - 1, 0)  # what `generate` passes; the plain forward does not
    with torch.no_grad():
        out = model(input_ids=torch.as_tensor(ids, dtype=torch.long), attention_mask=torch.as_tensor(mask),
                    position_ids=torch.as_tensor(position_ids, dtype=torch.long))
    return out.logits.numpy()


def _jax_logits(config, params, ids, mask):
    return np.asarray(gpt.GPTLMHeadModel(config).apply({"params": params}, {"input_ids": ids, "attention_mask": mask})
                      ["logits"])


def test_byte_level_bpe_gives_transformers_ids_and_round_trips(bpe, tmp_path):
    bpe.save(tmp_path / "tok")
    ours = [ids.tolist() for ids in bpe.encode(TEXTS)]
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert [theirs(t)["input_ids"] for t in TEXTS] == ours
    assert theirs.eos_token_id == bpe.eos_id
    (tmp_path / "tok" / "tokenizer.json").unlink()  # GPT-2's vocab.json + merges.txt alone
    assert [ids.tolist() for ids in load_tokenizer(tmp_path / "tok").encode(TEXTS)] == ours
    assert [bpe.decode(ids) for ids in bpe.encode(TEXTS)] == TEXTS
    assert bpe.encode(["<|endoftext|>"])[0].tolist() != [bpe.eos_id]  # written in a text it is text


def test_logits_equal_transformers_gpt2_with_left_padding(hf_gpt2, bpe):
    model, path = hf_gpt2
    config, params = hf.from_pretrained(path)
    ids, mask = _left_padded(bpe)
    ours, theirs = _jax_logits(config, params, ids, mask), _torch_logits(model, ids, mask)
    keep = mask.astype(bool)
    assert np.abs(theirs[keep]).mean() > 1.0  # logits large enough to show a mistake
    np.testing.assert_allclose(ours[keep], theirs[keep], atol=1e-4, rtol=1e-4)


def _no_causal_mask(cfg, causal):
    return transformer.Encoder(cfg, causal=False)


@pytest.mark.parametrize("mutant", ["erf GELU", "LayerNorm eps 1e-12", "no causal mask", "positions off by one"])
def test_parity_test_catches_planted_mistakes(hf_gpt2, bpe, mutant, monkeypatch):
    model, path = hf_gpt2
    config, params = hf.from_pretrained(path)
    if mutant == "erf GELU":
        config = config.replace(hidden_act="gelu")
    elif mutant == "LayerNorm eps 1e-12":
        config = config.replace(layer_norm_eps=1e-12)
    elif mutant == "no causal mask":
        monkeypatch.setattr(gpt, "Encoder", _no_causal_mask)
    else:
        monkeypatch.setattr(gpt, "positions", lambda mask, segments=None: jnp.cumsum(mask, 1))
    ids, mask = _left_padded(bpe)
    keep = mask.astype(bool)
    diff = np.abs(_jax_logits(config, params, ids, mask) - _torch_logits(model, ids, mask))[keep].max()
    assert diff > 1e-3, f"{mutant}: max logit difference {diff} is too small to fail the parity test"


def test_export_loads_in_transformers_with_no_missing_keys(bpe, tmp_path):
    config = gpt.preset("gpt-tiny", vocab_size=bpe.vocab_size, max_position_embeddings=53, num_heads=4,
                        scan_layers=True)
    params = nn.unbox(gpt.GPTLMHeadModel(config).init(jax.random.key(3), {"input_ids": jnp.zeros((1, 8), jnp.int32)})
                      ["params"])
    hf.save_pretrained(config, params, tmp_path / "out", eos_id=bpe.eos_id)
    model, info = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    ids, mask = _left_padded(bpe)
    keep = mask.astype(bool)
    np.testing.assert_allclose(_jax_logits(config, params, ids, mask)[keep], _torch_logits(model.eval(), ids, mask)
                               [keep], atol=1e-4, rtol=1e-4)
    back_config, back = hf.from_pretrained(tmp_path / "out", scan_layers=True)
    assert back_config.architecture() == config.architecture()
    jax.tree.map(np.testing.assert_array_equal, back, params)


@pytest.fixture(scope="module")
def tiny_decoder():
    config = gpt.preset("gpt-tiny", vocab_size=97, max_position_embeddings=128, hidden_dropout=0.0,
                        attention_dropout=0.0)
    init = gpt.GPTLMHeadModel(config).init(jax.random.key(0), {"input_ids": jnp.zeros((1, 8), jnp.int32)})
    return config, nn.unbox(init)["params"]


def test_cached_decoding_gives_the_logits_of_the_full_forward(tiny_decoder):
    config, params = tiny_decoder
    model = gpt.GPTLMHeadModel(config)
    ids, mask = gen.left_pad([[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17]], 0)
    out = gen.generate(model, params, ids, mask, jax.random.key(1), max_new_tokens=9,
                       sampling=gen.Sampling(temperature=1.0), with_logits=True)
    for row in range(len(ids)):
        prompt = ids[row][mask[row].astype(bool)].tolist()
        full = model.apply({"params": params}, {"input_ids": np.asarray([prompt + out["tokens"][row].tolist()])})
        n = len(prompt)
        np.testing.assert_allclose(out["logits"][row], full["logits"][0, n - 1:n + 8], atol=1e-5, rtol=1e-5)
    # the layers scanned (the cache stacked per layer like the parameters): the same tokens
    scanned = gen.generate(gpt.GPTLMHeadModel(config.replace(scan_layers=True)),
                           transformer.layer_layout(params, config.num_layers, scanned=True), ids, mask,
                           jax.random.key(1), max_new_tokens=9, sampling=gen.Sampling(temperature=1.0))
    np.testing.assert_array_equal(scanned["tokens"], out["tokens"])


def test_greedy_generation_equals_transformers_generate(hf_gpt2, bpe):
    model, path = hf_gpt2
    config, params = hf.from_pretrained(path)
    ids, mask = _left_padded(bpe)
    decoder = gpt.GPTLMHeadModel(config)
    run = functools.partial(gen.generate, decoder, params, ids, mask, jax.random.key(0), max_new_tokens=12,
                            sampling=gen.Sampling(temperature=0.0))
    eos = int(run()["tokens"][0, 4])  # a token the first row writes: with it as end of text, that row stops early
    ours = run(eos_id=eos)
    with torch.no_grad():
        theirs = model.generate(input_ids=torch.as_tensor(ids, dtype=torch.long), attention_mask=torch.as_tensor(mask),
                                max_new_tokens=12, do_sample=False, eos_token_id=eos, pad_token_id=eos)
    theirs = theirs[:, ids.shape[1]:].numpy()
    theirs = np.pad(theirs, ((0, 0), (0, 12 - theirs.shape[1])), constant_values=eos)
    np.testing.assert_array_equal(np.asarray(ours["tokens"]), theirs)
    assert int(ours["lengths"][0]) <= 5 and int(ours["lengths"].max()) > 5


def test_sampling_is_reproducible_from_its_seed_and_keeps_to_top_k(tiny_decoder):
    config, params = tiny_decoder
    model = gpt.GPTLMHeadModel(config)
    ids, mask = gen.left_pad([[5, 6, 7], [8, 9, 10, 11]] * 4, 0)
    run = functools.partial(gen.generate, model, params, ids, mask, max_new_tokens=10)
    a, b = run(jax.random.key(7))["tokens"], run(jax.random.key(7))["tokens"]
    np.testing.assert_array_equal(a, b)
    assert (np.asarray(run(jax.random.key(8))["tokens"]) != np.asarray(a)).any()
    # top_k=1 and a tiny top_p keep only the most likely token: greedy
    greedy = run(jax.random.key(0), sampling=gen.Sampling(temperature=0.0))["tokens"]
    for sampling in (gen.Sampling(top_k=1), gen.Sampling(top_p=1e-6)):
        np.testing.assert_array_equal(run(jax.random.key(9), sampling=sampling)["tokens"], greedy)
    # top_k=3: each drawn token is among the 3 most likely under its logits
    out = run(jax.random.key(3), sampling=gen.Sampling(top_k=3), with_logits=True)
    rank = (np.asarray(out["logits"]) > np.take_along_axis(np.asarray(out["logits"]),
                                                           np.asarray(out["tokens"])[..., None], -1)).sum(-1)
    assert rank.max() < 3


def test_causal_attention_on_every_path_with_padding_and_packing(tiny_decoder):
    config, params = tiny_decoder
    rng = np.random.default_rng(0)
    # row 0: three documents packed, each sees only itself and its positions start at 0; row 1: one, padded
    docs = [rng.integers(1, 97, n).astype(np.int32) for n in (50, 30, 40)]
    ids, segments = np.zeros((2, 128), np.int32), np.zeros((2, 128), np.int32)
    at = 0
    for k, doc in enumerate(docs):
        ids[0, at:at + len(doc)], segments[0, at:at + len(doc)] = doc, k + 1
        at += len(doc)
    ids[1, :100], segments[1, :100] = rng.integers(1, 97, 100), 1
    batch = {"input_ids": ids, "attention_mask": (segments > 0).astype(np.int32), "segment_ids": segments}
    logits = {path: np.asarray(gpt.GPTLMHeadModel(config.replace(attention=path)).apply({"params": params}, batch)
                               ["logits"]) for path in ("explicit", "fused", "splash")}
    keep = segments > 0
    for path in ("fused", "splash"):
        np.testing.assert_allclose(logits[path][keep], logits["explicit"][keep], atol=1e-5, rtol=1e-5, err_msg=path)
    at = 0
    for doc in docs:
        alone = _jax_logits(config, params, doc[None], np.ones((1, len(doc)), np.int32))[0]
        np.testing.assert_allclose(logits["explicit"][0, at:at + len(doc)], alone, atol=1e-5, rtol=1e-5)
        at += len(doc)
    later = ids[1:, :100].copy()
    later[:, 60:] = (later[:, 60:] + 1) % 97
    np.testing.assert_allclose(_jax_logits(config, params, later, np.ones_like(later))[:, :60],
                               logits["explicit"][1:, :60], atol=1e-5)  # no query sees a later token


def test_bad_generation_inputs_and_checkpoints_are_named(tiny_decoder, tmp_path):
    config, params = tiny_decoder
    model = gpt.GPTLMHeadModel(config)
    ids, mask = gen.left_pad([list(range(1, 97)) + [1] * 24], 0)
    with pytest.raises(ValueError, match=r"max_new_tokens=9 make 129 positions, more than the model's "
                                         r"max_position_embeddings=128.*at most 8"):
        gen.generate(model, params, ids, mask, jax.random.key(0), max_new_tokens=9)
    with pytest.raises(ValueError, match="a prompt of 130 tokens leaves no room for a new token"):
        gen.generate(model, params, *gen.left_pad([[1] * 130], 0), jax.random.key(0), max_new_tokens=1)
    with pytest.raises(ValueError, match="max_new_tokens=0: expected at least 1"):
        gen.generate(model, params, ids, mask, jax.random.key(0), max_new_tokens=0)
    with pytest.raises(ValueError, match="top_p=0: expected a probability"):
        gen.Sampling(top_p=0)
    transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text((tmp_path / "config.json").read_text().replace('"bert"', '"llama"'))
    with pytest.raises(ValueError, match=r"config.json: model_type='llama'.*jaxlm reads BERT .* and GPT-2"):
        hf.from_pretrained(tmp_path)
    no_eos = ByteLevelBPETokenizer.train(TEXTS, 280)
    assert ByteLevelBPETokenizer(no_eos._tok, eos_piece="</s>").eos_id is None


@pytest.mark.parametrize("name, millions", [("gpt2", 124.44), ("gpt2-medium", 354.82)])
def test_presets_have_gpt2s_parameter_counts(name, millions):
    model = gpt.GPTLMHeadModel(gpt.preset(name))
    shapes = jax.eval_shape(model.init, jax.random.key(0), {"input_ids": jax.ShapeDtypeStruct((1, 8), "int32")})
    assert sum(x.size for x in jax.tree.leaves(shapes)) / 1e6 == pytest.approx(millions, abs=0.01)
