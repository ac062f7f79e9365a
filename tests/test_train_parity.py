"""Training objective parity: our loss and its gradients equal transformers' `labels` loss and
torch autograd's gradients, for text (mono), stereo and melody models.

transformers' loss is the mean over codebooks of the cross-entropy over positions whose label is not
the pad token; on the valid steps of the delay pattern (audiocraft's keep_only_valid_steps) those are
exactly the positions our loss counts, so the two objectives agree and so must their gradients.
Gradients of the torch state dict go through the same converter as the weights (a pure re-layout).
"""
from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from musicgen_jax.convert.lm import lm_config_from_hf, lm_params_from_transformers
from musicgen_jax.modules.lm import MusicGenLM
from musicgen_jax.train import loss as L
from tests.lm_fixtures import hf_state_numpy, make_hf_model

pytestmark = pytest.mark.parity

FRAMES = 6
TEXT_LEN = 4
CHROMA_FRAMES = 5


def _labels(x: np.ndarray, pad: int) -> np.ndarray:
    """Delayed input x [B, K, T + 1] -> transformers labels [B, T + 1, K]: step s is trained to predict
    step s + 1; the last step and the pattern's special tokens are the pad id (ignored)."""
    target = np.concatenate([x[:, :, 1:], np.full_like(x[:, :, :1], pad)], axis=-1)
    return target.transpose(0, 2, 1)


def _torch_loss_and_grads(model, kind, x, conditioning):
    import torch

    b, k, s = x.shape
    model.zero_grad()
    common = dict(decoder_input_ids=torch.from_numpy(x).reshape(b * k, s),
                  labels=torch.from_numpy(_labels(x, model.config.decoder.pad_token_id)))
    if kind == "melody":
        out = model(input_ids=conditioning["ids"], attention_mask=conditioning["mask"],
                    input_features=torch.from_numpy(conditioning["chroma"]), **common)
    else:
        out = model(encoder_outputs=(torch.from_numpy(conditioning["text"]),),
                    attention_mask=torch.from_numpy(conditioning["mask"]), **common)
    out.loss.backward()
    grads = {name: p.grad.detach().numpy() for name, p in model.named_parameters()
             if p.grad is not None and not name.startswith(("text_encoder.", "audio_encoder."))}
    return float(out.loss.detach()), grads


def _conditioning(model, kind, rng, batch):
    """Two conditional rows and two null rows (all-zero mask), as CFG training sees them."""
    import torch

    mask = np.array([[1] * TEXT_LEN] * (batch // 2) + [[0] * TEXT_LEN] * (batch - batch // 2), np.int64)
    if kind != "melody":
        text = rng.standard_normal((batch, TEXT_LEN, model.config.text_encoder.d_model)).astype(np.float32)
        return {"text": text, "mask": mask}, {"text": jnp.asarray(text), "text_mask": jnp.asarray(mask)}
    ids = torch.from_numpy(rng.integers(2, 64, size=(batch, TEXT_LEN)))
    chroma = np.zeros((batch, CHROMA_FRAMES, 12), np.float32)
    chroma[np.arange(batch)[:, None], np.arange(CHROMA_FRAMES)[None], rng.integers(0, 12, (batch, CHROMA_FRAMES))] = 1
    with torch.no_grad():
        text = model.text_encoder(input_ids=ids, attention_mask=torch.from_numpy(mask)).last_hidden_state.numpy()
    ours = {"text": jnp.asarray(text), "text_mask": jnp.asarray(mask), "chroma": jnp.asarray(chroma)}
    return {"ids": ids, "mask": torch.from_numpy(mask), "chroma": chroma}, ours


@pytest.mark.parametrize("kind", ["mono", "stereo", "melody"])
def test_loss_and_gradients_match_transformers(kind):
    model = make_hf_model(kind, seed=7, chroma_length=CHROMA_FRAMES)  # eval mode: no T5 dropout
    config = lm_config_from_hf(model.config.to_dict())
    params = jax.tree.map(jnp.asarray, lm_params_from_transformers(hf_state_numpy(model), config))
    rng = np.random.default_rng(7)
    batch = 4
    codes = rng.integers(0, config.codebook_size, size=(batch, config.num_codebooks, FRAMES))
    frames = jnp.full((batch,), FRAMES)
    x = L.model_input(jnp.asarray(codes), config.codebook_pattern(FRAMES), config.special_token)
    x = np.asarray(x).astype(np.int64)
    torch_cond, our_cond = _conditioning(model, kind, rng, batch)

    ref_loss, ref_grads = _torch_loss_and_grads(model, kind, x, torch_cond)
    ref = flax.traverse_util.flatten_dict(lm_params_from_transformers(ref_grads, config))

    lm = MusicGenLM(config)
    counts = L.codebook_counts(frames, config.codebook_pattern(FRAMES))  # [K]

    def loss(p):
        return jnp.mean(L.lm_nll(lm, p, jnp.asarray(codes), frames, **our_cond) / counts)

    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    assert abs(float(value) - ref_loss) <= 1e-5 * max(1.0, abs(ref_loss))
    got = flax.traverse_util.flatten_dict(grads)
    assert got.keys() == ref.keys()
    for path, g in got.items():
        r = ref[path]
        scale = float(np.abs(r).max())
        assert scale > 0, path  # every parameter is trained
        err = float(np.abs(np.asarray(g) - r).max())
        assert err <= 1e-5 * scale, (path, err, scale)
