"""The Transformer: frozen config, attention (bidirectional or causal, with a key/value cache for decoding),
feed-forward, layer and stack; BERT (`bert.py`) and GPT (`gpt.py`) are built from them.

Every parameter carries logical axis names (`vocab`, `embed`, `heads`, `kv`, `mlp`, ...) and every
large activation a logical constraint (`activation_batch`, `activation_length`, ...); `jaxlm.sharding`
maps both onto the mesh. Modules receive only the frozen `TransformerConfig`, never the run config.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Literal, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask
from jax.sharding import PartitionSpec as P

Array = jax.Array

# Hugging Face `hidden_act` names -> jax functions. BERT's "gelu" is the exact erf form.
ACTIVATIONS = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_fast": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}

# Logical names of activations (parameters use `vocab`, `embed`, `heads`, `kv`, `mlp`, ...).
BATCH, LENGTH, EMBED, HEADS, KV, MLP, VOCAB = (
    "activation_batch",
    "activation_length",
    "activation_embed",
    "activation_heads",
    "activation_kv",
    "activation_mlp",
    "activation_vocab",
)


@dataclasses.dataclass(frozen=True)
class Execution:
    """How a model runs, not what it is: a checkpoint holds none of this, so a trained model runs as the machine
    that loads it prefers. (A run's compute dtype is still part of its identity: bitwise resume is promised for the
    same dtype.)"""

    dtype: Any = jnp.float32  # compute dtype; LayerNorm, softmax and losses stay float32
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    remat: Literal["none", "full", "dots", "dots_no_batch"] = "none"
    scan_layers: bool = False  # the layers' parameters stacked and the stack a lax.scan (restore converts layouts)
    # 'explicit': softmax(QK^T / sqrt(d_k)) V written out, with attention dropout. 'fused':
    # jax.nn.dot_product_attention (cuDNN on GPU for bf16/fp16, XLA elsewhere). 'splash': the Pallas
    # splash-attention kernel (TPU; Pallas interpret mode on other platforms, for tests), for sequence
    # lengths that are multiples of 128. 'fused' and 'splash' have no attention dropout. 'auto': 'explicit'
    # where attention dropout is active, else 'splash' on TPU when the length allows it, else 'fused'.
    attention: Literal["auto", "explicit", "fused", "splash"] = "auto"

    def __post_init__(self):
        if self.attention not in ("auto", "explicit", "fused", "splash"):
            raise ValueError(f"model.attention={self.attention!r}: expected 'auto', 'explicit', 'fused' or 'splash'")
        if self.attention in ("fused", "splash") and self.attention_dropout > 0:
            raise ValueError(
                f"model.attention={self.attention!r} computes no attention dropout, but model.attention_dropout="
                f"{self.attention_dropout}: set it to 0, or use model.attention='auto' (the explicit path where "
                "dropout is active)"
            )


EXECUTION_FIELDS = frozenset(f.name for f in dataclasses.fields(Execution))


def _split(fields: dict) -> tuple[dict, dict]:
    """(architecture fields, `Execution` fields)."""
    return ({k: v for k, v in fields.items() if k not in EXECUTION_FIELDS},
            {k: v for k, v in fields.items() if k in EXECUTION_FIELDS})


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """A Transformer stack (BERT's encoder, GPT's decoder): its architecture (what a checkpoint is), and `run`, how
    it runs (`Execution`).

    `of(**fields)` and `replace(**fields)` take the fields of both; the modules read the run's as attributes."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pre_layer_norm: bool = False  # False: post-LN as in BERT; True: pre-LN with a final LayerNorm.
    param_dtype: Any = jnp.float32
    run: Execution = Execution()

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"model.hidden_size={self.hidden_size} is not divisible by model.num_heads={self.num_heads}"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"model.hidden_act={self.hidden_act!r}: expected one of {sorted(ACTIVATIONS)}")

    @classmethod
    def of(cls, **fields) -> "TransformerConfig":
        """A config from architecture and `Execution` fields, side by side."""
        arch, run = _split(fields)
        return cls(**arch, run=Execution(**run))

    def replace(self, **fields) -> "TransformerConfig":
        arch, run = _split(fields)
        return dataclasses.replace(self, **arch, run=dataclasses.replace(self.run, **run))

    def architecture(self) -> dict:
        """The architecture as JSON (dtypes by name): model.json, and a checkpoint's identity."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "run"}
        out["param_dtype"] = jnp.dtype(out["param_dtype"]).name
        return out

    @classmethod
    def from_architecture(cls, saved: dict, run: Execution) -> "TransformerConfig":
        """The inverse of `architecture()`; fields of how it ran that older model.json files hold are dropped."""
        arch = {k: v for k, v in saved.items() if k not in EXECUTION_FIELDS}
        arch["param_dtype"] = jnp.dtype(arch.get("param_dtype", "float32"))
        return cls(**arch, run=run)

    dtype = property(lambda self: self.run.dtype)
    hidden_dropout = property(lambda self: self.run.hidden_dropout)
    attention_dropout = property(lambda self: self.run.attention_dropout)
    remat = property(lambda self: self.run.remat)
    scan_layers = property(lambda self: self.run.scan_layers)
    attention = property(lambda self: self.run.attention)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


def from_preset(presets: dict[str, dict], name: str, overrides: dict) -> TransformerConfig:
    """The config of preset `name` of a model family, with field overrides (e.g. vocab_size=8000,
    dtype=jnp.bfloat16)."""
    if name not in presets:
        raise ValueError(f"unknown model preset {name!r}; known presets: {', '.join(sorted(presets))}")
    fields = {f.name for f in dataclasses.fields(TransformerConfig)} - {"run"} | EXECUTION_FIELDS
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown model config fields {unknown}; valid fields: {sorted(fields)}")
    return TransformerConfig.of(**{**presets[name], **overrides})


def check_positions(config: TransformerConfig, length: int) -> None:
    """Sequences of `length` tokens fit the model's learned positions, or a clear error."""
    if length > config.max_position_embeddings:
        raise ValueError(f"sequence length {length} exceeds the model's max_position_embeddings="
                         f"{config.max_position_embeddings} (lower data.max_seq_length)")


def dense_init(config: TransformerConfig, names: tuple[str, ...]):
    return nn.with_logical_partitioning(nn.initializers.normal(config.initializer_range), names)


def zeros_init(names: tuple[str, ...]):
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


class LayerNorm(nn.Module):
    """LayerNorm over the last axis, computed in float32 whatever the compute dtype, cast back after."""

    config: TransformerConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        scale = self.param(
            "scale", nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
            (x.shape[-1],), cfg.param_dtype,
        )
        bias = self.param("bias", zeros_init(("embed",)), (x.shape[-1],), cfg.param_dtype)
        x32 = x.astype(jnp.float32)
        mean = x32.mean(-1, keepdims=True)
        var = jnp.square(x32 - mean).mean(-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + cfg.layer_norm_eps)
        y = y * scale.astype(jnp.float32) + bias.astype(jnp.float32)
        return y.astype(cfg.dtype)


class Mask(NamedTuple):
    """What each query may see, in the two forms the attention paths take (XLA drops the unused one).

    dense: boolean, broadcastable to (batch, heads, q, kv), for the XLA paths. q_segments, kv_segments:
    (batch, length) int32, for the splash kernel: a query sees the keys of its own segment id; padding keys
    have id -1, which no query has.
    """

    dense: Array
    q_segments: Array
    kv_segments: Array


def attention_mask(attention_mask: Array, segment_ids: Array | None = None) -> Mask:
    """(batch, length) padding mask [+ packed segment ids] -> the `Mask` a key is visible through: it is not
    padding and (when packed) it is in the query's segment."""
    keep = attention_mask.astype(bool)
    dense = keep[:, None, None, :]  # (batch, 1, 1, kv): broadcast over the queries
    if segment_ids is None:
        segments = jnp.zeros(keep.shape, jnp.int32)
    else:
        segments = segment_ids.astype(jnp.int32)
        dense = dense & (segments[:, None, :, None] == segments[:, None, None, :])
    return Mask(dense, segments, jnp.where(keep, segments, -1))


def causal_mask(q_length: int, kv_length: int) -> Array:
    """(q, kv) boolean: query i sees keys 0..i (aligned top-left, as `jax.nn.dot_product_attention`'s
    `is_causal`)."""
    return jnp.arange(kv_length)[None, :] <= jnp.arange(q_length)[:, None]


def explicit_attention(q, k, v, mask, *, dropout_rate, dropout_rng, deterministic, causal=False):
    """softmax(QK^T / sqrt(d_k)) V with attention dropout; softmax in float32.

    q, k, v: (batch, length, heads, head_dim); mask: boolean, broadcastable to (batch, heads, q, kv); `causal`
    adds `causal_mask`.
    """
    scale = q.shape[-1] ** -0.5
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) * scale  # (batch, heads, q, kv)
    if causal:
        mask = mask & causal_mask(q.shape[1], k.shape[1])
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    if not deterministic and dropout_rate > 0:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs.shape)
        probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0)
    return jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v)  # (batch, q, heads, head_dim)


def step_attention(q, k, v, mask):
    """One query per row over a key/value cache laid out heads first, so that both products are batched over
    (batch, heads) with nothing transposed: a decoding step's attention on every platform. Softmax in float32.

    q: (batch, 1, heads, head_dim); k, v: (batch, heads, length, head_dim); mask: boolean, (batch, 1, 1, length).
    Returns (batch, 1, heads, head_dim).
    """
    scale = q.shape[-1] ** -0.5
    logits = jnp.einsum("bhd,bhkd->bhk", q[:, 0], k).astype(jnp.float32) * scale  # (batch, heads, length)
    logits = jnp.where(mask[:, 0], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    return jnp.einsum("bhk,bhkd->bhd", probs.astype(v.dtype), v)[:, None]


def _platform() -> str:
    """The platform the code being traced will run on: the mesh's (so that an ahead-of-time compile for a TPU
    topology on a CPU host takes the TPU paths), else the default backend's."""
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh.empty else mesh.abstract_device
    return getattr(device, "platform", None) or jax.default_backend()


def fused_attention(q, k, v, mask, causal=False):
    """jax.nn.dot_product_attention: cuDNN on GPU for 16-bit inputs, XLA elsewhere. No dropout.

    mask: boolean, broadcastable to (batch, heads, q, kv); `causal` is its `is_causal` (top-left aligned)."""
    implementation = None
    if _platform() == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16):
        implementation = "cudnn"
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal, implementation=implementation)


SPLASH_LANES = 128  # the splash kernel's sequence blocks are multiples of this


def check_splash_length(length: int, field: str = "config.data.max_seq_length, or a length bucket") -> None:
    """The splash kernel's one length rule (its sequence blocks), for the model and for the trainer's set-up."""
    if length % SPLASH_LANES:
        raise ValueError(f"model.attention='splash' needs sequence lengths that are multiples of {SPLASH_LANES}, "
                         f"got {length} ({field}); model.attention='auto' falls back to 'fused' at the others")


def attention_path(config: TransformerConfig, *, training: bool, length: int, platform: str) -> str:
    """What `config.attention` resolves to ('explicit', 'fused' or 'splash') for a sequence `length` on
    `platform` ('cpu', 'gpu', 'tpu'), in training (dropout active) or not."""
    if config.attention != "auto":
        return config.attention
    if training and config.attention_dropout > 0:
        return "explicit"
    return "splash" if platform == "tpu" and length % SPLASH_LANES == 0 else "fused"


def _splash_kernel(heads: int, length: int, interpret: bool, causal: bool):
    """The splash kernel for `heads` heads of full (bidirectional) or causal attention over `length` tokens;
    padding and packing come in as segment ids. Blocks of up to 512 tokens, forward and backward. Made inside the trace
    that uses it (its mask tables become arrays of that trace; it is cheap to make)."""
    block = next(b for b in (512, 256, 128) if length % b == 0)
    sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                              block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    one = splash_mask.CausalMask((length, length)) if causal else splash_mask.FullMask((length, length))
    mask = splash_mask.MultiHeadMask([one] * heads)
    return splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


def splash_attention(q, k, v, mask: Mask, causal: bool = False):
    """softmax(QK^T / sqrt(d_k)) V by the Pallas splash-attention kernel: on TPU compiled by Mosaic, elsewhere
    run in Pallas interpret mode (slow; for tests). No dropout.

    q, k, v: (batch, length, heads, head_dim), length a multiple of 128. Under a mesh the kernel runs on each
    device's shard (shard_map: batch over the axes `activation_batch` maps to, heads over `activation_heads`'s;
    an axis that does not divide its dimension is left out).
    """
    batch, length, heads, head_dim = q.shape
    check_splash_length(length)
    interpret = _platform() != "tpu"

    def local(q, k, v, q_segments, kv_segments):
        kernel = _splash_kernel(q.shape[2], length, interpret, causal)
        q, k, v = (t.transpose(0, 2, 1, 3) for t in (q * head_dim**-0.5, k, v))  # (batch, heads, length, d)
        out = jax.vmap(kernel)(q, k, v, segment_ids=splash.SegmentIds(q_segments, kv_segments))
        return out.transpose(0, 2, 1, 3)

    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return local(q, k, v, mask.q_segments, mask.kv_segments)

    def axes(name, size):
        mapped = nn.logical_to_mesh_axes((name,))[0]
        n = 1
        for a in (mapped,) if isinstance(mapped, str) else mapped or ():
            n *= mesh.shape[a]
        return mapped if size % n == 0 else None

    b, h = axes(BATCH, batch), axes(HEADS, heads)
    qkv, seg = P(b, None, h, None), P(b, None)
    return jax.shard_map(local, mesh=mesh, in_specs=(qkv, qkv, qkv, seg, seg), out_specs=qkv, check_vma=False)(
        q, k, v, mask.q_segments, mask.kv_segments)


class Projection(nn.Module):
    """A dense projection as an einsum over a kernel of its natural shape, e.g. (embed, heads, kv), so that
    each kernel dimension carries its logical name (flax's DenseGeneral initialises a flattened kernel)."""

    config: TransformerConfig
    equation: str
    kernel_shape: tuple[int, ...]
    kernel_names: tuple[str, ...]
    bias_names: tuple[str, ...]
    bias_ndim: int
    flatten: int = 0  # > 0: the kernel's first `flatten` dims (x's last) merged, one plain matmul

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        kernel = self.param("kernel", dense_init(cfg, self.kernel_names), self.kernel_shape, cfg.param_dtype)
        bias = self.param("bias", zeros_init(self.bias_names), self.kernel_shape[-self.bias_ndim:], cfg.param_dtype)
        if self.flatten:  # (a one-token step: XLA would otherwise transpose the kernel rather than x)
            k = self.flatten
            y = x.reshape(*x.shape[:-k], -1).astype(cfg.dtype) @ kernel.reshape(-1, *self.kernel_shape[k:]).astype(
                cfg.dtype)
        else:
            y = jnp.einsum(self.equation, x.astype(cfg.dtype), kernel.astype(cfg.dtype))
        return y + bias.astype(cfg.dtype)


@dataclasses.dataclass(frozen=True)
class Decoding:
    """A key/value cache of `length` positions per row: the "cache" collection holds, per layer, cached_key and
    cached_value (batch, heads, length, head_dim), heads first for `step_attention`, and the next position to write.
    `step=False` prefills it with a whole prompt (causal attention over the prompt itself, on any path); `step=True`
    writes one token per row at the cache's position and attends over the whole cache, the mask (batch, length)
    saying which slots hold visible tokens."""

    length: int
    step: bool = False


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate Q/K/V projections and an output projection; `causal`: a query
    sees no later key; `decoding`: reads and writes a key/value cache."""

    config: TransformerConfig
    deterministic: bool
    causal: bool = False
    decoding: Decoding | None = None

    @nn.compact
    def __call__(self, x: Array, mask: Mask) -> Array:
        cfg = self.config
        h, n, d = cfg.hidden_size, cfg.num_heads, cfg.head_dim
        q, k, v = (
            Projection(cfg, "blh,hnd->blnd", (h, n, d), ("embed", "heads", "kv"), ("heads", "kv"), 2, name=name)(x)
            for name in ("query", "key", "value")
        )  # (batch, length, heads, head_dim)
        q, k, v = (nn.with_logical_constraint(t, (BATCH, LENGTH, HEADS, KV)) for t in (q, k, v))
        causal, step = self.causal, self.decoding is not None and self.decoding.step
        if self.decoding is not None:
            k, v = self._cache(k, v)
            causal = causal and not step  # a step's mask covers the cache slots it may see

        dropout_active = not self.deterministic and cfg.attention_dropout > 0
        path = attention_path(cfg, training=not self.deterministic, length=q.shape[1], platform=_platform())
        if path == "explicit" and not step:
            rng = self.make_rng("dropout") if dropout_active else None
            ctx = explicit_attention(
                q, k, v, mask.dense, dropout_rate=cfg.attention_dropout, dropout_rng=rng,
                deterministic=self.deterministic, causal=causal,
            )
        elif step:
            ctx = step_attention(q, k, v, mask.dense)
        elif path == "splash":
            ctx = splash_attention(q, k, v, mask, causal)
        else:
            ctx = fused_attention(q, k, v, mask.dense, causal)
        ctx = nn.with_logical_constraint(ctx, (BATCH, LENGTH, HEADS, KV))
        out = Projection(cfg, "blnd,ndh->blh", (n, d, h), ("heads", "kv", "embed"), ("embed",), 1,
                         flatten=2 if step else 0, name="out")(ctx)
        return nn.with_logical_constraint(out, (BATCH, LENGTH, EMBED))  # (batch, length, hidden)

    def _cache(self, k: Array, v: Array) -> tuple[Array, Array]:
        """Writes this call's keys and values into the cache; returns what attention reads: the prompt's own
        (prefill, (batch, length, heads, head_dim)) or the whole cache (step, heads first)."""
        batch, length, heads, head_dim = k.shape
        shape = (batch, heads, self.decoding.length, head_dim)
        keys = self.variable("cache", "cached_key", jnp.zeros, shape, k.dtype)
        values = self.variable("cache", "cached_value", jnp.zeros, shape, v.dtype)
        index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
        at = index.value if self.decoding.step else 0
        for var, new in ((keys, k), (values, v)):
            new = new.astype(var.value.dtype).transpose(0, 2, 1, 3)  # (batch, heads, length, head_dim)
            var.value = nn.with_logical_constraint(jax.lax.dynamic_update_slice(var.value, new, (0, 0, at, 0)),
                                                   (BATCH, HEADS, LENGTH, KV))
        index.value = at + length
        return (keys.value, values.value) if self.decoding.step else (k, v)


class FeedForward(nn.Module):
    """Dense(intermediate) -> activation -> Dense(hidden)."""

    config: TransformerConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        h = nn.Dense(
            cfg.intermediate_size, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
            kernel_init=dense_init(cfg, ("embed", "mlp")), bias_init=zeros_init(("mlp",)), name="wi",
        )(x)  # (batch, length, mlp)
        h = nn.with_logical_constraint(ACTIVATIONS[cfg.hidden_act](h), (BATCH, LENGTH, MLP))
        out = nn.Dense(
            cfg.hidden_size, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
            kernel_init=dense_init(cfg, ("mlp", "embed")), bias_init=zeros_init(("embed",)), name="wo",
        )(h)  # (batch, length, hidden)
        return nn.with_logical_constraint(out, (BATCH, LENGTH, EMBED))


class EncoderLayer(nn.Module):
    """Attention and feed-forward blocks, each with dropout, residual and LayerNorm (post- or pre-LN)."""

    config: TransformerConfig
    deterministic: bool
    causal: bool = False
    decoding: Decoding | None = None

    @nn.compact
    def __call__(self, x: Array, mask: Mask) -> tuple[Array, Array]:
        cfg = self.config
        drop = nn.Dropout(cfg.hidden_dropout, deterministic=self.deterministic)
        attn = SelfAttention(cfg, self.deterministic, self.causal, self.decoding, name="attention")
        mlp = FeedForward(cfg, name="mlp")
        attn_norm, mlp_norm = LayerNorm(cfg, name="attention_norm"), LayerNorm(cfg, name="mlp_norm")
        if cfg.pre_layer_norm:
            x = x + drop(attn(attn_norm(x), mask))
            x = x + drop(mlp(mlp_norm(x)))
        else:
            x = attn_norm(x + drop(attn(x, mask)))
            x = mlp_norm(x + drop(mlp(x)))
        x = nn.with_logical_constraint(x, (BATCH, LENGTH, EMBED))
        return x, x  # (carry, per-layer output) so the layer can be the body of nn.scan


REMAT_POLICIES = {
    "full": None,  # save nothing, recompute everything
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class Encoder(nn.Module):
    """A stack of `num_layers` Transformer layers, optionally rematerialised and/or scanned; with `causal`, the
    stack of a decoder (a query sees no later key)."""

    config: TransformerConfig
    causal: bool = False

    @nn.compact
    def __call__(self, x: Array, mask: Mask, *, deterministic: bool,
                 decoding: Decoding | None = None) -> tuple[Array, Array | None]:
        """x: (batch, length, hidden); mask: from `attention_mask`; `decoding`: read and write the "cache"
        collection (see `Decoding`).

        Returns the last hidden state and all layers' outputs stacked (num_layers, batch, length, hidden).
        """
        cfg = self.config
        layer_cls = EncoderLayer
        if cfg.remat != "none":
            layer_cls = nn.remat(layer_cls, policy=REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers)
        if cfg.scan_layers:
            stack = nn.scan(
                layer_cls,
                variable_axes={"params": 0, "cache": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast,),
                length=cfg.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )(cfg, deterministic, self.causal, decoding, name="layers")
            x, hidden = stack(x, mask)
        else:
            outs = []
            for i in range(cfg.num_layers):
                x, _ = layer_cls(cfg, deterministic, self.causal, decoding, name=f"layer_{i}")(x, mask)
                outs.append(x)
            hidden = jnp.stack(outs)
        if cfg.pre_layer_norm:
            x = LayerNorm(cfg, name="final_norm")(x)
        return x, hidden


def layer_layout(params: dict, num_layers: int, scanned: bool) -> dict:
    """`params` with every layer stack in it (a dict holding layer_0, ... or the stacked `layers`) in the scanned
    (`scanned`) or the per-layer layout."""
    if not isinstance(params, dict):
        return params
    if scanned and "layer_0" in params:
        return stack_layers(params, num_layers)
    if not scanned and "layers" in params:
        return unstack_layers(params, num_layers)
    return {k: layer_layout(v, num_layers, scanned) for k, v in params.items()}


def stack_layers(encoder_params: dict, num_layers: int) -> dict:
    """Per-layer encoder params {layer_0: ..., layer_{n-1}: ...} -> the scanned layout {layers: stacked}."""
    layers = [encoder_params[f"layer_{i}"] for i in range(num_layers)]
    rest = {k: v for k, v in encoder_params.items() if not k.startswith("layer_")}
    return {**rest, "layers": jax.tree.map(lambda *xs: jnp.stack(xs), *layers)}


def unstack_layers(encoder_params: dict, num_layers: int) -> dict:
    """The scanned layout {layers: stacked} -> per-layer params {layer_0: ..., ...}."""
    rest = {k: v for k, v in encoder_params.items() if k != "layers"}
    return {**rest, **{f"layer_{i}": jax.tree.map(lambda x: x[i], encoder_params["layers"])
                       for i in range(num_layers)}}
