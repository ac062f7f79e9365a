"""LoRA adapters in the LM (modules/lora.py): a fresh adapter leaves the logits exactly as they were,
merged weights give the adapter forward's logits, targets resolve and refuse clearly, dropout runs only
in training, and the adapters shard by the same logical-axis rules as the kernels they adapt (issue 15).
No torch here: the PEFT / transformers parity is tests/test_lora_peft.py."""
from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from musicgen_jax.config import tiny
from musicgen_jax.modules.lm import MusicGenLM, init_lm, unstack_layers
from musicgen_jax.modules.lora import (GROUPS, TARGETS, LoraConfig, combine, merge_adapters, resolve_targets,
                                       split_adapters)

FAST = {"xla_backend_optimization_level": 0}  # compile time dominates at these sizes
LM = dataclasses.replace(tiny().lm, condition_dim=24)
LORA = LoraConfig(rank=4, alpha=12.0, dropout=0.5, targets=TARGETS)


def _inputs(seed: int = 0, batch: int = 2, steps: int = 6):
    rng = np.random.default_rng(seed)
    codes = jnp.asarray(rng.integers(0, LM.codebook_size + 1, (batch, LM.num_codebooks, steps)), jnp.int32)
    text = jnp.asarray(rng.standard_normal((batch, 5, LM.condition_dim)), jnp.float32)
    return codes, text, jnp.ones((batch, 5), jnp.int32)


@functools.lru_cache(maxsize=None)
def _apply(lora: LoraConfig | None, scan_layers: bool = True, dropout: bool = False):
    lm = MusicGenLM(LM, lora=lora, scan_layers=scan_layers)

    def logits(params, key, codes, text, mask):
        rngs = {"dropout": key} if dropout else None
        return lm.apply({"params": params}, codes, text=text, text_mask=mask, rngs=rngs)[0]

    return jax.jit(logits, compiler_options=FAST)


def _logits(params, lora=None, scan_layers=True, key=None) -> np.ndarray:
    fn = _apply(lora, scan_layers, key is not None)
    return np.asarray(fn(params, jax.random.PRNGKey(0) if key is None else key, *_inputs()))


@functools.lru_cache(maxsize=None)
def _init() -> tuple[dict, dict]:
    """(base, fresh adapters) of LM with LORA, jitted (an eager scanned init takes many seconds)."""
    init = jax.jit(lambda r: nn.meta.unbox(init_lm(LM, r, lora=LORA))["params"], compiler_options=FAST)
    return split_adapters(jax.tree.map(np.asarray, init(jax.random.PRNGKey(0))))


def _randomise(adapters, seed: int = 1):
    """Adapters of a trained look: A as initialised (U(+-1/sqrt(fan_in))), B random at 0.3/sqrt(r): each
    adapted kernel moves by a fraction of its own size, enough to change the logits clearly."""
    rng = np.random.default_rng(seed)

    def draw(path, x):
        if path[-1].key == "lora_a":
            return rng.uniform(-1, 1, x.shape).astype(np.float32) / np.sqrt(np.prod(x.shape[1:-1]))
        return (0.3 * rng.standard_normal(x.shape) / np.sqrt(x.shape[1])).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, adapters)


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def test_fresh_adapters_give_the_base_logits_exactly():
    base, adapters = _init()
    a = adapters["layers"]["self_attn"]["query"]
    assert np.abs(a["lora_a"]).max() > 0 and not a["lora_b"].any()  # A random, B zero
    assert np.abs(a["lora_a"]).max() <= 1 / np.sqrt(LM.dim)  # PEFT's kaiming_uniform(a=sqrt(5)): U(+-1/sqrt(fan_in))
    np.testing.assert_array_equal(_logits(combine(base, adapters), LORA), _logits(base))


@pytest.mark.parametrize("scan_layers", [True, False])
def test_merged_weights_give_the_adapter_forward(scan_layers):
    base, adapters = _init()
    adapters = _randomise(adapters)
    if not scan_layers:  # the inference layout: one module per layer
        base, adapters = unstack_layers(base, LM.num_layers), unstack_layers(adapters, LM.num_layers)
    adapted = _logits(combine(base, adapters), LORA, scan_layers)  # no dropout rng: inference
    merged = merge_adapters(base, adapters, LORA)
    assert jax.tree.structure(merged) == jax.tree.structure(base)
    np.testing.assert_allclose(_logits(merged, None, scan_layers), adapted, rtol=0, atol=1e-5)
    # the adapters matter: a merge that dropped them (or a forward that ignored them) would fail
    assert np.abs(adapted - _logits(base, None, scan_layers)).max() > 0.1


def test_merge_is_w_plus_scale_a_b_on_the_adapted_kernels_only():
    base, adapters = _init()
    adapters = _randomise(adapters)
    some = {"layers": {"self_attn": {"out": adapters["layers"]["self_attn"]["out"]},
                       "cross_attn": {"key": adapters["layers"]["cross_attn"]["key"]},
                       "fc2": adapters["layers"]["fc2"]}}
    for lora, scale in ((LoraConfig(rank=4, alpha=2.0), 0.5), (LoraConfig(rank=4, alpha=2.0, rslora=True), 1.0)):
        merged = merge_adapters(base, some, lora)
        flat_base = dict(jax.tree_util.tree_flatten_with_path(base)[0])
        changed = {"/".join(k.key for k in path) for path, v in jax.tree_util.tree_flatten_with_path(merged)[0]
                   if not np.array_equal(v, flat_base[path])}
        assert changed == {"layers/self_attn/out/kernel", "layers/cross_attn/key/kernel", "layers/fc2/kernel"}
        for path in (("self_attn", "out"), ("cross_attn", "key"), ("fc2",)):
            pair = _get(some["layers"], path)
            for layer in range(LM.num_layers):  # kernel [*in, *out] += scale * A [*in, r] . B [r, *out]
                delta = np.tensordot(pair["lora_a"][layer], pair["lora_b"][layer], axes=1)
                want = _get(base["layers"], path)["kernel"][layer] + scale * delta
                np.testing.assert_allclose(_get(merged["layers"], path)["kernel"][layer], want, rtol=1e-6, atol=1e-6)


def test_dropout_only_with_a_dropout_rng():
    base, adapters = _init()
    params = combine(base, _randomise(adapters))
    no_rng = _logits(params, LORA)
    one = _logits(params, LORA, key=jax.random.PRNGKey(0))
    two = _logits(params, LORA, key=jax.random.PRNGKey(1))
    assert np.abs(one - no_rng).max() > 1e-3 and np.abs(one - two).max() > 1e-3
    np.testing.assert_array_equal(one, _logits(params, LORA, key=jax.random.PRNGKey(0)))


def test_targets_resolve_and_refuse():
    assert resolve_targets(["attention"]) == GROUPS["attention"]
    assert resolve_targets(["attention"], cross_attention=False) == GROUPS["self_attn"]
    assert resolve_targets(["fc2", "self_attn.value", "fc2"]) == ("self_attn.value", "fc2")
    assert resolve_targets(["all"], cross_attention=False) == (*GROUPS["self_attn"], "fc1", "fc2")
    with pytest.raises(ValueError, match="unknown LoRA target 'q_proj'.*groups: self_attn"):
        resolve_targets(["q_proj"])
    with pytest.raises(ValueError, match="no cross-attention.*melody"):
        resolve_targets(["cross_attn"], cross_attention=False)
    with pytest.raises(ValueError, match="rank must be an integer >= 1"):
        LoraConfig(rank=0, alpha=1.0)
    with pytest.raises(ValueError, match="dropout must be in"):
        LoraConfig(rank=2, alpha=1.0, dropout=1.0)


def test_melody_lm_adapts_self_attention():
    melody = tiny(melody=True).lm
    lora = LoraConfig(rank=2, alpha=2.0, targets=resolve_targets(["attention", "ffn"], melody.cross_attention))
    shapes = nn.meta.unbox(jax.eval_shape(lambda: init_lm(melody, jax.random.PRNGKey(0), lora=lora)))["params"]
    assert set(split_adapters(shapes)[1]["layers"]) == {"self_attn", "fc1", "fc2"}


def test_adapters_shard_like_their_kernels():
    """Adapters carry the kernel's logical axes plus the replicated rank: under fsdp x tensor the A of a
    query projection splits its embed axis over fsdp, the B its heads over tensor (no compile)."""
    from musicgen_jax.sharding import make_mesh, param_shardings

    lora = LoraConfig(rank=4, alpha=4.0, targets=TARGETS)
    boxed = jax.eval_shape(lambda: init_lm(LM, jax.random.PRNGKey(0), lora=lora))
    mesh = make_mesh(data=2, fsdp=2, tensor=2, devices=jax.devices()[:8])
    shardings = param_shardings(boxed, mesh)["params"]["layers"]
    spec = lambda *path: tuple(_get(shardings, path).spec)  # noqa: E731
    assert spec("self_attn", "query", "kernel") == (None, "fsdp", "tensor", None)
    assert spec("self_attn", "query", "lora_a") == (None, "fsdp", None)
    assert spec("self_attn", "query", "lora_b") == (None, None, "tensor", None)
    assert spec("cross_attn", "out", "lora_a") == (None, "tensor", None, None)
    assert spec("fc1", "lora_b") == (None, None, "tensor")

