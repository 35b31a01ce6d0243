"""The Flax Transformer and BERT: presets, attention paths, variants (bf16, remat, scan)."""

import contextlib
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.models import bert, transformer


def _batch(batch=3, length=12, vocab=50, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab, (batch, length)).astype(np.int32)
    mask = np.ones((batch, length), np.int32)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    types = np.zeros((batch, length), np.int32)
    types[:, length // 2:] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def test_every_preset_builds_with_expected_parameter_count():
    dummy = {"input_ids": jnp.zeros((1, 8), jnp.int32)}
    counts = {}
    for name in bert.PRESETS:
        cfg = bert.preset(name)
        shapes = jax.eval_shape(lambda: bert.BertForPreTraining(cfg).init(jax.random.key(0), dummy))
        counts[name] = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.unbox(shapes)))
        assert cfg.num_heads * 64 == cfg.hidden_size
    # As transformers' BertForPreTraining counts them (the decoder tied to the word embeddings).
    assert counts["bert-base"] == 110_106_428
    assert counts["bert-mini"] == counts["bert-L4-H256"]
    assert counts["bert-large"] > 330_000_000
    assert len([n for n in bert.PRESETS if n.startswith("bert-L")]) == 24


def test_unknown_preset_and_field_give_clear_errors():
    with pytest.raises(ValueError, match="unknown model preset 'bert-huge'.*bert-base"):
        bert.preset("bert-huge")
    with pytest.raises(ValueError, match="unknown model config fields \\['hiden_size'\\]"):
        bert.preset("bert-mini", hiden_size=3)


def test_fused_and_explicit_attention_agree_without_dropout():
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(2, 10, 4, 16)), jnp.float32) for _ in range(3))
    pad = jnp.asarray(np.arange(10)[None, :] < np.array([[10], [6]]))
    segments = jnp.asarray([[1] * 5 + [2] * 5, [1] * 3 + [2] * 3 + [0] * 4])
    for mask in (transformer.attention_mask(pad).dense, transformer.attention_mask(pad, segments).dense):
        fused = transformer.fused_attention(q, k, v, mask)
        explicit = transformer.explicit_attention(q, k, v, mask, dropout_rate=0.0, dropout_rng=None,
                                                  deterministic=True)
        np.testing.assert_allclose(fused, explicit, atol=1e-5)
    # The segment mask is real: a token of segment 1 does not see segment 2.
    seg_only = transformer.explicit_attention(q, k, v, transformer.attention_mask(pad, segments).dense,
                                              dropout_rate=0.0, dropout_rng=None, deterministic=True)
    first_half = transformer.explicit_attention(q[:, :5], k[:, :5], v[:, :5], jnp.ones((2, 1, 5, 5), bool),
                                                dropout_rate=0.0, dropout_rng=None, deterministic=True)
    np.testing.assert_allclose(seg_only[0, :5], first_half[0], atol=1e-5)


def _splash_inputs(length=384, heads=2, seed=0):
    """q, k, v (head_dim 64, as in every BERT preset) of 4 rows, and their padding mask: a full row, a padded one,
    one of 17 real tokens, and one of padding only (a row no key is visible to)."""
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.normal(size=(4, length, heads, 64)), jnp.float32) for _ in range(3))
    pad = np.arange(length)[None, :] < np.array([[length], [length - 56], [17], [0]])
    return q, k, v, pad


@pytest.mark.parametrize("packed", [False, True])
def test_splash_attention_matches_explicit_forward_and_backward(packed):
    """The Pallas kernel (interpret mode here; Mosaic on TPU) over three 128-token blocks, against the explicit
    softmax: outputs and the gradients of q, k and v at every real token; no NaN from a row of padding."""
    q, k, v, pad = _splash_inputs()
    segments = np.where(np.arange(pad.shape[1])[None, :] < 100, 1, 2) * pad if packed else None
    mask = transformer.attention_mask(jnp.asarray(pad), None if segments is None else jnp.asarray(segments))
    weights = jnp.asarray(np.random.default_rng(1).normal(size=q.shape) * pad[:, :, None, None], jnp.float32)

    def explicit(q, k, v):
        return transformer.explicit_attention(q, k, v, mask.dense, dropout_rate=0.0, dropout_rng=None,
                                              deterministic=True)

    def splash(q, k, v):
        return transformer.splash_attention(q, k, v, mask)

    outs, grads = [], []
    for fn in (explicit, splash):
        out, vjp = jax.vjp(fn, q, k, v)
        outs.append(np.asarray(out))
        grads.append([np.asarray(g) for g in vjp(weights)])
    assert np.isfinite(outs[1]).all() and all(np.isfinite(g).all() for g in grads[1])
    np.testing.assert_allclose(outs[1][pad], outs[0][pad], atol=2e-5)
    for name, ours, ref in zip("qkv", grads[1], grads[0]):
        np.testing.assert_allclose(ours[pad], ref[pad], atol=2e-5, err_msg=f"d{name}")
    if packed:  # the segment mask is real: segment 1 (tokens < 100) of row 0 does not see segment 2
        alone = transformer.splash_attention(q[:1, :128], k[:1, :128], v[:1, :128], transformer.attention_mask(
            jnp.asarray(np.arange(128) < 100)[None]))
        np.testing.assert_allclose(outs[1][0, :100], alone[0, :100], atol=2e-5)


def test_splash_attention_refuses_lengths_and_dropout_it_cannot_do():
    q, k, v, pad = _splash_inputs(length=100)
    with pytest.raises(ValueError, match=r"model.attention='splash' needs sequence lengths that are multiples of "
                                         r"128, got 100 \(config.data.max_seq_length"):
        transformer.splash_attention(q, k, v, transformer.attention_mask(jnp.asarray(pad)))
    with pytest.raises(ValueError, match=r"model.attention='splash' computes no attention dropout, but "
                                         r"model.attention_dropout=0.1: set it to 0"):
        bert.preset("bert-mini", attention="splash")
    with pytest.raises(ValueError, match=r"model.attention='flash': expected 'auto', 'explicit', 'fused' or"):
        bert.preset("bert-mini", attention="flash")


def test_auto_attention_takes_the_fastest_path_that_computes_the_config():
    path = functools.partial(transformer.attention_path, bert.preset("bert-mini"))  # attention dropout 0.1
    assert [path(training=True, length=512, platform=p) for p in ("cpu", "gpu", "tpu")] == ["explicit"] * 3
    assert [path(training=False, length=512, platform=p) for p in ("cpu", "gpu", "tpu")] == ["fused", "fused", "splash"]
    assert path(training=False, length=100, platform="tpu") == "fused"  # the kernel's blocks are 128 tokens
    no_dropout = bert.preset("bert-mini", attention_dropout=0.0)
    assert transformer.attention_path(no_dropout, training=True, length=128, platform="tpu") == "splash"
    pinned = bert.preset("bert-mini", attention="explicit")
    assert transformer.attention_path(pinned, training=False, length=128, platform="tpu") == "explicit"


def test_splash_bert_on_a_mesh_matches_explicit():
    """BERT pretraining loss and gradients with the splash kernel run per shard (batch over data x fsdp, heads
    over tensor) on a 2x2x2 mesh equal those of the explicit path."""
    from jaxlm import sharding
    from jaxlm.tasks.pretrain import Pretrain

    cfg = bert.preset("bert-L2-H128", vocab_size=50, hidden_dropout=0.0, attention_dropout=0.0)
    batch = _batch(batch=4, length=128)
    batch.update(masked_positions=np.array([[1, 5, 0], [2, 3, 9], [1, 2, 3], [7, 8, 0]], np.int32),
                 masked_ids=np.array([[6, 7, 0], [8, 9, 10], [11, 12, 13], [5, 6, 0]], np.int32),
                 masked_weights=np.array([[1, 1, 0], [1, 1, 1], [1, 1, 1], [1, 1, 0]], np.float32),
                 nsp_label=np.array([0, 1, 1, 0], np.int32), nsp_weight=np.ones(4, np.float32))
    params = _init(cfg, batch)[1]

    def loss_and_grads(attention, mesh):
        model = bert.BertForPreTraining(cfg.replace(attention=attention))

        def loss(p):
            sums, denominators, _ = Pretrain.loss(model.apply(p, batch), batch)
            return sums["mlm"] / denominators["mlm"] + sums["nsp"] / denominators["nsp"]

        with sharding.mesh_context(mesh) if mesh else contextlib.nullcontext():
            return jax.jit(jax.value_and_grad(loss))(params)

    (l0, g0), (l1, g1) = loss_and_grads("explicit", None), loss_and_grads("splash", sharding.make_mesh(2, 2, 2))
    np.testing.assert_allclose(l1, l0, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4), g1, g0)


def test_attention_dropout_is_applied_in_training():
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(1, 8, 2, 8)), jnp.float32) for _ in range(3))
    mask = jnp.ones((1, 1, 8, 8), bool)
    a = transformer.explicit_attention(q, k, v, mask, dropout_rate=0.5, dropout_rng=jax.random.key(1),
                                       deterministic=False)
    b = transformer.explicit_attention(q, k, v, mask, dropout_rate=0.5, dropout_rng=jax.random.key(1),
                                       deterministic=True)
    assert not np.allclose(a, b)


def _init(cfg, batch):
    model = bert.BertForPreTraining(cfg)
    return model, nn.unbox(model.init(jax.random.key(0), batch))


def test_masked_positions_gather_equals_full_logits():
    cfg = bert.preset("bert-L2-H128", vocab_size=50)
    batch = _batch()
    model, params = _init(cfg, batch)
    full = model.apply(params, batch)["mlm_logits"]  # (batch, length, vocab)
    positions = np.array([[1, 3, 0], [2, 5, 6], [0, 1, 2]], np.int32)
    gathered = model.apply(params, {**batch, "masked_positions": positions})["mlm_logits"]
    np.testing.assert_allclose(gathered, np.take_along_axis(np.asarray(full), positions[..., None], 1), atol=1e-5)


def test_padding_does_not_change_real_tokens():
    cfg = bert.preset("bert-L2-H128", vocab_size=50)
    batch = _batch()
    model, params = _init(cfg, batch)
    out = model.apply(params, batch)["hidden"]
    noisy = dict(batch, input_ids=np.where(batch["attention_mask"] == 1, batch["input_ids"], 7))
    np.testing.assert_allclose(model.apply(params, noisy)["hidden"][1, :7], out[1, :7], atol=1e-5)


@pytest.mark.parametrize("variant", [dict(remat="full"), dict(remat="dots"), dict(scan_layers=True),
                                     dict(scan_layers=True, remat="full")])
def test_remat_and_scan_give_the_same_numbers(variant):
    cfg = bert.preset("bert-L2-H128", vocab_size=50, hidden_dropout=0.0, attention_dropout=0.0)
    batch = _batch()
    model, params = _init(cfg, batch)
    vcfg = cfg.replace(**variant)
    vparams = params
    if vcfg.scan_layers:
        enc = transformer.stack_layers(params["params"]["bert"]["encoder"], cfg.num_layers)
        vparams = {"params": {**params["params"], "bert": {**params["params"]["bert"], "encoder": enc}}}
        assert enc["layers"]["attention"]["query"]["kernel"].shape == (2, 128, 2, 64)
    vmodel = bert.BertForPreTraining(vcfg)

    def loss(p, m):
        out = m.apply(p, batch, output_hidden_states=True)
        return out["mlm_logits"].sum() + out["nsp_logits"].sum(), out

    (l0, out0), g0 = jax.value_and_grad(loss, has_aux=True)(params, model)
    (l1, out1), g1 = jax.value_and_grad(loss, has_aux=True)(vparams, vmodel)
    for key in ("hidden", "pooled", "mlm_logits", "nsp_logits", "hidden_states"):
        np.testing.assert_allclose(out1[key], out0[key], atol=1e-4, rtol=1e-5)
    g_word = lambda g: g["params"]["bert"]["embeddings"]["word"]["embedding"]  # noqa: E731
    np.testing.assert_allclose(g_word(g1), g_word(g0), atol=1e-4, rtol=1e-4)


def test_bfloat16_compute_with_float32_params():
    cfg = bert.preset("bert-L2-H128", vocab_size=50, dtype=jnp.bfloat16)
    batch = _batch()
    model, params = _init(cfg, batch)
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    out = model.apply(params, batch)
    assert out["hidden"].dtype == jnp.bfloat16 and out["hidden"].shape == (3, 12, 128)
    assert out["mlm_logits"].dtype == jnp.float32 and out["mlm_logits"].shape == (3, 12, 50)
    f32 = bert.BertForPreTraining(cfg.replace(dtype=jnp.float32)).apply(params, batch)
    np.testing.assert_allclose(np.asarray(out["pooled"], np.float32), f32["pooled"], atol=0.05)


def test_pre_layer_norm_and_classifier_shapes():
    cfg = bert.preset("bert-L2-H128", vocab_size=50, pre_layer_norm=True)
    batch = _batch()
    for num_labels in (1, 5):
        model = bert.BertForSequenceClassification(cfg, num_labels)
        params = model.init(jax.random.key(0), batch)
        assert "final_norm" in params["params"]["bert"]["encoder"]
        assert model.apply(params, batch)["logits"].shape == (3, num_labels)


def test_dropout_changes_outputs_only_in_training():
    cfg = bert.preset("bert-L2-H128", vocab_size=50)
    batch = _batch()
    model, params = _init(cfg, batch)
    a = model.apply(params, batch, deterministic=False, rngs={"dropout": jax.random.key(1)})["hidden"]
    b = model.apply(params, batch, deterministic=False, rngs={"dropout": jax.random.key(2)})["hidden"]
    c = model.apply(params, batch)["hidden"]
    assert not np.allclose(a, b) and not np.allclose(a, c)


def test_sequence_longer_than_position_embeddings_is_refused():
    cfg = bert.preset("bert-L2-H128", vocab_size=50, max_position_embeddings=8)
    with pytest.raises(ValueError, match="max_position_embeddings=8"):
        bert.BertForPreTraining(cfg).init(jax.random.key(0), _batch(length=12))
