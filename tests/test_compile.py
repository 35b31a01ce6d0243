"""`jaxlm compile`: the trainer's own step compiled ahead of time for TPU topologies with libtpu, no TPU.

libtpu comes with the test extra (`jax[tpu]`); a compile is slow on 2 CPU cores (minutes for
bert-base), so CI compiles small programs and a 2-layer bert-large width; bert-base and the matrix are `-m slow`.
"""

import pathlib
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm import aot, cli, experiment, sharding, tasks
from jaxlm import config as jaxlm_config
from jaxlm.models import bert, transformer
from tiny import tiny

GIB = 1024**3


def test_topology_table_counts_chips_and_knows_gcloud_names():
    for name, (topology, chip_config, hbm) in aot.TOPOLOGIES.items():
        generation, number = name.rsplit("-", 1)
        chips = int(np.prod([int(d) for d in topology.split(":")[1].split("x")]))
        per_chip = 2 if generation in ("v4", "v5p") else 1  # their names count TensorCores
        assert chips * per_chip == int(number), name
        assert hbm == {"v4": 32, "v5p": 95, "v5litepod": 16, "v6e": 32}[generation]
    topology, hbm, devices = aot.topology_devices("v4-32")
    assert (topology, hbm, len(devices), devices[0].device_kind) == ("v4:2x2x4", 32, 16, "TPU v4")
    topology, hbm, devices = aot.topology_devices("v5e-16")  # v5e-N means v5litepod-N
    assert (topology, len(devices), devices[0].device_kind) == ("v5e:4x4", 16, "TPU v5 lite")
    with pytest.raises(ValueError, match=r"--topology v5e-12: unknown; expected a gcloud accelerator type"):
        aot.topology_devices("v5e-12")


def test_largest_batch_brackets_and_bisects():
    calls = []

    def fits(b):
        calls.append(b)
        return b <= 1000

    lo, hi = aot.largest_batch(fits, 16, 256)
    assert lo <= 1000 < hi and lo % 16 == 0 and hi - lo <= max(16, lo // 8)
    assert calls[:3] == [256, 512, 1024] and len(calls) <= 6
    assert aot.largest_batch(lambda b: b <= 100, 16, 256) == (96, 112)
    assert aot.largest_batch(lambda b: False, 16, 64) == (0, 16)


@pytest.mark.parametrize("variant", ["pretrain", "scratch"])
def test_batch_spec_is_what_the_data_pipeline_makes(data_env, variant):
    c = tiny(variant, data_env, **({"task.packed": True} if variant == "pretrain" else {}))
    task = tasks.create(c)
    examples = task.examples(experiment.resolve_tokenizer(c, data_env / f"spec_{variant}"), "validation[:48]")
    batch = examples.batch(np.arange(8), 0, c.data.max_seq_length)
    assert {k: (v.shape, v.dtype.name) for k, v in batch.items()} == task.batch_spec(8)


def test_splash_attention_is_chosen_and_compiled_by_mosaic_for_tpu():
    """On a TPU mesh with attention dropout off, model.attention='auto' lowers to the Pallas splash kernel (a
    Mosaic custom call), and with dropout to the explicit softmax; libtpu compiles the kernel's forward and backward
    at bert-base's shapes (12 heads of 64, 512 tokens, bfloat16), per shard of a data x tensor mesh."""
    _, _, devices = aot.topology_devices("v5e-4")
    mesh = sharding.make_mesh(2, 1, 2, devices=devices)
    rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(sharding.BATCH_AXES))
    ids = jax.ShapeDtypeStruct((4, 128), np.int32, sharding=rows)
    for dropout, kernels in ((0.0, True), (0.1, False)):
        model = bert.BertForPreTraining(bert.preset("bert-L2-H128", vocab_size=64, attention_dropout=dropout))
        params = jax.eval_shape(lambda: model.init(jax.random.key(0), {"input_ids": np.zeros((1, 128), np.int32)}))

        def loss(p, ids):
            out = model.apply(p, {"input_ids": ids}, deterministic=False, rngs={"dropout": jax.random.key(0)})
            return out["mlm_logits"].sum()

        with sharding.mesh_context(mesh):
            text = jax.jit(jax.grad(loss)).lower(params, ids).as_text()
        assert ("tpu_custom_call" in text) == kernels, dropout

    qkv = jax.ShapeDtypeStruct((8, 512, 12, 64), jnp.bfloat16, sharding=jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec(sharding.BATCH_AXES, None, "tensor", None)))
    pad = jax.ShapeDtypeStruct((8, 512), np.int32, sharding=rows)

    def attention_loss(q, k, v, pad):
        return transformer.splash_attention(q, k, v, transformer.attention_mask(pad)).astype(np.float32).sum()

    with sharding.mesh_context(mesh):
        compiled = jax.jit(jax.grad(attention_loss, argnums=(0, 1, 2))).lower(qkv, qkv, qkv, pad).compile()
    # Three Mosaic kernels: the forward (saving its softmax statistics), dq, and dk + dv.
    assert re.findall(r'custom_call_target="([^"]+)"', compiled.as_text()).count("tpu_custom_call") == 3


VOCAB = 2**20


def _bert_large_width(vocab: int, fsdp: bool, batch: int):
    c = jaxlm_config.base()
    c.model.preset = "bert-large"
    c.model.overrides = {"num_layers": 2}
    c.data.vocab_size, c.data.batch_size = vocab, batch
    c.mesh.data, c.mesh.fsdp = (1, -1) if fsdp else (-1, 1)
    return c


@pytest.mark.slow
def test_fsdp_fits_where_data_parallelism_does_not():
    """2 layers at bert-large width with a vocabulary of 2^20: 1.1B parameters, whose float32 values, Adam
    moments and gradients (17.6 GB) every chip of a v5e-16 (16 GB) would hold under pure data parallelism, but
    only 1/16 of under FSDP. The same batch fits with FSDP and not without. (About 14 GiB per chip: the tied MLM
    decoder's gradient, 4 GiB in float32 for this vocabulary, is formed whole on each chip before it is reduced.)"""
    with pytest.raises(aot.DoesNotFit, match=r"config.data.batch_size=16 does not fit on v5e-16 \(16 GiB per "
                                             r"device\) with mesh \{'data': 16, 'fsdp': 1, 'tensor': 1\}: XLA ran "
                                             r"out of HBM"):
        aot.report(_bert_large_width(VOCAB, fsdp=False, batch=16), "v5e-16", search=False)
    r = aot.report(_bert_large_width(VOCAB, fsdp=True, batch=16), "v5e-16", search=False)
    assert r["mesh"] == {"data": 1, "fsdp": 16, "tensor": 1} and r["hbm_fraction"] < 0.95
    assert "mesh {'data': 1, 'fsdp': 16, 'tensor': 1}; global batch 16 x 128 tokens" in aot.format_report(r)
    assert r["flops_per_step"] == pytest.approx(r["model_flops_per_step"], rel=0.15)  # XLA counts what MFU counts
    params = VOCAB * 1024 + 2 * 12.6e6 + 2.6e6  # embeddings (the MLM decoder is tied), 2 layers, heads
    # Each chip holds 1/16 of the float32 parameters and moments (a few replicated vectors, tile padding).
    assert r["memory_gib_per_device"]["arguments"] * GIB == pytest.approx(3 * 4 * params / 16, rel=0.05)


@pytest.mark.slow
def test_bert_base_compiles_for_v5e_4(capsys, tmp_path):
    """The CLI end to end: bert-base pretraining (BERT's batch 256 x 128, float32, scanned layers) on 4 chips
    (16 take twice as long to compile here; this one about 2.5 minutes: -m slow)."""
    config = tmp_path / "bert_base.py"
    config.write_text("from jaxlm import config\n\ndef get_config():\n    c = config.base()\n"
                      "    c.model.scan_layers = True\n    return c\n")
    assert cli.main(["compile", "--config", str(config), "--topology", "v5e-4", "--no-batch-search"]) == 0
    out = capsys.readouterr().out
    memory = re.search(r"memory per device: arguments ([\d.]+) GiB, outputs ([\d.]+) \(of which ([\d.]+) reuse the "
                       r"donated state\), temporaries ([\d.]+), code ([\d.]+) -> ([\d.]+) GiB", out)
    arguments, outputs, aliased, temporaries, code, total = map(float, memory.groups())
    state_gib = 3 * 4 * 110.1e6 / GIB  # parameters and two Adam moments, float32, replicated (data=4)
    assert arguments == pytest.approx(state_gib, rel=0.05) and aliased == pytest.approx(outputs, rel=0.01)
    assert 0 < temporaries < 16 and total < 16
    flops = re.search(r"FLOPs per step: ([\d.e+]+) \(the model's, as MFU counts them\); XLA's count ([\d.e+]+) "
                      r"\(it counts the scanned layers once\)", out)
    model, compiler = map(float, flops.groups())
    assert model == pytest.approx(6 * 86e6 * 256 * 128, rel=0.1)  # 6 x encoder parameters x tokens, + attention
    assert model / 12 < compiler < model  # one of the 12 layers, the embeddings and the heads
    assert "attention: explicit (softmax with attention dropout, XLA)" in out  # BERT's attention dropout 0.1


@pytest.mark.slow
def test_compile_matrix():
    """bert-base on every generation x mesh: sharding the state shrinks its memory per device."""
    sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "benchmarks"))
    import compile_matrix

    rows = compile_matrix.matrix(compile_matrix.TOPOLOGIES, list(compile_matrix.MESHES))
    assert not [r for r in rows if "does_not_fit" in r]
    by = {(r["topology"], r["mesh_name"]): r["memory_gib_per_device"]["arguments"] for r in rows}
    for topology in compile_matrix.TOPOLOGIES:
        assert by[topology, "fsdp"] < by[topology, "dp"] / 4, topology
    assert jax.devices()[0].platform == "cpu"  # all of it without a TPU
