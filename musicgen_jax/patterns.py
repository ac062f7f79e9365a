"""Codebook interleaving patterns: how K parallel code streams [B, K, T] become one LM sequence.

A pattern is a static table `layout[q, s]`: the frame index held by codebook q at sequence step s, or
-1 where that position holds the special token (id = codebook size). Tables depend only on T and the
pattern's hyper-parameters, so they are built with numpy at trace time and every array operation
(build, revert, masks) is a jnp gather: jit-friendly with static shapes.

Every pattern starts with one all-special step (step 0), as in audiocraft: the model's input at step
0 is "special" for every codebook and its output at step s predicts step s + 1.

Delay pattern (MusicGen): with delays d_q, the sequence has S = T + max(d) + 1 steps and codebook q at
step s holds frame s - 1 - d_q when 0 <= s - 1 - d_q < T, else the special token. Mono models use
d = [0, 1, ..., K-1] (S = T + K), stereo models d = [0, 0, 1, 1, 2, 2, 3, 3] (S = T + 4).

audiocraft's other patterns, for the paper's ablation: parallel (all delays 0), unrolled (flattening),
coarse-first (VALL-E style) and MusicLM-style grouped flattening. `LMConfig.pattern` chooses one for
training and generation alike (`get_pattern`, `generation_buffer`, `Pattern.revert`).

Relation to transformers' `MusicgenForCausalLM.build_delay_pattern_mask`: its input ids already
*include* the leading special step (generation starts from one column of `decoder_start_token_id` =
the special token, prompt frames follow it), while audiocraft's (and our) `Pattern.build` takes raw
codes and inserts the special step itself. Given
`ids = [special | prompt frames]` (length 1 + Tp) and `max_length = T + max(d) + 1`, transformers'
pattern mask equals `generation_buffer(delay_pattern(T, delays), prompt, special)`: prompt frames in
place, the special token where no frame can be, -1 where a token is still to be generated.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
UNKNOWN = -1  # a generation buffer position still to be generated (never a token id)


@dataclasses.dataclass(frozen=True, eq=False)
class Pattern:
    """A static interleaving table.

    layout: [K, S] int, frame index of codebook q at step s (-1: special token there).
    timesteps: T, the number of frames the pattern was built for.
    valid_steps: the steps up to which every position is "defined" in audiocraft's sense
      (`keep_only_valid_steps`): the training input length (T + 1 for the delay pattern).
    """

    layout: np.ndarray
    timesteps: int
    valid_steps: int

    def __post_init__(self):
        layout = np.asarray(self.layout, dtype=np.int64)
        if layout.ndim != 2:
            raise ValueError(f"pattern layout must be [K, S], got shape {layout.shape}")
        if layout[:, 0].max(initial=-1) != -1:
            raise ValueError("pattern must start with an all-special step")
        for q in range(layout.shape[0]):
            frames = layout[q][layout[q] >= 0]
            if np.any(np.diff(frames) <= 0):
                raise ValueError(f"codebook {q}: frames must appear once each, in increasing order")
        object.__setattr__(self, "layout", layout)

    @property
    def num_codebooks(self) -> int:
        return self.layout.shape[0]

    @property
    def num_steps(self) -> int:
        return self.layout.shape[1]

    def steps(self, valid_only: bool = False) -> int:
        return self.valid_steps if valid_only else self.num_steps

    def step_of_frame(self) -> np.ndarray:
        """[K, T] int: the step at which codebook q holds frame t (-1 if it never appears)."""
        out = np.full((self.num_codebooks, self.timesteps), -1, np.int64)
        q, s = np.nonzero(self.layout >= 0)
        out[q, self.layout[q, s]] = s
        return out

    def progress_frames(self) -> np.ndarray:
        """[S + 1] int: frames' worth of tokens (tokens placed / K) at the steps before s, for s = 0..S:
        generation progress that advances evenly whatever the interleaving."""
        placed = (self.layout >= 0).sum(axis=0)  # [S] tokens at each step
        before = np.concatenate([[0], np.cumsum(placed)])  # [S + 1]
        return before // self.num_codebooks

    def build(self, codes: Array, special_token: int, *, valid_only: bool = False) -> Array:
        """codes [B, K, T] -> sequence [B, K, S] (S = valid_steps when valid_only).

        Entries of `codes` are copied as they are (a -1 "unknown" marker survives, which generation
        uses); positions with no frame get `special_token`.
        """
        b, k, t = codes.shape
        if (k, t) != (self.num_codebooks, self.timesteps):
            raise ValueError(f"codes [.., {k}, {t}] do not fit a pattern for K={self.num_codebooks}, "
                             f"T={self.timesteps}")
        layout = self.layout[:, : self.steps(valid_only)]
        idx = jnp.asarray(np.maximum(layout, 0), jnp.int32)
        vals = jnp.take_along_axis(codes, jnp.broadcast_to(idx[None], (b,) + idx.shape), axis=2)
        return jnp.where(jnp.asarray(layout >= 0)[None], vals, jnp.asarray(special_token, vals.dtype))

    def revert_mask(self, num_steps: int | None = None) -> np.ndarray:
        """[K, T] bool: frames present in a sequence of `num_steps` steps (default: all)."""
        num_steps = self.num_steps if num_steps is None else num_steps
        step = self.step_of_frame()
        return (step >= 0) & (step < num_steps)

    def revert(self, sequence: Array, special_token: int) -> Array:
        """sequence [B, K, S'] (S' <= S, a prefix of the pattern) -> codes [B, K, T].

        Frames not present in the sequence are filled with `special_token`.
        """
        b, k, s = sequence.shape
        if k != self.num_codebooks or s > self.num_steps:
            raise ValueError(f"sequence [.., {k}, {s}] does not fit a pattern of K={self.num_codebooks}, "
                             f"S={self.num_steps}")
        step = self.step_of_frame()
        ok = (step >= 0) & (step < s)
        idx = jnp.asarray(np.where(ok, step, 0), jnp.int32)
        vals = jnp.take_along_axis(sequence, jnp.broadcast_to(idx[None], (b,) + idx.shape), axis=2)
        return jnp.where(jnp.asarray(ok)[None], vals, jnp.asarray(special_token, vals.dtype))

    def revert_logits(self, logits: Array, fill: float = float("nan"), *,
                      valid_only: bool = False) -> tuple[Array, np.ndarray]:
        """Model outputs on the sequence -> per-frame predictions.

        logits [B, K, S', V] where the output at step s predicts the token at step s + 1.
        Returns ([B, K, T, V] with the logits predicting frame t of codebook q, `fill` where none
        does; mask [K, T] of the positions that have a prediction). This is what training's
        cross-entropy uses (audiocraft `revert_pattern_logits`). With valid_only (training on
        `build(..., valid_only=True)` input), only frames whose step lies inside the valid steps count,
        as in audiocraft: the output of the last input step is not used.
        """
        b, k, s, v = logits.shape
        step = self.step_of_frame() - 1  # the output one step earlier predicts the frame
        limit = min(s, self.steps(valid_only) - 1)
        ok = (step >= 0) & (step < limit)
        idx = jnp.asarray(np.where(ok, step, 0), jnp.int32)
        vals = jnp.take_along_axis(logits, jnp.broadcast_to(idx[None, :, :, None], (b, k, idx.shape[1], 1)),
                                   axis=2)
        return jnp.where(jnp.asarray(ok)[None, :, :, None], vals, jnp.asarray(fill, vals.dtype)), ok


# ---------------------------------------------------------------------------------------------------
# Pattern constructors


def delay_pattern(timesteps: int, delays: Sequence[int]) -> Pattern:
    """MusicGen's delay pattern: codebook q at step s holds frame s - 1 - delays[q]."""
    d = np.asarray(delays, np.int64)
    if d.ndim != 1 or d.size == 0 or np.any(d < 0) or np.any(np.diff(d) < 0):
        raise ValueError(f"delays must be a non-empty non-decreasing list of non-negative ints, got {delays}")
    steps = timesteps + int(d.max()) + 1
    frame = np.arange(steps)[None, :] - 1 - d[:, None]
    layout = np.where((frame >= 0) & (frame < timesteps), frame, -1)
    # audiocraft's "valid steps": the layout minus its trailing (max_delay) steps, where
    # max_delay = max(d) - min(d) counts the out-of-range coordinates of its layout.
    return Pattern(layout, timesteps, steps - int(d.max() - d.min()))


def parallel_pattern(timesteps: int, num_codebooks: int) -> Pattern:
    """All codebooks of a frame at the same step (the delay pattern with zero delays)."""
    return delay_pattern(timesteps, [0] * num_codebooks)


def _from_coords(coords: list[list[tuple[int, int]]], timesteps: int, num_codebooks: int) -> Pattern:
    """Layout from a list of steps, each a list of (frame, codebook); frames >= T become special.

    valid_steps follows audiocraft: drop as many trailing steps as the largest frame index past T.
    """
    layout = np.full((num_codebooks, len(coords)), -1, np.int64)
    max_frame = 0
    for s, step in enumerate(coords):
        for t, q in step:
            max_frame = max(max_frame, t + 1)
            if t < timesteps:
                if layout[q, s] != -1:
                    raise ValueError(f"codebook {q} appears twice at step {s}")
                layout[q, s] = t
    return Pattern(layout, timesteps, len(coords) - (max_frame - timesteps))


def unrolled_pattern(timesteps: int, num_codebooks: int, flattening: Sequence[int] | None = None,
                     delays: Sequence[int] | None = None) -> Pattern:
    """Flattening: each frame spans several steps; `flattening[q]` is codebook q's inner step.

    Default flattening range(K): one codebook per step, K steps per frame (plus the leading special
    step). Codebooks sharing an inner step must share a delay. Same layout as audiocraft's
    UnrolledPatternProvider.
    """
    flattening = list(range(num_codebooks)) if flattening is None else list(flattening)
    delays = [0] * num_codebooks if delays is None else list(delays)
    if len(flattening) != num_codebooks or len(delays) != num_codebooks:
        raise ValueError("flattening and delays need one entry per codebook")
    if flattening != sorted(flattening) or delays != sorted(delays):
        raise ValueError("flattening and delays must be non-decreasing")
    groups: dict[int, tuple[list[int], int]] = {}
    for q, (inner, delay) in enumerate(zip(flattening, delays)):
        if inner in groups:
            if groups[inner][1] != delay:
                raise ValueError("codebooks flattened to the same inner step must have the same delay")
            groups[inner][0].append(q)
        else:
            groups[inner] = ([q], delay)
    inner_steps = max(groups) + 1
    horizon = timesteps + max(delays)
    keyed: list[tuple[int, list[tuple[int, int]]]] = [(-1, [])]
    for t in range(horizon):
        for inner in range(inner_steps):
            if inner in groups:
                qs, delay = groups[inner]
                if t + delay < horizon:
                    keyed.append((t + delay, [(t, q) for q in qs]))
            else:
                keyed.append((t, []))
    keyed.sort()  # by emission time, ties broken by the coordinates themselves (as audiocraft)
    return _from_coords([c for _, c in keyed], timesteps, num_codebooks)


def coarse_first_pattern(timesteps: int, num_codebooks: int, delays: Sequence[int] | None = None) -> Pattern:
    """All frames of codebook 0 first, then codebooks 1..K-1 (with optional delays among them)."""
    delays = [0] * (num_codebooks - 1) if delays is None else list(delays)
    if len(delays) != num_codebooks - 1 or delays != sorted(delays):
        raise ValueError("coarse-first needs K-1 non-decreasing delays")
    coords: list[list[tuple[int, int]]] = [[]]
    coords += [[(t, 0)] for t in range(timesteps)]
    for t in range(timesteps + max(delays, default=0)):
        coords.append([(t - d, q + 1) for q, d in enumerate(delays) if t - d >= 0])
    return _from_coords(coords, timesteps, num_codebooks)


def musiclm_pattern(timesteps: int, num_codebooks: int, group_by: int = 2) -> Pattern:
    """Flattening by groups of codebooks: all frames of group 0 (interleaved), then group 1, ..."""
    if isinstance(group_by, bool) or not isinstance(group_by, int) or group_by < 1:
        raise ValueError(f"music_lm group_by must be a positive integer, got {group_by!r}")
    coords: list[list[tuple[int, int]]] = [[]]
    for offset in range(0, num_codebooks, group_by):
        for t in range(timesteps):
            coords += [[(t, q)] for q in range(offset, min(offset + group_by, num_codebooks))]
    return _from_coords(coords, timesteps, num_codebooks)


PATTERNS = ("delay", "parallel", "unroll", "coarse_first", "music_lm")  # audiocraft's codebooks_pattern.modeling


def get_pattern(name: str, timesteps: int, num_codebooks: int, **options) -> Pattern:
    """By audiocraft's `codebooks_pattern.modeling` name (PATTERNS). options: `delays` (delay, unroll,
    coarse_first), `flattening` (unroll), `group_by` (music_lm)."""
    builders = {
        "delay": lambda delays=None: delay_pattern(timesteps, delays or range(num_codebooks)),
        "parallel": lambda: parallel_pattern(timesteps, num_codebooks),
        "unroll": lambda flattening=None, delays=None: unrolled_pattern(timesteps, num_codebooks, flattening,
                                                                        delays),
        "coarse_first": lambda delays=None: coarse_first_pattern(timesteps, num_codebooks, delays),
        "music_lm": lambda group_by=2: musiclm_pattern(timesteps, num_codebooks, group_by),
    }
    if name not in builders:
        raise ValueError(f"unknown codebook pattern {name!r}; known: {', '.join(PATTERNS)}")
    try:
        return builders[name](**options)
    except TypeError as e:
        raise ValueError(f"bad options for the {name!r} pattern: {options} ({e})") from None


# ---------------------------------------------------------------------------------------------------
# Generation: the buffer a decode loop fills (any pattern)


def generation_buffer(pattern: Pattern, prompt: Array, special_token: int) -> Array:
    """The generation buffer [B, K, S] of a pattern built for T frames.

    prompt [B, K, Tp] (Tp may be 0) frames are placed by the pattern, positions that hold no frame are
    `special_token`, positions still to be generated are UNKNOWN. A decode step writes its sampled token
    only where the buffer is UNKNOWN, so prompt tokens and specials are never overwritten (audiocraft's
    generate loop; for the delay pattern equal to transformers' pattern mask, see module doc).
    """
    prompt = jnp.asarray(prompt)
    b, k, tp = prompt.shape
    if tp > pattern.timesteps:
        raise ValueError(f"prompt has {tp} frames, more than the {pattern.timesteps} to generate")
    codes = jnp.concatenate([prompt, jnp.full((b, k, pattern.timesteps - tp), UNKNOWN, prompt.dtype)], axis=-1)
    return pattern.build(codes, special_token)


def first_generated_step(pattern: Pattern, prompt_frames: int) -> int:
    """The first step holding a frame past the prompt: steps before it are fully known (prefill)."""
    steps = np.nonzero((pattern.layout >= prompt_frames).any(axis=0))[0]
    return int(steps[0]) if steps.size else pattern.num_steps
