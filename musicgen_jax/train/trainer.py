"""Train state, optimizer and the jitted, sharded train step.

    state, shardings = create_state(model, optim, steps, mesh)          # sharded, never a full copy
    step = make_train_step(model, optim, steps, mesh, shardings, batch_shapes)
    state, metrics = step(state, batch, t5_params)                       # state donated

One call is one optimizer update: the global batch is split into `accum_steps` micro-batches scanned
inside the step (gradients summed in float32), so an update with accumulation equals the same update
without it. The frozen T5 runs inside the step under `stop_gradient`. Parameters, optimizer state and
EMA stay float32; the LM computes in its `dtype` (bfloat16 on accelerators).

LoRA (`model.lora`): the state's params are the adapters alone (so are the optimizer moments, the EMA
and the checkpoints); the frozen LM weights are a fourth, non-donated argument of the step, placed once
by `place_base` in `model.base_dtype`, joined with the adapters inside the loss and never differentiated:

    base, base_shardings = place_base(model, mesh)
    step = make_train_step(..., t5_shardings, base_shardings=base_shardings)
    state, metrics = step(state, batch, t5_params, base)

Adapter dropout draws its mask from fold_in(fold_in(rng, step), 1 + micro-batch), so with dropout > 0 an
update with accumulation is not bit-equal to one without (different masks), unlike everything else.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding

from musicgen_jax import sharding as S
from musicgen_jax.modules.lora import combine
from musicgen_jax.modules.t5 import init_t5
from musicgen_jax.train import loss as L
from musicgen_jax.train.config import OptimSection
from musicgen_jax.train.model import TrainModel

Array = jax.Array

_COMPILED: dict[tuple, Any] = {}  # jitted functions by what they depend on (see _memo)


def _memo(key: tuple, build):
    """One jitted function per key, so that a second Trainer of the same run (a resume in the same
    process, a notebook re-run) reuses the traced and compiled step instead of tracing it again."""
    if key not in _COMPILED:
        if len(_COMPILED) >= 8:
            _COMPILED.pop(next(iter(_COMPILED)))
        _COMPILED[key] = build()
    return _COMPILED[key]


def _model_key(model: TrainModel) -> tuple:
    return (model.config, jnp.dtype(model.lm.dtype).name, model.lm.remat, model.lora,
            jnp.dtype(model.base_dtype).name)


def _options_key(options: dict[str, Any] | None) -> tuple:
    return tuple(sorted((options or {}).items()))


@flax.struct.dataclass
class TrainState:
    """step [] int32; params (the trained ones: all LM weights, or the LoRA adapters), ema (None when
    off) float32 trees; opt_state; rng: raw PRNG key [2] uint32."""

    step: Array
    params: Any
    opt_state: Any
    ema: Any
    rng: Array


# ------------------------------------------------------------------------------------------ optimizer


def learning_rate(optim: OptimSection, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0, then cosine down to lr * lr_min_ratio at `total_steps`."""
    warmup = min(optim.warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(0.0, optim.lr, warmup, max(total_steps, warmup + 1),
                                              end_value=optim.lr * optim.lr_min_ratio)


def make_optimizer(optim: OptimSection, total_steps: int) -> optax.GradientTransformation:
    """Clip by global norm, then AdamW (or D-Adaptation AdamW) with the warmup-cosine schedule. Weight
    decay applies to every parameter, as in audiocraft (which passes all LM parameters to its optimizer)."""
    schedule = learning_rate(optim, total_steps)
    if optim.optimizer == "dadapt_adamw":
        from optax.contrib import dadapt_adamw

        opt = dadapt_adamw(schedule, betas=(optim.b1, optim.b2), eps=optim.eps, weight_decay=optim.weight_decay)
    else:
        opt = optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps, weight_decay=optim.weight_decay)
    return optax.chain(optax.clip_by_global_norm(optim.grad_clip), opt) if optim.grad_clip > 0 else opt


# ------------------------------------------------------------------------------------------ state


def _new_state(params: Any, tx: optax.GradientTransformation, rng: Array, ema: bool) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      ema=jax.tree.map(jnp.copy, params) if ema else None, rng=rng)


def _state_builders(model: TrainModel, optim: OptimSection, total_steps: int, seed: int):
    """(init_rng, random_state(rng) -> boxed state, from_params(params) -> state)."""
    tx = make_optimizer(optim, total_steps)
    use_ema = optim.ema_decay > 0
    init_rng, state_rng = jax.random.split(jax.random.PRNGKey(seed))

    def from_params(params):
        return _new_state(params, tx, state_rng, use_ema)

    def random_state(rng):  # boxed: keeps the logical axis names
        return from_params(model.trainable(model.init_variables(rng)["params"]))

    return init_rng, random_state, from_params


def logical_axes(model: TrainModel) -> Any:
    """The LM parameters' logical axis names (a tree of PartitionSpecs of names)."""
    return nn.get_partition_spec(jax.eval_shape(model.init_variables, jax.random.PRNGKey(0)))["params"]


def state_shardings(model: TrainModel, optim: OptimSection, total_steps: int, mesh: Mesh,
                    seed: int = 0) -> TrainState:
    """NamedShardings of every state leaf, from the parameters' logical axes. Optimizer moments mirror
    the parameters (optax maps over the boxed tree, which keeps the axis names); scalars are replicated."""
    init_rng, random_state, _ = _state_builders(model, optim, total_steps, seed)
    return S.param_shardings(jax.eval_shape(random_state, init_rng), mesh)


def create_state(model: TrainModel, optim: OptimSection, total_steps: int, mesh: Mesh,
                 seed: int = 0, compiler_options: dict[str, Any] | None = None) -> tuple[TrainState, TrainState]:
    """A fresh (random or pretrained) state placed on `mesh`, never unsharded on a device.

    Returns (state, its shardings)."""
    init_rng, random_state, from_params = _state_builders(model, optim, total_steps, seed)
    shardings = state_shardings(model, optim, total_steps, mesh, seed)
    from_random = model.pretrained is None or model.lora is not None  # LoRA: fresh adapters on any base
    key = ("init", _model_key(model), optim, total_steps, mesh, seed, from_random, _options_key(compiler_options))
    if from_random:
        init = _memo(key, lambda: jax.jit(lambda r: nn.meta.unbox(random_state(r)), out_shardings=shardings,
                                          compiler_options=compiler_options))
        return init(init_rng), shardings
    params = S.shard_like(model.pretrained, shardings.params)
    init = _memo(key, lambda: jax.jit(from_params, in_shardings=(shardings.params,), out_shardings=shardings,
                                      compiler_options=compiler_options))
    return init(params), shardings


def _boxed_base(model: TrainModel):
    def base(rng):  # boxed
        return model.frozen_base(model.init_variables(rng)["params"])

    return base


def base_shardings(model: TrainModel, mesh: Mesh, seed: int = 0) -> Any:
    """Shardings of a LoRA run's frozen LM weights (None without LoRA); `place_base` puts them there."""
    if model.lora is None:
        return None
    init_rng = jax.random.split(jax.random.PRNGKey(seed))[0]
    return S.param_shardings(jax.eval_shape(_boxed_base(model), init_rng), mesh)


def abstract_base(model: TrainModel, mesh: Mesh, seed: int = 0) -> Any:
    """ShapeDtypeStructs (in `model.base_dtype`, with shardings) of what `place_base` places; None
    without LoRA. For ahead-of-time compiles."""
    if model.lora is None:
        return None
    init_rng = jax.random.split(jax.random.PRNGKey(seed))[0]
    shapes = nn.meta.unbox(jax.eval_shape(_boxed_base(model), init_rng))
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, model.base_dtype, sharding=sh), shapes,
                        base_shardings(model, mesh, seed))


def place_base(model: TrainModel, mesh: Mesh, seed: int = 0,
               compiler_options: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """A LoRA run's frozen LM weights in `model.base_dtype`, sharded by the logical-axis rules: the
    pretrained ones, or the random init of `seed` (the same draw as `create_state`'s). -> (params,
    shardings); (None, None) without LoRA."""
    if model.lora is None:
        return None, None
    init_rng = jax.random.split(jax.random.PRNGKey(seed))[0]
    dtype = model.base_dtype
    base = _boxed_base(model)
    shardings = base_shardings(model, mesh, seed)
    if model.pretrained is not None:
        abstract = nn.meta.unbox(jax.eval_shape(base, init_rng))
        if jax.tree.structure(abstract) != jax.tree.structure(model.pretrained):
            raise ValueError("the pretrained LM weights do not have the structure of this model")
        host = jax.tree.map(lambda x: np.asarray(x).astype(dtype, copy=False), model.pretrained)
        return S.shard_like(host, shardings), shardings
    key = ("base", _model_key(model), mesh, seed, _options_key(compiler_options))
    init = _memo(key, lambda: jax.jit(lambda r: jax.tree.map(lambda x: x.astype(dtype), nn.meta.unbox(base(r))),
                                      out_shardings=shardings, compiler_options=compiler_options))
    return init(init_rng), shardings


def abstract_state(shardings: TrainState, model: TrainModel, optim: OptimSection, total_steps: int,
                   seed: int = 0) -> TrainState:
    """ShapeDtypeStructs carrying shardings: the target for restoring a checkpoint."""
    init_rng, random_state, _ = _state_builders(model, optim, total_steps, seed)
    shapes = nn.meta.unbox(jax.eval_shape(random_state, init_rng))
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


# ------------------------------------------------------------------------------------------ the step


def _micro_batches(batch: Mapping[str, Array], accum: int) -> dict[str, Array]:
    """[B, ...] -> [A, B / A, ...]; micro-batch i takes rows i, i + A, ... so that every device keeps
    a share of every micro-batch."""
    def split(x):
        b = x.shape[0]
        return x.reshape((b // accum, accum) + x.shape[1:]).swapaxes(0, 1)

    return {k: split(v) for k, v in batch.items()}


def _conditions(model: TrainModel, t5_params: Any, batch: Mapping[str, Array], keep: Array) -> dict[str, Array]:
    """Frozen T5 on the caption ids, then CFG dropout. -> kwargs for the LM (text, text_mask, chroma)."""
    text = model.t5.apply({"params": t5_params}, batch["text_ids"], batch["text_mask"])  # [b, S, D] f32
    text = jax.lax.stop_gradient(text)
    text, mask = L.drop_text(text, batch["text_mask"], keep)
    kwargs = {"text": text, "text_mask": mask}
    if model.config.lm.is_melody:
        chroma = L.one_hot_chroma(batch["chroma"], model.config.lm.chroma_bins)
        kwargs["chroma"] = L.drop_chroma(chroma, keep)
    return kwargs


def _loss_fn(model: TrainModel):
    def loss(params, t5_params, micro, counts, base, dropout_key):
        """-> (this micro-batch's share of the global loss, per-codebook NLL sums [K]). base: a LoRA run's
        frozen LM weights (params are then its adapters), else None; dropout_key: adapter dropout or None."""
        cond = _conditions(model, t5_params, micro, micro["keep"])
        lm_params = params if base is None else combine(jax.lax.stop_gradient(base), params)
        rngs = None if dropout_key is None else {"dropout": dropout_key}
        nll = L.lm_nll(model.lm, lm_params, micro["codes"], micro["frames"], rngs=rngs, **cond)  # [K]
        return jnp.mean(nll / counts), nll

    return loss


def _update_ema(ema: Any, params: Any, step: Array, optim: OptimSection) -> Any:
    """ema <- d * ema + (1 - d) * params every `ema_every` steps (a cond: no pass over the weights
    on the other steps)."""
    if ema is None:
        return None
    d = optim.ema_decay
    mix = lambda e: jax.tree.map(lambda a, p: d * a + (1 - d) * p, e, params)  # noqa: E731
    if optim.ema_every == 1:
        return mix(ema)
    return jax.lax.cond(step % optim.ema_every == 0, mix, lambda e: e, ema)


def train_step_fn(model: TrainModel, optim: OptimSection, total_steps: int):
    """The pure step: (state, batch, t5_params[, base]) -> (state, metrics); `base`: a LoRA run's frozen
    LM weights (see module doc).

    Randomness (CFG dropout) is drawn for the whole global batch from fold_in(rng, step), so it does
    not depend on the sharding or on the number of micro-batches.
    """
    tx = make_optimizer(optim, total_steps)
    schedule = learning_rate(optim, total_steps)
    grad_fn = jax.value_and_grad(_loss_fn(model), has_aux=True)
    lm_cfg = model.config.lm
    dropout = model.lora is not None and model.lora.dropout > 0

    def gradients(batch, params, t5_params, counts, base, step_key):
        """-> (gradients of the global loss, per-codebook NLL sums [K]); micro-batches are scanned."""
        def key(i):
            return jax.random.fold_in(step_key, 1 + i) if dropout else None

        if optim.accum_steps == 1:
            (_, nll), grads = grad_fn(params, t5_params, batch, counts, base, key(0))
            return grads, nll

        def accumulate(carry, xs):
            grads, nll = carry
            i, mb = xs
            (_, mb_nll), g = grad_fn(params, t5_params, mb, counts, base, key(i))
            return (jax.tree.map(jnp.add, grads, g), nll + mb_nll), None

        zeros = (jax.tree.map(jnp.zeros_like, params), jnp.zeros((lm_cfg.num_codebooks,), jnp.float32))
        xs = (jnp.arange(optim.accum_steps), _micro_batches(batch, optim.accum_steps))
        (grads, nll), _ = jax.lax.scan(accumulate, zeros, xs)
        return grads, nll

    def step(state: TrainState, batch: Mapping[str, Array], t5_params: Any, base: Any = None):
        b, _, t = batch["codes"].shape
        counts = jnp.maximum(L.codebook_counts(batch["frames"], lm_cfg.codebook_pattern(t)), 1.0)  # [K]
        step_key = jax.random.fold_in(state.rng, state.step)
        keep = L.keep_conditions(step_key, b, optim.cond_dropout)  # [B]
        grads, nll = gradients(dict(batch, keep=keep), state.params, t5_params, counts, base, step_key)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ce = nll / counts  # [K]
        metrics = {"loss": ce.mean(), "ce": ce, "ppl": jnp.exp(ce), "grad_norm": optax.global_norm(grads),
                   "lr": schedule(state.step), "tokens": counts.sum()}
        new = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                            ema=_update_ema(state.ema, params, state.step + 1, optim))
        return new, metrics

    return step


def batch_shardings(batch_shapes: Mapping[str, tuple[int, ...]], mesh: Mesh) -> dict[str, NamedSharding]:
    return {k: S.batch_sharding(mesh, len(shape)) for k, shape in batch_shapes.items()}


def on_mesh(model: TrainModel, mesh: Mesh) -> TrainModel:
    """The model with its LM's hidden states and logits constrained to `mesh` by their logical axes (rows
    over data x fsdp). Without it XLA's sharding propagation may follow the fsdp-sharded weights instead
    of the batch: with fsdp alone it computed every row's attention on every device (the AOT report of
    configs/train/medium.yaml on 8 devices: [192, 24, 1501, 1501] scores per device, 156 GB)."""
    return dataclasses.replace(model, lm=model.lm.clone(mesh=mesh))


def make_train_step(model: TrainModel, optim: OptimSection, total_steps: int, mesh: Mesh,
                    state_shardings: TrainState, batch_shapes: Mapping[str, tuple[int, ...]],
                    t5_shardings: Any, compiler_options: dict[str, Any] | None = None, base_shardings: Any = None):
    """jit of `train_step_fn` with explicit shardings; the state argument is donated. The shardings
    follow from the model and the mesh, so (model, optim, steps, mesh, batch shapes) identify it.
    LoRA: the step takes the frozen base as a fourth argument, placed on `base_shardings` (`place_base`)."""
    if (model.lora is None) != (base_shardings is None):
        raise ValueError("base_shardings go with a LoRA model (place_base), and only with one")
    key = ("step", _model_key(model), optim, total_steps, mesh, tuple(sorted(batch_shapes.items())),
           _options_key(compiler_options))
    frozen = (t5_shardings,) if base_shardings is None else (t5_shardings, base_shardings)
    return _memo(key, lambda: jax.jit(
        train_step_fn(on_mesh(model, mesh), optim, total_steps),
        in_shardings=(state_shardings, batch_shardings(batch_shapes, mesh), *frozen),
        out_shardings=(state_shardings, S.replicated(mesh)), donate_argnums=(0,),
        compiler_options=compiler_options))


def _t5_init(model: TrainModel):
    return lambda: init_t5(model.t5, jax.random.PRNGKey(0))


def place_t5(model: TrainModel, mesh: Mesh) -> tuple[Any, Any]:
    """The frozen text encoder's params, sharded by the same rules. -> (params, shardings)."""
    return S.place_params(model.t5_params, _t5_init(model), mesh)


def abstract_t5(model: TrainModel, mesh: Mesh) -> tuple[Any, Any]:
    """ShapeDtypeStructs (with shardings) of what `place_t5` places, and those shardings: no weights
    needed (ahead-of-time compiles)."""
    boxed = jax.eval_shape(_t5_init(model))
    shardings = S.param_shardings(boxed, mesh)["params"]
    shapes = nn.meta.unbox(boxed)["params"]
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings), \
        shardings
