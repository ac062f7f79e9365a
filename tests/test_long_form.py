"""Long-form generation past the model's window, against audiocraft's scheme with transformers' `generate`
as the per-window engine. The window is the checkpoint's training segment (audiocraft's max_duration)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from musicgen_jax.musicgen import MusicGen
from musicgen_jax.testing import TINY_ENCODEC, save_reference_musicgen

pytestmark = pytest.mark.parity

# The tiny codec at 80 Hz: hop 8 gives 10 frames/s, so 40 s is 400 frames (4 codebooks x 5 bits x 10 = 0.2 kbit/s)
TEN_HZ_CODEC = {**TINY_ENCODEC, "sampling_rate": 80, "target_bandwidths": [0.2]}
PROMPT = "happy rock guitar"


def transformers_window(model, ids, mask, prompt: np.ndarray | None, frames: int, cfg: float) -> np.ndarray:
    """audiocraft's `lm.generate(prompt, max_gen_len=frames)` with transformers: greedy, CFG; returns the
    window's codes [B, K, frames], prompt frames included."""
    import torch

    k = model.decoder.num_codebooks
    bos = model.config.decoder.bos_token_id  # the special token (= codebook size) starts every sequence
    batch = ids.shape[0]
    prompt = np.zeros((batch, k, 0), np.int64) if prompt is None else prompt
    start = np.concatenate([np.full((batch, k, 1), bos), prompt], axis=-1).reshape(batch * k, -1).astype(np.int64)
    captured = {}
    decode = model.audio_encoder.decode

    def recording_decode(codes, *args, **kwargs):
        captured["codes"] = codes[0].clone()
        return decode(codes, *args, **kwargs)

    model.audio_encoder.decode = recording_decode
    try:
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=mask, decoder_input_ids=torch.from_numpy(start),
                           do_sample=False, guidance_scale=cfg,
                           max_new_tokens=frames - prompt.shape[-1] + max(range(k)))
    finally:
        model.audio_encoder.decode = decode
    return captured["codes"].numpy()


def audiocraft_long_form(window_fn, duration: float, max_duration: float, stride: float, frame_rate: float):
    """audiocraft's MusicGen._generate_tokens past max_duration (no audio prompt)."""
    total = int(duration * frame_rate)
    stride_frames = int(stride * frame_rate)
    pieces, prompt, offset = [], None, 0
    windows = []
    while offset + (0 if prompt is None else prompt.shape[-1]) < total:
        chunk = min(duration - offset / frame_rate, max_duration)
        codes = window_fn(prompt, int(chunk * frame_rate))
        windows.append(codes.shape[-1])
        pieces.append(codes if prompt is None else codes[:, :, prompt.shape[-1]:])
        prompt = codes[:, :, stride_frames:]
        offset += stride_frames
    return np.concatenate(pieces, axis=-1), windows


def test_long_form_uses_the_training_window_like_audiocraft(tmp_path):
    """An audiocraft checkpoint trained on 20 s segments: 40 s greedy with an 18 s stride generates in
    20 s windows (not 30 s), token for token as audiocraft does."""
    import torch

    model = save_reference_musicgen(tmp_path, layout="audiocraft", segment_duration=20.0, codec=TEN_HZ_CODEC, seed=3)
    mg = MusicGen.from_pretrained(str(tmp_path))
    assert mg.max_duration == 20.0 and mg.frame_rate == 10.0
    mg.set_generation_params(duration=40.0, use_sampling=False, cfg_coef=3.0, extend_stride=18.0)
    _, tokens = mg.generate([PROMPT], return_tokens=True)

    batch = mg.tokenizer([PROMPT])
    ids, mask = (torch.from_numpy(np.asarray(x)).long() for x in (batch.ids, batch.mask))
    want, windows = audiocraft_long_form(lambda p, n: transformers_window(model, ids, mask, p, n, 3.0),
                                         duration=40.0, max_duration=20.0, stride=18.0, frame_rate=10.0)
    assert windows == [200, 200, 40]
    assert want.shape == (1, 4, 400) and len(np.unique(want)) > 8
    np.testing.assert_array_equal(np.asarray(tokens), want)
    # with a 30 s window (the bug this guards against) the second window would start elsewhere
    thirty, _ = audiocraft_long_form(lambda p, n: transformers_window(model, ids, mask, p, n, 3.0),
                                     duration=40.0, max_duration=30.0, stride=18.0, frame_rate=10.0)
    assert not np.array_equal(thirty, want)


def test_transformers_checkpoint_window_from_its_config(tmp_path):
    """`export` writes `segment_duration` into config.json; the loader takes it as the window, and a
    stride that does not fit the window is refused as audiocraft does."""
    save_reference_musicgen(tmp_path, codec=TEN_HZ_CODEC)
    assert MusicGen.from_pretrained(str(tmp_path)).max_duration == 30.0  # the official models' segment
    config = json.loads((tmp_path / "config.json").read_text())
    config["segment_duration"] = 10.0
    (tmp_path / "config.json").write_text(json.dumps(config))
    mg = MusicGen.from_pretrained(str(tmp_path))
    assert mg.max_duration == 10.0
    assert mg.generation_params.extend_stride < 10.0  # audiocraft's 18 s default would not fit
    with pytest.raises(ValueError, match="extend_stride"):
        mg.set_generation_params(extend_stride=12.0)
    config["segment_duration"] = None
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert MusicGen.from_pretrained(tmp_path).max_duration == 30.0  # a pathlib.Path works too
    config["segment_duration"] = "long"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="config.json: segment_duration must be a positive number"):
        MusicGen.from_pretrained(str(tmp_path))
