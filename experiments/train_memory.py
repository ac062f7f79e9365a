"""What fits on one GPU: LoRA vs full fine-tuning of a MusicGen LM, estimated without a GPU.

    python experiments/train_memory.py                        # small, medium, large, melody at 16 x 30 s
    python experiments/train_memory.py --models small --batch 8 --seconds 10 --ffn

Per model and mode the estimate is  fixed + rows * per_row  (GiB) for micro-batches of `rows` rows:
  fixed   counted from the parameter shapes: full fine-tuning keeps fp32 params, gradients, AdamW moments
          and EMA (20 bytes / param, 24 with gradient accumulation); LoRA keeps the base in bf16 (2 bytes)
          and the same 20-24 bytes per adapter parameter; both hold the frozen fp32 T5 encoder.
  per_row XLA's buffer assignment for the compiled LoRA train step (compile only: `jax.jit(step).lower(...)
          .compile().memory_analysis()` temp bytes, remat, bf16 compute) per row of the batch on this
          machine's backend. The base is given in fp32 there: XLA's CPU backend upcasts bf16 weights to fp32
          for its matmuls, a copy a GPU does not make; activations are the same in both modes.
A configuration fits when fixed + rows * per_row <= 90% of the card (JAX preallocates 75% of a GPU by
default: set XLA_PYTHON_CLIENT_MEM_FRACTION=0.9). The largest micro-batch that fits (a divisor of the
batch; the rest is gradient accumulation) is reported. Estimates: GPU fusion differs from the CPU's.
"""
from __future__ import annotations

import argparse

GIB = 2 ** 30


def _model(name: str, lora_targets, rank: int):
    import jax.numpy as jnp

    from musicgen_jax.config import preset
    from musicgen_jax.convert.t5 import t5_abstract_params
    from musicgen_jax.modules.lm import MusicGenLM
    from musicgen_jax.modules.lora import LoraConfig, resolve_targets
    from musicgen_jax.modules.t5 import T5Encoder
    from musicgen_jax.train.model import TrainModel

    cfg = preset(name)
    lora = LoraConfig(rank, 2.0 * rank, targets=resolve_targets(lora_targets, cfg.lm.cross_attention))
    lm = MusicGenLM(cfg.lm, dtype=jnp.bfloat16, remat=True, lora=lora)
    return TrainModel(config=cfg, lm=lm, t5=T5Encoder(cfg.t5), t5_params=t5_abstract_params(cfg.t5), tokenizer=None,
                      lora=lora, base_dtype=jnp.float32)


def _count(tree) -> int:
    import jax
    import numpy as np

    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def measure(name: str, lora_targets, rank: int, rows: int, frames: int) -> dict:
    """Parameter counts and the compiled LoRA step's temp bytes for `rows` rows of `frames` frames."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from musicgen_jax.train import trainer as T
    from musicgen_jax.train.config import OptimSection

    model = _model(name, lora_targets, rank)
    optim = OptimSection(accum_steps=1)
    _, random_state, _ = T._state_builders(model, optim, 10, 0)
    state = nn.meta.unbox(jax.eval_shape(random_state, jax.random.PRNGKey(0)))
    base = nn.meta.unbox(jax.eval_shape(lambda r: model.frozen_base(model.init_variables(r)["params"]),
                                        jax.random.PRNGKey(0)))
    lm = model.config.lm
    shapes = {"codes": (rows, lm.num_codebooks, frames), "frames": (rows,), "text_ids": (rows, 64),
              "text_mask": (rows, 64)}
    if lm.is_melody:
        shapes["chroma"] = (rows, lm.chroma_frames)
    batch = {k: jax.ShapeDtypeStruct(v, jnp.int32) for k, v in shapes.items()}
    step = jax.jit(T.train_step_fn(model, optim, 10), donate_argnums=(0,))
    memory = step.lower(state, batch, model.t5_params, base).compile().memory_analysis()
    return {"params": _count(base), "adapters": _count(state.params), "t5": _count(model.t5_params),
            "temp": memory.temp_size_in_bytes}


def fixed_gib(counts: dict, mode: str, accumulate: bool) -> float:
    per_trained = 24 if accumulate else 20  # params + grads + 2 moments + EMA (+ accumulator), fp32
    if mode == "lora":
        return (2 * counts["params"] + per_trained * counts["adapters"] + 4 * counts["t5"]) / GIB
    return (per_trained * counts["params"] + 4 * counts["t5"]) / GIB


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="small,medium,large,melody")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--ffn", action="store_true", help="adapters on the feed-forward layers too")
    parser.add_argument("--cards", default="24,40,80", help="GPU sizes in GiB")
    args = parser.parse_args(argv)
    frames = int(round(args.seconds * 50))
    cards = [float(c) for c in args.cards.split(",")]
    micro = [m for m in range(args.batch, 0, -1) if args.batch % m == 0]
    print(f"batch {args.batch} x {args.seconds:g} s, remat, bf16 compute; fits: <= 90% of the card (estimates)")
    head = " | ".join(f"{c:g} GB" for c in cards)
    print(f"| model | mode | trained params | fixed GiB | GiB per row | {head} |")
    print("|---|---|---|---|---|" + "---|" * len(cards))
    for name in args.models.split(","):
        targets = ["attention"] + (["ffn"] if args.ffn or name.endswith("melody") else [])
        rows = 2
        counts = measure(name, targets, args.rank, rows, frames)
        per_row = counts["temp"] / rows / GIB
        for mode in ("lora", "full"):
            cells = []
            for card in cards:
                fits = [(m, fixed_gib(counts, mode, m < args.batch) + m * per_row) for m in micro]
                fits = [(m, total) for m, total in fits if total <= 0.9 * card]
                if fits:
                    m, total = fits[0]
                    cells.append(f"micro {m} (~{total:.0f} GiB)")
                else:
                    least = fixed_gib(counts, mode, args.batch > 1) + per_row
                    cells.append(f"no (>= {least:.0f} GiB)")
            trained = counts["adapters"] if mode == "lora" else counts["params"]
            print(f"| {name} | {'LoRA r' + str(args.rank) if mode == 'lora' else 'full'} | {trained / 1e6:.1f}M | "
                  f"{fixed_gib(counts, mode, False):.1f} | {per_row:.2f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
