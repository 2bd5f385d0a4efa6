"""`ldyn tour`: the README's first command. Key derivations, one worked squeeze step, the
free-logit simulation and the digit classifier (quick preset), with figures under --out.

About two minutes on 2 cores: derivations ~5 s, free logits ~20 s, digits ~30 s.
"""
import argparse
import sys
import time
from pathlib import Path
from learning_dynamics.theory.derive import all_derivations, print_derivations
from learning_dynamics.theory.squeeze_report import squeeze_command
from learning_dynamics.sim.common.io import writable_folder
from learning_dynamics.sim.logits_cli import run_logits

# Derivations shown by the tour (a subset of `ldyn theory derive`, matched by title start);
# if theory renames them all, the tour prints every derivation instead.
TOUR_DERIVATIONS = ("Log-softmax Jacobian", "AKG decomposition", "Residual terms", "One step on label k",
                    "Exact one-step change", "DPO on one shared context", "DPO on two contexts",
                    "Gradient flow")
WORKED_EXAMPLE = dict(probs="0.6,0.3,0.05,0.05", negative=3, lr=0.5)


def _banner(text: str) -> None:
    print()
    print("#" * 78)
    print(f"# {text}")
    print("#" * 78)
    sys.stdout.flush()


def print_key_derivations() -> None:

    chosen = [d for d in all_derivations() if d.title.startswith(TOUR_DERIVATIONS)]
    if not chosen:
        print_derivations()
        return
    for derivation in chosen:
        print(derivation.render())
        print()
    print("(all derivations: ldyn theory derive)")


def worked_squeeze_example() -> None:

    args = argparse.Namespace(probs=WORKED_EXAMPLE["probs"], logits=None, negative=WORKED_EXAMPLE["negative"],
                              positive=None, lr=WORKED_EXAMPLE["lr"], json=False)
    print(f"$ ldyn theory squeeze --probs {WORKED_EXAMPLE['probs']} --negative {WORKED_EXAMPLE['negative']} "
          f"--lr {WORKED_EXAMPLE['lr']}")
    squeeze_command(args)
    print("Label 3 is a valley (p = 0.05 < ||p||^2 = 0.455): only labels above 0.455 - 0.05 = 0.405 rise,"
          " i.e. the peak (label 0); labels 1 and 2 fall with it.")


def run_tour(out="ldyn-out", logits_preset: str = "default", progress: bool = True) -> int:
    """Print the derivations and a worked example, run `sim logits` and `sim digits --quick`,
    and say where the figures are. Returns 0."""
    from learning_dynamics.sim.digits import run_digits

    out = writable_folder(Path(out))
    start = time.perf_counter()
    _banner("1/4  The key derivations (sympy): A, the AKG decomposition, G per loss, the squeeze")
    print_key_derivations()

    _banner("2/4  One negative step on a valley label: who rises, who falls")
    worked_squeeze_example()

    _banner("3/4  Free logits and a linear head: every step-level theorem on random cases")
    logits = run_logits(out / "sim" / "logits", preset=logits_preset, progress=progress)
    held = [t for t in logits["theorems"] if t.get("applies")]
    print(f"{sum(t['held_fraction'] == 1.0 for t in held)}/{len(held)} step-level theorems held on every "
          f"case they apply to ({sum(t['cases'] for t in held)} random cases in all)")
    for t in held:
        print(f"  {t['id']:5} {t['held_fraction']:.3f} of {t['cases']:5d}  {t['claim']}")
    a = logits["algorithms"]
    print(f"off-policy negative gradient: dlog pi(y-) {a['negative']['dlogp_minus']:+.2f}, dlog pi(y*) "
          f"{a['negative']['dlogp_ystar']:+.2f}, entropy {a['negative']['dentropy']:+.2f} nats; on-policy: "
          f"dlog pi(y*) {a['negative-onpolicy']['dlogp_ystar']:+.2f}, entropy "
          f"{a['negative-onpolicy']['dentropy']:+.2f}")
    print(f"DPO entropy change at the rejected context: off-policy {a['dpo']['dentropy']:+.3f}, on-policy "
          f"{a['onpolicy-dpo']['dentropy']:+.3f}, extend {a['extend']['dentropy']:+.3f}")

    _banner("4/4  A real digit classifier: eNTK, the AKG check, influence and squeezing (quick preset)")
    digits = run_digits(out / "sim" / "digits", preset="quick", progress=progress)
    print(f"test accuracy {digits['test_accuracy']:.3f}; two eNTK implementations agree to "
          f"{digits['ntk_max_rel_diff']:.1e}; AKG Pearson r {digits['akg_pearson_r']:.4f}, error ~ "
          f"eta^{digits['akg_error_slope']:.2f}")
    print(f"negative step on the least likely class: top class rises on {digits['squeeze_top_rises']:.0%} "
          f"of images; theory's threshold: precision {digits['squeeze_precision']:.2f}, "
          f"recall {digits['squeeze_recall']:.2f}")

    _banner("Figures")
    for folder, summary in ((out / "sim" / "logits", logits), (out / "sim" / "digits", digits)):
        for name in summary["figures"].values():
            print(f"  {folder / name}")
    print(f"(tour took {time.perf_counter() - start:.0f} s; next: ldyn sim lm, ldyn theory derive)")
    return 0
