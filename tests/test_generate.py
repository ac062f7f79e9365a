"""End-to-end generation against transformers' MusicgenForConditionalGeneration.generate (greedy, CFG)."""
import dataclasses
import os

import jax
import numpy as np
import pytest

from musicgen_jax.generate import compiled_decode_programs, kv_pieces
from musicgen_jax.musicgen import MusicGen
from musicgen_jax.testing import put_in_hub_cache, save_reference_musicgen, train_spiece
from tests.helpers import snr_db

pytestmark = pytest.mark.parity  # every test compares with, or starts from, a transformers reference

PROMPTS_SAME_LENGTH = ["happy rock guitar", "happy jazz piano"]  # 13 tokens each
PROMPTS_UNEQUAL = ["happy rock guitar", "soft jazz piano"]  # 13 and 8 tokens


def build_reference(tmp_path, *, stereo=False, melody=False, **kwargs):
    """A random-weight transformers MusicGen (or MusicgenMelody) saved in the real layout, with a trained
    spiece.model: testing.save_reference_musicgen (tiny T5 and EnCodec, widened LM; kwargs such as dim,
    layers, heads, seed, layout go to it)."""
    kind = "melody" if melody else "stereo" if stereo else "mono"
    return save_reference_musicgen(tmp_path, kind=kind, **kwargs)


def reference_generate(model, mg: MusicGen, prompts, frames: int, cfg: float = 3.0, audiocraft_padding=False,
                       **generate_kwargs):
    """transformers greedy generation -> (tokens [B, K, T], audio [B, C, N]).

    audiocraft_padding: emulate audiocraft's unmasked text padding in transformers: T5 runs with the
    real mask, padded features are zeroed, and the decoder sees an all-ones mask. Exact when the
    model's enc_to_dec_proj has no bias (zero features then project to the zero memory audiocraft uses).
    """
    import torch

    captured = {}
    decode = model.audio_encoder.decode

    def recording_decode(codes, *args, **kwargs):
        captured.setdefault("codes", []).append(codes[0].clone())
        return decode(codes, *args, **kwargs)

    model.audio_encoder.decode = recording_decode
    batch = mg.tokenizer(prompts)
    delay = max(mg.config.lm.delays)
    ids = torch.from_numpy(np.asarray(batch.ids)).long()
    mask = torch.from_numpy(np.asarray(batch.mask)).long()
    kwargs = {}
    with torch.no_grad():
        if audiocraft_padding:
            from transformers.modeling_outputs import BaseModelOutput

            hidden = model.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state * mask[..., None]
            # with encoder_outputs given, transformers expects the CFG null half appended by the caller
            hidden = torch.cat([hidden, torch.zeros_like(hidden)])
            kwargs["encoder_outputs"] = BaseModelOutput(last_hidden_state=hidden)
            mask = torch.cat([torch.ones_like(mask), torch.zeros_like(mask)])
        audio = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, guidance_scale=cfg,
                               max_new_tokens=frames + delay, **kwargs, **generate_kwargs)
    model.audio_encoder.decode = decode
    codes = captured["codes"]
    tokens = torch.cat(codes, dim=1) if len(codes) == 1 else torch.stack([codes[0], codes[1]], 2).flatten(1, 2)
    return tokens.numpy(), audio.numpy()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("musicgen_tiny")
    model = build_reference(path)
    return model, MusicGen.from_pretrained(str(path))


def greedy(mg: MusicGen, frames: int, cfg: float = 3.0):
    mg.set_generation_params(duration=frames / mg.frame_rate, use_sampling=False, cfg_coef=cfg)


@pytest.mark.parametrize("prompts", [["happy rock guitar"], PROMPTS_SAME_LENGTH])
def test_greedy_tokens_match_transformers(tiny, prompts):
    model, mg = tiny
    frames = 120
    greedy(mg, frames)
    wav, tokens = mg.generate(prompts, return_tokens=True)
    ref_tokens, ref_audio = reference_generate(model, mg, prompts, frames)
    assert tokens.shape == (len(prompts), 4, frames)
    np.testing.assert_array_equal(np.asarray(tokens), ref_tokens)
    assert wav.shape == ref_audio.shape
    assert snr_db(ref_audio, np.asarray(wav)) >= 60
    assert len(np.unique(ref_tokens)) > 8  # not a degenerate constant generation


def test_length_aware_attention_matches_transformers(tiny):
    """Attending only to the written cache positions (segments of 16 / 32 here, 512 on GPU/TPU) keeps greedy
    tokens equal to transformers', and sampled / continued tokens equal to the whole-buffer loop's."""
    model, mg = tiny
    frames = 64
    greedy(mg, frames)
    ref_tokens, _ = reference_generate(model, mg, PROMPTS_SAME_LENGTH, frames)
    programs = compiled_decode_programs()
    try:
        mg.sampler.kv_segment = 16
        _, tokens = mg.generate(PROMPTS_SAME_LENGTH, return_tokens=True)
        np.testing.assert_array_equal(np.asarray(tokens), ref_tokens)
        assert compiled_decode_programs() - programs >= 4  # one program per 16-position bound below 68
        mg.sampler.kv_segment = 32  # fewer programs to compile for the sampled and continued runs
        mg.set_generation_params(duration=frames / mg.frame_rate, use_sampling=True, top_k=5, cfg_coef=3.0)
        prompt = np.asarray(mg.compression_model.decode(jax.numpy.asarray(ref_tokens[:1, :, :30])))
        segmented = [np.asarray(mg.generate(PROMPTS_SAME_LENGTH, return_tokens=True, seed=3)[1]),
                     np.asarray(mg.generate_continuation(prompt, mg.sample_rate, PROMPTS_SAME_LENGTH[:1],
                                                         return_tokens=True, seed=3)[1])]
        mg.sampler.kv_segment = None
        whole = [np.asarray(mg.generate(PROMPTS_SAME_LENGTH, return_tokens=True, seed=3)[1]),
                 np.asarray(mg.generate_continuation(prompt, mg.sample_rate, PROMPTS_SAME_LENGTH[:1],
                                                     return_tokens=True, seed=3)[1])]
    finally:
        mg.sampler.kv_segment = "auto"
    for got, expected in zip(segmented, whole):
        np.testing.assert_array_equal(got, expected)


def test_kv_pieces_split_at_segment_bounds():
    # steps [5, 40) after a 3-position prefix, segments of 16 positions in a 60-position cache:
    # positions 8..18 read 16 -> piece ends at step 13; 16..31 -> 29; 32..42 -> 48 is past the cache end
    assert kv_pieces(5, 40, 3, 60, 16) == [(13, 16), (29, 32), (40, 48)]
    assert kv_pieces(5, 40, 3, 45, 16) == [(13, 16), (29, 32), (40, None)]  # the bound reaches the end
    assert kv_pieces(5, 40, 3, 60, None) == [(40, None)]
    assert kv_pieces(40, 40, 3, 60, 16) == []


def test_text_changes_tokens(tiny):
    _, mg = tiny
    greedy(mg, 60)
    _, a = mg.generate(["happy rock guitar"], return_tokens=True)
    compiled = compiled_decode_programs()
    _, b = mg.generate(["sad jazz piano"], return_tokens=True)  # 11 tokens vs 13: same 16-token bucket
    assert not np.array_equal(np.asarray(a), np.asarray(b))
    assert compiled_decode_programs() == compiled  # no recompilation for a new prompt length


def test_unequal_prompt_lengths_follow_audiocraft(tmp_path):
    """Padded text positions take attention mass in audiocraft (our reference), not in transformers."""
    import torch

    model = build_reference(tmp_path)
    with torch.no_grad():
        model.enc_to_dec_proj.bias.zero_()
    model.save_pretrained(tmp_path)
    mg = MusicGen.from_pretrained(str(tmp_path))
    greedy(mg, 60)
    _, tokens = mg.generate(PROMPTS_UNEQUAL, return_tokens=True)
    audiocraft_like, _ = reference_generate(model, mg, PROMPTS_UNEQUAL, 60, audiocraft_padding=True)
    masked, _ = reference_generate(model, mg, PROMPTS_UNEQUAL, 60)
    np.testing.assert_array_equal(np.asarray(tokens), audiocraft_like)
    np.testing.assert_array_equal(masked[0], audiocraft_like[0])  # the longest prompt has no padding
    assert not np.array_equal(masked[1], audiocraft_like[1])  # the padded one differs between references


@pytest.mark.slow
def test_greedy_musicgen_small_shapes(tmp_path):
    """Decoder at the real musicgen-small shapes (1024 wide, 24 layers, 16 heads), 100 frames."""
    model = build_reference(tmp_path, dim=1024, layers=24, heads=16)
    mg = MusicGen.from_pretrained(str(tmp_path))
    greedy(mg, 100)
    wav, tokens = mg.generate(["happy rock guitar"], return_tokens=True)
    ref_tokens, ref_audio = reference_generate(model, mg, ["happy rock guitar"], 100)
    np.testing.assert_array_equal(np.asarray(tokens), ref_tokens)
    assert snr_db(ref_audio, np.asarray(wav)) >= 60


def test_continuation_matches_transformers_audio_prompt(tiny):
    """generate_continuation keeps the prompt and continues it like transformers' input_values path."""
    import torch

    model, mg = tiny
    frames, prompt_frames = 100, 30
    greedy(mg, frames)
    rng = np.random.default_rng(0)
    prompt = (rng.standard_normal((1, 1, prompt_frames * 8)) * 0.3).astype(np.float32)
    wav, tokens = mg.generate_continuation(prompt, 32000, ["happy rock guitar"], return_tokens=True)
    prompt_codes = np.asarray(mg.compression_model.encode(prompt))
    np.testing.assert_array_equal(np.asarray(tokens)[:, :, :prompt_frames], prompt_codes)  # prompt kept

    captured = {}
    decode = model.audio_encoder.decode
    model.audio_encoder.decode = lambda codes, *a, **k: captured.setdefault("codes", codes[0].clone()) is None or \
        decode(codes, *a, **k)
    batch = mg.tokenizer(["happy rock guitar"])
    with torch.no_grad():
        model.generate(input_ids=torch.from_numpy(np.asarray(batch.ids)).long(),
                       attention_mask=torch.from_numpy(np.asarray(batch.mask)).long(),
                       input_values=torch.from_numpy(prompt), do_sample=False, guidance_scale=3.0,
                       max_new_tokens=frames - prompt_frames + 3)
    model.audio_encoder.decode = decode
    np.testing.assert_array_equal(np.asarray(tokens), captured["codes"].numpy())


def test_long_form_windows_restart_from_the_stride(tiny, monkeypatch):
    import copy

    from musicgen_jax.sampler import Sampler

    _, mg = tiny
    window = 40  # frames: a 0.01 s window at the tiny codec's 4000 Hz frame rate
    short = copy.copy(mg)  # the same weights with a shorter window (training segment)
    short.sampler = copy.copy(mg.sampler)
    short.sampler.config = dataclasses.replace(mg.config, max_duration=window / mg.frame_rate)
    calls = []
    inner = Sampler._window

    def spy(self, conditions, prompt_tokens, frames, *args):  # a window yields (codes, frames done) per chunk
        for out, done in inner(self, conditions, prompt_tokens, frames, *args):
            yield out, done
        calls.append((None if prompt_tokens is None else np.asarray(prompt_tokens), frames, np.asarray(out)))

    monkeypatch.setattr(Sampler, "_window", spy)
    short.set_generation_params(duration=100 / mg.frame_rate, use_sampling=False, cfg_coef=3.0,
                                extend_stride=25 / mg.frame_rate)
    _, tokens = short.generate(["happy rock guitar"], return_tokens=True)
    tokens = np.asarray(tokens)
    assert tokens.shape == (1, 4, 100)
    assert [c[1] for c in calls] == [40, 40, 40, 25]  # windows at frames 0, 25, 50 and 75 (the last cut at 100)
    assert calls[0][0] is None
    for (_, _, prev), (prompt, frames, out) in zip(calls, calls[1:]):
        np.testing.assert_array_equal(prompt, prev[:, :, 25:])  # the last (window - stride) frames
        np.testing.assert_array_equal(out[:, :, : prompt.shape[-1]], prompt)
    # the output is the first window followed by the new frames of each later window
    stitched = np.concatenate([calls[0][2]] + [out[:, :, p.shape[-1]:] for p, _, out in
                                               [(c[0], c[1], c[2]) for c in calls[1:]]], axis=-1)
    np.testing.assert_array_equal(tokens, stitched[:, :, :100])


def test_sampling_seed_reproducible_and_progress(tiny):
    _, mg = tiny
    mg.set_generation_params(duration=60 / mg.frame_rate, use_sampling=True, top_k=5, cfg_coef=3.0)
    seen = []
    mg.set_custom_progress_callback(lambda done, total: seen.append((done, total)))
    try:
        _, a = mg.generate(["happy rock guitar"], return_tokens=True, seed=3)
    finally:
        mg.set_custom_progress_callback(None)
    _, b = mg.generate(["happy rock guitar"], return_tokens=True, seed=3)
    _, c = mg.generate(["happy rock guitar"], return_tokens=True, seed=4)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    assert seen and seen[-1] == (60, 60) and all(d <= t for d, t in seen)


def test_unconditional_shapes(tiny):
    _, mg = tiny
    mg.set_generation_params(duration=20 / mg.frame_rate, use_sampling=True, top_k=10, cfg_coef=3.0)
    wav, tokens = mg.generate_unconditional(2, return_tokens=True, seed=0)
    assert tokens.shape == (2, 4, 20) and wav.shape == (2, 1, 160)


def test_bad_inputs(tiny, tmp_path):
    _, mg = tiny
    with pytest.raises(ValueError, match="empty"):
        mg.generate([])
    with pytest.raises(TypeError, match="list"):
        mg.generate("a single string")
    with pytest.raises(TypeError, match="string"):
        mg.generate([3])
    with pytest.raises(ValueError, match="duration"):
        mg.set_generation_params(duration=0)
    with pytest.raises(ValueError, match="duration"):
        mg.set_generation_params(duration=-2.0)
    with pytest.raises(ValueError, match="NaN"):
        mg.generate_continuation(np.full((1, 1, 64), np.nan, np.float32), 32000, ["x"])
    with pytest.raises(ValueError, match="sample_rate"):
        mg.generate_continuation(np.zeros((1, 1, 64), np.float32), 0, ["x"])
    with pytest.raises(TypeError):
        mg.generate_continuation([0.0, 1.0], 32000, ["x"])
    with pytest.raises(ValueError, match="unknown model name"):
        MusicGen.from_pretrained("not-a-model")
    with pytest.raises(FileNotFoundError):
        MusicGen.from_pretrained(str(tmp_path / "missing") + "/")


def test_stereo_greedy_matches_transformers(tmp_path):
    model = build_reference(tmp_path, stereo=True)
    mg = MusicGen.from_pretrained(str(tmp_path))
    assert mg.audio_channels == 2 and mg.config.lm.delays == (0, 0, 1, 1, 2, 2, 3, 3)
    greedy(mg, 100)
    wav, tokens = mg.generate(["happy rock guitar"], return_tokens=True)
    ref_tokens, ref_audio = reference_generate(model, mg, ["happy rock guitar"], 100)
    np.testing.assert_array_equal(np.asarray(tokens), ref_tokens)
    assert wav.shape == ref_audio.shape == (1, 2, 800)
    assert snr_db(ref_audio, np.asarray(wav)) >= 60


def test_cli_generate_offline_from_hub_cache(tiny, tmp_path, monkeypatch):
    import huggingface_hub.constants
    import soundfile as sf

    from musicgen_jax.cli import main

    model, mg = tiny
    source = tmp_path / "src"
    model.save_pretrained(source)
    train_spiece(str(source))
    put_in_hub_cache(str(tmp_path / "hub"), "facebook/musicgen-tiny-test", str(source))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out" / "song.wav"
    args = ["generate", "happy rock guitar", "--model", "facebook/musicgen-tiny-test", "--duration", "0.02",
            "--seed", "1", "--out", str(out), "--quiet"]
    assert main(args) == 0
    data, rate = sf.read(out)
    assert rate == 32000 and data.shape == (80 * 8,)
    (tmp_path / "prompts.txt").write_text("happy rock guitar\n\nsoft jazz piano\n")
    assert main(["generate", "--prompts-file", str(tmp_path / "prompts.txt"), "--model",
                 "facebook/musicgen-tiny-test", "--duration", "0.01", "--out", str(out), "--quiet",
                 "--mesh", "tensor=2"]) == 0  # 8 test devices: data 4 x tensor 2
    assert os.path.isfile(tmp_path / "out" / "song_0.wav") and os.path.isfile(tmp_path / "out" / "song_1.wav")
    assert main(["generate", "x", "--model", "facebook/not-cached", "--out", str(out)]) == 2
    assert main(["generate", "x", "--model", "facebook/musicgen-tiny-test", "--duration", "-1"]) == 2
    assert main(["generate", "x", "--model", "facebook/musicgen-tiny-test", "--mesh", "model=2"]) == 2
    assert main(["generate", "x", "--model", "facebook/musicgen-tiny-test", "--mesh", "tensor=3"]) == 2
    # a cached snapshot without weights (only config.json fetched) is not taken for the model
    put_in_hub_cache(str(tmp_path / "hub"), "facebook/musicgen-partial", {"config.json": str(source / "config.json")})
    with pytest.raises(FileNotFoundError, match="only partly in the Hugging Face cache"):
        MusicGen.from_pretrained("facebook/musicgen-partial")


def _melody_wavs():
    """Two melodies of different lengths at 16 kHz: a rising arpeggio and a falling one (stereo)."""
    rate = 16000

    def notes(freqs, seconds):
        t = np.arange(int(seconds * rate)) / rate
        per = len(t) // len(freqs)
        return np.concatenate([np.sin(2 * np.pi * f * t[:per]) for f in freqs]).astype(np.float32) * 0.5

    up = notes([262, 330, 392, 523], 2.0)[None]
    down = np.stack([notes([880, 698, 587, 440, 349], 1.3)] * 2)
    return [up, down], rate


def test_melody_greedy_matches_transformers(tmp_path):
    import torch

    from musicgen_jax.chroma import extract_chroma

    model = build_reference(tmp_path, melody=True)
    mg = MusicGen.from_pretrained(str(tmp_path))
    assert mg.config.lm.is_melody and mg.config.lm.chroma_frames == 235
    greedy(mg, 100)
    prompts = PROMPTS_SAME_LENGTH
    wavs, rate = _melody_wavs()
    wav, tokens = mg.generate_with_chroma(prompts, wavs, rate, return_tokens=True)
    # the reference input: melodies mixed to mono, collated (zero-padded to the longest, as audiocraft
    # and transformers' processor do), chroma at 32 kHz, tiled to 235 frames
    from musicgen_jax.chroma import fit_chroma_length

    features = fit_chroma_length(extract_chroma([w.mean(0) for w in wavs], rate), 235)
    assert (features[1].argmax(-1) == 0).any()  # no C in melody 1 (A F D A F): bin 0 is its padded tail
    ref_tokens, ref_audio = reference_generate(model, mg, prompts, 100,
                                               input_features=torch.from_numpy(features))
    np.testing.assert_array_equal(np.asarray(tokens), ref_tokens)
    assert snr_db(ref_audio, np.asarray(wav)) >= 60
    # precomputed chroma gives the same, also attending only to written positions (blocks of 64, after
    # the melody prefix), and the melody matters
    mg.sampler.kv_segment = 64
    _, same = mg.generate_with_chroma(prompts, chroma=features, return_tokens=True)
    mg.sampler.kv_segment = "auto"
    np.testing.assert_array_equal(np.asarray(same), np.asarray(tokens))
    _, other = mg.generate_with_chroma(prompts, chroma=features[::-1].copy(), return_tokens=True)
    assert not np.array_equal(np.asarray(other), np.asarray(tokens))
    # text-only generation on a melody model uses the null melody, like transformers without input_features
    _, plain = mg.generate(prompts, return_tokens=True)
    ref_plain, _ = reference_generate(model, mg, prompts, 100)
    np.testing.assert_array_equal(np.asarray(plain), ref_plain)
    # the CLI's --melody path
    import soundfile as sf

    from musicgen_jax.cli import main

    sf.write(tmp_path / "melody.wav", wavs[0][0], rate)
    out = tmp_path / "melody_out.wav"
    assert main(["generate", "happy rock guitar", "--model", str(tmp_path), "--melody", str(tmp_path / "melody.wav"),
                 "--duration", "0.02", "--greedy", "--out", str(out), "--quiet"]) == 0
    assert sf.info(str(out)).frames == 80 * 8
    with pytest.raises(ValueError, match="NaN"):
        mg.generate_with_chroma(prompts, [np.full((1, 100), np.nan, np.float32)] * 2, rate)
    with pytest.raises(ValueError, match="sample"):
        mg.generate_with_chroma(prompts, wavs, -5)
    with pytest.raises(ValueError, match="melodies"):
        mg.generate_with_chroma(prompts, wavs[:1], rate)
    with pytest.raises(ValueError, match="shape"):
        mg.generate_with_chroma(prompts, np.zeros((2, 1, 1, 5), np.float32), rate)


def test_bf16_generation_runs(tiny, tmp_path):
    """The bf16 fast path (matmul weights held in bf16; norms, embeddings, logits fp32; bf16 KV cache)
    generates valid audio, with the same tokens as bf16 compute over fp32-held weights (the layers cast
    each weight before its matmul, so holding them in bf16 is exact)."""
    import jax.numpy as jnp

    model, _ = tiny
    model.save_pretrained(tmp_path)
    train_spiece(str(tmp_path))
    mg = MusicGen.from_pretrained(str(tmp_path), dtype=jnp.bfloat16)
    greedy(mg, 40)
    wav, tokens = mg.generate(["happy rock guitar"], return_tokens=True)
    tokens = np.asarray(tokens)
    assert tokens.shape == (1, 4, 40) and tokens.min() >= 0 and tokens.max() < 32
    assert np.isfinite(np.asarray(wav)).all()
    dtypes = {jax.tree_util.keystr(path): x.dtype for path, x in jax.tree_util.tree_leaves_with_path(mg.lm_params)}
    assert dtypes["['layers_0']['self_attn']['query']['kernel']"] == jnp.bfloat16
    assert dtypes["['heads']"] == jnp.bfloat16
    assert dtypes["['layers_0']['self_attn_norm']['scale']"] == jnp.float32
    assert dtypes["['embeddings']"] == jnp.float32

    fp32_weights = MusicGen.from_pretrained(str(tmp_path)).lm_params
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(fp32_weights))
    mg.sampler.lm_params = fp32_weights  # the same bf16 model over the weights as loaded
    _, fp32_held = mg.generate(["happy rock guitar"], return_tokens=True)
    np.testing.assert_array_equal(np.asarray(fp32_held), tokens)


def test_two_step_cfg_equals_one_batch_cfg(tiny):
    """Separate conditional / null passes (audiocraft's two_step_cfg) give the same greedy tokens."""
    _, mg = tiny
    greedy(mg, 40)
    _, one_batch = mg.generate(PROMPTS_SAME_LENGTH, return_tokens=True)
    mg.set_generation_params(two_step_cfg=True)
    try:
        _, two_step = mg.generate(PROMPTS_SAME_LENGTH, return_tokens=True)
    finally:
        mg.set_generation_params(two_step_cfg=False)
    np.testing.assert_array_equal(np.asarray(two_step), np.asarray(one_batch))


def test_sharded_generation_equals_one_device(tiny):
    """On a (data 2, tensor 2) mesh: weights split by the logical rules, rows split over data (or
    replicated when the batch is odd); greedy and seeded sampled tokens equal one device's."""
    import copy

    from musicgen_jax.sharding import make_mesh

    _, mg = tiny
    mesh = make_mesh(data=2, fsdp=1, tensor=2, devices=jax.devices()[:4])
    sharded = copy.copy(mg).shard(mesh)
    assert mg.mesh is None and mg.lm_params is not sharded.lm_params
    fc1 = sharded.lm_params["layers_0"]["fc1"]["kernel"]
    assert fc1.sharding.spec[-1] == "tensor" and len(fc1.addressable_shards) == 4
    assert fc1.addressable_shards[0].data.shape == (fc1.shape[0], fc1.shape[1] // 2)

    greedy(mg, 40)
    greedy(sharded, 40)
    _, want = mg.generate(PROMPTS_SAME_LENGTH, return_tokens=True)
    wav, got = sharded.generate(PROMPTS_SAME_LENGTH, return_tokens=True)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert wav.shape == (2, 1, 40 * 8)
    assert "data" in str(got.sharding.spec) and len(got.addressable_shards) == 4  # rows were split

    prompts = PROMPTS_SAME_LENGTH + ["slow sad violin"]  # 3 rows: not split, still correct
    for m in (mg, sharded):
        m.set_generation_params(duration=120 / m.frame_rate, use_sampling=True, top_k=5, cfg_coef=3.0)
    _, want = mg.generate(prompts, return_tokens=True, seed=1)
    seen = []
    sharded.set_custom_progress_callback(lambda done, total: seen.append(done))
    _, got = sharded.generate(prompts, return_tokens=True, seed=1)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    # asynchronous progress callbacks have all arrived, in order, before generate returns
    assert seen == [47, 97, 120]  # frames' worth of tokens: (49 + 48 + 47 + 46) // 4 before step 50, ...


def test_decode_caches_are_laid_out_by_logical_axes(tiny):
    """Caches of both layer layouts (a tuple of [B, H, L, D], or one stacked [L, B, H, L, D]): rows over
    data, heads over tensor (tensor parallelism), whatever the array's rank."""
    import copy

    from jax.sharding import NamedSharding, PartitionSpec as P

    from musicgen_jax.config import Guidance
    from musicgen_jax.generate import init_caches
    from musicgen_jax.sharding import make_mesh

    _, mg = tiny
    mesh = make_mesh(data=2, fsdp=1, tensor=2, devices=jax.devices()[:4])
    unrolled = copy.copy(mg).shard(mesh).lm
    heads, head_dim = mg.config.lm.num_heads, mg.config.lm.head_dim
    for lm, lead in ((unrolled, ()), (unrolled.clone(scan_layers=True), (None,))):
        cache = jax.jit(lambda lm=lm: init_caches(lm, 3, 64, Guidance(coef=3.0)))()  # 6 rows: [cond; null]
        for k in jax.tree.leaves(cache.k):
            want = NamedSharding(mesh, P(*lead, ("data", "fsdp"), "tensor", None, None))
            assert k.sharding.is_equivalent_to(want, k.ndim), k.sharding.spec
            assert k.addressable_shards[0].data.shape[len(lead):] == (3, heads // 2, 64, head_dim)


@pytest.mark.parametrize("kind", ["mono", "stereo", "melody"])
def test_audiocraft_layout_generates_like_the_transformers_layout(tmp_path, kind, monkeypatch):
    """The same weights in both official layouts load to the same model and the same greedy tokens. The
    audiocraft checkpoint names its T5 and codec as hub repositories (read from a hub cache, offline), as
    the official state_dict.bin names t5-base and its compression_state_dict.bin facebook/encodec_32khz."""
    import huggingface_hub.constants

    kinds = dict(stereo=kind == "stereo", melody=kind == "melody", seed=4)
    build_reference(tmp_path / "hf", **kinds)
    build_reference(tmp_path / "ac", layout="audiocraft", t5_name="google-t5/t5-tiny-test",
                    codec_name="facebook/encodec-tiny-test", **kinds)
    hub = str(tmp_path / "hub")
    put_in_hub_cache(hub, "google-t5/t5-tiny-test", str(tmp_path / "ac" / "t5"))
    put_in_hub_cache(hub, "facebook/encodec-tiny-test", str(tmp_path / "ac" / "encodec"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", hub)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf, ac = MusicGen.from_pretrained(str(tmp_path / "hf")), MusicGen.from_pretrained(str(tmp_path / "ac"))
    assert ac.config.t5_name == "google-t5/t5-tiny-test"
    assert dataclasses.replace(ac.config, name=hf.config.name, t5_name=hf.config.t5_name) == hf.config
    for mg in (hf, ac):
        greedy(mg, 40)
    wav_hf, tokens_hf = hf.generate(PROMPTS_SAME_LENGTH, return_tokens=True)
    wav_ac, tokens_ac = ac.generate(PROMPTS_SAME_LENGTH, return_tokens=True)
    np.testing.assert_array_equal(np.asarray(tokens_ac), np.asarray(tokens_hf))
    np.testing.assert_array_equal(np.asarray(wav_ac), np.asarray(wav_hf))
    assert len(np.unique(np.asarray(tokens_hf))) > 8
