"""The config's resolvers and the checks a composed config must pass before anything runs."""

from __future__ import annotations

import math
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from softmax_lab.errors import ConfigError, UserError

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # the checkout: conf/, src/, outputs/


def launch_relative(url: str | None) -> str | None:
    """A sqlite URL with a relative path (`sqlite:///mlflow.db`, MLflow's and SQLAlchemy's: relative to the working
    directory) made absolute against the directory the command was launched from: with hydra.job.chdir=true Hydra
    moves each job into its run dir first, and the same URL would mean a new store in every job dir."""
    if not url or not url.startswith("sqlite:///") or url.startswith("sqlite:////") or ":memory:" in url:
        return url
    from hydra.core.hydra_config import HydraConfig

    path, sep, query = url[len("sqlite:///"):].partition("?")
    launched = Path(HydraConfig.get().runtime.cwd) if HydraConfig.initialized() else Path.cwd()
    return f"sqlite:///{(launched / path).resolve()}{sep}{query}"
CONFIG_DIR = PROJECT_ROOT / "conf"
TRIAL_KEY = "search.trial"  # the override that tells a job which trial of a search it is (hparams_search=optuna)


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT), replace=True)


def existing_key_added(argv: list[str], config_name: str = "train") -> str | None:
    """The one-line refusal for `+key=value` when `key` is already in the config, or None. Hydra's `+` only adds a
    new key; for a key whose value is an interpolation (trainer.default_root_dir) Hydra's own error is an
    unrelated "HydraConfig was not set". Read from the config files alone: no composition, nothing imported."""
    primary = OmegaConf.load(CONFIG_DIR / f"{config_name}.yaml")
    chosen = {}
    for entry in primary.get("defaults", []):
        if isinstance(entry, DictConfig | dict):
            chosen.update({str(k): v for k, v in entry.items()})
    chosen.update(dict(a.split("=", 1) for a in argv if "=" in a and "." not in a.split("=", 1)[0]
                       and not a.startswith(("+", "~", "-"))))
    for arg in argv:
        if not arg.startswith("+") or arg.startswith("++") or "=" not in arg:
            continue
        key = arg[1:].split("=", 1)[0]
        group, _, rest = key.partition(".")
        if rest and (CONFIG_DIR / group).is_dir() and chosen.get(group):
            node = _group_option(group, str(chosen[group]))
        else:
            node, rest = primary, key
        if node is not None and _has_key(OmegaConf.to_container(node, resolve=False), rest):
            value = arg.split("=", 1)[1]
            return (f"+{key}: {key} is already in the config, and Hydra's `+` only adds a new key. Fix: {key}={value} "
                    f"(or ++{key}={value}, which adds or changes it).")
    return None


def check_command_line(config_name: str) -> None:
    """Before Hydra reads the command line: a `+` on a key the config has is refused in one line (exit 1)."""
    import sys

    message = existing_key_added(sys.argv[1:], config_name) or search_without_multirun(sys.argv[1:])
    if message is not None:
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1)


def search_without_multirun(args: list[str]) -> str | None:
    """hparams_search=... is a multirun's sweeper: without -m Hydra would train one ordinary run and search nothing."""
    from softmax_lab.console import pasteable

    search = next((a for a in args if a.lstrip("+").startswith("hparams_search=")), None)
    if search is None or {"-m", "--multirun", "hydra.mode=MULTIRUN"} & set(args):
        return None
    return (f"{search} searches over many runs, which only a multirun does; without -m this would be one ordinary "
            f"run. Fix: {pasteable('src/train.py', ['-m', *args])}")


def _has_key(tree, dotted: str) -> bool:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return False
        tree = tree[part]
    return True


def _group_option(group: str, option: str) -> DictConfig | None:
    """A config group option's own keys merged over those of the options it extends (its `defaults`)."""
    path = CONFIG_DIR / group / f"{option}.yaml"
    if not path.is_file():
        return None
    node = OmegaConf.load(path)
    merged = OmegaConf.create()
    for base in node.get("defaults", []):
        if isinstance(base, str) and base != "_self_":
            merged = OmegaConf.merge(merged, _group_option(group, base) or {})
    node.pop("defaults", None)
    return OmegaConf.merge(merged, node)


def instantiate_checked(node, **kwargs):
    """hydra.utils.instantiate, with a mistake the target refuses (a UserError) raised as itself: Hydra's
    InstantiationException around it would add only its call site to the one-line message."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, UserError):
            raise e.__cause__  # noqa: B904 (the user's error is the whole story; its own cause is kept)
        raise


def compose(overrides: list[str], output_dir: str | Path, config_name: str = "train",
            return_hydra_config: bool = False) -> DictConfig:
    """The config `python src/<config_name>.py OVERRIDES` would run, writing to output_dir; for tests,
    benchmarks and notebooks (jobs/api.py), which call train(cfg) or evaluate(cfg) without a Hydra app."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose(config_name, overrides=[*overrides, f"paths.output_dir={output_dir}"],
                             return_hydra_config=return_hydra_config)


FLOAT32_MAX = 3.4028234663852886e38  # the settings meet float32 tensors: beyond it they overflow


def _is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and abs(v) <= FLOAT32_MAX


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _classes_ok(v) -> bool:
    if v is None:
        return True
    v = list(v) if OmegaConf.is_list(v) or isinstance(v, list | tuple) else None
    return (v is not None and len(v) >= 2 and all(_is_int(c) and 0 <= c <= 9 for c in v)
            and len(set(v)) == len(v))


MAX_SEED = 2**32 - 1  # Lightning's seed_everything (numpy's uint32)

# key, test, what is allowed, an example that works
RULES = [
    ("optimizer.lr", lambda v: _is_number(v) and v > 0, "a finite number > 0", "optimizer.lr=0.1"),
    ("optimizer.momentum", lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)", "optimizer.momentum=0.9"),
    ("optimizer.weight_decay", lambda v: _is_number(v) and v >= 0, "a finite number >= 0",
     "optimizer.weight_decay=1e-4"),
    ("optimizer.dampening", lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]", "optimizer.dampening=0"),
    ("optimizer.nesterov", lambda v: isinstance(v, bool), "true or false", "optimizer.nesterov=true"),
    ("optimizer.eps", lambda v: _is_number(v) and v > 0, "a finite number > 0", "optimizer.eps=1e-8"),
    ("optimizer.betas", lambda v: _pair_in_unit(v), "two numbers in [0, 1)", "optimizer.betas=[0.9,0.999]"),
    ("optimizer.amsgrad", lambda v: isinstance(v, bool), "true or false", "optimizer.amsgrad=true"),
    ("data.batch_size", lambda v: _is_int(v) and v >= 1, "an integer >= 1", "data.batch_size=256"),
    ("data.val_size", lambda v: _is_int(v) and 1 <= v <= 59999, "an integer in 1..59999", "data.val_size=5000"),
    ("data.resize", lambda v: v is None or (_is_int(v) and v >= 1), "null or an integer >= 1", "data.resize=64"),
    ("data.classes", _classes_ok, "null or a list of two or more distinct class ids in 0..9", "data.classes=[0,6]"),
    ("data.batches_per_step", lambda v: _is_int(v) and v >= 1, "an integer >= 1", "data.batches_per_step=8"),
    ("data.normalize", lambda v: isinstance(v, bool), "true or false", "data.normalize=true"),
    ("data.download", lambda v: isinstance(v, bool), "true or false", "data.download=true"),
    ("data.split_seed", lambda v: _is_int(v) and 0 <= v <= MAX_SEED, f"an integer in 0..{MAX_SEED}",
     "data.split_seed=0"),
    ("trainer.max_epochs", lambda v: _is_int(v) and (v >= 1 or v == -1), "an integer >= 1 (or -1: no limit)",
     "trainer.max_epochs=10"),
    ("trainer.log_every_n_steps", lambda v: _is_int(v) and v >= 0, "an integer >= 0 (0: no step losses)",
     "trainer.log_every_n_steps=50"),
    ("loss.margin", lambda v: _is_number(v) and v > 0, "a number > 0 that float32 holds (< 3.4e38)", "loss.margin=1.0"),
    ("loss.delta", lambda v: _is_number(v) and v > 0, "a number > 0 that float32 holds (< 3.4e38)", "loss.delta=1.0"),
    ("loss.on", lambda v: v in ("logits", "probs"), "logits or probs", "loss.on=probs"),
    ("model.init_std", lambda v: _is_number(v) and v >= 0, "a finite number >= 0", "model.init_std=0.01"),
    ("seed", lambda v: _is_int(v) and 0 <= v <= MAX_SEED, f"an integer in 0..{MAX_SEED}", "seed=42"),
]
EVAL_RULES = [
    ("batch_size", lambda v: _is_int(v) and v >= 1, "an integer >= 1", "batch_size=2048"),
    ("data_dir", lambda v: v is None or isinstance(v, str), "null or a folder", "data_dir=/path/to/fashion-mnist"),
]
_MISSING = object()


def _pair_in_unit(v) -> bool:
    v = list(v) if OmegaConf.is_list(v) or isinstance(v, list | tuple) else None
    return v is not None and len(v) == 2 and all(_is_number(b) and 0 <= b < 1 for b in v)


def _faults(cfg: DictConfig, rules) -> list[str]:
    faults = []
    for key, ok, allowed, example in rules:
        value = OmegaConf.select(cfg, key, default=_MISSING, throw_on_missing=False)
        if value is _MISSING:
            continue
        if not ok(value):
            shown = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
            faults.append(f"{key}={shown!r} is not allowed: expected {allowed} (e.g. {example})")
    return faults


def _optimizer_faults(optimizer) -> list[str]:
    """Options the chosen optimizer does not take, and nesterov without what torch requires of it."""
    import inspect

    from hydra.utils import get_class

    target = optimizer.get("_target_")
    try:
        cls = get_class(target)
        accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "params"}
    except (ImportError, AttributeError, ValueError, TypeError):  # no such class, or not a class with a signature
        return [f"optimizer._target_={target!r} is not an optimizer class (e.g. optimizer=sgd or optimizer=adam)"]
    faults = []
    unknown = sorted(k for k in optimizer if k != "_target_" and k not in accepted)
    if unknown:
        options = ", ".join(sorted(accepted - {"foreach", "maximize", "capturable", "differentiable", "fused"}))
        faults.append(f"{', '.join('optimizer.' + k for k in unknown)} not an option of {target} (its options: "
                      f"{options}; remove it with ~optimizer.{unknown[0]}, or choose another optimizer=)")
    if optimizer.get("nesterov") and not (optimizer.get("momentum", 0) > 0 and optimizer.get("dampening", 0) == 0):
        faults.append("optimizer.nesterov=true needs momentum > 0 and dampening = 0, as torch.optim.SGD does "
                      "(e.g. optimizer.momentum=0.9)")
    return faults


def _memory_faults(cfg: DictConfig) -> list[str]:
    """data.resize makes every image side^2 floats: refuse what would not fit in the machine's memory."""
    side = OmegaConf.select(cfg, "data.resize", default=None)
    if not _is_int(side) or side <= 28:
        return []
    classes = OmegaConf.select(cfg, "data.classes", default=None)
    share = len(classes) / 10 if classes else 1.0
    need = 70_000 * share * (side * side + 784) * 4 * 1.1  # the resized splits, the 28x28 copy being resized
    have = available_memory()
    if have is None or need <= 0.8 * have:
        return []
    fits = int(math.sqrt(max(0.8 * have / (70_000 * share * 4 * 1.1) - 784, 1)))
    return [f"data.resize={side} needs about {need / 2**30:.1f} GiB for the data set in memory, this machine has "
            f"{have / 2**30:.1f} GiB available (e.g. data.resize={min(fits, 64)}, or data.classes=[0,6] for fewer "
            "images)"]


def available_memory() -> int | None:
    """Bytes of memory available now (Linux /proc/meminfo), or None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


# What training reads whole: deleting one (`~seed`) is refused with what to write instead. Other deletions are honoured
# as Hydra means them: the key is not set (`~trainer.max_epochs`: Lightning's default; `~callbacks`: none).
NEEDED = {"seed": ("seed", "seed=42"), "logger": ("logger._target_", "logger=none to train without tracking"),
          "ckpt_path": ("ckpt_path", "ckpt_path=null"), "data": ("data._target_", "data=fashion_mnist"),
          "model": ("model._target_", "model=softmax_regression"), "loss": ("loss._target_", "loss=ce"),
          "optimizer": ("optimizer._target_", "optimizer=sgd"), "trainer": ("trainer", "trainer=default"),
          "paths": ("paths.output_dir", "paths=default")}  # key: (what shows it is there, what to write instead)


def _deleted_faults(cfg: DictConfig) -> list[str]:
    return [f"~{key} deletes what training needs (fix: {fix} instead)" for key, (probe, fix) in NEEDED.items()
            if OmegaConf.select(cfg, probe, default=_MISSING, throw_on_missing=False) is _MISSING]


def validate_config(cfg: DictConfig) -> None:
    """Raise one ConfigError listing every value out of range, naming the key, what is allowed and an example."""
    faults = _deleted_faults(cfg)
    if faults:
        raise ConfigError("invalid config: " + "; ".join(faults) + ".")
    faults = _faults(cfg, RULES)
    if "optimizer" in cfg and not any(f.startswith("optimizer.") for f in faults):
        faults += _optimizer_faults(OmegaConf.to_container(cfg.optimizer, resolve=True))
    faults += _memory_faults(cfg)
    if faults:
        raise ConfigError("invalid config: " + "; ".join(faults) + ".")


def validate_eval_config(cfg: DictConfig) -> None:
    """eval.py's own keys: ckpt_path is required."""
    if OmegaConf.is_missing(cfg, "ckpt_path") or not cfg.ckpt_path:
        raise ConfigError("ckpt_path is required: the checkpoint to evaluate, e.g. "
                          "`python src/eval.py ckpt_path=outputs/runs/<date>/<time>/checkpoints/best-epoch07.ckpt`.")
    faults = _faults(cfg, EVAL_RULES)
    if faults:
        raise ConfigError("invalid config: " + "; ".join(faults) + ".")
