"""`ldyn sim lm`: the toy language model reproduces the paper's probe dynamics (seeded, --quick).

One quick run of all four algorithms is shared by the claim tests (the same
code path as the default run, with fewer finetuning steps). Each test asserts
a direction the run reports, so a change that loses the regime fails here.
"""
import contextlib
import io
import json

import pytest

from learning_dynamics.validate.ldyn import main

# Every claim the default run reports as holding; the quick run must reproduce it.
HOLDING = ("P12d", "P11", "P12a", "P12b", "P12c", "P13a",       # SFT
           "P09a", "P09b", "P09d",                               # off-policy DPO
           "P15", "P15a",                                        # extend squeezes less (index; y*), at matched margin
           "LM-POS-entropy", "LM-POS-argmax")                    # squeezing sits after the divergence


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("lm")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["sim", "lm", "--quick", "--json", "--seed", "0", "--out", str(out)])
    assert code == 0
    return out, json.loads(stdout.getvalue())


@pytest.fixture(scope="module")
def claims(quick_run):
    """One row per claim: a comparison's row at matched margin where it has one (its part on untrained probes),
    else at equal exposure."""
    return {c["id"]: c for c in quick_run[1]["claims"]}


@pytest.mark.parametrize("claim_id", HOLDING)
def test_claim_holds_on_the_quick_run(claims, claim_id):
    claim = claims[claim_id]
    assert claim["holds"] is True and claim["verdict"] == "holds", claim
    assert claim["effect"] > 0 and claim["ci"][0] > 0


def test_against_the_sft_control_and_at_matched_margin_the_toy_fails_three_claims(claims):
    """Reported as failed predictions: on the toy LM, SFT on the same pairs raises y* and sharpens the
    entropy more than DPO does (P09c, P10 judged against the SFT control), and at the margin on-policy DPO
    reaches, off-policy DPO's other probes had fallen less per token (P14b at matched margin, the part read on
    untrained probes only); at equal exposure P14 holds."""
    for pid in ("P09c", "P10", "P14b"):
        assert claims[pid]["verdict"] == "fails" and claims[pid]["ci"][1] < 0, claims[pid]
    assert claims["P09c"]["control"] and claims["P10"]["control"]
    assert claims["P14b"]["basis"] == "matched margin"
    assert claims["P14"]["basis"] == "equal exposure" and claims["P14"]["verdict"] == "holds"


def test_the_rephrase_of_y_plus_falls_from_the_start_under_sft(quick_run, claims):
    """Reported as a failed prediction (P13b): the rephrase never rises, it falls from step one."""
    from learning_dynamics.sim.common.tracking import TrackingTable, series_from_table

    assert claims["P13b"]["verdict"] == "fails"
    rephrase = series_from_table(TrackingTable(quick_run[0] / "tracking" / "sft").read())["logps/chosen_rephrase"]
    means = rephrase.mean(axis=1)
    assert means[1] < means[0] and means[-1] < means[1]


def test_sft_raises_other_answers_while_random_text_falls(quick_run):
    sft = quick_run[1]["runs"]["sft"]
    change = {k: v["end"] - v["start"] for k, v in sft.items() if k.startswith("logps/")}
    assert change["logps/chosen"] > change["logps/other_chosen"] > 0
    assert change["logps/random_tokens"] < 0 and change["logps/irrelevant"] < 0


def test_off_policy_dpo_lowers_both_and_raises_only_y_star(quick_run):
    dpo = quick_run[1]["runs"]["dpo"]
    change = {k: v["end"] - v["start"] for k, v in dpo.items() if isinstance(v, dict)}
    assert change["logps/chosen"] < 0 and change["logps/rejected"] < change["logps/chosen"]
    assert change["logps/greedy"] > 0 and change["entropy/chosen"] < 0
    # y+ rises briefly first (the pull-up), then falls: the paper's shape
    assert dpo["logps/chosen"]["max"] >= dpo["logps/chosen"]["start"]


def test_on_policy_negatives_do_not_make_y_plus_fall(quick_run):
    onpolicy = quick_run[1]["runs"]["onpolicy-dpo"]
    assert onpolicy["logps/chosen"]["end"] > onpolicy["logps/chosen"]["start"]
    assert quick_run[1]["runs"]["dpo"]["squeeze_index"] > onpolicy["squeeze_index"]


def test_json_contract_figures_and_determinism(quick_run, capsys):
    """--json prints exactly one object; the same seed gives the same numbers.

    The SFT-only run reuses the pretrained checkpoint cached in --out (a cache
    hit is bit-identical), and each run has its own random stream, so its SFT
    claims and curves must equal those of the full run.
    """
    out, full = quick_run
    for claim in full["claims"]:
        assert {"id", "claim", "holds", "effect", "verdict", "ci"} <= set(claim)
        assert isinstance(claim["holds"], bool) and isinstance(claim["effect"], float)
    for name in full["figures"]:
        assert (out / name).stat().st_size > 10_000
    assert {"probes_sft.png", "probes_dpo.png", "comparison.png"} <= set(full["figures"])
    assert json.loads((out / "summary.json").read_text()) == full

    capsys.readouterr()
    assert main(["sim", "lm", "--quick", "--json", "--algo", "sft", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    again = json.loads(stdout)
    assert stdout.strip().count("\n") == 0  # one JSON object, nothing else
    assert again["claims"] == [c for c in full["claims"] if c["run"] == "sft"]
    assert again["runs"]["sft"] == full["runs"]["sft"]


def test_pretraining_is_deterministic_and_its_cache_is_exact(tmp_path):
    import torch
    from dataclasses import replace

    from learning_dynamics.sim import lm
    from learning_dynamics.sim.toy_language import ToyLanguage

    config = replace(lm.QUICK, pretrain_steps=3, corpus_documents=64, pretrain_batch=8)
    language = ToyLanguage(0)
    quiet = lambda iterable, desc: iterable  # noqa: E731
    first, _ = lm.pretrained_model(language, config, 0, tmp_path / "a", quiet)
    second, _ = lm.pretrained_model(language, config, 0, tmp_path / "b", quiet)
    cached, _ = lm.pretrained_model(language, config, 0, tmp_path / "a", quiet)
    other_seed, _ = lm.pretrained_model(ToyLanguage(1), config, 1, tmp_path / "a", quiet)
    for a, b, c in zip(first.state_dict().values(), second.state_dict().values(), cached.state_dict().values()):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert len(list((tmp_path / "a").glob("pretrained-*.pt"))) == 2
    assert not all(torch.equal(a, b) for a, b in zip(first.state_dict().values(),
                                                     other_seed.state_dict().values()))


def test_probe_set_has_every_probe_type_and_position_classes():
    from learning_dynamics.sim.lm import POSITION_CLASSES, PROBE_ORDER, ProbeSet
    from learning_dynamics.sim.toy_language import ToyLanguage, first_divergence
    from learning_dynamics.theory.predictions import PROBES

    language = ToyLanguage(0)
    # every probe but y* (scored with y+) and the real model's repeated sample (P17r, llm only)
    assert set(PROBE_ORDER) == set(PROBES) - {"greedy", "sample_repeated"}
    probes = ProbeSet(language, [[language.eos_id]] * len(language.probe_examples))
    for ex, d in zip(language.probe_examples, probes.divergence):
        chosen, rejected = ex.probes["chosen"], ex.probes["rejected"]
        assert chosen[:d] == rejected[:d] and chosen[d] != rejected[d] and d >= 1
        assert ex.probes["chosen_shuffled"] != chosen and sorted(ex.probes["chosen_shuffled"]) == sorted(chosen)
        assert ex.probes["other_chosen"] != chosen and ex.probes["test_response"] != chosen
        assert ex.probes["chosen_rephrase"][-3] != chosen[-3]  # a different ending: different words
    spans = probes.position_spans()
    assert tuple(spans) == POSITION_CLASSES
    assert first_divergence([1, 2, 3], [1, 2, 4]) == 2


@pytest.mark.parametrize("argv, message", [
    (["--seed", "-1"], "--seed"),
    (["--out", "__FILE__"], "not a folder"),
])
def test_bad_arguments_give_one_line_and_exit_2(tmp_path, capsys, argv, message):
    afile = tmp_path / "afile"
    afile.write_text("x")
    argv = [str(afile) if a == "__FILE__" else a for a in argv]
    assert main(["sim", "lm", "--quick", "--out", str(tmp_path / "o")] + argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_unknown_algorithm_is_an_argparse_error(capsys):
    assert main(["sim", "lm", "--algo", "ppo"]) == 2
    assert "invalid choice" in capsys.readouterr().err
