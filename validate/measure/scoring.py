"""The forward passes of an evaluation, shared by `ldyn validate run` (validate.training.run) and the TRL probe monitor
(validate.monitor.monitor): one precision, one scorer, one generation and one mass-shift record format for both."""

from learning_dynamics.validate.data.repetition import repetition_stats
# torch loads inside the functions that need them, so importing this module stays light (ldyn --help)

MASS_BATCH = 8          # sequences per batch when comparing with the reference (two [N, V] logits at once)


def scoring_autocast(device):
    """The precision of every forward pass of a run: bf16 autocast on a GPU that has it, else fp32."""
    import contextlib

    import torch
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def score_rows(model, sequences, pad_id, device, batch_size, autocast, scorer=None) -> list:
    """Score (prompt_id, probe, prompt_ids, response_ids) in length-sorted batches, a prompt's responses after
    one copy of it where the model allows (validate.training.forward.batches); one row dict each."""
    from learning_dynamics.validate.training.forward import batches, score_batch
    scorer = scorer or score_batch
    rows = [None] * len(sequences)
    for chunk, batch in batches(model, [(s[2], s[3]) for s in sequences], batch_size, pad_id):
        with autocast():
            scores = scorer(model, batch.to(device))
        for j, i in enumerate(chunk):
            rows[i] = {"prompt_id": sequences[i][0], "probe": sequences[i][1],
                       **{k: (int(v[j]) if k == "n_tokens" else float(v[j])) for k, v in scores.items()}}
    return rows


def greedy_generations(model, gen_prompts, tokenizer, eos, pad_id, settings, autocast) -> list:
    """Greedy continuations of the first probe prompts (natural and fixed length) with their repetition
    statistics, one record each."""
    from learning_dynamics.validate.training.generate import generate
    prompts = [p["prompt_ids"] for p in gen_prompts]
    with autocast():
        new = generate(model, prompts, eos, pad_id, settings["gen_tokens"], sample=False,
                       batch_size=settings["eval_batch"])
        fixed = generate(model, prompts, eos, pad_id, settings["gen_tokens"], sample=False,
                         batch_size=settings["eval_batch"], fixed_length=True)
    return [{"prompt_id": p["prompt_id"], "text": tokenizer.decode(ids, skip_special_tokens=True),
             "n_tokens": len(ids), **repetition_stats(ids),
             **{f"{k}_fixed": v for k, v in repetition_stats(f).items()}}
            for p, ids, f in zip(gen_prompts, new, fixed)]


def mass_records(model, ref_model, sequences, pad_id, device, autocast) -> list:
    """P18's data: on y+'s contexts (the "chosen" ones among `sequences`), how far each prompt's next-token
    distributions moved from the reference (the initial model; for extend the model after its SFT phase)
    and how much the top token gained."""
    from learning_dynamics.validate.training.forward import mass_shift
    chosen = [seq for seq in sequences if seq[1] == "chosen"]
    rows = score_rows(model, chosen, pad_id, device, MASS_BATCH, autocast,
                      scorer=lambda m, batch: mass_shift(m, ref_model, batch))
    return [{k: r[k] for k in ("prompt_id", "tv_mean", "top_gain_mean")} for r in rows]
