"""Training speed: one musicgen-jax train step vs a PyTorch step of transformers' MusicGen, same config.

    python experiments/bench_train.py                              # musicgen-small shapes, batch 2, 2 s
    python experiments/bench_train.py --model medium --batch 16 --seconds 30 --dtype bfloat16   # on a GPU

Both sides run one full optimizer update from random weights on the same shapes: the frozen T5
encoder (no gradient), the decoder forward and backward on the delayed codes (T + 1 steps, audiocraft's
teacher forcing), per-codebook cross-entropy, global-norm clipping and AdamW (plus, on ours, the
recipe's EMA every 10 steps; --ema-decay 0 turns it off).
PyTorch: `MusicgenForConditionalGeneration` (its decoder is `MusicgenForCausalLM`) with the text
encoder frozen, `torch.optim.AdamW`, bf16 autocast when --dtype bfloat16. Ours: `trainer.make_train_step`
on one device. Reported: median step time, LM tokens/s (batch x (T + 1)), model FLOP/s and MFU
(matmul FLOPs, metrics.py; MFU needs a known peak: a GPU/TPU, or --peak-tflops), and the speed ratio.
Our compile time is printed apart.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np


def _shapes(args, lm) -> tuple[int, int]:
    frames = int(round(args.seconds * 50))
    return frames, frames + 1  # frames T, LM steps T + 1


def bench_jax(args, cfg) -> dict:
    import jax
    import jax.numpy as jnp

    from musicgen_jax.modules.lm import MusicGenLM
    from musicgen_jax.modules.t5 import T5Encoder
    from musicgen_jax import sharding as S
    from musicgen_jax.train import trainer as T
    from musicgen_jax.train.config import OptimSection
    from musicgen_jax.train.model import TrainModel, random_t5_params

    dtype = jnp.dtype(args.dtype)
    model = TrainModel(config=cfg, lm=MusicGenLM(cfg.lm, dtype=dtype, remat=args.remat), t5=T5Encoder(cfg.t5),
                       t5_params=random_t5_params(cfg.t5, 0), tokenizer=None)
    optim = OptimSection(lr=1e-4, warmup_steps=10, ema_decay=args.ema_decay, ema_every=10)
    mesh = S.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    state, shardings = T.create_state(model, optim, 1000, mesh)
    t5_params, t5_shardings = T.place_t5(model, mesh)
    batch = _batch(args, cfg)
    step = T.make_train_step(model, optim, 1000, mesh, shardings, {k: v.shape for k, v in batch.items()},
                             t5_shardings)
    batch = S.global_batch(batch, mesh)
    start = time.perf_counter()
    state, metrics = step(state, batch, t5_params)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        state, metrics = step(state, batch, t5_params)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    return {"impl": f"musicgen-jax ({args.dtype})", "step_s": statistics.median(times), "compile_s": compile_s,
            "loss": float(metrics["loss"]), "device": jax.devices()[0].device_kind}


def _batch(args, cfg) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    frames, _ = _shapes(args, cfg.lm)
    b, k = args.batch, cfg.lm.num_codebooks
    return {"codes": rng.integers(0, cfg.lm.codebook_size, (b, k, frames)).astype(np.int32),
            "frames": np.full((b,), frames, np.int32),
            "text_ids": rng.integers(2, min(1000, cfg.t5.vocab_size), (b, args.text_tokens)).astype(np.int32),
            "text_mask": np.ones((b, args.text_tokens), np.int32)}


def bench_torch(args, cfg) -> dict:
    import torch

    from musicgen_jax.testing import lm_reference_kwargs, reference_musicgen

    lm, t5 = cfg.lm, cfg.t5
    device = "cuda" if torch.cuda.is_available() else "cpu"
    text = dict(vocab_size=t5.vocab_size, d_model=t5.d_model, d_kv=t5.d_kv, d_ff=t5.d_ff, num_layers=t5.num_layers,
                num_heads=t5.num_heads)
    # the preset's decoder and text encoder with transformers' own init, a tiny codec (unused), sdpa attention
    model = reference_musicgen(**lm_reference_kwargs(lm), text=text, widen=False, attention=None)
    model.to(device).train()
    model.text_encoder.requires_grad_(False)
    model.audio_encoder.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)

    batch = _batch(args, cfg)
    pattern = lm.codebook_pattern(batch["codes"].shape[-1])
    seq = np.asarray(pattern.build(batch["codes"], lm.special_token, valid_only=True))  # [B, K, S]
    b, k, s = seq.shape
    inputs = torch.as_tensor(seq.reshape(b * k, s), dtype=torch.long, device=device)
    targets = np.concatenate([seq[..., 1:], seq[..., -1:]], -1).transpose(0, 2, 1)  # next step, [B, S, K]
    labels = torch.as_tensor(targets, dtype=torch.long, device=device)
    ids = torch.as_tensor(batch["text_ids"], dtype=torch.long, device=device)
    mask = torch.as_tensor(batch["text_mask"], dtype=torch.long, device=device)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = model(input_ids=ids, attention_mask=mask, decoder_input_ids=inputs, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        return float(loss)

    step()  # warm-up
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - start)
    return {"impl": f"transformers {args.dtype} (torch {torch.__version__})", "step_s": statistics.median(times),
            "loss": loss, "device": device, "threads": torch.get_num_threads()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="musicgen-small", help="preset whose shapes to use")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=2.0, help="audio per item (50 frames per second)")
    parser.add_argument("--text-tokens", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3, help="timed steps (median reported)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--remat", action="store_true", help="rematerialise layers (ours)")
    parser.add_argument("--ema-decay", type=float, default=0.99, help="ours: EMA every 10 steps as the recipe "
                        "(0: off, as on the PyTorch side)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="per-device peak for MFU (else by device kind)")
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    from musicgen_jax.train.metrics import peak_flops, train_step_flops
    from musicgen_jax.train.model import preset_config

    cfg = preset_config(args.model)
    frames, steps = _shapes(args, cfg.lm)
    flops = train_step_flops(cfg.lm, args.batch, steps, args.text_tokens, cfg.t5)
    tokens = args.batch * steps
    print(f"{cfg.name}: batch {args.batch} x {frames} frames ({args.seconds:g} s), {args.text_tokens} text tokens, "
          f"{args.dtype}; {flops / 1e12:.3f} model TFLOP per step")
    results = [bench_jax(args, cfg)]
    if not args.skip_torch:
        results.append(bench_torch(args, cfg))
    peak = peak_flops(override_tflops=args.peak_tflops)
    print("\n| implementation | device | step (ms) | tokens/s | TFLOP/s | MFU |\n|---|---|---|---|---|---|")
    for r in results:
        r["tokens_per_s"] = tokens / r["step_s"]
        r["tflops"] = flops / r["step_s"] / 1e12
        r["mfu"] = None if peak is None else flops / r["step_s"] / peak
        mfu = "n/a" if r["mfu"] is None else f"{r['mfu']:.1%}"
        print(f"| {r['impl']} | {r['device']} | {r['step_s'] * 1e3:.0f} | {r['tokens_per_s']:.0f} | "
              f"{r['tflops']:.3f} | {mfu} |")
    print(f"\nour compile: {results[0]['compile_s']:.1f} s")
    if len(results) == 2:
        print(f"speed ratio (transformers step time / ours): {results[1]['step_s'] / results[0]['step_s']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "flops_per_step": flops, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
