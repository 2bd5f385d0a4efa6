"""Shared set-up of the GPU benchmarks: the model, a real DPO batch, the probe set, a timer.

Every benchmark prints ratios measured within one run on one device; seconds on a
shared machine mean little, the ratio of two things timed side by side does.
"""
import time

import torch

# Dense bf16 tensor-core peaks (vendor datasheets, SXM parts), for model FLOPs utilisation.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def peak_flops(device) -> float:
    if device.type != "cuda":
        return float("nan")
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), float("nan"))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats: int = 5, warmup: int = 2) -> float:
    """Median seconds of `fn()` after warm-up calls (compilation, allocator, autotuning)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def timed_together(fns: dict, device, repeats: int = 5, warmup: int = 1) -> dict:
    """Median seconds of each fn, timed in turns (a, b, c, a, b, c, ...) so that a machine
    whose speed drifts during the run slows every fn alike and the ratios stay fair."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def setup(model_spec: str, device_name: str, dtype=torch.float32, n_probe: int = 200, attn="sdpa"):
    """(loaded model, encoder, default-dataset train examples, probe examples, test examples)."""
    from learning_dynamics.validate.training.encode import Encoder
    from learning_dynamics.validate.training.model import load_model
    from learning_dynamics.validate.presets import PRESETS
    from learning_dynamics.validate.training.session import examples

    settings = dict(PRESETS["default"], model=model_spec, device=device_name, n_probe=n_probe)
    loaded = load_model(model_spec, device=device_name, dtype=dtype, attn_implementation=attn)
    encoder = Encoder(loaded.tokenizer, settings["max_prompt_tokens"], settings["max_response_tokens"])
    split = examples(settings)   # the irrelevant-sentence pool is not timed
    train, probe, test = split.train, split.probe, split.test
    return loaded, encoder, train, probe, test, settings


def tokenize_pairs(encoder, examples) -> list:
    """Token ids of each pair, as validate.training.session.Loaded.tokenize gives them."""
    return [{"prompt": encoder.prompt_ids(e["prompt"]), "chosen": encoder.response_ids(e["chosen"]),
             "rejected": encoder.response_ids(e["rejected"])} for e in examples]
