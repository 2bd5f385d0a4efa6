"""`ldyn validate run`: finetune a real causal LM and track every probe as it learns.

A run directory holds everything, written atomically as it is made:
    settings.json          what was asked (a resumed run must ask the same)
    probes.json            the probe set (texts and token ids)
    tracking/step_*.csv    one chunk per evaluation (sim.tracking's schema)
    generations/step_*.json greedy generations (natural and fixed length) and their repetition statistics
    mass/step_*.json       per probe prompt, how far y+'s next-token distributions moved and into the top token
    design.json            which probe texts are also training targets (validate.design)
    train_log.json         per-step losses and metrics under TRL's names
    state/checkpoint.pt    model, optimizer and data state, to resume
    stopped.json           only when training diverged or collapsed (validate.health): step and reason
    curves.png, report.json, report.md   (validate.report)
"""
import copy
import math
import time
from pathlib import Path

import numpy as np

from learning_dynamics.sim.io import atomic_write_json, read_json
from learning_dynamics.sim.tracking import TrackingTable, read_chunk
from learning_dynamics.theory import algorithms as registry
from learning_dynamics.theory.errors import CorruptFile, UserError
from learning_dynamics.validate import algorithms as algos
from learning_dynamics.validate import health

MASS_BATCH = 8          # sequences per batch when comparing with the reference (two [N, V] logits at once)


class RunStopped(UserError):
    """Training diverged or collapsed: one line, non-zero exit, the logs stay on disk."""

    def __init__(self, out, stopped: dict):
        super().__init__(f"{stopped['reason']}; stopped, logs kept in {out}, every verdict in its report is "
                         "inconclusive (lower --lr or check the data, then rerun with --fresh)")


# --------------------------------------------------------------------------- setup

def _device(name: str):
    import torch
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked but no CUDA GPU is visible; use --device cpu (or --preset smoke)")
    return torch.device(name)


def _prepare_out(out: Path, settings: dict, fresh: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "settings.json"
    if path.exists() and not fresh:
        previous = read_json(path, expect=dict)
        from learning_dynamics.validate.presets import RESUMABLE_CHANGES
        changed = sorted(k for k in set(previous) | set(settings)
                         if previous.get(k) != settings.get(k) and k not in RESUMABLE_CHANGES)
        if changed:
            k = changed[0]
            raise UserError(f"{out} holds a run with other settings ({k}: {previous.get(k)!r} there, "
                            f"{settings.get(k)!r} now); use another --out or pass --fresh")
    elif fresh:
        for sub in ("tracking", "generations", "mass", "state"):
            for f in (out / sub).glob("*") if (out / sub).is_dir() else ():
                f.unlink()
        for name in ("train_log.json", "probes.json", "report.json", "report.md", "stopped.json"):
            (out / name).unlink(missing_ok=True)
    atomic_write_json(path, settings)


def _examples(settings: dict):
    """(train, probe, test, irrelevant): lists of {"prompt", "chosen", "rejected"} (probe prompts are trained
    on) and the irrelevant-sentence pool (None: chosen from the corpus later)."""
    from learning_dynamics.validate import data
    irrelevant = None
    if settings["data"]:
        rows = data.load_preference_jsonl(settings["data"])
        n_test = max(1, min(len(rows) // 10, 50))
        test, train = rows[:n_test], rows[n_test:]
        if len(train) < 2:
            raise UserError(f"{settings['data']}: need at least 3 preference pairs, found {len(rows)}")
        probe = train[:settings["n_probe"]]
    else:  # its probe prompts are training prompts (the paper's D_prob)
        dataset = data.default_dataset(seed=0, n_probe=max(settings["n_probe"], 1))
        train, probe, test = dataset["train"], dataset["probe"], dataset["test"]
        irrelevant = dataset["irrelevant"]
    if len({str(e["prompt"]) for e in train}) == 1 and len(train) > 1:
        import sys
        print(f"ldyn: warning: all {len(train)} training pairs share one prompt, so the probes that need "
              "other prompts (other_chosen, test_response: P09a vs P09d) measure the same thing; "
              "use data with several prompts", file=sys.stderr)
    if settings.get("n_train"):  # a subset that still holds every probe pair
        probe_prompts = {str(e["prompt"]) for e in probe}
        rest = [e for e in train if str(e["prompt"]) not in probe_prompts]
        train = probe + rest[:max(settings["n_train"] - len(probe), 0)]
    return train, probe, test, irrelevant


def _read_probes(path: Path, vocab: int) -> list:
    """probes.json read back and checked: a damaged one is named (with --fresh as the way out)."""
    probes = read_json(path, expect=list)
    for i, p in enumerate(probes):
        ok = (isinstance(p, dict) and isinstance(p.get("prompt_id"), str) and isinstance(p.get("ids"), dict)
              and _token_list(p.get("prompt_ids"), vocab) and isinstance(p.get("texts"), dict)
              and all(_token_list(ids, vocab) and ids for ids in p["ids"].values()))
        if not ok:
            raise CorruptFile(path, f"probe prompt {i} is not a probe record")
    if not probes:
        raise CorruptFile(path, "no probe prompts")
    return probes


def _token_list(ids, vocab: int) -> bool:
    return isinstance(ids, list) and all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab
                                         for t in ids)


def _tokenize_pairs(encoder, examples) -> list:
    return [{"prompt": encoder.prompt_ids(e["prompt"]), "chosen": encoder.response_ids(e["chosen"]),
             "rejected": encoder.response_ids(e["rejected"])} for e in examples]


# --------------------------------------------------------------------------- evaluation

def _score_rows(model, sequences, pad_id, device, batch_size, autocast, scorer=None) -> list:
    """Score (prompt_id, probe, prompt_ids, response_ids) in length-sorted batches; one row dict each."""
    from learning_dynamics.validate.forward import make_batch, score_batch
    scorer = scorer or score_batch
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i][2]) + len(sequences[i][3]))
    rows = [None] * len(sequences)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        batch = make_batch([(sequences[i][2], sequences[i][3]) for i in chunk], pad_id).to(device)
        with autocast():
            scores = scorer(model, batch)
        for j, i in enumerate(chunk):
            rows[i] = {"prompt_id": sequences[i][0], "probe": sequences[i][1],
                       **{k: (int(v[j]) if k == "n_tokens" else float(v[j])) for k, v in scores.items()}}
    return rows


def evaluate(model, step, ctx) -> None:
    """Score every probe sequence and a few greedy generations; each lands in its own atomic file."""
    from learning_dynamics.validate.generate import generate, repetition_stats
    model.eval()
    rows = _score_rows(model, ctx["sequences"], ctx["pad_id"], ctx["device"], ctx["settings"]["eval_batch"],
                       ctx["autocast"])
    bad = [r for r in rows if not math.isfinite(r["logp_sum"])]
    ctx["table"].append(step, rows)
    gap = health.entropy_gap(rows, ctx["log_vocab"])
    if step == 0 or ctx.get("initial_gap") is None:
        ctx["initial_gap"] = _initial_gap(ctx) if step else gap
    gen_prompts = ctx["gen_prompts"]
    with ctx["autocast"]():
        new = generate(model, [p["prompt_ids"] for p in gen_prompts], ctx["eos"], ctx["pad_id"],
                       ctx["settings"]["gen_tokens"], sample=False, batch_size=ctx["settings"]["eval_batch"])
        fixed = generate(model, [p["prompt_ids"] for p in gen_prompts], ctx["eos"], ctx["pad_id"],
                         ctx["settings"]["gen_tokens"], sample=False, batch_size=ctx["settings"]["eval_batch"],
                         fixed_length=True)
    records = [{"prompt_id": p["prompt_id"], "text": ctx["tokenizer"].decode(ids, skip_special_tokens=True),
                "n_tokens": len(ids), **repetition_stats(ids),
                **{f"{k}_fixed": v for k, v in repetition_stats(f).items()}}
               for p, ids, f in zip(gen_prompts, new, fixed)]
    atomic_write_json(ctx["out"] / "generations" / f"step_{step:09d}.json", records)
    _track_mass(model, step, ctx)
    model.train()
    if bad:
        _stop(ctx, step, f"probe log-probs became non-finite at step {step}")
    if step:
        reason = health.uniform(step, gap, ctx["initial_gap"], ctx["log_vocab"])
        if reason:
            _stop(ctx, step, reason)


def _initial_gap(ctx):
    """The entropy gap of the first evaluation, read back when a run resumed past it."""
    first = ctx["table"].directory / "step_000000000.csv"
    return health.entropy_gap(read_chunk(first), ctx["log_vocab"]) if first.exists() else None


def _stop(ctx, step, reason, log=None) -> None:
    """Keep every log, record why, write the report (all verdicts inconclusive), and stop with one line."""
    from learning_dynamics.validate.report import write_report
    out = ctx["out"]
    log = ctx.get("log") if log is None else log
    if log is not None:
        _write_log(out, log)
    stopped = {"step": int(step), "reason": reason}
    atomic_write_json(out / "stopped.json", stopped)
    if list((out / "tracking").glob("step_*.csv")):
        write_report(out)
    raise RunStopped(out, stopped)


def _track_mass(model, step, ctx) -> None:
    """P18's data: on y+'s contexts, how far each prompt's next-token distributions moved from the
    reference (the initial model; for extend the model after its SFT phase) and how much the top token gained."""
    from learning_dynamics.validate.forward import mass_shift
    chosen = [seq for seq in ctx["sequences"] if seq[1] == "chosen"]
    rows = _score_rows(model, chosen, ctx["pad_id"], ctx["device"], MASS_BATCH, ctx["autocast"],
                       scorer=lambda m, batch: mass_shift(m, ctx["ref_model"], batch))
    atomic_write_json(ctx["out"] / "mass" / f"step_{step:09d}.json",
                      [{k: r[k] for k in ("prompt_id", "tv_mean", "top_gain_mean")} for r in rows])


# --------------------------------------------------------------------------- training

def _batch_indices(step: int, n: int, size: int, seed: int) -> list:
    """Epoch-wise seeded shuffles: the batch of a step never depends on where a run resumed."""
    per_epoch = max(n // size, 1)
    epoch, k = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return order[k * size:(k + 1) * size].tolist()


def _summed_logps(model, batch) -> dict:
    import torch
    from learning_dynamics.validate.forward import sequence_logps
    with torch.no_grad():
        return {"logp_sum": sequence_logps(model, batch)[0].float().cpu()}


def _reference_logps(ref_model, pairs, keys, ctx) -> None:
    """Fill ref_<key> for each pair, once, with the frozen reference model (no entropy or ||pi||^2 pass)."""
    for key in keys:
        sequences = [(str(i), key, p["prompt"], p[key]) for i, p in enumerate(pairs)]
        rows = _score_rows(ref_model, sequences, ctx["pad_id"], ctx["device"], ctx["settings"]["eval_batch"],
                           ctx["autocast"], scorer=_summed_logps)
        for p, r in zip(pairs, rows):
            p[f"ref_{key}"] = r["logp_sum"]


def _draw_samples(model, ref_model, pairs, indices, step, ctx) -> None:
    """On-policy responses of the current model for the pairs the next steps will use."""
    from learning_dynamics.validate.generate import generate
    s = ctx["settings"]
    algorithm = registry.get(s["algo"])
    k = 1 if algorithm.negative == "policy" else s["n_samples"]
    prompts = [pairs[i]["prompt"] for i in indices for _ in range(k)]
    model.eval()
    with ctx["autocast"]():
        new = generate(model, prompts, ctx["eos"], ctx["pad_id"], max(s["max_response_tokens"] - len(ctx["end_of_turn"]), 1), sample=True,
                       seed=s["seed"] * 100003 + step, batch_size=s["eval_batch"])
    model.train()
    for n, i in enumerate(indices):
        responses = [tuple(r) + tuple(ctx["end_of_turn"]) for r in new[n * k:(n + 1) * k]]
        pairs[i]["samples"] = responses
        pairs[i]["sample"] = responses[0]
    if algorithm.negative == "policy" and algorithm.requires_reference:
        chosen = [pairs[i] for i in indices]
        _reference_logps(ref_model, chosen, ("sample",), ctx)


def _save_state(path: Path, model, optimizer, step, phase, pairs, log) -> None:
    from learning_dynamics.sim.io import atomic_torch_save
    atomic_torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                       "phase": phase, "pairs": pairs, "log": log}, path)


def train(ctx, model, ref_model, pairs) -> None:
    import torch
    from tqdm.auto import tqdm

    s, out = ctx["settings"], ctx["out"]
    algorithm = registry.get(s["algo"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=s["lr"], weight_decay=s["weight_decay"],
                                  fused=ctx["device"].type == "cuda")
    sft_steps = s["extend_sft_steps"] if algorithm.warmup == "sft-both" else 0
    total = sft_steps + s["steps"]
    state_path = out / "state" / "checkpoint.pt"
    start, log = 0, []
    if state_path.exists():
        start, log = _load_state(state_path, model, optimizer, pairs, ctx["device"])
        ctx["progress"](f"resuming {out} at step {start} of {total}")
    elif algorithm.requires_reference and not algorithm.warmup:
        _reference_logps(ref_model, pairs, ("chosen", "rejected"), ctx)
    ctx["log"] = log
    done = set(ctx["table"].completed_steps())
    tracked = lambda step: step - sft_steps  # noqa: E731  (extend tracks its DPO phase from 0)
    model.train()
    bar = tqdm(range(start, total), initial=start, total=total, desc=f"{s['algo']} ({s['preset']})",
               disable=ctx["quiet"])
    tokens, clock = 0, time.perf_counter()
    for step in bar:
        phase = "sft" if step < sft_steps else "main"
        if algorithm.warmup and step == sft_steps and "ref_chosen" not in pairs[0]:
            ref_model.load_state_dict(model.state_dict())  # DPO's reference is the model after SFT
            _reference_logps(ref_model, pairs, ("chosen", "rejected"), ctx)
        if phase == "main" and tracked(step) % s["eval_every"] == 0 and tracked(step) not in done:
            evaluate(model, tracked(step), ctx)
            _maybe_checkpoint(ctx, state_path, model, optimizer, step, phase, pairs, log)
        indices = _batch_indices(step, len(pairs), s["batch_pairs"], s["seed"])
        if algorithm.requires_samples and step % s["sample_every"] == 0:
            upcoming = sorted({i for t in range(step, min(step + s["sample_every"], total))
                               for i in _batch_indices(t, len(pairs), s["batch_pairs"], s["seed"])})
            _draw_samples(model, ref_model, pairs, upcoming, step, ctx)
        with ctx["autocast"]():
            loss, metrics, n_tokens = algos.step_loss(s["algo"], phase, model, [pairs[i] for i in indices], s,
                                                      ctx["pad_id"], ctx["device"], reference=ref_model)
        reason = health.diverged(step, loss.item())
        if reason:
            _stop(ctx, step, reason, log)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # max_norm=inf: the total norm, nothing clipped; a non-finite one stops before the weights take it
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf")).item()
        reason = health.diverged(step, loss.item(), grad_norm)
        if reason:
            _stop(ctx, step, reason, log)
        optimizer.step()
        tokens += n_tokens
        log.append({"step": step, "phase": phase, **{k: round(v, 6) for k, v in metrics.items()},
                    "grad_norm": round(grad_norm, 6)})
        reason = health.frozen(log)
        if reason:
            _stop(ctx, step, reason, log)
        bar.set_postfix(loss=f"{metrics['loss']:.4f}", tok_s=f"{tokens / (time.perf_counter() - clock):.0f}")
    if tracked(total) not in done:
        evaluate(model, tracked(total), ctx)
    _write_log(out, log)
    if s["checkpoint_every"] or state_path.exists():
        _save_state(state_path, model, optimizer, total, "done", pairs, log)
    ctx["tokens_per_second"] = tokens / max(time.perf_counter() - clock, 1e-9)


def _load_state(path: Path, model, optimizer, pairs, device):
    """Restore a checkpoint in place; (step, log). A damaged one is named, never an unpickling traceback."""
    import torch
    try:
        state = torch.load(path, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, log, saved_pairs = int(state["step"]), list(state["log"]), list(state["pairs"])
    except Exception as err:  # noqa: BLE001  (torch.load raises a dozen unrelated types for a damaged file)
        problem = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
        raise CorruptFile(path, "empty" if path.stat().st_size == 0 else f"cannot restore it: {problem}") from None
    if len(saved_pairs) != len(pairs):
        raise CorruptFile(path, f"holds {len(saved_pairs)} training pairs, the run has {len(pairs)}")
    pairs[:] = saved_pairs
    return start, log


def _maybe_checkpoint(ctx, path, model, optimizer, step, phase, pairs, log):
    every = ctx["settings"]["checkpoint_every"]
    ctx["evals"] = ctx.get("evals", 0) + 1
    _write_log(ctx["out"], log)
    if every and ctx["evals"] % every == 0:
        _save_state(path, model, optimizer, step, phase, pairs, log)


def _write_log(out: Path, log) -> None:
    atomic_write_json(out / "train_log.json", log)


# --------------------------------------------------------------------------- the command

def run(settings: dict, out, fresh: bool = False, quiet: bool = False, progress=print,
        first_order: bool = False) -> dict:
    """Train, track, and write the report; returns report.json's content.

    first_order: the caller runs the first-order check on this run afterwards (it joins the reproduce command).
    """
    import contextlib

    import torch
    from learning_dynamics.validate import design
    from learning_dynamics.validate import probes as probe_set
    from learning_dynamics.validate.encode import Encoder
    from learning_dynamics.validate.model import load_model
    from learning_dynamics.validate import provenance
    from learning_dynamics.validate.report import write_report

    out = Path(out)
    device = _device(settings["device"])
    _prepare_out(out, settings, fresh)
    try:
        done = read_json(out / "report.json", {}, expect=dict)
    except CorruptFile:  # report.json is rebuilt from the logs; a damaged one is not worth a stop
        done = {}
    if done.get("complete"):  # the same command again: nothing to train, the report is rebuilt from the logs
        return write_report(out)
    from learning_dynamics.validate.report import read_stopped
    stopped = read_stopped(out)
    if stopped:  # the same command again would stop the same way
        if list((out / "tracking").glob("step_*.csv")):
            write_report(out)
        raise RunStopped(out, stopped)
    torch.manual_seed(settings["seed"])
    started = time.perf_counter()
    train_examples, probe_examples, test_examples, irrelevant = _examples(settings)  # bad data fails before the slow load
    loaded = load_model(settings["model"], device=str(device), progress=progress)
    model, tokenizer = loaded.model, loaded.tokenizer
    load_seconds = time.perf_counter() - started
    ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    encoder = Encoder(tokenizer, settings["max_prompt_tokens"], settings["max_response_tokens"])
    probes_path = out / "probes.json"
    if probes_path.exists():
        probes = _read_probes(probes_path, model.get_input_embeddings().weight.shape[0])
    else:
        with autocast():
            probes = probe_set.build_probe_set(model, tokenizer, encoder, probe_examples, train_examples,
                                               test_examples, settings, progress=progress, irrelevant=irrelevant)
        atomic_write_json(probes_path, probes, sort_keys=False)  # the probe order is the tracking row order
    atomic_write_json(out / "design.json", design.measure(probes, train_examples))
    ctx = {"settings": settings, "out": out, "device": device, "pad_id": tokenizer.pad_token_id,
           "tokenizer": tokenizer, "eos": probe_set.eos_ids(tokenizer),
           "end_of_turn": probe_set.end_of_turn_ids(tokenizer), "autocast": autocast,
           "table": TrackingTable(out / "tracking"), "sequences": probe_set.tracked_sequences(probes),
           "ref_model": ref_model,
           "gen_prompts": probes[:settings["gen_prompts"]], "quiet": quiet, "progress": progress,
           "log_vocab": math.log(model.get_output_embeddings().weight.shape[0])}
    pairs = _tokenize_pairs(encoder, train_examples)
    train(ctx, model, ref_model, pairs)
    info = {"model": loaded.name, "model_source": loaded.source, "n_params": loaded.n_params,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "load_seconds": round(load_seconds, 2), "train_tokens_per_second": round(ctx["tokens_per_second"], 1),
            "wall_seconds": round(time.perf_counter() - started, 2), "n_train_pairs": len(pairs),
            "n_probe_prompts": len(probes), "versions": provenance.versions(),
            "fingerprints": provenance.fingerprints(settings["data"], settings["model"]),
            **provenance.safely(provenance.run_command, settings, out, first_order=first_order)}
    atomic_write_json(out / "run_info.json", info)
    return write_report(out)
