"""The README's library examples run as written, and every command line of the README, the docs and the Makefile
parses (so they stay true to the code)."""

import itertools
import re
import shlex
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
EXAMPLES = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_has_examples():
    assert len(EXAMPLES) >= 2


@pytest.mark.parametrize("code", EXAMPLES, ids=[f"example{i}" for i in range(len(EXAMPLES))])
def test_readme_example_runs(code, capsys):
    exec(compile(code, str(README), "exec"), {"__name__": "readme_example"})
    printed = capsys.readouterr().out
    assert printed.strip(), "each example prints its result"
    assert "nan" not in printed.lower()


# ---- the command lines of the README, the docs and the Makefile parse -------------------------------------------
ROOT = README.parent
PLACES = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "Makefile"]
PLACEHOLDERS = {"N": "2", "K": "2", "I": "0", "J": "1", "W": "1", "$(OUT)": "runs/demo"}


def _command_lines() -> list[tuple[str, list[str]]]:
    """(where, argv) for every ``selfmodels ...`` command line: in code blocks and Makefile recipes (also behind
    ``torchrun ... -m selfmodels.cli``), and in inline code spans. A synopsis is read as its first spelling:
    ``[--opt X]`` as given, ``a|b`` as ``a``, ``...`` dropped; a bare command name (``selfmodels llc``) is a name,
    not a command line."""
    found = []
    for path in PLACES:
        text = path.read_text(encoding="utf-8").replace("\\\n", " ")
        in_code = path.suffix != ".md"
        for number, line in enumerate(text.splitlines(), 1):
            if line.lstrip().startswith("```"):
                in_code = not in_code
                continue
            spans = [line] if in_code else re.findall(r"`([^`]+)`", line)
            for span in spans:
                match = re.search(r"(?:^|[\s/])(?:selfmodels|-m selfmodels\.cli)\s+(?=[a-z-])(.*)", span)
                if match is None or re.search(r"(?:^|\s)selfmodels\.", span[:match.start(1)]) and "-m selfmodels.cli" not in span:
                    continue
                words = shlex.split(match.group(1).split(" #")[0], posix=True)
                words = list(itertools.takewhile(lambda w: w not in ("&&", "|", ";", ">", "2>&1"), words))
                words = [PLACEHOLDERS.get(w, w) for w in (w.strip("[]").split("|")[0] for w in words) if w not in ("", "...")]
                if words and words[0] in COMMANDS and not all(w in NAMES for w in words):
                    found.append((f"{path.relative_to(ROOT)}:{number}", words))
    return found


COMMANDS = {"forward", "reproduce", "regularize", "llc", "selfmodel-lm", "closed-loop"}
NAMES = COMMANDS | {"train", "eval", "sweep", "profile", "explore", "calibrate", "self-modeling", "forward-self-models",
                    "self-modeling-transformers"}
LINES = _command_lines()


def test_the_docs_have_command_lines():
    assert len(LINES) >= 20 and {w[0] for _, w in LINES} == COMMANDS


def test_every_documented_command_line_parses(capsys):
    """Each command line the README, the docs and the Makefile show is accepted by the parser as written (no old
    flag names, no unknown flags, every value of the right type); ``--help`` lines print their help."""
    from selfmodels.cli import build_parser

    parser = build_parser()
    refused = []
    for where, argv in LINES:
        try:
            parser.parse_args(argv)
        except SystemExit as exc:
            if exc.code != 0:
                refused.append(f"{where}: selfmodels {' '.join(argv)}: {capsys.readouterr().err.strip()}")
        err = capsys.readouterr().err
        if " is now " in err:
            refused.append(f"{where}: selfmodels {' '.join(argv)}: {err.strip()}")
    assert not refused, "\n".join(refused)
