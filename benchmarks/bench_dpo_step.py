"""Training throughput of one DPO step: validate's loop against a plain Hugging Face loop.

Both take the same batch of real pairs (the default dataset), the same model and
AdamW, and count the same tokens (non-padding policy tokens of y+ and y-):

  plain  float32 weights and matmuls, `model(...).logits` over every position, a
         full log-softmax, the reference model's forward every step: what a
         hand-written Hugging Face training loop does.
  ours   validate.training.algorithms.step_loss: bf16 autocast over float32 master weights,
         the LM head only at response positions (fused cross-entropy), reference
         log-probs computed once, fused AdamW.
  eager floor  ours on a twin of the model with next to no arithmetic (head_dim 8, FFN 16): what
         launch and framework overhead alone cost per step, and so the most an eager step can gain.

Prints tokens/s, model FLOPs utilisation (6 N FLOPs per policy token against the
device's dense bf16 peak) and the ratio ours / plain.

    python benchmarks/bench_dpo_step.py [--model smollm2] [--pairs 32,128,256] [--device cuda] [--compile]
"""
import argparse
import copy
import os
import sys
from functools import partial

import torch

sys.path.insert(0, os.path.dirname(__file__))
from gpu_common import peak_flops, setup, timed, tokenize_pairs  # noqa: E402

from learning_dynamics.sim.losses import dpo_loss  # noqa: E402
from learning_dynamics.theory.algorithms import REGISTRY  # noqa: E402
from learning_dynamics.validate.training import algorithms  # noqa: E402
from learning_dynamics.validate.training.forward import make_batch  # noqa: E402


def plain_step(model, ref_model, optimizer, batch, n_pairs):
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
    labels = batch.input_ids[:, 1:]
    mask = batch.response_mask[:, 1:].float()
    logps = (logits.log_softmax(-1).gather(-1, labels[..., None]).squeeze(-1) * mask).sum(-1)
    with torch.no_grad():
        ref_logits = ref_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
        ref = (ref_logits.log_softmax(-1).gather(-1, labels[..., None]).squeeze(-1) * mask).sum(-1)
    loss = dpo_loss(logps[:n_pairs], logps[n_pairs:], ref[:n_pairs], ref[n_pairs:])[0].mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def our_step(model, optimizer, pairs, settings, pad, device, autocast):
    with autocast:
        loss, _, _ = algorithms.step_loss(REGISTRY["dpo"], "main", model, pairs, settings, pad, device)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def arithmetic_free_twin(model, device):
    """The model's architecture (layers, heads, vocabulary) at head_dim 8 and FFN 16, random weights:
    the same kernels and Python per step with next to no arithmetic, so its step time is the floor
    that launch and framework overhead put under an eager step of the real model."""
    from transformers import AutoModelForCausalLM
    config = copy.deepcopy(model.config)
    config.head_dim = 8
    config.hidden_size = 8 * config.num_attention_heads
    config.intermediate_size = 16
    return AutoModelForCausalLM.from_config(config).to(device).train()


def compile_body(model):
    """torch.compile the transformer body in place (module and state_dict unchanged)."""
    body = model.get_decoder()
    body.forward = torch.compile(body.forward, dynamic=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--pairs", default="32,128,256", help="pairs per step, comma-separated (32: the default preset)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", action="store_true",
                        help="also time a torch.compile(dynamic=True) body (warm-up took over 200 s on an H100)")
    args = parser.parse_args()
    device = torch.device(args.device)
    sizes = [int(x) for x in args.pairs.split(",")]
    loaded, encoder, train, _, _, settings = setup(args.model, args.device)
    model = loaded.model.train()
    pad = loaded.tokenizer.pad_token_id
    ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    flops_per_token = 6 * loaded.n_params
    peak = peak_flops(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}; model {loaded.name} ({loaded.n_params / 1e6:.1f} M params); "
          f"MFU = tokens/s x 6N / {peak / 1e12:.0f} TFLOP/s")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    speedups = ["ours"] + (["ours+compile"] if args.compile else [])
    variants = ["plain", "ours", "eager floor"] + speedups[1:]
    results = {}
    real_model = model
    for variant in variants:
        model = arithmetic_free_twin(real_model, device) if variant == "eager floor" else real_model
        if variant == "ours+compile":
            compile_body(model)
        for n_pairs in sizes:
            pairs = tokenize_pairs(encoder, train[:n_pairs])
            for p in pairs:  # ours reads them precomputed; their values do not change the cost
                p["ref_chosen"] = p["ref_rejected"] = 0.0
            batch = make_batch([(p["prompt"], p["chosen"]) for p in pairs] +
                               [(p["prompt"], p["rejected"]) for p in pairs], pad).to(device)
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-7, fused=variant != "plain"
                                          and device.type == "cuda")
            step = (partial(plain_step, model, ref_model, optimizer, batch, len(pairs)) if variant == "plain"
                    else partial(our_step, model, optimizer, pairs, settings, pad, device, autocast))
            seconds = timed(step, device, args.repeats, warmup=3)
            rate = batch.n_tokens / seconds
            results[variant, n_pairs] = seconds
            mfu = "" if variant == "eager floor" else f"  MFU {rate * flops_per_token / peak:.1%}"
            print(f"  {variant:13s} {n_pairs:4d} pairs ({batch.n_tokens:6d} tokens) {seconds * 1e3:8.1f} ms/step "
                  f"{rate:10.0f} tokens/s{mfu}", flush=True)
    for n_pairs in sizes:
        ratios = ", ".join(f"{v} {results['plain', n_pairs] / results[v, n_pairs]:.2f}x" for v in speedups)
        print(f"  speed-up over the plain loop at {n_pairs} pairs: {ratios} (target >= 5x); the eager floor is "
              f"{results['eager floor', n_pairs] / results['ours', n_pairs]:.0%} of ours' step and caps an eager "
              f"step at {results['plain', n_pairs] / results['eager floor', n_pairs]:.1f}x the plain loop")


if __name__ == "__main__":
    main()
