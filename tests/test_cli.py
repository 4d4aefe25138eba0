"""The command line as a whole: shared options, presets, config files, --print-config, grouped help, bad input."""

from __future__ import annotations

import json

import pytest

from selfmodels.cli import build_parser, main

PIPELINE = [["forward", "train"], ["reproduce", "forward-self-models"], ["forward", "profile"], ["selfmodel-lm"],
            ["regularize"], ["reproduce", "self-modeling"], ["reproduce", "self-modeling-transformers"]]
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


@pytest.mark.parametrize("command", ALL, ids=" ".join)
def test_shared_options_have_one_name_and_default(command, capsys):
    text = _help(command, capsys)
    assert "main options" in text.split("common options")[0] or "positional" in text
    if "--device" in text and command != ["regularize"]:  # regularize: its grid's own device field (auto too)
        assert "auto (CUDA when present, else CPU)" in text and "(default: auto)" in text
    if "--threads N" in text and command != ["regularize"]:
        assert "torch's choice" in text
    assert "--no-progress" not in text  # the old name still works, hidden
    assert "--main" not in text


@pytest.mark.parametrize("command", PRESET_COMMANDS, ids=" ".join)
def test_presets_are_listed_and_default_to_the_papers_setting(command, capsys):
    text = _help(command, capsys)
    assert "one of: full, quick" in text and "(full: the paper's setting)" in text and "(default: full)" in text
    assert _config([*command, "--out", "x"], capsys)["preset"] == "full"
    assert _config([*command, "--out", "x", "--quick"], capsys)["preset"] == "quick"
    assert _config([*command, "--out", "x", "--preset", "quick"], capsys)["preset"] == "quick"


def test_help_states_the_presets_values(capsys):
    assert "forward-model optimizer steps (default: 10000)" in _help(["forward", "train"], capsys)
    assert "forward-model optimizer steps (default: 200)" in _help(["forward", "train", "--preset", "quick"], capsys)
    assert "(default: smollm2)" in _help(["forward", "profile"], capsys)


def test_unknown_preset_in_a_config_file_lists_the_known_ones(tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"preset": "tiny"}))
    assert "unknown preset 'tiny': known presets: full, quick" in _error(["forward", "train", "--config", str(path),
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
