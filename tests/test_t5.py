"""T5 encoder: parity with transformers' T5EncoderModel (tiny, gated-GELU, t5-base shapes), the
checkpoint loader and its errors, masking, bf16, logical axis names."""
import json
import os

import huggingface_hub.constants
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from musicgen_jax.config import T5Config
from musicgen_jax.convert.common import CheckpointError
from musicgen_jax.convert.t5 import load_t5, t5_config_from_hf, t5_params_from_state_dict
from musicgen_jax.hub import ModelNotAvailableError
from musicgen_jax.modules.t5 import T5Encoder, relative_position_buckets
from tests.t5_fixtures import (T5_BASE, padded_batch, put_in_hub_cache, reference_hidden, reference_state,
                               reference_t5)

TOL = 1e-5


def encode(config: T5Config, params, ids, mask, dtype=jnp.float32) -> np.ndarray:
    fn = jax.jit(lambda p, i, m: T5Encoder(config, dtype=dtype).apply({"params": p}, i, m))
    return np.asarray(fn(params, ids, mask))


def max_diff_on_tokens(ours: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> float:
    return float(np.max(np.abs(ours - ref) * mask[..., None]))


@pytest.fixture(scope="module")
def tiny_relu(tmp_path_factory):
    model = reference_t5(seed=0)
    path = str(tmp_path_factory.mktemp("t5_tiny_relu"))
    model.save_pretrained(path)
    return model, path


@pytest.mark.parity
@pytest.mark.parametrize("buckets,max_distance", [(32, 128), (8, 20), (16, 64), (64, 256)])
def test_relative_position_buckets_match_transformers(buckets, max_distance):
    import torch
    from transformers.models.t5.modeling_t5 import T5Attention

    n = 700
    ours = relative_position_buckets(n, n, buckets, max_distance)
    rel = torch.arange(n)[None, :] - torch.arange(n)[:, None]
    ref = T5Attention._relative_position_bucket(rel, bidirectional=True, num_buckets=buckets,
                                                max_distance=max_distance).numpy()
    np.testing.assert_array_equal(ours, ref)
    assert ours.min() == 0 and ours.max() == buckets - 1


@pytest.mark.parity
def test_tiny_parity_padded_batch(tiny_relu):
    model, path = tiny_relu
    config, params = load_t5(path)
    assert config.feed_forward == "relu" and config.num_layers == 3
    ids, mask = padded_batch(config.vocab_size, (40, 23))
    ref = reference_hidden(model, ids, mask)
    ours = encode(config, params, ids, mask)
    assert ours.dtype == np.float32 and ours.shape == (2, 40, config.d_model)
    assert max_diff_on_tokens(ours, ref, mask) <= TOL
    # guard: the relative bias and the mask both matter, so the comparison above can fail
    no_bias = jax.tree_util.tree_map(np.copy, params)
    no_bias["relpos_bias"]["rel_embedding"][:] = 0
    assert max_diff_on_tokens(encode(config, no_bias, ids, mask), ref, mask) > 1e-2
    assert max_diff_on_tokens(encode(config, params, ids, np.ones_like(mask)), ref, mask) > 1e-2


@pytest.mark.parity
def test_gated_gelu_parity(tmp_path):
    model = reference_t5(seed=1, feed_forward_proj="gated-gelu", num_layers=2)
    model.save_pretrained(str(tmp_path))
    config, params = load_t5(str(tmp_path))
    assert config.feed_forward == "gated-gelu"
    assert set(params["layers_0"]["mlp"]) == {"wi_0", "wi_1", "wo"}
    ids, mask = padded_batch(config.vocab_size, (17, 30), seed=1)
    ref = reference_hidden(model, ids, mask)
    assert max_diff_on_tokens(encode(config, params, ids, mask), ref, mask) <= TOL


@pytest.mark.parity
def test_t5_base_shapes_parity(tmp_path):
    model = reference_t5(seed=2, **T5_BASE, relative_attention_num_buckets=32,
                         relative_attention_max_distance=128)
    model.save_pretrained(str(tmp_path))
    config, params = load_t5(str(tmp_path))
    assert config == T5Config()  # the t5-base preset
    ids, mask = padded_batch(config.vocab_size, (12, 7), seed=2)
    ref = reference_hidden(model, ids, mask)
    assert max_diff_on_tokens(encode(config, params, ids, mask), ref, mask) <= TOL


@pytest.mark.parity
def test_padding_does_not_change_real_tokens(tiny_relu):
    _, path = tiny_relu
    config, params = load_t5(path)
    ids, mask = padded_batch(config.vocab_size, (30, 11), seed=3)
    batched = encode(config, params, ids, mask)
    alone = encode(config, params, ids[1:, :11], mask[1:, :11])
    np.testing.assert_allclose(batched[1, :11], alone[0], atol=TOL, rtol=0)


@pytest.mark.parity
def test_row_without_tokens_is_finite(tiny_relu):
    """audiocraft's null condition runs T5 with an all-zero mask row, then zeroes it: no NaN allowed."""
    _, path = tiny_relu
    config, params = load_t5(path)
    ids, mask = padded_batch(config.vocab_size, (9, 1), seed=4)
    mask[1] = 0
    assert np.isfinite(encode(config, params, ids, mask)).all()


@pytest.mark.parity
def test_bf16_compute_close_to_fp32(tiny_relu):
    _, path = tiny_relu
    config, params = load_t5(path)
    ids, mask = padded_batch(config.vocab_size, (25, 14), seed=5)
    fp32 = encode(config, params, ids, mask)
    bf16 = encode(config, params, ids, mask, dtype=jnp.bfloat16)
    assert bf16.dtype == np.float32
    assert max_diff_on_tokens(bf16, fp32, mask) < 0.1 * np.abs(fp32).max()


def test_params_carry_logical_axis_names():
    config = T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4,
                      feed_forward="gated-gelu")
    ids = jnp.ones((1, 5), jnp.int32)
    boxed = jax.eval_shape(lambda: T5Encoder(config).init(jax.random.PRNGKey(0), ids, ids))["params"]
    flat = traverse_util.flatten_dict(boxed)
    names = {"/".join(k): v.names for k, v in flat.items()}
    assert names["token_embedder/embedding"] == ("vocab", "embed")
    assert names["relpos_bias/rel_embedding"] == ("heads", "relpos_buckets")
    assert names["layers_0/attention/query/kernel"] == ("embed", "heads", "kv")
    assert names["layers_0/attention/out/kernel"] == ("heads", "kv", "embed")
    assert names["layers_1/mlp/wi_0/kernel"] == ("embed", "mlp")
    assert names["layers_1/mlp/wo/kernel"] == ("mlp", "embed")
    assert names["encoder_norm/scale"] == ("embed",)
    assert all(v is not None for v in names.values())
    assert not any("relpos" in k for k in names if k.startswith("layers_1"))  # one shared table


# ---------------------------------------------------------------- loader


@pytest.mark.parity
def test_loader_errors_name_the_keys(tiny_relu):
    model, _ = tiny_relu
    config = t5_config_from_hf(model.config.to_dict())
    state = reference_state(model)
    t5_params_from_state_dict(state, config)  # the untouched state loads

    dropped = "encoder.block.1.layer.1.DenseReluDense.wo.weight"
    extra = "encoder.block.2.layer.0.SelfAttention.relative_attention_bias.weight"
    bad = "encoder.block.0.layer.0.SelfAttention.k.weight"
    for broken, key in ((_without(state, dropped), dropped),
                        ({**state, extra: np.zeros((8, 4), np.float32)}, extra),
                        ({**state, bad: np.zeros((32, 31), np.float32)}, bad)):
        with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
            t5_params_from_state_dict(broken, config)

    # all three at once: one error listing every problem
    everything = {**_without(state, dropped), extra: np.zeros((8, 4), np.float32),
                  bad: np.zeros((32, 31), np.float32)}
    with pytest.raises(CheckpointError) as info:
        t5_params_from_state_dict(everything, config)
    assert all(k in str(info.value) for k in (dropped, extra, bad))


@pytest.mark.parity
def test_embedding_from_either_tied_name_and_prefix(tiny_relu):
    model, _ = tiny_relu
    config = t5_config_from_hf(model.config.to_dict())
    state = reference_state(model)  # in memory: both shared.weight and encoder.embed_tokens.weight
    both = t5_params_from_state_dict(state, config)
    only_tied = t5_params_from_state_dict(_without(state, "shared.weight"), config)
    np.testing.assert_array_equal(both["token_embedder"]["embedding"],
                                  only_tied["token_embedder"]["embedding"])
    # a MusicGen checkpoint: text encoder under a prefix, other keys (LM, decoder of a full T5) ignored
    musicgen = {f"text_encoder.{k}": v for k, v in state.items()}
    musicgen["decoder.model.decoder.layers.0.fc1.weight"] = np.zeros((2, 2), np.float32)
    musicgen["text_encoder.decoder.block.0.layer.0.SelfAttention.q.weight"] = np.zeros((2, 2), np.float32)
    prefixed = t5_params_from_state_dict(musicgen, config, prefix="text_encoder.")
    jax.tree_util.tree_map(np.testing.assert_array_equal, prefixed, both)
    with pytest.raises(CheckpointError, match=r"text_encoder\.encoder\.final_layer_norm\.weight"):
        t5_params_from_state_dict(_without(musicgen, "text_encoder.encoder.final_layer_norm.weight"),
                                  config, prefix="text_encoder.")


@pytest.mark.parity
def test_load_musicgen_transformers_dir(tiny_relu, tmp_path):
    """load_t5 on a MusicGen transformers dir uses its `text_encoder` config and prefixed weights."""
    from safetensors.numpy import save_file

    model, path = tiny_relu
    with open(os.path.join(path, "config.json")) as f:
        t5_cfg = json.load(f)
    with open(tmp_path / "config.json", "w") as f:
        json.dump({"model_type": "musicgen", "text_encoder": t5_cfg, "decoder": {}}, f)
    state = {f"text_encoder.{k}": v for k, v in reference_state(model).items() if k != "shared.weight"}
    state["decoder.lm_heads.0.weight"] = np.zeros((4, 4), np.float32)
    save_file(state, str(tmp_path / "model.safetensors"))
    config, params = load_t5(str(tmp_path))
    _, expected = load_t5(path)
    assert config == t5_config_from_hf(t5_cfg)
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, expected)


@pytest.mark.parity
def test_hub_name_resolves_through_cache_offline(tiny_relu, tmp_path, monkeypatch):
    _, path = tiny_relu
    files = {n: os.path.join(path, n) for n in ("config.json", "model.safetensors")}
    put_in_hub_cache(str(tmp_path), "google-t5/t5-tiny-test", files)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config, params = load_t5("google-t5/t5-tiny-test")
    assert config.num_layers == 3 and params["layers_2"]["mlp"]["wo"]["kernel"].shape == (64, 32)
    with pytest.raises(ModelNotAvailableError, match="t5-base"):
        load_t5("t5-base")
    # a cached snapshot holding only other files of the repo (the tokenizer's): a clear offline error
    put_in_hub_cache(str(tmp_path), "google-t5/t5-partial", {"config.json": files["config.json"]})
    with pytest.raises(ModelNotAvailableError, match="only partly in the Hugging Face cache"):
        load_t5("google-t5/t5-partial")


def test_config_from_hf():
    cfg = t5_config_from_hf({"vocab_size": 32128, "d_model": 768, "d_kv": 64, "d_ff": 3072,
                             "num_layers": 12, "num_heads": 12, "feed_forward_proj": "relu"})
    assert cfg == T5Config()
    flan = t5_config_from_hf({"vocab_size": 32128, "d_model": 512, "d_kv": 64, "d_ff": 1024,
                              "num_layers": 8, "num_heads": 6, "feed_forward_proj": "gated-gelu",
                              "layer_norm_epsilon": 1e-5, "relative_attention_max_distance": 64})
    assert flan.feed_forward == "gated-gelu" and flan.layer_norm_eps == 1e-5
    assert flan.relative_attention_max_distance == 64
    with pytest.raises(ValueError, match="gated-silu"):
        t5_config_from_hf({"vocab_size": 8, "d_model": 8, "d_kv": 2, "d_ff": 8, "num_layers": 1,
                           "num_heads": 4, "feed_forward_proj": "gated-silu"})


def _without(state: dict, key: str) -> dict:
    assert key in state
    return {k: v for k, v in state.items() if k != key}
