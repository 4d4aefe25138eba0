"""The command line as a whole: every command walked for its shared options and flags, presets, config files,
--print-config, grouped help without torch, bad input refused before anything is loaded."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest

from selfmodels.cli import build_parser, main

PIPELINE = [["forward", "train"], ["reproduce", "forward-self-models"], ["forward", "profile"], ["selfmodel-lm"],
            ["regularize"], ["reproduce", "self-modeling"], ["reproduce", "self-modeling-transformers"], ["closed-loop"],
            ["reproduce", "closed-loop"]]
PRESET_COMMANDS = [c for c in PIPELINE if c != ["regularize"]]
ALL = PIPELINE + [["forward", "eval"], ["forward", "sweep"], ["forward", "explore"], ["llc"], ["llc", "calibrate"]]


def _help(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines where it likes


def _config(argv, capsys) -> dict:
    assert main([*argv, "--print-config"]) == 0
    return json.loads(capsys.readouterr().out)


def _error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


def _commands() -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every runnable command's parser, found by walking the parser (subcommands and ``llc calibrate``)."""
    found = {}

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, (*path, name))
        for name, sub in getattr(parser, "children", {}).items():
            walk(sub, (*path, name))
        if getattr(parser, "command", None) is not None:
            found[path] = parser

    walk(build_parser(), ())
    return found


COMMANDS = _commands()
SHARED = ("--out", "--seed", "--device", "--threads", "--quiet", "--log", "--config", "--preset")


def test_the_lists_here_name_every_command():
    assert sorted(COMMANDS) == sorted(map(tuple, ALL))


HELP_WITHOUT_TORCH = """
import json, sys
from selfmodels.cli import main
seen = {}
for argv in json.loads(sys.argv[1]):
    try:
        main([*argv, "--help"])
    except SystemExit as exc:
        assert exc.code == 0, (argv, exc.code)
    seen[" ".join(argv)] = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))[:3]
print(json.dumps(seen))
"""


def test_help_imports_no_torch():
    """Every --help (the top level, each area, each command, and a preset's values) answers without importing torch:
    the settings and the command registration are torch-free; the work is imported when a command runs. One fresh
    interpreter runs them in turn, so a command that imports torch is named (benchmarks/cli_help.py times it)."""
    commands = [[], ["forward"], ["reproduce"], *ALL, ["forward", "train", "--preset", "quick"],
                ["selfmodel-lm", "--quick"], ["forward", "profile", "--subject", "gpt"]]
    done = subprocess.run([sys.executable, "-c", HELP_WITHOUT_TORCH, json.dumps(commands)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    assert list(seen) == [" ".join(c) for c in commands]
    assert {c: m for c, m in seen.items() if m} == {}, "these --help runs imported torch (first command listed first)"


def _visible(parser) -> dict[str, argparse.Action]:
    return {flag: a for a in parser._actions for flag in a.option_strings if a.help != argparse.SUPPRESS}


@pytest.mark.parametrize("command", ALL, ids=" ".join)
def test_shared_options_have_one_name_default_and_meaning(command):
    """--out --seed --device --threads --quiet --log --config --preset mean the same in every command that has them."""
    from selfmodels.curves import LOG_CHOICES

    parser = COMMANDS[tuple(command)]
    flags = _visible(parser)
    help_text = " ".join(parser.format_help().split())
    titles = {a: g.title for g in parser._action_groups for a in g._group_actions}
    settings = parser.command.cls is not None or parser.command.presets is not None
    assert ("--config" in flags) == settings and ("--print-config" in flags) == settings
    for flag in SHARED:
        if flag not in flags:
            continue
        action = flags[flag]
        assert titles[action] == ("main options" if flag in ("--out", "--preset") else "common options"), flag
        assert [f for f, a in flags.items() if a.dest == action.dest and f != "--quick"] == [flag], f"{flag}: one name"
        shown = " ".join(action.help.split())
        if flag == "--device":
            assert action.base_help == "auto (CUDA when present, else CPU), cpu, cuda or cuda:N"
            assert shown.endswith("(default: auto)")
        elif flag == "--threads":
            assert action.type is int
            if command == ["regularize"]:  # a grid trains runs in parallel processes: one thread each unless told
                assert shown.startswith("torch CPU threads of each process") and shown.endswith("(default: 1)")
            else:
                assert action.base_help == "torch CPU threads (none: torch's choice)" and shown.endswith("(default: none)")
        elif flag == "--quiet":
            assert action.nargs == 0 and action.base_help == "no progress bars" and shown.endswith("(default: False)")
        elif flag == "--log":
            assert tuple(action.choices) == LOG_CHOICES and shown.endswith("(default: [])")
        elif flag == "--seed":  # llc's: the estimator's (its default, 42, is the paper's)
            assert action.type is int and action.help.startswith("random seed")
        elif flag == "--config":
            assert action.help.startswith("settings from a JSON, TOML or YAML file")
        elif flag == "--preset":
            assert "full" in action.choices and shown.endswith("(default: full)")
        elif flag == "--out":
            assert action.type is not None and action.metavar in ("DIR", "FILE")
            assert "output directory" in action.help or command == ["forward", "explore"]  # explore: the page it writes
    assert "--no-progress" not in help_text and "--main" not in help_text  # the old names still work, hidden


def _run_print_config(parser, argv, capsys) -> dict | None:
    """The record --print-config prints for ``argv``, or None when the command refuses it (exit 2)."""
    from selfmodels.errors import UserError

    try:
        args = parser.parse_args([*argv, "--print-config"])
        assert args.func(args) == 0
    except (SystemExit, UserError):
        capsys.readouterr()
        return None
    return json.loads(capsys.readouterr().out)


ONE_VALUE = {"--model.architecture", "--forward.architecture", "--battery.observer.model.architecture"}  # a registry with one entry so far (transformer)


def _candidates(action, default) -> list[list[str]]:
    """Values for ``action`` unlike ``default``, in the order to try (the first one the command accepts is used)."""
    if isinstance(action, argparse.BooleanOptionalAction):
        return [[f"--no-{action.option_strings[0][2:]}" if default else action.option_strings[0]]]
    flag = action.option_strings[0]
    if action.nargs == 0:  # store_true / store_const (--quick)
        return [[flag]]
    if action.choices:
        others = [str(c) for c in action.choices if c != default and [c] != default]
        return [[flag, c] for c in others]
    if action.nargs == 2:  # --pair I J
        return [[flag, "0", "1"], [flag, "1", "2"]]
    if flag == "--sweeps.capacity":
        return [[flag, "1%"]]
    if action.nargs in ("*", "+"):
        items = [x + 1 for x in default] if default and all(isinstance(x, (int, float)) for x in default) else []
        return [[flag, *map(str, items)]] * bool(items) + [[flag, v] for v in ("1", "2", "0.5", "64")]
    strings = {"--subject": ["smollm2", "gpt"], "--corpus": ["kjv"], "--device": ["cpu"], "--task": ["imdb"],
               "--source": ["embed", "2"], "--target": ["2", "3"], "--method": ["forward"], "--site": ["resid:1"],
               "--loss": ["cosine"], "--flow": ["source"], "--llc": ["none"]}
    if flag in strings:
        return [[flag, v] for v in strings[flag] if v != default]
    if isinstance(default, bool):
        return [[flag, str(not default)]]
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        values = [default + 1, default - 1, default * 2, default / 2, 2, 1, 0]
        return [[flag, str(v if action.type is float else int(v))] for v in values if v != default]
    return [[flag, v] for v in ("2", "1", "0.5", "x")]


@pytest.mark.parametrize("command", [c for c in ALL if "--print-config" in _visible(COMMANDS[tuple(c)])], ids=" ".join)
def test_every_documented_flag_changes_the_resolved_config(command, capsys):
    """For each flag --help lists, a value other than the default changes what --print-config prints: no flag is
    accepted and then ignored or overwritten."""
    from selfmodels.configs import lookup

    parser = COMMANDS[tuple(command)]
    base_argv = ["--out", "o"] if "--out" in _visible(parser) else []
    base = _run_print_config(parser, base_argv, capsys)
    unchanged = []
    for flag, action in _visible(parser).items():
        if flag in ("-h", "--help", "--config", "--print-config", "--out") or flag != action.option_strings[0]:
            continue
        field = getattr(action, "field", None)
        where = (lambda r: r[field[1:]]) if field and field.startswith("@") else \
                (lambda r: lookup(r["config"], field)) if field else (lambda r: r)
        default = where(base)
        if flag in ONE_VALUE:  # no other valid value exists yet: an unknown one is refused, never ignored
            assert _run_print_config(parser, [*base_argv, flag, "no-such-value"], capsys) is None, flag
            continue
        for extra in _candidates(action, default):
            got = _run_print_config(parser, [*base_argv, *extra], capsys)
            if got is not None and got != base and (field is None or where(got) != default):
                break
        else:
            unchanged.append(flag)
    assert not unchanged, f"flags that change nothing in the resolved config of {' '.join(command)}: {unchanged}"


@pytest.mark.parametrize("command", PRESET_COMMANDS, ids=" ".join)
def test_presets_are_listed_and_default_to_the_papers_setting(command, capsys):
    text = _help(command, capsys)
    names = {("forward", "train"): "full, paper-toy, quick", ("reproduce", "forward-self-models"): "full, paper-toy, quick",
             ("closed-loop",): "full, quick, smollm2", ("reproduce", "closed-loop"): "full, quick, smollm2"}.get(
        tuple(command), "full, quick")
    assert f"one of: {names}" in text and "(full: the paper's setting)" in text and "(default: full)" in text
    assert _config([*command, "--out", "x"], capsys)["preset"] == "full"
    assert _config([*command, "--out", "x", "--quick"], capsys)["preset"] == "quick"
    assert _config([*command, "--out", "x", "--preset", "quick"], capsys)["preset"] == "quick"


def test_help_states_the_presets_values(capsys):
    assert "optimizer steps (default: 10000)" in _help(["forward", "train"], capsys)  # --train.steps
    assert "optimizer steps (default: 200)" in _help(["forward", "train", "--preset", "quick"], capsys)
    assert "(default: smollm2)" in _help(["forward", "profile"], capsys)


def test_unknown_preset_in_a_config_file_lists_the_known_ones(tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"preset": "tiny"}))
    assert "unknown preset 'tiny': known presets: full, paper-toy, quick" in _error(["forward", "train", "--config", str(path),
                                                                          "--out", "x"], capsys)


def test_precedence_preset_then_file_then_flags(tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text('preset = "quick"\n[config.train]\nsteps = 7\nlr = 0.5\n')
    cfg = _config(["forward", "train", "--out", "x", "--config", str(path), "--train.lr", "0.25"], capsys)
    assert cfg["preset"] == "quick" and cfg["config"]["train"]["steps"] == 7 and cfg["config"]["train"]["lr"] == 0.25
    assert cfg["config"]["train"]["batch_size"] == 16  # the quick preset's, untouched


@pytest.mark.parametrize("command", PIPELINE, ids=" ".join)
def test_print_config_round_trips_through_config(command, tmp_path, capsys):
    first = _config([*command, "--out", str(tmp_path / "o"), "--quick" if command in PRESET_COMMANDS else "--quiet"],
                    capsys)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(first))
    assert _config([*command, "--config", str(path)], capsys) == first
    # as a run writes it (regularize and the reproductions write exactly this record): version and commit added
    from selfmodels.artifacts import write_config

    write_config(tmp_path / "run", first)
    assert _config([*command, "--config", str(tmp_path / "run")], capsys) == first


def test_a_runs_config_json_shape_is_a_config_file(tmp_path, capsys):
    cfg = _config(["forward", "train", "--out", "x", "--quick", "--train.steps", "3"], capsys)
    record = {"selfmodels_version": "0", "git_commit": None, "experiment": "forward-self-models",
              "config": cfg["config"], "device": "cpu", "subject": {"name": "gpt"}}  # as the pipeline writes it
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps(record))
    again = _config(["forward", "train", "--out", "y", "--config", str(tmp_path / "run")], capsys)
    assert again["config"] == cfg["config"] and again["device"] == "cpu"
    lm = _config(["selfmodel-lm", "--out", "x", "--quick", "--method", "self-model"], capsys)["config"]
    (tmp_path / "lm.json").write_text(json.dumps({**lm, "key": "abc", "selfmodels_version": "0"}))  # run_one's shape
    assert _config(["selfmodel-lm", "--out", "x", "--config", str(tmp_path / "lm.json")], capsys)["config"] == lm


@pytest.mark.parametrize("content, message", [
    ({"config": {"train": {"stepz": 1}}}, "unknown key 'train.stepz'"),
    ({"colour": 1}, "unknown key 'colour'"),
    ({"command": "regularize"}, "is a config of `selfmodels regularize`"),
    ({"experiment": "forward-profile", "config": {}}, "config.json of a 'forward-profile' run"),
])
def test_bad_config_files_exit_2(content, message, tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(content))
    assert message in _error(["forward", "train", "--out", "x", "--config", str(path)], capsys)


def test_missing_and_unparsable_config_files_exit_2(tmp_path, capsys):
    assert "no such file" in _error(["forward", "train", "--out", "x", "--config", str(tmp_path / "none.json")], capsys)
    (tmp_path / "bad.json").write_text("{nope")
    assert "not valid JSON" in _error(["forward", "train", "--out", "x", "--config", str(tmp_path / "bad.json")], capsys)
    (tmp_path / "bad.toml").write_text("= 1")
    assert "not valid TOML" in _error(["regularize", "--out", "x", "--config", str(tmp_path / "bad.toml")], capsys)


def test_yaml_config_file(tmp_path, capsys):
    pytest.importorskip("yaml")
    (tmp_path / "c.yaml").write_text("config:\n  task: imdb\n  seeds: [3]\n")
    cfg = _config(["regularize", "--out", "x", "--config", str(tmp_path / "c.yaml")], capsys)["config"]
    assert cfg["task"] == "imdb" and cfg["seeds"] == [3]


@pytest.mark.parametrize("argv", [["forward", "train", "--subject.gpt.vocab-size", "9"],
                                  ["selfmodel-lm", "--gpt.vocab-size", "9"], ["selfmodel-lm", "--gpt.block-size", "9"],
                                  ["selfmodel-lm", "--objective.method", "forward"]])
def test_fields_set_for_the_user_are_not_flags(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--out", "x", "--print-config"])
    assert exc.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err


def test_old_names_still_work_with_a_notice(capsys):
    cfg = _config(["forward", "train", "--out", "x", "--main", "smollm2", "--no-progress"], capsys)
    assert cfg["config"]["subject"]["main"] == "smollm2" and cfg["quiet"] is True
    cfg = _config(["regularize", "--out", "x", "--source", "offline"], capsys)
    assert cfg["config"]["source"] == "offline"
    assert _config(["regularize", "--out", "x", "--data", "hub"], capsys)["config"]["source"] == "hub"
    assert main(["forward", "train", "--out", "x", "--main", "gpt", "--print-config"]) == 0
    assert "--main is now --subject" in capsys.readouterr().err
    assert _config(["reproduce", "self-modeling-transformers", "--out", "x", "--llc", "no"], capsys)["llc"] == "none"


def test_layer_indices_and_shorthands_change_the_config(capsys):
    cfg = _config(["forward", "train", "--out", "x", "--source", "embed", "--target", "2", "--corpus", "kjv", "--seed", "5"],
                  capsys)["config"]
    assert (cfg["source"], cfg["target"], cfg["corpus"]["corpus"], cfg["seed"]) == (-1, 2, "kjv", 5)
    cfg = _config(["selfmodel-lm", "--out", "x", "--method", "forward", "--strength", "2", "--pair", "0", "2",
                   "--flow", "source", "--loss", "cosine", "--site", "resid:1", "--subject", "gpt"], capsys)["config"]
    assert cfg["objective"] | {} == {**cfg["objective"], "method": "forward", "strength": 2.0, "source": 0, "target": 2,
                                     "flow": "source", "loss": "cosine", "site": "resid:1"}


def test_bad_input_names_the_flag_typed(tmp_path, capsys):
    taken = tmp_path / "file.txt"
    taken.write_text("x")
    assert "--out" in _error(["regularize", "--out", str(taken)], capsys)
    assert "--train.steps must be at least 1" in _error(["forward", "train", "--out", "x", "--train.steps", "-5",
                                                         "--print-config"], capsys)
    assert "--train.batch-size must be at least 1" in _error(["forward", "train", "--out", "x", "--train.batch-size", "0",
                                                              "--print-config"], capsys)
    assert "no such directory" in _error(["forward", "train", "--out", str(tmp_path / "o"), "--subject",
                                          str(tmp_path / "no" / "such")], capsys)
    assert "is a file, not a model directory" in _error(["forward", "train", "--out", str(tmp_path / "o"), "--subject",
                                                         str(taken)], capsys)
    assert "is a file, not a run directory" in _error(["llc", str(taken)], capsys)
    assert "is a file, not a run directory" in _error(["forward", "eval", str(taken)], capsys)
    grid = tmp_path / "grid"
    (grid / "runs" / "mnist-h8-baseline-s0").mkdir(parents=True)
    err = _error(["llc", str(grid)], capsys)
    assert "llc wants one run" in err and "mnist-h8-baseline-s0" in err
    assert not (tmp_path / "o").exists()


@pytest.fixture
def config_only_gpt2(tmp_path):
    """A Hugging Face model directory with config.json alone (GPT-2: 2 blocks, 256 learned positions) and no weights:
    a command that reaches the loader fails there, so a check that answers first ran before anything was loaded."""
    from transformers import GPT2Config

    GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=256, vocab_size=100, bos_token_id=0,
               eos_token_id=0).save_pretrained(tmp_path / "gpt2-tiny")
    return str(tmp_path / "gpt2-tiny")


@pytest.mark.parametrize("argv, message", [
    (["forward", "train", "--seq-len", "512", "--source", "0", "--target", "1"], "--seq-len 512 is longer than the 256 "),
    (["forward", "train", "--source", "0", "--target", "5"], "target 5 is out of range for"),
    (["forward", "profile", "--gap", "10"], "--gap 10 leaves no layer pair in a 2-block subject"),
    (["forward", "train", "--corpus", "/no/such/corpus.txt"], "corpus file /no/such/corpus.txt does not exist"),
    (["selfmodel-lm", "--site", "resid:9"], "unknown site 'resid:9' for a model with 2 blocks"),
    (["selfmodel-lm", "--seq-len", "300"], "--seq-len 300 is longer than the 256 positions of"),
])
def test_a_hugging_face_subject_is_checked_from_its_config_before_loading(argv, message, config_only_gpt2, tmp_path,
                                                                          capsys):
    err = _error([*argv, "--subject", config_only_gpt2, "--corpus" if "--corpus" not in argv else "--quiet",
                  *(["offline"] if "--corpus" not in argv else []), "--out", str(tmp_path / "o")], capsys)
    assert message in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv, message", [
    (["selfmodel-lm", "--method", "typo"], "unknown method 'typo'"),
    (["selfmodel-lm", "--method", "forward", "--pair", "3", "9"], "forward-form pair 3 -> 9 is out of range for 4 blocks"),
    (["selfmodel-lm", "--corpus", "fineweb-edu"], "HF_HUB_OFFLINE is set"),
    (["forward", "train", "--source", "5", "--target", "3"], "source 5 is out of range for our GPT (4 blocks)"),
    (["forward", "train", "--corpus", "fineweb-edu"], "HF_HUB_OFFLINE is set"),
    (["forward", "profile", "--subject", "gpt", "--layers", "7"], "--layers: source 7 with gap 1 is out of range"),
])
def test_our_gpts_settings_are_checked_before_a_corpus_is_tokenized(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SELFMODELS_CACHE", str(tmp_path / "cache"))  # tokenizing or training would write here
    assert message in _error([*argv, "--quick", "--out", str(tmp_path / "o")], capsys)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "o").exists()


def test_profile_gap_too_large_says_so():
    from selfmodels.errors import UserError
    from selfmodels.forward.profile import ProfileConfig, pairs_of

    with pytest.raises(UserError, match="--gap 10 leaves no layer pair in a 4-block subject: use --gap 4 at most"):
        pairs_of(ProfileConfig(gap=10), 4)


def test_llc_calibrate_is_a_subcommand(capsys):
    text = _help(["llc", "calibrate"], capsys)
    assert text.startswith("usage: selfmodels llc calibrate RUN_DIR") and "--epsilons" in text
    assert "llc calibrate RUN_DIR" in _help(["llc"], capsys)


def test_build_parser_has_every_command():
    parser = build_parser()
    assert "forward" in parser.format_help() and "selfmodel-lm" in parser.format_help()
