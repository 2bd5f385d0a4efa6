"""report.md sections of the first-order check's parts that issue 24 added: the eta sweep over pairs
(validate.measure.pair_sweep), P20 on the logit eNTK (validate.measure.logit_kernel) and the per-token channels of the DPO
step (validate.measure.token_channels). Each takes its part of first_order.json and returns lines."""
from learning_dynamics.validate.judge.report import fmt

VIEW_WORDS = {
    "K sketch": "K, Gaussian sketch over the whole vocabulary (the paper's kernel)",
    "K tokens": "K, exact block on the step-0 top and random tokens",
    "A.K.G": "A.K.G, the gradients of log pi (the earlier check's kernel)",
    "A": "A alone: e_y - pi at the probes' positions",
    "G": "G alone: e_y - pi at the training sequences' positions",
}
TOKEN_WORDS = {"top": "top token other than y-'s", "rejected": "y-'s own token"}


def pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.3g}%"


def _interval(summary: dict, digits: int = 3, beyond: str = "beyond the grid") -> str:
    """median [95% interval] (range), a censored (beyond the grid) value named as such."""
    def one(x):
        return beyond if x is None else fmt(x, digits)
    if not summary or not summary.get("n"):
        return "n/a"
    return (f"{one(summary['median'])} [{one(summary['ci'][0])}, {one(summary['ci'][1])}] "
            f"({one(summary['min'])} to {one(summary['max'])})")


def pair_sweep_lines(ps) -> list:
    if not ps:
        return []
    grid = ", ".join(f"{x:g}" for x in ps["grid_nats"])
    n = ps["n_pairs"]
    lines = ["", f"### Where it breaks, over {n} training pairs", "",
             f"Each of the first {n} probe prompts' pairs (`--sweep-pairs`), swept on a coarse grid ({grid} nats) "
             f"over its own prompt's probe responses and the next probe prompt's ({ps['prompts_per_pair']} prompts, "
             f"{ps['per_pair'][0]['n_probe_sequences'] if ps['per_pair'] else 0} responses a pair; "
             f"{ps.get('dtype', 'float64')}), stopping where "
             "the relative error passes 100%. The step sizes where it first passes 10% (the end of the linear "
             "regime) and 100% (breaks) are interpolated on log-log axes; each cell is the median over pairs "
             "[bootstrap 95% interval of the median] (range). A pair that never passes a level on the grid counts "
             "as beyond the grid.", "",
             "| step | breaks (100%), target nats | breaks, eta | linear up to (10%), target nats | pairs that "
             "break on the grid | error slope |", "|---|---|---|---|---|---|"]
    for kind, s in ps["summary"].items():
        broke = s["breaks_at"]["target_nats"]
        lines.append(f"| {kind} | {_interval(broke)} | {_interval(s['breaks_at']['eta'])} | "
                     f"{_interval(s['linear_up_to']['target_nats'])} | {broke['n_crossed']} of {broke['n']} | "
                     f"{_interval(s['error_slope'])} |")
    return lines + [""]


def p20_lines(p20: dict) -> list:
    lines = ["### Kernel drift (P20) on the logit eNTK", ""]
    if "views" not in p20:     # a check from before the logit eNTK views: P20 on A.K.G, judged at 0.9
        return ["### Kernel drift (P20)", "", f"**{p20['verdict']}**: {p20['effect_unit']} = {fmt(p20['effect'], 4)}, 95% CI "
                        f"[{fmt(p20['ci'][0], 4)}, {fmt(p20['ci'][1], 4)}]. {p20['detail']}.", ""]
    views, steps = p20["views"], p20["steps"]
    lines += [f"**Described, not judged** (verdict {p20['verdict']}: {p20['inconclusive_reason']}; the 0.9 of "
              f"earlier checks was the project's own). {p20['effect_unit']} = {fmt(p20['effect'], 4)}, 95% CI "
              f"[{fmt(p20['ci'][0], 4)}, {fmt(p20['ci'][1], 4)}]; {p20['detail']}.", "",
              "Each view's cosine with step 0 [95% CI]. K = grad z(probe) grad z(train)^T is the kernel of the "
              "logits, apart from the softmax factors; its sketch reads K between Gaussian directions over "
              "(position, vocabulary), E[w w^T] = I, drawn once, the same at every checkpoint "
              "(E<S, S'> = <K, K'>), its exact block "
              "the logits of a fixed token set at every probe position against the training sequence's step-0 top "
              "tokens. A.K.G is the inner product of the gradients of log pi (A and G inside); A and G are the "
              "softmax factors themselves.", "",
              "| view | " + " | ".join(f"step {t}" for t in steps) + f" | norm ratio at step {steps[-1]} |",
              "|---" * (len(steps) + 2) + "|"]
    for name, view in views.items():
        cells = [f"{fmt(c, 3)} [{fmt(lo, 3)}, {fmt(hi, 3)}]" if i else fmt(c, 3)
                 for i, (c, (lo, hi)) in enumerate(zip(view["similarity"], view["ci"]))]
        lines.append(f"| {VIEW_WORDS.get(name, name)} | " + " | ".join(cells)
                     + f" | {fmt(view['norm_ratio'][-1], 3)} |")
    halves = views["K sketch"].get("halves") or []
    if halves:
        lines += ["", f"The sketch's own noise: the two halves of its probe-side directions give "
                      f"{' and '.join(fmt(h, 3) for h in halves)} at step {steps[-1]}."]
    return lines


def channel_lines(ch, dtype: str) -> list:
    if not ch:
        return []
    lines = ["", f"### The DPO step's per-token channels ({dtype})", "",
             "The same step's first-order change of log pi at each of y-'s positions, split into the hidden-state "
             "channel (the last hidden state's change times the fixed output embedding), through the layers and "
             "norms (body) or through the input embedding, and the readout channel (the output embedding's change "
             "times the fixed hidden state). SmolLM2's tied embedding is one matrix in both roles: its input role "
             "is the second channel, its output role the third. The channels sum to the exact jvp of log pi to a "
             f"largest relative gap of {ch['max_sum_gap']:.1e} over every position and token. Cells: mean change "
             "(nats) and its share of the mean exact first-order change.", "",
             "| positions | token | n | exact first-order | measured | rises (exact / measured) | hidden (body) | "
             "hidden (input embedding) | readout | carried by |", "|---|---|---|---|---|---|---|---|---|---|"]
    for kind, entry in ch["by_kind"].items():
        for token, words in TOKEN_WORDS.items():
            e = entry.get(token)
            if not e:
                continue
            parts = " | ".join(f"{fmt(e['channels'][n]['mean'], 3)} ({pct(e['channels'][n]['share'])})"
                               for n in ("hidden (body)", "hidden (input embedding)", "readout"))
            lines.append(f"| {kind} | {words} | {entry['positions']} | {fmt(e['mean_exact'], 3)} | "
                         f"{fmt(e['mean_actual'], 3)} | {fmt(e['rises_exact'], 3)} / {fmt(e['rises_actual'], 3)} "
                         f"| {parts} | {e['carrier']} |")
    return lines + _squeeze_carrier(ch)


def _squeeze_carrier(ch: dict) -> list:
    entry = (ch["by_kind"].get("rejected_only") or {}).get("top")
    if not entry:
        return [""]
    carrier = entry["carrier"]
    largest = entry["channels"][carrier].get("largest_at")
    where = "" if largest is None else f"; the largest part at {pct(largest)} of the positions"
    if entry["mean_exact"] > 0:
        lines = ["", f"The squeeze (the top token's rise at y-'s rejected-only positions, first order: mean "
                     f"{fmt(entry['mean_exact'], 3)} nats) is carried by the **{carrier}** channel "
                     f"({pct(entry['channels'][carrier]['share'])} of it{where})."]
    else:
        lines = ["", f"No squeeze at first order here: the top token's mean first-order change at y-'s rejected-only "
                     f"positions is {fmt(entry['mean_exact'], 3)} nats; the **{carrier}** channel moves it most "
                     f"({pct(entry['channels'][carrier]['share'])}{where})."]
    sources = {n: v for n, v in entry["channels"].items() if n.startswith("readout:")}
    if sources:
        lines[-1] += (" The readout channel's change comes from the tied matrix's " + " and ".join(
            f"{n.split(': ')[1]} ({fmt(v['mean'], 3)} nats)" for n, v in sources.items()) + ".")
    return lines + [""]
