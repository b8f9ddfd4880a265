"""Typed training configuration: dataclasses loaded from YAML, validated before any work starts.

The key names follow the earlier port (ka-tsu-mo/pytorch-uniformface) so that its users' configs and
`--set key=value` overrides keep working (README, "The real workflow"): `alpha` is the weight of the uniform loss (the
paper's λ in Eq. 6) and `beta` the center update rate (the paper's α in Eq. 7).
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .atomic import atomic_write_text
from .paths import read_utf8_text, shown
from .registry import ASOFTMAX_GRADIENTS, CENTER_MODES, HEAD_NAMES, MODEL_NAMES, UNIFORM_REDUCTIONS


MAX_YAML_DEPTH = 50  # a config is 3 levels deep, a run's config_history.yaml 5
MAX_YAML_INT_CHARS = 30  # a 64-bit integer has 19 digits; Python's int() refuses over 4,300, naming no file


class UnsafeYAML(yaml.composer.ComposerError):
    """YAML that the project refuses to build, whatever it holds: an alias (`*name`, `<<: *name`), which
    no config needs and which nests into an unbounded expansion ("billion laughs": ten lines standing for
    10^9 list items make validation hang and grow to gigabytes), or a nesting deeper than MAX_YAML_DEPTH
    (PyYAML's composer recurses once per level: `[[[[...` ends in a RecursionError), or an integer longer
    than MAX_YAML_INT_CHARS. Refused as the text is read, before anything is built from it; the message is
    one line, the problem and where it is."""

    def __str__(self) -> str:
        mark = self.problem_mark
        return f"{self.problem} (line {mark.line + 1}, column {mark.column + 1})"


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader (no Python objects) with two changes: YAML 1.2's floats (YAML 1.1 reads
    `1e-3` as a string), and no aliases, deep nesting or huge integers (`UnsafeYAML`)."""

    depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise UnsafeYAML(problem=f"YAML alias *{event.anchor} refused (aliases can expand without bound); "
                                     "write the value out in full", problem_mark=event.start_mark)
        if self.depth >= MAX_YAML_DEPTH:
            raise UnsafeYAML(problem=f"nested more than {MAX_YAML_DEPTH} levels deep (no setting needs that)",
                             problem_mark=event.start_mark)
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_short_int(self, node):
        if len(node.value) > MAX_YAML_INT_CHARS:
            raise UnsafeYAML(problem=f"an integer of {len(node.value)} characters (no setting needs more than "
                                     f"{MAX_YAML_INT_CHARS})", problem_mark=node.start_mark)
        return self.construct_yaml_int(node)


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_short_int)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"""
               r"""|[0-9][0-9_]*[eE][-+]?[0-9]+|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"""),
    list("-+0123456789."))


def yaml_load(text: str):
    """The one YAML reader of the project (config files, `--set` and `--grid` values, a run folder's
    config.yaml and config_history.yaml): PyYAML's safe loader, YAML 1.2 floats, aliases and deep nesting
    refused (`UnsafeYAML`, a yaml.YAMLError)."""
    return yaml.load(text, Loader=_Loader)


def read_yaml(path: str | Path) -> Any:
    """A YAML file's content, or ValueError naming the file, and the line where the decoder or the parser
    stopped, when it is not UTF-8 text (`paths.read_utf8_text`) or not YAML (an OSError when it cannot be
    read at all)."""
    path = Path(path)
    text = read_utf8_text(path)
    try:
        return yaml_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        if isinstance(exc, UnsafeYAML):
            raise ValueError(f"{where}: {exc.problem}") from None
        raise ValueError(f"{where}: not valid YAML ({getattr(exc, 'problem', None) or exc})") from None


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the key."""


# CASIA-WebFace identities that also appear in LFW (SphereFace's release drops them).
CASIA_IDENTITIES_IN_LFW = ["0166921", "1056413", "1193098"]


@dataclass
class DatasetConfig:
    """`test` / `pairs`: the aligned LFW folder and its pairs.txt, evaluated every `eval_every` iterations
    and by test.py; both null: no LFW folder (a run that validates on `val_targets`' lfw.bin instead)."""
    train: str = "data/processed/CASIA-WebFace"
    test: str | None = "data/processed/lfw"
    pairs: str | None = "data/pairs.txt"
    exclude_identities: list[str] = field(default_factory=lambda: list(CASIA_IDENTITIES_IN_LFW))


@dataclass
class LossConfig:
    """Classification head. `m`/`s` left null take the head's paper value (A-Softmax m=4, CosFace
    s=64 m=0.35, ArcFace s=64 m=0.5). `base/gamma/power/lambda_min` are A-Softmax's λ schedule
    (official `sphereface_solver.prototxt` / margin layer: 1000, 0.12, 1, 5)."""

    name: str = "sphereface"
    m: float | None = None
    s: float | None = None
    base: float = 1000.0
    gamma: float = 0.12
    power: float = 1.0
    lambda_min: float = 5.0
    gradient: str = "official"  # A-Softmax backward: official (Caffe layer's Backward_cpu) | autograd


@dataclass
class Config:
    seed: int = 0
    device: str = "auto"  # auto = cuda when available, else cpu
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model_name: str = "sphereface20"
    emb_dim: int = 512
    input_size: list[int] = field(default_factory=lambda: [112, 96])
    batch_size: int = 512  # global, split over ranks under torchrun (the official 2 GPUs x 256)
    num_workers: int = 4
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: list[int] = field(default_factory=lambda: [16000, 24000])
    lr_gamma: float = 0.1
    max_iters: int = 28000
    warmup_iters: int = 0
    grad_clip: float = 0.0  # 0 = off
    checkpoint_every: int = 1000
    log_every: int = 20
    eval_every: int = 0  # >0: LFW-protocol evaluation on dataset.test / dataset.pairs every N iterations
    # insightface .bin sets (lfw.bin, cfp_fp.bin, agedb_30.bin, ...) evaluated every eval_every iterations with
    # test.py --bin's protocol, each logged as val/<file stem> (arcface_torch's val_targets)
    val_targets: list[str] = field(default_factory=list)
    min_images_per_class: int = 0
    flip: bool = True
    loss: LossConfig = field(default_factory=LossConfig)
    alpha: float = 1.0  # weight of the uniform loss (paper's λ, Eq. 6)
    beta: float = 0.5  # center update rate (paper's α, Eq. 7); 0.5 = center loss's value
    compute_in_batch: bool = False  # True: only the batch's class centers enter the loss
    center_mode: str = "feature"  # feature (paper) | weight (earlier port: head weights as centers)
    normalize_centers: bool = True  # centers of unit features, on the unit sphere in Eq. 6 (False: raw features)
    # center: each center's mean potential, summed over centers, per image of the batch (force on a center
    # independent of M) | pairs: Eq. 6 as printed (mean over M(M-1) ordered pairs; force fades like 1/M)
    uniform_reduction: str = "center"
    regularface: float = 0.0  # weight of RegularFace's exclusive regulariser
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    channels_last: bool = True
    compile: bool = False
    deterministic: bool = False
    # False: the loss is checked for NaN/inf at each log point (every log_every iterations) and before each
    # checkpoint, from values summed on the device, so that steps never wait for a GPU; True: at every step
    # too, which stops a diverging run at the very step (one wait for the device per step)
    check_finite_every_step: bool = False

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


# the registry's lists, which the builders are looked up from
_CHOICES = {
    "model_name": MODEL_NAMES,
    "loss.name": HEAD_NAMES,
    "loss.gradient": ASOFTMAX_GRADIENTS,
    "center_mode": CENTER_MODES,
    "uniform_reduction": UNIFORM_REDUCTIONS,
}


def _type_matches(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_matches(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        return isinstance(value, list) and all(_type_matches(v, item_type) for v in value)
    if annotation is float:  # YAML writes 1 for 1.0
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


def _build(cls: type, data: dict, where: str, prefix: str = "") -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: '{prefix.rstrip('.') or 'config'}' must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = prefix + str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.0)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
            raise ConfigError(f"{where}: unknown key '{dotted}'{hint}")
        annotation = hints[key]
        if dataclasses.is_dataclass(annotation):
            kwargs[key] = _build(annotation, value, where, dotted + ".")
            continue
        if not _type_matches(value, annotation):
            raise ConfigError(f"{where}: key '{dotted}' expects {_type_name(annotation)}, got {shown(value)}")
        kwargs[key] = float(value) if annotation is float else value
    return cls(**kwargs)


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def validate(cfg: Config, where: str = "config") -> Config:
    """Checks that go beyond types; run before any data is touched."""
    for dotted, value in _float_keys(cfg):  # first: YAML reads .nan and .inf, which pass any comparison below
        if not math.isfinite(value):
            raise ConfigError(f"{where}: key '{dotted}' must be a finite number, got {value}")
    for dotted, allowed in _CHOICES.items():
        value = get_key(cfg, dotted)
        if value not in allowed:
            raise ConfigError(f"{where}: key '{dotted}' is {value!r}; choose one of {', '.join(allowed)}")
    positive = ["emb_dim", "batch_size", "max_iters", "checkpoint_every", "log_every"]
    for key in positive:
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"{where}: key '{key}' must be > 0, got {getattr(cfg, key)}")
    if len(cfg.input_size) != 2 or cfg.input_size[0] != 112 or cfg.input_size[1] not in (96, 112):
        raise ConfigError(f"{where}: key 'input_size' must be [112, 96] or [112, 112], got {cfg.input_size}")
    if sorted(cfg.milestones) != cfg.milestones:
        raise ConfigError(f"{where}: key 'milestones' must be increasing, got {cfg.milestones}")
    for key in ("alpha", "beta", "lr", "weight_decay", "num_workers", "warmup_iters", "grad_clip", "eval_every",
                "min_images_per_class", "regularface"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"{where}: key '{key}' must be >= 0, got {getattr(cfg, key)}")
    if cfg.beta > 1:
        raise ConfigError(f"{where}: key 'beta' (center update rate) must be in [0, 1], got {cfg.beta}")
    _validate_ranges(cfg, where)
    _validate_evaluation_sets(cfg, where)
    return cfg


def _validate_evaluation_sets(cfg: Config, where: str) -> None:
    """`val_targets`: `.bin` names whose stems (the `val/<stem>` they are logged as) differ; the LFW folder
    and its pairs named together or not at all. Whether the files exist is `check_evaluation_files`'s."""
    stems: dict[str, str] = {}
    for path in cfg.val_targets:
        if Path(path).suffix != ".bin":
            raise ConfigError(f"{where}: key 'val_targets': {path!r} is not an insightface .bin set (the name "
                              "must end in .bin: lfw.bin, cfp_fp.bin, agedb_30.bin, ...)")
        stem = Path(path).stem
        if stem in stems:
            raise ConfigError(f"{where}: key 'val_targets': {stems[stem]} and {path} share the set name "
                              f"{stem!r} (each is logged as val/<file name without .bin>); list each set once")
        stems[stem] = path
    if (cfg.dataset.test is None) != (cfg.dataset.pairs is None):
        given, empty = ("test", "pairs") if cfg.dataset.pairs is None else ("pairs", "test")
        raise ConfigError(f"{where}: key 'dataset.{empty}' is null but 'dataset.{given}' is not: give the LFW "
                          "folder and its pairs.txt together, or neither")


def evaluates_lfw_folder(cfg: Config) -> bool:
    """Whether a run evaluates dataset.test / dataset.pairs while it trains."""
    return cfg.eval_every > 0 and cfg.dataset.pairs is not None


def check_evaluation_files(cfg: Config, where: str = "config") -> None:
    """ConfigError naming the key and the path of the first file that the evaluations during training will
    read and that is not there: each of `val_targets`, and with `eval_every` the LFW folder and its
    pairs.txt. Checked before any work (a missing set would otherwise stop the run at its first evaluation,
    eval_every iterations in); kept out of `validate` so that a run folder's config.yaml can be read where
    its sets are not (a resume passes new paths with --set)."""
    for path in cfg.val_targets:
        if not Path(path).is_file():
            what = f"{path} is a folder, not a .bin file" if Path(path).is_dir() else f"no such file {path}"
            raise ConfigError(f"{where}: key 'val_targets': {what} (insightface's verification sets: lfw.bin, "
                              "cfp_fp.bin, agedb_30.bin, ... of its dataset zoo)")
    if evaluates_lfw_folder(cfg):
        for key, path, kind, exists in (("dataset.test", cfg.dataset.test, "the aligned LFW folder", Path.is_dir),
                                        ("dataset.pairs", cfg.dataset.pairs, "LFW's pairs.txt", Path.is_file)):
            if not exists(Path(path)):
                raise ConfigError(f"{where}: key '{key}': {path} is not {kind}, which eval_every={cfg.eval_every} "
                                  "evaluates while training (set both dataset.test and dataset.pairs to null to "
                                  "evaluate val_targets only, or eval_every=0)")


def _float_keys(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) of every float-typed field, nested sections included (keys added later too)."""
    out = []
    hints = typing.get_type_hints(type(node))
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            out += _float_keys(value, f"{prefix}{f.name}.")
        elif _type_matches(1.0, hints[f.name]) and isinstance(value, float):
            out.append((prefix + f.name, value))
    return out


_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


def _validate_ranges(cfg: Config, where: str) -> None:
    """The ranges in which each number means something (beyond the checks in `validate`)."""

    def need(dotted: str, ok: bool, rule: str) -> None:
        if not ok:
            raise ConfigError(f"{where}: key '{dotted}' must be {rule}, got {get_key(cfg, dotted)}")

    # SGD passes lr (x2 for biases) to PyTorch as a float32 scalar: beyond that range it fails with a traceback
    need("lr", 0 < cfg.lr < 1.7e38, "> 0 and < 1.7e38 (float32 range)")
    need("momentum", 0 <= cfg.momentum < 1, "in [0, 1)")
    need("lr_gamma", 0 < cfg.lr_gamma <= 1, "in (0, 1] (the lr is multiplied by it at each milestone)")
    loss = cfg.loss
    for key in ("base", "gamma", "power", "lambda_min"):
        need(f"loss.{key}", getattr(loss, key) >= 0, ">= 0")
    if loss.s is not None:
        need("loss.s", loss.s > 0, "> 0 (the feature scale), or null for the head's default")
    if loss.m is not None:
        if loss.name == "sphereface":
            need("loss.m", loss.m >= 1 and float(loss.m).is_integer(), "a positive integer for A-Softmax (paper: 4)")
        elif loss.name == "cosface":
            need("loss.m", 0 <= loss.m < 1, "in [0, 1) for CosFace (paper: 0.35)")
        elif loss.name == "arcface":
            need("loss.m", 0 <= loss.m < math.pi / 2, "an angle in [0, pi/2) for ArcFace (paper: 0.5)")
    if not isinstance(cfg.device, str) or not _DEVICE.match(cfg.device):
        raise ConfigError(f"{where}: key 'device' is {cfg.device!r}; choose auto, cpu, cuda, cuda:N or mps")


def get_key(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def parse_overrides(pairs: list[str] | None) -> dict:
    """`["loss.name=cosface", "milestones=[10, 20]"]` -> nested dict; values parsed as YAML."""
    nested: dict = {}
    for item in pairs or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml_load(raw) if raw.strip() else None
        except UnsafeYAML as exc:
            raise ConfigError(f"--set {key}: {exc}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}: cannot parse value {raw!r} as YAML ({exc})") from exc
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: '{part}' is set both as a value and as a section")
        node[parts[-1]] = value
    return nested


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def from_dict(data: dict, where: str = "config") -> Config:
    return validate(_build(Config, data, where), where)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a YAML file (None = defaults), apply `--set` overrides, validate. Raises ConfigError."""
    data: dict = {}
    where = "defaults"
    if path is not None:
        where = str(path)
        try:
            data = read_yaml(path)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if data is None:  # an empty file: the defaults
            data = {}
        if not isinstance(data, dict):  # checked before --set merges into it (a list has no keys to set)
            raise ConfigError(f"{path}: a config is a mapping of keys (`lr: 0.1`, one a line), got a YAML "
                              f"{_yaml_kind(data)}")
    if overrides:
        data = _merge(data, parse_overrides(overrides))
        where += " (with --set)"
    return from_dict(data, where)


def _yaml_kind(value: Any) -> str:
    return {list: "list", str: "string", bool: "boolean", int: "number", float: "number"}.get(type(value),
                                                                                          type(value).__name__)


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


# --------------------------------------------------------------------------- what a resumed run changed

# Beside a run folder's config.yaml: a YAML list, one entry per resume that changed a setting
# ({iteration: N, time: ..., changed: {dotted key: {from: old, to: new}}}); config.yaml itself always
# holds the settings in force at the end.
HISTORY_FILE = "config_history.yaml"


def changed_settings(before: dict, after: dict, prefix: str = "") -> dict[str, dict]:
    """{dotted key: {"from": old, "to": new}} for every setting that differs between two config
    mappings (nested sections walked; a key missing on one side counts as None)."""
    changes: dict[str, dict] = {}
    for key in list(before) + [k for k in after if k not in before]:
        old, new = before.get(key), after.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            changes.update(changed_settings(old, new, f"{prefix}{key}."))
        elif old != new:
            changes[f"{prefix}{key}"] = {"from": old, "to": new}
    return changes


def read_history(folder: str | Path) -> list[dict]:
    """The run folder's setting changes, oldest first ([] when it has none). A file there that is not a
    list of entries is a ValueError naming it."""
    path = Path(folder) / HISTORY_FILE
    if not path.is_file():
        return []
    history = read_yaml(path)
    if history is None:
        return []
    if not isinstance(history, list) or not all(isinstance(e, dict) and isinstance(e.get("changed"), dict)
                                                for e in history):
        raise ValueError(f"{path}: expected a list of entries with 'iteration' and 'changed' (written by "
                         "train.py --resume); fix it or delete it")
    return history


def history_lines(history: list[dict]) -> list[str]:
    """One line per entry: `from iteration 3: lr 0.05 -> 0.01, beta 0.5 -> 0.1`."""
    return [f"from iteration {entry.get('iteration')}: "
            + ", ".join(f"{key} {_setting_text(change.get('from'))} -> {_setting_text(change.get('to'))}"
                        for key, change in entry["changed"].items() if isinstance(change, dict))
            for entry in history]


def _setting_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)  # 0.01, [16000, 24000], true, null


def record_settings(folder: str | Path, before: dict, cfg: Config, iteration: int, when: str = "") -> dict[str, dict]:
    """At a resume from the checkpoint of `iteration`: when the settings now in force (`cfg`) differ from
    `before` (those the run had: its config.yaml), append what changed, and from which iteration, to
    HISTORY_FILE, then rewrite config.yaml with `cfg`; both atomically, the history first, so that a kill
    between the two leaves the old config.yaml and an entry that the next resume does not repeat.
    Returns the changes ({} when none: then nothing is written)."""
    folder = Path(folder)
    changes = changed_settings(before, to_dict(cfg))
    if not changes:
        return changes
    history = read_history(folder)
    entry = {"iteration": int(iteration), "time": when, "changed": changes}
    last = history[-1] if history else {}
    if (last.get("iteration"), last.get("changed")) != (entry["iteration"], changes):
        atomic_write_text(folder / HISTORY_FILE, yaml.safe_dump(history + [entry], sort_keys=False))
    save_config(cfg, folder / "config.yaml")
    return changes


def run_name(cfg: Config) -> str:
    """Run folder name derived from the settings users compare (as the earlier port's train.py did); the
    uniform loss's reading is appended only where it differs from the default (`_raw`, `_pairs`)."""
    reading = ("" if cfg.normalize_centers == Config.normalize_centers else "_raw" if not cfg.normalize_centers
               else "_sphere")
    reading += "" if cfg.uniform_reduction == Config.uniform_reduction else f"_{cfg.uniform_reduction}"
    return (f"seed{cfg.seed}_{cfg.model_name}_{cfg.loss.name}_emb{cfg.emb_dim}"
            f"_alpha{cfg.alpha:g}_beta{cfg.beta:g}_{'batch' if cfg.compute_in_batch else 'all'}_{cfg.center_mode}"
            + reading)
