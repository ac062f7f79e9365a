"""Train step: config parsing, mesh and sharding rules, loss masking, CFG dropout, and the sharded
step on a (2, 2, 2) mesh of 8 fake CPU devices against the single-device step."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from musicgen_jax.patterns import coarse_first_pattern, delay_pattern, unrolled_pattern
from musicgen_jax.train import loss as L
from musicgen_jax import sharding as S
from musicgen_jax.train import trainer as T
from musicgen_jax.train.config import load_config, replace
from musicgen_jax.train.data import TrainData
from musicgen_jax.train.model import build_model
from tests.train_fixtures import single_device_mesh, train_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return train_world(tmp_path_factory)


# ------------------------------------------------------------------------------------ config, mesh


def test_config_overrides_and_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 5\noptim:\n  lr: 2.0e-4\nmesh: {fsdp: 2}\n")
    cfg = load_config(str(path), ["optim.lr=3e-4", "mesh.tensor=2", "checkpoint.dir=null", "model.remat=true"])
    assert cfg.steps == 5 and cfg.optim.lr == 3e-4 and isinstance(cfg.optim.lr, float)
    assert (cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor) == (-1, 2, 2) and cfg.model.remat is True
    assert replace(cfg, optim={"lr": 1.0}).optim.lr == 1.0
    with pytest.raises(ValueError, match="unknown key.*optim.*lrr"):
        load_config(str(path), ["optim.lrr=1"])
    with pytest.raises(ValueError, match="cannot read 'fast' as float"):
        load_config(None, ["optim.lr=fast"])
    with pytest.raises(ValueError, match="multiple of optim.accum_steps"):
        load_config(None, ["data.batch_size=6", "optim.accum_steps=4"])


@pytest.mark.parametrize("name", ["tiny", "small", "medium", "large", "melody", "finetune-small"])
def test_recipes_load(name):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = load_config(os.path.join(root, "configs", "train", f"{name}.yaml"))
    assert cfg.optim.b2 == 0.95 and cfg.optim.grad_clip == 1.0
    if name in ("small", "medium", "large", "melody"):  # the paper's recipe
        assert cfg.data.batch_size == 192 and cfg.data.segment_seconds == 30 and cfg.optim.warmup_steps == 4000
        assert cfg.optim.weight_decay == 0.1 and cfg.optim.ema_decay == 0.99
        assert cfg.optim.cond_dropout == (0.2 if name == "melody" else 0.3)


def test_mesh_shape_resolution():
    assert S.mesh_shape(-1, 2, 2, num_devices=8) == (2, 2, 2)
    assert S.mesh_shape(1, -1, 1, num_devices=8) == (1, 8, 1)
    with pytest.raises(ValueError, match="at most one"):
        S.mesh_shape(-1, -1, 1, num_devices=8)
    with pytest.raises(ValueError, match="needs 12 devices"):
        S.mesh_shape(3, 2, 2, num_devices=8)
    mesh = S.make_mesh(2, 2, 2)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}


def test_unknown_logical_axis_is_an_error():
    with pytest.raises(ValueError, match="without a sharding rule: mystery"):
        S.check_rules({"w": P("embed", "mystery")})


# ------------------------------------------------------------------------------------ objective


def test_loss_mask_is_the_delay_pattern_valid_positions():
    delays, t = (0, 1, 2, 3), 6
    mask = np.asarray(L.loss_mask(jnp.array([6, 4]), delay_pattern(t, delays)))  # [B, K, T]
    # codebook q has a prediction for frame f iff its step f + 1 + q lies within the T + 1 input steps,
    # i.e. f + q < T (audiocraft keep_only_valid_steps); padded frames (f >= frames) never count
    for q in range(4):
        np.testing.assert_array_equal(mask[0, q], np.arange(t) + q < t)
        np.testing.assert_array_equal(mask[1, q], (np.arange(t) + q < t) & (np.arange(t) < 4))


@pytest.mark.parametrize("make", [lambda t: delay_pattern(t, (0, 1, 2, 3)), lambda t: unrolled_pattern(t, 4),
                                  lambda t: coarse_first_pattern(t, 4, [0, 1, 2])])
def test_codebook_nll_matches_a_direct_computation(make):
    rng = np.random.default_rng(0)
    b, k, t, v = 2, 4, 5, 7
    pattern = make(t)
    s = pattern.valid_steps
    codes = jnp.asarray(rng.integers(0, v, (b, k, t)))
    logits = jnp.asarray(rng.normal(size=(b, k, s, v)), jnp.float32)
    frames = jnp.array([5, 3])
    got = np.asarray(L.codebook_nll(logits, codes, frames, pattern))
    want = np.zeros(k)
    logp = np.asarray(jax.nn.log_softmax(logits, -1))
    step_of = pattern.step_of_frame()  # where frame f of codebook q sits; predicted one step earlier
    for i in range(b):
        for q in range(k):
            for f in range(t):
                step = step_of[q, f]
                if 0 < step < s and f < int(frames[i]):
                    want[q] -= logp[i, q, step - 1, int(codes[i, q, f])]
    assert (want != 0).all()
    np.testing.assert_allclose(got, want, rtol=1e-5)
    seq = L.model_input(codes, pattern, v)
    assert seq.shape == (b, k, s)
    np.testing.assert_array_equal(seq, pattern.build(codes, v)[..., :s])


def test_condition_dropout_gives_the_null_condition():
    keep = L.keep_conditions(jax.random.PRNGKey(0), 1000, 0.3)
    assert 0.62 < float(keep.mean()) < 0.78
    text, mask = jnp.ones((2, 3, 4)), jnp.ones((2, 3), jnp.int32)
    t2, m2 = L.drop_text(text, mask, jnp.array([True, False]))
    assert float(t2[1].sum()) == 0 and int(m2[1].sum()) == 0 and float(t2[0].sum()) == 12
    chroma = L.drop_chroma(jax.nn.one_hot(jnp.full((2, 5), 7), 12), jnp.array([True, False]))
    assert int(chroma[0].argmax(-1)[0]) == 7 and bool((chroma[1].argmax(-1) == 0).all())


# ------------------------------------------------------------------------------------ sharded step


def _run(model, cfg, mesh, batches, steps):
    state, shardings = T.create_state(model, cfg.optim, cfg.steps, mesh, compiler_options=cfg.compiler_options)
    t5_params, t5_shardings = T.place_t5(model, mesh)
    shapes = {k: v.shape for k, v in batches[0].items()}
    step_fn = T.make_train_step(model, cfg.optim, cfg.steps, mesh, shardings, shapes, t5_shardings,
                                cfg.compiler_options)
    losses = []
    for i in range(steps):
        state, metrics = step_fn(state, S.global_batch(batches[i], mesh), t5_params)
        losses.append(np.asarray(metrics["ce"]))
    return state, np.stack(losses)


def test_sharded_step_equals_single_device_step(world):
    cfg = world.config()
    model = build_model(cfg.model)
    data = TrainData(world.data, tokenizer=model.tokenizer, lm=model.config.lm, global_batch=8,
                     max_text_tokens=cfg.data.max_text_tokens, prefetch=0)
    batches = [next(data) for _ in range(3)]

    ref_state, ref = _run(model, cfg, single_device_mesh(), batches, 3)
    # (2, 2, 2) mesh, and 2 micro-batches per update: accumulation must not change the update either
    cfg2 = replace(cfg, optim={"accum_steps": 2})
    mesh = S.make_mesh(2, 2, 2)
    state, got = _run(model, cfg2, mesh, batches, 3)

    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)
    errors = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()), state.params,
                          ref_state.params)
    assert max(jax.tree.leaves(errors)) < 1e-5, errors

    # parameters, moments and EMA really are sharded by the logical rules
    layers = state.params["layers"]
    assert layers["fc1"]["kernel"].sharding.spec == P(None, "fsdp", "tensor")  # [layers, embed, mlp]
    assert layers["fc2"]["kernel"].sharding.spec == P(None, "tensor", "fsdp")  # [layers, mlp, embed]
    assert layers["self_attn"]["query"]["kernel"].sharding.spec == P(None, "fsdp", "tensor", None)
    heads_axes = tuple(T.logical_axes(model)["heads"])  # ("embed", "codebooks", "vocab") or similar
    assert state.params["heads"].sharding.spec == P(*[{"embed": "fsdp", "vocab": "tensor"}.get(a) for a in heads_axes])
    # 33 embedding rows (card + 1) cannot be split over tensor=2: that dimension stays replicated
    assert state.params["embeddings"].sharding.spec == P(None, None, "fsdp")
    fc1 = layers["fc1"]["kernel"]
    assert fc1.addressable_shards[0].data.shape == (2, 16, 32) and fc1.shape == (2, 32, 64)
    mu = state.opt_state[1][0].mu["layers"]["fc1"]["kernel"]
    assert mu.sharding.spec == P(None, "fsdp", "tensor")
    assert state.ema["layers"]["fc1"]["kernel"].sharding.spec == P(None, "fsdp", "tensor")


def test_fsdp_only_mesh_gives_each_device_its_own_rows(world):
    """With fsdp as the only mesh axis the LM's activations are constrained by the batch (trainer.on_mesh):
    each device's compiled step computes attention scores for its own rows, [8/8, H, T, T]. Without the
    constraint XLA followed the fsdp-sharded weights and every device computed all rows' scores."""
    import re

    cfg = world.config()
    model = build_model(cfg.model)
    data = TrainData(world.data, tokenizer=model.tokenizer, lm=model.config.lm, global_batch=8,
                     max_text_tokens=cfg.data.max_text_tokens, prefetch=0)
    batch = next(data)
    mesh = S.make_mesh(1, 8, 1)
    state, shardings = T.create_state(model, cfg.optim, cfg.steps, mesh, compiler_options=cfg.compiler_options)
    t5_params, t5_shardings = T.place_t5(model, mesh)
    step_fn = T.make_train_step(model, cfg.optim, cfg.steps, mesh, shardings, {k: v.shape for k, v in batch.items()},
                                t5_shardings, cfg.compiler_options)
    hlo = step_fn.lower(state, S.global_batch(batch, mesh), t5_params).compile().as_text()
    steps, heads = batch["codes"].shape[-1] + 1, model.config.lm.num_heads  # the pattern's T + 1 steps
    # self-attention scores [(layers,) rows, heads, steps, steps]: the rows dimension
    rows = {int(m) for m in re.findall(rf"f32\[(?:\d+,)*?(\d+),{heads},{steps},{steps}\]", hlo)}
    assert rows == {1}, f"attention score rows per device: {sorted(rows)} (batch 8 over fsdp 8 should give 1)"


# ------------------------------------------------------------------------------------ shapes only


def _abstract_model(cfg, dtype=jnp.float32, remat=False):
    """A TrainModel with abstract text-encoder weights (nothing allocated)."""
    from musicgen_jax.convert.t5 import t5_abstract_params
    from musicgen_jax.modules.lm import MusicGenLM
    from musicgen_jax.modules.t5 import T5Encoder
    from musicgen_jax.train.model import TrainModel

    return TrainModel(config=cfg, lm=MusicGenLM(cfg.lm, dtype=dtype, remat=remat), t5=T5Encoder(cfg.t5),
                      t5_params=t5_abstract_params(cfg.t5), tokenizer=None)


def _abstract_batch(cfg, batch, frames, text):
    lm = cfg.lm
    shapes = {"codes": (batch, lm.num_codebooks, frames), "frames": (batch,), "text_ids": (batch, text),
              "text_mask": (batch, text)}
    if lm.is_melody:
        shapes["chroma"] = (batch, lm.chroma_frames)
    return {k: jax.ShapeDtypeStruct(v, jnp.int32) for k, v in shapes.items()}


def _step_shapes(model, optim, batch):
    import flax.linen as nn

    _, random_state, _ = T._state_builders(model, optim, 10, 0)
    state = nn.meta.unbox(jax.eval_shape(random_state, jax.random.PRNGKey(0)))
    return jax.eval_shape(T.train_step_fn(model, optim, 10), state, batch, model.t5_params)


@pytest.mark.parametrize("name", ["tiny-melody", "tiny-stereo"])
def test_step_traces_for_melody_and_stereo_in_bf16_with_remat(name):
    from musicgen_jax.train.config import OptimSection
    from musicgen_jax.train.model import preset_config

    cfg = preset_config(name)
    model = _abstract_model(cfg, jnp.bfloat16, remat=True)
    state, metrics = _step_shapes(model, OptimSection(accum_steps=2, cond_dropout=0.2), _abstract_batch(cfg, 4, 6, 5))
    assert metrics["ce"].shape == (cfg.lm.num_codebooks,) and metrics["loss"].dtype == jnp.float32
    assert state.params["embeddings"].dtype == jnp.float32  # master weights stay float32


def test_musicgen_small_sharding_plan():
    """Full-size shapes (nothing allocated): on a (2, 2, 2) mesh each device holds about a quarter of
    the parameters and optimizer state; the step traces at 30 s x batch 8 in bf16 with remat."""
    from musicgen_jax.train.config import OptimSection
    from musicgen_jax.train.metrics import train_step_flops
    from musicgen_jax.train.model import preset_config

    cfg = preset_config("musicgen-small")
    model = _abstract_model(cfg, jnp.bfloat16, remat=True)
    mesh = S.make_mesh(2, 2, 2)
    shardings = T.state_shardings(model, OptimSection(), 10, mesh)
    target = T.abstract_state(shardings, model, OptimSection(), 10)
    total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(target))
    per_device = sum(np.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(target))
    assert total > 4 * 4e8  # params + 2 Adam moments + EMA of ~420M float32 parameters
    assert per_device < 0.3 * total, per_device / total
    _, metrics = _step_shapes(model, OptimSection(), _abstract_batch(cfg, 8, 1500, 32))
    assert metrics["ce"].shape == (4,)
    # model FLOPs: about 6 x (non-embedding parameters) x tokens, plus attention
    flops = train_step_flops(cfg.lm, 8, 1501, 32, cfg.t5)
    matmul_params = cfg.lm.num_layers * (8 * cfg.lm.dim ** 2 + 2 * cfg.lm.dim * cfg.lm.ffn_dim)
    assert 1.0 < flops / (6 * matmul_params * 8 * 1501) < 1.6
