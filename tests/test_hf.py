"""Parity with transformers' PyTorch BERT, checkpoint import/export, and the real MiniLM weights."""

import dataclasses
import json

import jax
import numpy as np
import pytest
import torch
import transformers

from jaxlm import config as jaxlm_config
from jaxlm import experiment, hf
from jaxlm.models import bert
from tests.minilm import minilm_dir

TINY = dict(vocab_size=99, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            max_position_embeddings=32, type_vocab_size=2, hidden_act="gelu", layer_norm_eps=1e-12)


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, TINY["vocab_size"], (3, 16)).astype(np.int32)
    mask = np.ones((3, 16), np.int32)
    mask[1, 10:] = 0
    mask[2, 5:] = 0
    types = np.zeros((3, 16), np.int32)
    types[:, 8:] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def _randomise(model: torch.nn.Module, seed=0):
    """Weights with std 0.5-1 (HF's 0.02 keeps activations so small that tanh-GELU passes for exact GELU),
    and small embeddings, so that the embedding LayerNorm's input variance is comparable to eps=1e-6."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            std = 2e-3 if "embeddings" in name and "LayerNorm" not in name else 0.5 + 0.5 * torch.rand(1, generator=gen).item()
            p.copy_(torch.randn(p.shape, generator=gen) * std)


@pytest.fixture(scope="module")
def hf_pretraining(tmp_path_factory):
    torch.manual_seed(0)
    model = transformers.BertForPreTraining(transformers.BertConfig(**TINY)).eval()
    _randomise(model)
    path = tmp_path_factory.mktemp("hf_pretraining")
    model.save_pretrained(path)
    return model, path


def _torch_outputs(model, batch):
    with torch.no_grad():
        out = model(**{k: torch.as_tensor(v, dtype=torch.long) for k, v in batch.items()}, output_hidden_states=True)
    return {"hidden": out.hidden_states[-1].numpy(), "mlm_logits": out.prediction_logits.numpy(),
            "nsp_logits": out.seq_relationship_logits.numpy()}


def _jax_outputs(config, params, batch):
    out = bert.BertForPreTraining(config).apply({"params": params}, batch)
    return {k: np.asarray(v) for k, v in out.items()}


def _max_diff(a, b, mask):
    return {k: float(np.abs(a[k] - b[k])[mask if k != "nsp_logits" else slice(None)].max()) for k in b}


def test_parity_with_transformers_bert_for_pretraining(hf_pretraining):
    model, path = hf_pretraining
    config, params = hf.from_pretrained(path)
    batch = _inputs()
    ref = _torch_outputs(model, batch)
    ours = _jax_outputs(config, params, batch)
    real = batch["attention_mask"].astype(bool)  # padded positions are unspecified in both
    diffs = _max_diff(ours, ref, real)
    assert all(d < 1e-4 for d in diffs.values()), diffs
    with torch.no_grad():
        pooled = model.bert(**{k: torch.as_tensor(v, dtype=torch.long) for k, v in batch.items()}).pooler_output
    np.testing.assert_allclose(ours["pooled"], pooled.numpy(), atol=1e-4)
    assert np.abs(ref["mlm_logits"]).max() > 1.0  # the comparison is not between near-zero numbers


@pytest.mark.parametrize("mutant", ["tanh_gelu", "eps_1e-6", "padding_ignored"])
def test_parity_test_catches_wrong_models(hf_pretraining, mutant):
    """The parity check above fails for the usual mistakes: shown here by making them on purpose."""
    model, path = hf_pretraining
    config, params = hf.from_pretrained(path)
    batch = _inputs()
    ref = _torch_outputs(model, batch)
    if mutant == "tanh_gelu":
        config = dataclasses.replace(config, hidden_act="gelu_new")
    elif mutant == "eps_1e-6":
        config = dataclasses.replace(config, layer_norm_eps=1e-6)
    ours_batch = dict(batch, attention_mask=np.ones_like(batch["attention_mask"])) if mutant == "padding_ignored" else batch
    diffs = _max_diff(_jax_outputs(config, params, ours_batch), ref, batch["attention_mask"].astype(bool))
    assert max(diffs.values()) > 1e-3, diffs


def test_export_round_trip_loads_in_transformers_with_no_missing_keys(tmp_path):
    config = bert.preset("bert-L2-H128", vocab_size=99, max_position_embeddings=32, hidden_act="gelu")
    params = hf._fresh_params(config, "pretrain", None, seed=3)
    params = jax.tree.map(lambda x: x * 25.0, params)  # std 0.5: make the numbers matter
    hf.save_pretrained(config, params, tmp_path / "out")
    model, info = transformers.BertForPreTraining.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    batch = _inputs()
    ours, ref = _jax_outputs(config, params, batch), _torch_outputs(model.eval(), batch)
    real = batch["attention_mask"].astype(bool)
    diffs = _max_diff(ours, ref, real)
    for key, diff in diffs.items():  # logits reach the hundreds here: float32 rounding scales with them
        assert diff < 1e-4 * max(1.0, np.abs(ref[key]).max() / 10), (key, diff)
    # And back: jaxlm reads what it wrote, bit for bit.
    config2, params2 = hf.from_pretrained(tmp_path / "out")
    assert config2 == config.replace(hidden_dropout=0.1, attention_dropout=0.1)
    jax.tree.map(np.testing.assert_array_equal, params2, params)


def test_classifier_export_and_import(tmp_path):
    config = bert.preset("bert-L2-H128", vocab_size=99, max_position_embeddings=32)
    params = hf._fresh_params(config, "classify", 3, seed=1)
    params = jax.tree.map(lambda x: x * 25.0, params)
    hf.save_pretrained(config, params, tmp_path, label_names=["neg", "neu", "pos"])
    model, info = transformers.BertForSequenceClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert model.config.id2label[2] == "pos"
    batch = _inputs()
    with torch.no_grad():
        ref = model.eval()(**{k: torch.as_tensor(v, dtype=torch.long) for k, v in batch.items()}).logits.numpy()
    ours = bert.BertForSequenceClassification(config, 3).apply({"params": params}, batch)["logits"]
    np.testing.assert_allclose(ours, ref, atol=1e-4)
    # Scanned layout in, same numbers out.
    scfg, sparams = hf.from_pretrained(tmp_path, "classify", scan_layers=True)
    assert sparams["bert"]["encoder"]["layers"]["mlp"]["wi"]["kernel"].shape == (2, 128, 512)
    np.testing.assert_allclose(bert.BertForSequenceClassification(scfg, 3).apply({"params": sparams}, batch)["logits"],
                               ref, atol=1e-4)


def test_bert_model_checkpoint_reports_and_initialises_missing_heads(tmp_path, caplog):
    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig(**TINY))
    # Old-style names: no `bert.` prefix (BertModel), gamma/beta LayerNorm names, pytorch_model.bin.
    state = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
             for k, v in model.state_dict().items()}
    torch.save(state, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps({**model.config.to_dict(), "model_type": "bert"}))
    with caplog.at_level("WARNING"):
        config, params = hf.from_pretrained(tmp_path, "classify", num_labels=4)
    assert "classifier" in caplog.text and "initialised fresh" in caplog.text
    assert params["classifier"]["kernel"].shape == (64, 4)
    np.testing.assert_array_equal(params["bert"]["encoder"]["layer_1"]["mlp_norm"]["scale"],
                                  model.encoder.layer[1].output.LayerNorm.weight.detach().numpy())
    with caplog.at_level("WARNING"):
        hf.from_pretrained(tmp_path, "pretrain")
    assert "mlm_head" in caplog.text and "nsp_head" in caplog.text


def test_bad_checkpoints_get_clear_errors(tmp_path, hf_pretraining):
    _, good = hf_pretraining
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text((good / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="no model.safetensors or pytorch_model.bin"):
        hf.from_pretrained(empty)
    with pytest.raises(FileNotFoundError, match=r"nowhere: no such directory .*nowhere \(nor a Hub id org/name\)"):
        hf.from_pretrained(tmp_path / "nowhere")

    t5 = tmp_path / "t5"
    t5.mkdir()
    (t5 / "config.json").write_text(json.dumps({"model_type": "t5", "architectures": ["T5Model"]}))
    with pytest.raises(ValueError, match="t5.*model_type='t5'.*jaxlm reads BERT"):
        hf.from_pretrained(t5)

    wrong = tmp_path / "wrong_shape"
    wrong.mkdir()
    cfg = json.loads((good / "config.json").read_text())
    (wrong / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 96}))
    (wrong / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match=r"model.safetensors: bert.encoder.layer.0.intermediate.dense.(weight|bias) has shape .* implies"):
        hf.from_pretrained(wrong)

    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "config.json").write_text((good / "config.json").read_text())
    data = (good / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated/model.safetensors: cannot read"):
        hf.from_pretrained(truncated)


def test_hub_ids_resolve_through_the_cache_a_path_wins_and_offline_says_how(tmp_path, hf_pretraining, monkeypatch):
    """'org/name' goes through huggingface_hub: a sharded checkpoint in its cache (the layout `hf download` leaves:
    refs/main -> snapshots/COMMIT) reads as the one-file one; offline, an id not cached is one line saying how to
    get it; a directory of the same spelling wins over the id."""
    import huggingface_hub

    model, good = hf_pretraining
    cache, commit = tmp_path / "hub", "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--jaxlm-test--tiny-bert"
    model.save_pretrained(repo / "snapshots" / commit, max_shard_size="100KB")  # transformers' own shards
    assert len(list((repo / "snapshots" / commit).glob("model-*-of-*.safetensors"))) > 1
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)

    config, params = hf.from_pretrained("jaxlm-test/tiny-bert")
    expected_config, expected = hf.from_pretrained(good)
    assert config == expected_config
    jax.tree.map(np.testing.assert_array_equal, params, expected)
    c = jaxlm_config.base()
    c.model.init_from, c.data.tokenizer = "hf:jaxlm-test/tiny-bert", "init"
    assert experiment.tokenizer_source(c) == str(repo / "snapshots" / commit)

    with pytest.raises(FileNotFoundError, match=r"^--from-hf jaxlm-test/absent: no such directory, and the Hub model "
                                                r"'jaxlm-test/absent' is not in the Hugging Face cache \(.*hub\) while "
                                                r"HF_HUB_OFFLINE is set: run `hf download jaxlm-test/absent`"):
        hf.locate("jaxlm-test/absent", "--from-hf jaxlm-test/absent")
    (tmp_path / "jaxlm-test" / "tiny-bert").mkdir(parents=True)  # a directory spelt as the id
    (tmp_path / "jaxlm-test" / "tiny-bert" / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(ValueError, match="model_type='t5'"):
        hf.from_pretrained("jaxlm-test/tiny-bert")


SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "JAX and Flax make it easy to train BERT on a TPU pod!",
    "A short one.",
    "Résumé writing isn't rocket science, but it's close: 3.14 times harder.",
]


def test_real_minilm_weights_match_transformers():
    path = minilm_dir()
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(path / "vocab.txt"), do_lower_case=True)
    enc = tokenizer(SENTENCES, padding=True, return_tensors="np")
    batch = {k: enc[k].astype(np.int32) for k in ("input_ids", "token_type_ids", "attention_mask")}
    ref_model = transformers.BertModel.from_pretrained(path).eval()
    with torch.no_grad():
        ref = ref_model(**{k: torch.as_tensor(v, dtype=torch.long) for k, v in batch.items()}).last_hidden_state.numpy()
    config, params = hf.from_pretrained(path, "pretrain")
    assert (config.hidden_size, config.num_layers, config.num_heads) == (384, 6, 12)
    ours = np.asarray(bert.BertModel(config).apply({"params": params["bert"]}, batch["input_ids"],
                                                   batch["token_type_ids"], batch["attention_mask"])["hidden"])
    real = batch["attention_mask"].astype(bool)
    assert np.abs(ours - ref)[real].max() < 1e-4
