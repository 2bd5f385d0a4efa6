"""The README holds exactly two set-up commands, and CI runs the second one verbatim."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def setup_commands():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(?:bash|sh)\n(.+?)\n```", section, flags=re.S)


def test_exactly_two_setup_commands_one_runs_the_tour_one_the_tests():
    commands = setup_commands()
    assert len(commands) == 2, commands
    tour, tests = commands
    for command in commands:
        assert "\n" not in command.strip()
        assert "pip install torch==2.13.0" in command  # a plain `torch` pulls a multi-GB CUDA build
    assert tour.strip().endswith("ldyn tour")
    assert "pytest" in tests


def test_ci_runs_the_readme_test_command():
    ci_lines = [line for line in (ROOT / ".ci/run").read_text().splitlines()
                if line.strip() and not line.startswith("#") and not line.startswith(("set ", "cd "))]
    assert ci_lines == [setup_commands()[1].strip()]


def test_every_readme_figure_names_the_command_that_made_it():
    text = (ROOT / "README.md").read_text()
    for match in re.finditer(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert (ROOT / match.group(1)).exists(), f"README figure missing: {match.group(1)}"
        after = text[match.end():match.end() + 400]
        assert "ldyn " in after, f"no command given under the figure {match.group(1)}"


def test_readme_links_the_coverage_table_which_is_the_catalogues():
    from learning_dynamics.theory.predictions import coverage_table
    assert "(docs/coverage.md)" in (ROOT / "README.md").read_text()
    assert coverage_table() in (ROOT / "docs" / "coverage.md").read_text()


def test_readme_examples_print_what_the_command_prints(capsys):
    """A ```-block that starts with `$ ldyn ...` shows that command's output verbatim: its numbers are measured."""
    import shlex
    from learning_dynamics.validate.ldyn import main
    examples = re.findall(r"```\n\$ (ldyn [^\n]+)\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert examples
    for command, shown in examples:
        assert main(shlex.split(command)[1:]) == 0
        assert capsys.readouterr().out == shown, command


def test_every_theorem_test_named_by_the_catalogue_exists():
    from learning_dynamics.theory.predictions import THEOREM_TESTS
    for pid, tests in THEOREM_TESTS.items():
        for test in tests:
            path, name = test.split("::")
            assert f"def {name}(" in (ROOT / path).read_text(), (pid, test)
