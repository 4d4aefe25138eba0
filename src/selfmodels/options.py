"""What every command of ``selfmodels`` shares: its common options, its presets and its config files.

A command is described by a :class:`Command`: the dataclass of its settings (if it has one), its presets
(data files: partial configs laid over the dataclass's defaults) and the options of the command itself
(``--out``, ``--device``, ...). Its settings resolve in one order, stated in every ``--help``::

    the dataclass's defaults  <  --preset NAME  <  --config FILE  <  the flags given

``--print-config`` prints the result as JSON (a valid ``--config`` file) and runs nothing; a run's
``config.json`` is a valid ``--config`` file too. This module imports no torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Sequence

from selfmodels.configs import add_arguments, from_args, from_dict, overlay, show_defaults, to_dict, validate
from selfmodels.errors import UserError

# Keys a run's config.json records beside its settings: accepted in a config file, not settings.
RECORD_KEYS = ("selfmodels_version", "git_commit", "key")
PRECEDENCE = "Settings resolve as: the preset < --config FILE < the flags given."
DEVICE_HELP = "auto (CUDA when present, else CPU), cpu, cuda or cuda:N"  # --device, in every command that has it
THREADS_HELP = "torch CPU threads (none: torch's choice)"
GPT = "gpt"


class CommandParser(argparse.ArgumentParser):
    """argparse with a one-line error (exit 2), whose ``--help`` states the values a preset or config file gives."""

    command: "Command | None" = None

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        self._argv = list(sys.argv[1:] if args is None else args)
        children = getattr(self, "children", {})  # a subcommand beside a positional (``llc calibrate RUN_DIR``)
        if self._argv and self._argv[0] in children:
            return children[self._argv[0]].parse_known_args(self._argv[1:], namespace)
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        if self.command is not None:
            self.command.show(self, getattr(self, "_argv", []))
        return super().format_help()


# ---- presets ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Presets:
    """A command's presets: ``<package>/presets/<prefix><name>.json`` files, partial configs.

    ``prefixes`` pairs a file-name prefix with the kind of subject it is for (``gpt``: ours, trained here;
    ``pretrained``; None: any). A name's file is the one for the subject's kind, else the one for any.
    A new preset is a new file; keys starting with ``_`` are comments (``_about`` is its help line)."""

    package: str | None
    prefixes: tuple[tuple[str, str | None], ...]
    default: str = "full"
    folder: str = "presets"
    names_: tuple[str, ...] = ()  # package None: presets defined in code (a reproduction's grids), by name only

    def _files(self) -> dict[tuple[str, str | None], str]:
        """(name, kind) -> file name."""
        found = {}
        if self.package is None:
            return {(name, None): "" for name in self.names_}
        for entry in resources.files(self.package).joinpath(self.folder).iterdir():
            stem = entry.name.removesuffix(".json")
            if stem == entry.name:
                continue
            for prefix, kind in self.prefixes:  # the first matching prefix names the file
                if stem.startswith(prefix):
                    found[(stem[len(prefix):], kind)] = entry.name
                    break
        return found

    def names(self) -> list[str]:
        """The known names, the default first."""
        names = sorted({name for name, _ in self._files()})
        return sorted(names, key=lambda n: n != self.default)

    def load(self, name: str, subject: str | None) -> dict:
        """The preset's partial config (comments dropped) for a subject; an unknown name is a UserError."""
        files = self._files()
        if name not in self.names():
            raise UserError(f"unknown preset {name!r}: known presets: {', '.join(self.names())}")
        kind = GPT if subject in (None, GPT) else "pretrained"
        file = files.get((name, kind)) or files.get((name, None))
        if file is None:
            for_kinds = sorted(k for n, k in files if n == name and k)
            raise UserError(f"preset {name!r} is for a {' or '.join(for_kinds)} subject, not {subject!r}: presets for it: "
                            f"{', '.join(sorted({n for n, k in files if k in (kind, None)}))}")
        if self.package is None:
            return {}
        text = resources.files(self.package).joinpath(self.folder, file).read_text(encoding="utf-8")
        return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


    def config(self, cls: type, name: str, subject: str | None = None) -> Any:
        """The preset as an instance of ``cls``: its partial config laid over ``cls``'s defaults."""
        return from_dict(cls, overlay(to_dict(cls()), self.load(name, subject), f"preset {name}: "))


# ---- config files ----------------------------------------------------------------------------------


def read_config_file(path: str | Path) -> dict:
    """A ``--config`` file as a dict: JSON, TOML or YAML (by suffix); a run directory means its config.json."""
    p = Path(path)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise UserError(f"--config {path}: a directory without config.json: give a config file or a run directory")
        p = p / "config.json"
    if not p.exists():
        raise UserError(f"--config {path}: no such file")
    text = p.read_text(encoding="utf-8")
    suffix = p.suffix.lower()
    try:
        if suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise UserError(f"--config {path}: YAML needs PyYAML, which is not installed (pip install pyyaml), "
                                "or write the file as JSON or TOML") from None
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except UserError:
        raise
    except Exception as exc:  # each parser has its own error type; all mean the same here
        kind = {".toml": "TOML", ".yaml": "YAML", ".yml": "YAML"}.get(suffix, "JSON")
        raise UserError(f"--config {path}: not valid {kind}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"--config {path}: expected a table of settings at the top, got {type(data).__name__}")
    return data


# ---- the command description -----------------------------------------------------------------------


class _Renamed(argparse.Action):
    """An old flag name: works as the new one, with a one-line notice on stderr."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"selfmodels: {option_string} is now {self.new}; please use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


@dataclass
class Resolved:
    """A command's resolved settings: ``config`` (its dataclass, or None), ``options`` (out, device, ...)."""

    command: str
    preset: str | None
    config: Any
    options: dict

    def record(self) -> dict:
        """The ``--print-config`` / ``config.json`` form (a valid ``--config`` file)."""
        out = {"command": self.command}
        if self.preset is not None:
            out["preset"] = self.preset
        out.update({k: str(v) if isinstance(v, Path) else v for k, v in self.options.items()})
        if self.config is not None:
            out["config"] = to_dict(self.config)
        return out

    def __getattr__(self, name: str) -> Any:  # resolved.out, resolved.device, ...
        options = self.__dict__.get("options", {})
        if name in options:
            return options[name]
        raise AttributeError(name)


@dataclass
class Command:
    """How one subcommand's flags, config file and preset become its settings.

    ``options``: the command's own options and their defaults (each flag's dest is its key); ``subject``:
    the dotted field ``--subject`` sets; ``experiment``: the ``experiment`` a run's config.json of this
    command records (another one is refused); ``adjust``: a change the command makes to every preset
    (e.g. ``forward train``: no sweeps); ``derived``: dotted fields that are not flags, and why."""

    name: str
    cls: type | None = None
    presets: Presets | None = None
    options: dict[str, Any] = field(default_factory=dict)
    subject: str | None = None
    experiment: str | None = None
    adjust: Callable[[dict], dict] | None = None
    derived: dict[str, str] = field(default_factory=dict)
    record_keys: tuple[str, ...] = ()
    out_is_dir: bool = True
    out_required: bool = True
    finish: Callable[[Any, argparse.Namespace], Any] | None = None  # flags that set several fields (``--pair I J``)
    usage: str = ""  # the positionals, as the usage line shows them (e.g. "RUN_DIR ")

    # -- the parser --
    def parser(self, subparsers: argparse._SubParsersAction, name: str, *, help: str, description: str,
               main_flags: Callable[[argparse._ArgumentGroup], None] | None = None, exclude: Sequence[str] = (),
               positionals: Callable[[argparse.ArgumentParser], None] | None = None,
               extra: Callable[[argparse.ArgumentParser], None] | None = None) -> CommandParser:
        """The subcommand's parser: positionals, then "main options" (the flags a user needs), the common
        options, the command's own (``extra``) and one section per group of settings."""
        notes = [PRECEDENCE] if (self.presets or self.cls) else []
        if self.derived:
            notes.append("Not flags (set for you): " + "; ".join(f"{k} ({why})" for k, why in self.derived.items()) + ".")
        parser = subparsers.add_parser(name, help=help, description=description, epilog=" ".join(notes) or None,
                                       usage=f"%(prog)s {self.usage}[options]")
        parser.command = self
        if positionals:
            positionals(parser)
        main = parser.add_argument_group("main options")
        if main_flags:
            main_flags(main)
        self._main_options(main)
        self._common_options(parser.add_argument_group("common options"))
        if extra:
            extra(parser)
        if self.cls is not None:
            add_arguments(parser, self.cls, exclude=set(exclude) | set(self.derived) | {"seed", "device", "threads"},
                          groups=True)
        self.show(parser, [])
        return parser

    _out_help = "output directory (a finished run is read back, an interrupted one resumed)"

    def _main_options(self, main: argparse._ArgumentGroup) -> None:
        """``--out`` and ``--preset`` / ``--quick``, after the command's own main flags."""
        if "out" in self.options:
            main.add_argument("--out", dest="out", default=argparse.SUPPRESS, type=Path, metavar="DIR" if self.out_is_dir else "FILE",
                              help=self._out_help + (" (required)" if self.out_required else ""))
        if self.presets:
            names = self.presets.names()
            self._opt(main, "--preset", "preset", choices=names, metavar="NAME",
                      help=f"named settings, one of: {', '.join(names)} ({self.presets.default}: the paper's setting)")
            if "quick" in names:
                main.add_argument("--quick", dest="preset", action="store_const", const="quick", default=argparse.SUPPRESS,
                                  help="the same as --preset quick (CPU-sized)")

    def _common_options(self, common: argparse._ArgumentGroup) -> None:
        """The options every command shares, each with one name, meaning and default: ``--config``, ``--print-config``,
        ``--seed``, ``--device``, ``--threads``, ``--quiet``, ``--log``."""
        if self.cls is not None or self.presets is not None:
            common.add_argument("--config", metavar="FILE", default=None,
                                help="settings from a JSON, TOML or YAML file (a run's config.json reruns it); flags override it")
            common.add_argument("--print-config", action="store_true",
                                help="print the resolved settings as JSON (a valid --config file) and run nothing")
        fields = {f.name: f for f in dataclasses.fields(self.cls)} if self.cls is not None else {}
        if "seed" in fields:
            action = common.add_argument("--seed", dest="seed", type=int, default=argparse.SUPPRESS, help="", metavar="N")
            action.field, action.base_help = "seed", "random seed"
        for name, flag_type, help_text in (("device", str, DEVICE_HELP), ("threads", int, THREADS_HELP)):
            if name in self.options:
                self._opt(common, f"--{name}", name, type=flag_type, metavar=name.upper() if name == "device" else "N",
                          help=help_text)
            elif name in fields:  # a settings field of the same meaning (regularize: the grid's device and threads)
                action = common.add_argument(f"--{name}", dest=name, type=flag_type, default=argparse.SUPPRESS, help="",
                                             metavar=name.upper() if name == "device" else "N")
                action.field, action.base_help = name, fields[name].metadata.get("help", help_text)
        if "quiet" in self.options:
            self._opt(common, "--quiet", "quiet", action="store_true", help="no progress bars")
            common.add_argument("--no-progress", dest="quiet", action="store_true", default=argparse.SUPPRESS,
                                help=argparse.SUPPRESS)  # the old name
        if "log" in self.options:
            from selfmodels.curves import LOG_CHOICES, LOG_HELP

            self._opt(common, "--log", "log", nargs="+", choices=LOG_CHOICES, metavar="{" + ",".join(LOG_CHOICES) + "}",
                      help=LOG_HELP.replace("%", "%%") + " (metrics.jsonl always)")

    def _opt(self, group, flag: str, dest: str, **kwargs) -> argparse.Action:
        action = group.add_argument(flag, dest=dest, default=argparse.SUPPRESS, **kwargs)
        action.field, action.base_help = f"@{dest}", kwargs.get("help", "")
        return action

    def flag(self, group, flag: str, field: str, help: str, **kwargs) -> argparse.Action:
        """A main-options flag for the settings field ``field`` (dotted), its default stated from the preset."""
        kwargs.setdefault("metavar", field.rsplit(".", 1)[-1].upper())
        action = group.add_argument(flag, dest=field.replace(".", "__"), default=argparse.SUPPRESS, help=help, **kwargs)
        action.field, action.base_help = field, help
        return action

    def rename(self, parser: argparse.ArgumentParser, old: str, new: str, dest: str, **kwargs) -> None:
        """Accept ``old`` as ``new`` (hidden from --help), with a notice on stderr."""
        parser.add_argument(old, dest=dest, action=_Renamed, new=new, default=argparse.SUPPRESS, help=argparse.SUPPRESS,
                            **kwargs)

    # -- resolution --
    def _base(self, preset: str | None, subject: str | None) -> dict | None:
        if self.cls is None:
            if self.presets is not None:
                self.presets.load(preset, subject)  # an unknown name (e.g. from a config file) is refused
            return None
        data = to_dict(self.cls())
        if self.presets is not None:
            data = overlay(data, self.presets.load(preset, subject), f"preset {preset}: ")
        if self.subject is not None and subject is not None:
            _set(data, self.subject, subject)
        return self.adjust(data) if self.adjust else data

    def _split_file(self, data: dict, path: str) -> tuple[str | None, dict, dict | None]:
        """A config file's (preset, options, settings); the settings sit under ``config`` or, as in a run's
        config.json of some commands, at the top level."""
        data = dict(data)
        command = data.pop("command", None)
        if command is not None and command != self.name:
            raise UserError(f"--config {path} is a config of `selfmodels {command}`, not of `selfmodels {self.name}`")
        experiment = data.pop("experiment", None)
        if experiment is not None and experiment != self.experiment:
            raise UserError(f"--config {path} is the config.json of a {experiment!r} run, not of `selfmodels {self.name}`")
        for key in RECORD_KEYS + self.record_keys:
            data.pop(key, None)
        preset = data.pop("preset", None)
        options = {k: data.pop(k) for k in list(data) if k in self.options}
        if self.cls is None:
            settings = None
        elif "config" in data:
            settings = data.pop("config")
            if not isinstance(settings, dict):
                raise UserError(f"--config {path}: 'config' must be a table of settings")
        else:
            names = {f.name for f in dataclasses.fields(self.cls)}
            settings = {k: data.pop(k) for k in list(data) if k in names}
        if data:
            known = sorted({"command", "preset", *self.options} | ({"config"} if self.cls else set()))
            raise UserError(f"--config {path}: unknown key {sorted(data)[0]!r} for `selfmodels {self.name}`; known: "
                            f"{', '.join(known)}")
        return preset, options, settings

    def _layers(self, args_preset: str | None, args_subject: str | None, config_path: str | None):
        file_preset, file_options, file_settings = None, {}, None
        if config_path:
            file_preset, file_options, file_settings = self._split_file(read_config_file(config_path), config_path)
        preset = args_preset or file_preset or (self.presets.default if self.presets else None)
        subject = args_subject
        if subject is None and file_settings and self.subject:
            try:
                subject = _get(file_settings, self.subject)
            except (KeyError, TypeError):
                subject = None
        if subject is None and self.cls is not None and self.subject:
            subject = _get(to_dict(self.cls()), self.subject)
        base = self._base(preset, subject)
        if file_settings is not None:
            try:
                base = overlay(base, file_settings)
            except UserError as exc:
                raise UserError(f"--config {config_path}: {exc}") from None
        options = {**self.options, **file_options}
        return preset, base, options

    def resolve(self, args: argparse.Namespace) -> Resolved:
        """The settings of this command for parsed ``args``: preset < --config file < flags; validated."""
        given = vars(args)
        subject = given.get(self.subject.replace(".", "__")) if self.subject else None
        preset, base, options = self._layers(given.get("preset"), subject, given.get("config"))
        if self.presets is None:
            preset = None
        options.update({k: given[k] for k in self.options if k in given})
        config = None
        if self.cls is not None:
            config = from_args(self.cls, args, base=from_dict(self.cls, base))
            if self.finish is not None:
                config = self.finish(config, args)
        if "out" in options and options["out"] is not None:
            options["out"] = Path(options["out"])
        return Resolved(self.name, preset, config, options)

    def show(self, parser: argparse.ArgumentParser, argv: Sequence[str]) -> None:
        """Restate the defaults in ``parser``'s help as those of the preset / config file named in ``argv``."""
        found = _scan(argv, ("--preset", "--config", "--subject", "--main"))
        if "--quick" in argv:
            found.setdefault("--preset", "quick")
        try:
            preset, base, options = self._layers(found.get("--preset"), found.get("--subject") or found.get("--main"),
                                                 found.get("--config"))
        except UserError:
            return  # the run itself reports it
        values = dict(base or {})
        values.update({f"@{k}": v for k, v in options.items()})
        values["@preset"] = preset
        show_defaults(parser, values)


def _get(data: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        data = data[part]
    return data


def _set(data: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        data = data[part]
    data[last] = value


def _scan(argv: Sequence[str], flags: Sequence[str]) -> dict[str, str]:
    """The values of ``flags`` in ``argv`` (``--flag value`` or ``--flag=value``), the last one winning."""
    found = {}
    for i, arg in enumerate(argv):
        for flag in flags:
            if arg == flag and i + 1 < len(argv):
                found[flag] = argv[i + 1]
            elif arg.startswith(flag + "="):
                found[flag] = arg.split("=", 1)[1]
    return found


# ---- running a command -----------------------------------------------------------------------------


def runner(command: Command, run: Callable[[Resolved, argparse.Namespace], int | None]) -> Callable[[argparse.Namespace], int]:
    """The function a parser calls: resolve the settings, check them, then print them or ``run`` them."""

    def call(args: argparse.Namespace) -> int:
        resolved = command.resolve(args)
        if resolved.config is not None:
            validate(resolved.config)
        if getattr(args, "print_config", False):
            print(json.dumps(resolved.record(), indent=2))
            return 0
        if "out" in resolved.options:
            out = resolved.options["out"]
            if out is None and command.out_required:
                raise UserError("--out is required (on the command line or in the --config file)")
            if out is not None and command.out_is_dir and Path(out).exists() and not Path(out).is_dir():
                raise UserError(f"--out {out} is an existing file, not a directory: give a directory (it is made if missing)")
        return int(run(resolved, args) or 0)

    return call


def check_subject(name: str, flag: str = "--subject") -> None:
    """A subject that is a path must be a model directory (a Hugging Face id or ``gpt`` / ``smollm2`` is not a path)."""
    p = Path(name).expanduser()
    looks_like_path = name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1
    if p.is_file():
        raise UserError(f"{flag} {name} is a file, not a model directory: give a directory holding config.json and "
                        "the weights, a Hugging Face model id, gpt or smollm2")
    if looks_like_path and not p.exists():
        raise UserError(f"{flag} {name}: no such directory: give a local model directory, a Hugging Face model id, "
                        "gpt or smollm2")
    if p.is_dir() and not (p / "config.json").is_file():
        raise UserError(f"{flag} {name} is a directory without config.json: not a model directory (give one saved with "
                        "save_pretrained, a Hugging Face model id, gpt or smollm2)")


def subject_shape(name: str) -> dict | None:
    """A Hugging Face subject's ``{"blocks": n, "positions": p}`` read from its config alone (no weights), so that a
    command checks its layer indices and sequence length before it loads a model or tokenizes a corpus. None for our
    GPT (its settings say), the packaged smollm2 before its first load converts it, and a config that cannot be read
    here (loading it then says why)."""
    if name == GPT:
        return None
    if name == "smollm2":  # the packaged model: the config of its converted copy
        from selfmodels.runtime import cache_dir
        from selfmodels.subjects.hf_loading import SMOLLM2_CACHE_NAME

        name = str(cache_dir() / SMOLLM2_CACHE_NAME)
        if not (Path(name) / "config.json").is_file():
            return None
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(Path(name).expanduser()) if Path(name).expanduser().is_dir() else name)
    except Exception:  # not in the cache offline, no such id, a config transformers does not know: the load reports it
        return None
    if getattr(config, "is_encoder_decoder", False):  # not a subject at all: loading it says so, not a layer check
        return None
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:  # no causal LM (a ViT): the load says that, not a layer check
        return None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    blocks = getattr(text, "num_hidden_layers", None)
    positions = getattr(text, "max_position_embeddings", None) or getattr(text, "n_positions", None)
    return None if not isinstance(blocks, int) else {"blocks": blocks, "positions": positions}


def check_seq_len(seq_len: int, name: str, shape: dict | None, flag: str = "--seq-len") -> None:
    """A sequence no longer than the positions the subject has (GPT-2's learned positions would fail inside it)."""
    positions = (shape or {}).get("positions")
    if isinstance(positions, int) and seq_len > positions:
        raise UserError(f"{flag} {seq_len} is longer than the {positions} positions of {name}: use {flag} {positions} "
                        "at most")


def pair_into(group: str) -> Callable[[Any, argparse.Namespace], Any]:
    """A command's ``finish`` for ``--pair I J``: it sets ``<group>.source`` and ``<group>.target`` of the settings."""

    def finish(cfg, args: argparse.Namespace):
        if getattr(args, "pair", None) is None:
            return cfg
        source, target = args.pair
        return dataclasses.replace(cfg, **{group: dataclasses.replace(getattr(cfg, group), source=source, target=target)})

    return finish


def check_run_dir(path: Path, flag: str, what: str) -> None:
    """A positional run directory that exists and is a directory."""
    p = Path(path)
    if p.is_file():
        raise UserError(f"{flag} {path} is a file, not a run directory: give the directory {what}")
    if not p.is_dir():
        raise UserError(f"{flag} {path} does not exist: give the directory {what}")


__all__ = ["Command", "CommandParser", "Presets", "Resolved", "check_run_dir", "check_seq_len", "check_subject",
           "pair_into", "read_config_file", "runner", "subject_shape"]
