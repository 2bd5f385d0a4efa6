"""`ldyn validate check --first-order`: checks 1 (eNTK first order) and 2 (token-level squeeze).

Writes first_order.json (read by validate.report) and three figures into the
run directory: the predicted-vs-actual scatter, the error-vs-eta slope, and the
token-level rising-set picture.
"""
import time
from pathlib import Path

import numpy as np

from learning_dynamics.sim.io import atomic_write_json
from learning_dynamics.validate.report import _clean

N_PROBE_PROMPTS = {"smoke": 4, "default": 24}   # prompts whose probes the jvp covers
N_SQUEEZE_PAIRS = {"smoke": 3, "default": 48}
SQUEEZE_NATS = 0.5                                 # token step: lowers L = lp(y-) - lp(y+) by this, to first order


def run_checks(settings: dict, out, quiet: bool = False, progress=print, command=("validate", "check")) -> dict:
    """command: the ldyn command whose report holds this check (`run --first-order` embeds it in the run's)."""
    import torch
    from learning_dynamics.validate import first_order, provenance, token_squeeze
    from learning_dynamics.validate.encode import Encoder
    from learning_dynamics.validate.model import load_model
    from learning_dynamics.validate.probes import build_probe_set, probe_sequences
    from learning_dynamics.validate.run import _device, _examples, _tokenize_pairs

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = _device(settings["device"])
    started = time.perf_counter()
    loaded = load_model(settings["model"], device=str(device), dtype=torch.float64,
                        attn_implementation="sdpa", progress=progress)
    model, tokenizer = loaded.model, loaded.tokenizer
    preset = settings["preset"]
    encoder = Encoder(tokenizer, settings["max_prompt_tokens"], settings["max_response_tokens"])
    train, probe_examples, test = _examples(dict(settings, n_probe=max(N_PROBE_PROMPTS[preset],
                                                                       N_SQUEEZE_PAIRS[preset])))
    pad_id = tokenizer.pad_token_id
    with first_order.exact_math(model):
        probes = build_probe_set(model, tokenizer, encoder, probe_examples[:N_PROBE_PROMPTS[preset]], train,
                                 test, settings, progress=progress)
        flat = probe_sequences(probes)
        sequences = [(p_ids, r_ids) for _, _, p_ids, r_ids in flat]
        names = [name for _, name, _, _ in flat]
        pairs = _tokenize_pairs(encoder, probe_examples[:N_SQUEEZE_PAIRS[preset]])
        batch = min(settings["eval_batch"], 64)
        steps = {kind: first_order.check_step(model, pairs[0], kind, sequences, pad_id, device, batch)
                 for kind in first_order.STEP_KINDS}
        progress(f"first order: r {steps['positive']['pearson_r']:.4f} / {steps['negative']['pearson_r']:.4f}, "
                 f"slope {steps['positive']['error_slope']:.2f} / {steps['negative']['error_slope']:.2f} "
                 "(positive / negative step); factored and dense jvp differ by "
                 f"{max(s['jvp_methods_max_rel_diff'] for s in steps.values()):.1e}")
        records = [token_squeeze.check_pair(model, pair, SQUEEZE_NATS, pad_id, device) for pair in pairs]
    squeeze = token_squeeze.summarise(records)
    figures = [_plot_scatter(steps, names, out / "first_order_scatter.png"),
               _plot_slope(steps, out / "first_order_slope.png"),
               _plot_token_squeeze(records, squeeze, out / "token_squeeze.png")]
    negative, positive = steps["negative"], steps["positive"]
    result = _clean({
        "model": loaded.name, "device": (torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"),
        "dtype": "float64", "n_probe_sequences": len(sequences), "seconds": time.perf_counter() - started,
        # headline numbers: the mean over the two step kinds
        "pearson_r": float(np.mean([negative["pearson_r"], positive["pearson_r"]])),
        "error_slope": float(np.mean([negative["error_slope"], positive["error_slope"]])),
        "etas": {k: v["etas"] for k, v in steps.items()},
        "steps": {k: {kk: vv for kk, vv in v.items() if kk not in ("predicted", "actual")} for k, v in steps.items()},
        "figures": [f.name for f in figures], "settings": provenance.public_settings(settings),
        **(provenance.safely(provenance.check_command, settings, out) if command == ("validate", "check") else
           provenance.safely(provenance.run_command, settings, out, first_order=True)),
        "fingerprints": provenance.fingerprints(settings["data"], settings["model"]),
        "versions": provenance.versions()})
    result_all = {"first_order": result, "token_squeeze": _clean(squeeze)}
    result["token_squeeze"] = result_all["token_squeeze"]
    atomic_write_json(out / "first_order.json", result)
    return result_all


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _plot_scatter(steps, names, path):
    from learning_dynamics.sim.io import atomic_savefig
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for ax, (kind, s) in zip(axes, steps.items()):
        pred, act = np.array(s["predicted"]), np.array(s["actual"])
        ax.scatter(pred, act, s=10, alpha=0.7)
        lim = [min(pred.min(), act.min()), max(pred.max(), act.max())]
        ax.plot(lim, lim, color="0.5", lw=0.8, ls="--")
        ax.set_xlabel("predicted change of log pi (jvp = -eta A K G)")
        ax.set_ylabel("actual change after the step")
        ax.set_title(f"{kind} step: r = {s['pearson_r']:.4f}", fontsize=10)
    fig.suptitle(f"first-order check: {len(names)} probe responses, one SGD step", fontsize=10)
    return atomic_savefig(fig, path)


def _plot_slope(steps, path):
    from learning_dynamics.sim.io import atomic_savefig
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4))
    for kind, s in steps.items():
        ax.loglog(s["etas"], s["mean_abs_error"], "o-", label=f"{kind} step (slope {s['error_slope']:.2f})")
    ax.set_xlabel("step size eta")
    ax.set_ylabel("mean |actual - predicted|")
    ax.set_title("first-order error shrinks as eta^2 (theory: slope 2)", fontsize=10)
    ax.legend(fontsize=8)
    return atomic_savefig(fig, path)


def _plot_token_squeeze(records, summary, path):
    from learning_dynamics.sim.io import atomic_savefig
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, color in (("shared", "tab:blue"), ("rejected_only", "tab:red")):
        changes = np.concatenate([r["argmax_change"][r["kind"] == kind] for r in records])
        if changes.size:
            ax.hist(changes, bins=40, alpha=0.6, color=color,
                    label=f"{kind} positions (argmax rises at {np.mean(changes > 0):.0%})")
    ax.axvline(0, color="0.4", lw=0.8)
    ax.set_xlabel("change of log pi(argmax token other than y-'s) after one DPO-shaped step")
    ax.set_ylabel("positions")
    s = summary["rejected_only"]
    if s["positions"]:
        ax.set_title(f"token-level squeeze: threshold precision {s['precision']:.2f}, recall {s['recall']:.2f}",
                     fontsize=10)
    ax.legend(fontsize=8)
    return atomic_savefig(fig, path)
