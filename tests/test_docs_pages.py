"""`ldyn validate pages`: the committed results pages are exactly what the committed reports give, so a number on
them cannot drift from its report; `--check` catches a hand-edited page or a report changed without its page."""
import json
import shutil
from pathlib import Path

import pytest

from learning_dynamics.validate.judge import pages
from learning_dynamics.validate.ldyn import main

ROOT = Path(__file__).resolve().parents[1]
REPORTS, DOCS = ROOT / "validate" / "reports", ROOT / "docs"
# what the pages read: each report folder's summary, commands and staleness, each run's and check's own record
READ = ("summary.json", "COMMANDS.md", "STALE.md", "*/run_info.json", "*/settings.json", "*/first_order.json", "*/STALE.md")


def test_the_committed_pages_are_what_the_reports_give():
    generated = pages.generate(REPORTS, DOCS)
    assert set(generated) == {page.name for page in pages.PAGES}
    assert pages.differing(generated, DOCS) == [], "run `ldyn validate pages` and commit docs/"


def test_the_pages_carry_the_reports_numbers_and_commands():
    summary = json.loads((REPORTS / pages.CPU_REPORTS / "summary.json").read_text())
    page = (DOCS / "results-cpu.md").read_text()
    row = judged_in_nats(summary)
    assert f"**{row['verdict']}** | {row['effect']:.3g} nats" in page
    assert "ldyn validate report $R/dpo $R/sft $R/onpolicy-dpo $R/extend --out $R" in page
    stale = (DOCS / "results-gpu-stale.md").read_text()
    assert stale.startswith("# Stale") and "Probes were training targets" in stale   # its STALE.md, quoted
    from learning_dynamics.theory.predictions import coverage_table
    assert coverage_table() in (DOCS / "coverage.md").read_text()


@pytest.fixture
def tree(tmp_path):
    """A copy of what the pages read, laid out as in the repository (tmp/validate/reports, tmp/docs)."""
    reports, docs = tmp_path / "validate" / "reports", tmp_path / "docs"
    for folder in (pages.CPU_REPORTS, pages.GPU_REPORTS):
        for pattern in READ:
            for path in (REPORTS / folder).glob(pattern):
                target = reports / path.relative_to(REPORTS)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, target)
    for path in [*(DOCS / page.name for page in pages.PAGES), DOCS / pages.TOY_LM / "summary.json"]:
        target = docs / path.relative_to(DOCS)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    return reports, docs


def pages_cli(tree, *flags):
    reports, docs = tree
    return main(["validate", "pages", "--reports", str(reports), "--docs", str(docs), *flags])


def judged_in_nats(summary) -> dict:
    """The first verdict with an effect in nats (a "not tested" one has none)."""
    return next(r for r in summary["predictions"] if isinstance(r.get("effect"), float) and r["unit"] == "nats")


def test_check_passes_on_a_faithful_copy_and_names_a_hand_edited_page(tree, capsys):
    assert pages_cli(tree, "--check") == 0
    page = tree[1] / "results-cpu.md"
    summary = json.loads((tree[0] / pages.CPU_REPORTS / "summary.json").read_text())
    cell = f"| {judged_in_nats(summary)['effect']:.3g} nats |"
    edited = page.read_text().replace(cell, "| 123.456 nats |")
    assert edited != page.read_text()
    page.write_text(edited)
    assert pages_cli(tree, "--check") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "results-cpu.md" in err[0] and "results-gpu-stale.md" not in err[0]
    assert page.read_text() == edited                     # --check writes nothing
    assert pages_cli(tree) == 0 and pages_cli(tree, "--check") == 0
    assert cell in page.read_text()


def test_a_changed_report_number_makes_its_page_stale_until_regenerated(tree, capsys):
    summary_path = tree[0] / pages.GPU_REPORTS / "summary.json"
    summary = json.loads(summary_path.read_text())
    row = next(r for r in summary["predictions"] if r["id"] == "P09a")
    assert f"{row['effect']:.3g} nats" in (tree[1] / "results-gpu-stale.md").read_text()
    row["effect"] = 123.456
    summary_path.write_text(json.dumps(summary))
    assert pages_cli(tree, "--check") == 1
    assert "results-gpu-stale.md" in capsys.readouterr().err
    assert pages_cli(tree) == 0
    assert "| 123 nats |" in (tree[1] / "results-gpu-stale.md").read_text()
    assert pages_cli(tree, "--check") == 0


@pytest.mark.parametrize("damage", ["no reports", "no summary", "garbled summary", "no commands", "no toy LM"])
def test_missing_or_damaged_input_is_one_line_and_exit_2(tree, damage, capsys):
    reports, docs = tree
    cpu = reports / pages.CPU_REPORTS
    if damage == "no reports":
        shutil.rmtree(reports)
    elif damage == "no summary":
        (cpu / "summary.json").unlink()
    elif damage == "garbled summary":
        (cpu / "summary.json").write_text('{"predictions": [')
    elif damage == "no commands":
        (cpu / "COMMANDS.md").write_text("no code block here\n")
    else:
        (docs / pages.TOY_LM / "summary.json").unlink()
    assert pages_cli(tree, "--check") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ldyn: error:") and "Traceback" not in err[0], err


def test_every_number_the_hand_written_results_page_quotes_is_on_a_generated_page():
    """docs/reading-the-results.md explains the tables in words; a decimal it quotes must still be on a generated
    page (or in the first-order page or the CPU reports' COMMANDS.md it cites), so a rerun report that moves a
    number makes this fail until the prose is updated."""
    import re
    text = (DOCS / "reading-the-results.md").read_text()
    text = re.sub(r"`[^`]*`|\]\([^)]*\)", "", text)       # commands and links hold no measured numbers
    sources = "\n".join([*(generated for generated in pages.generate(REPORTS, DOCS).values()),
                         (DOCS / "first-order.md").read_text(),
                         (REPORTS / pages.CPU_REPORTS / "COMMANDS.md").read_text(),
                         (REPORTS / pages.CPU_REPORTS / "regime" / "reread.md").read_text()])
    quoted = set(re.findall(r"(?<![\w.])\d+\.\d+(?:e-?\d+)?|(?<![\w.])\d+e-?\d+", text))
    assert len(quoted) > 20
    missing = sorted(n for n in quoted if not re.search(rf"(?<![\d.]){re.escape(n)}(?!\d)", sources))
    assert not missing, f"numbers in docs/reading-the-results.md on no generated page: {missing}"
