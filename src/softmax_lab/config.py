"""The config's resolvers and the checks a composed config must pass before anything runs."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from softmax_lab.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # the checkout: conf/, src/, outputs/
CONFIG_DIR = PROJECT_ROOT / "conf"


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT), replace=True)


def compose(overrides: list[str], output_dir: str | Path, config_name: str = "train") -> DictConfig:
    """The config `python src/<config_name>.py OVERRIDES` would run, writing to output_dir; for tests,
    benchmarks and notebooks, which call train(cfg) or evaluate(cfg) without a Hydra app."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose(config_name, overrides=[*overrides, f"paths.output_dir={output_dir}"])


def _is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _classes_ok(v) -> bool:
    if v is None:
        return True
    v = list(v) if OmegaConf.is_list(v) or isinstance(v, list | tuple) else None
    return (v is not None and len(v) >= 2 and all(_is_int(c) and 0 <= c <= 9 for c in v)
            and len(set(v)) == len(v))


# key, test, what is allowed, an example that works
RULES = [
    ("optimizer.lr", lambda v: _is_number(v) and v > 0, "a number > 0", "optimizer.lr=0.1"),
    ("optimizer.momentum", lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)", "optimizer.momentum=0.9"),
    ("optimizer.weight_decay", lambda v: _is_number(v) and v >= 0, "a number >= 0", "optimizer.weight_decay=1e-4"),
    ("data.batch_size", lambda v: _is_int(v) and v >= 1, "an integer >= 1", "data.batch_size=256"),
    ("data.val_size", lambda v: _is_int(v) and 1 <= v <= 59999, "an integer in 1..59999", "data.val_size=5000"),
    ("data.resize", lambda v: v is None or (_is_int(v) and v >= 1), "null or an integer >= 1", "data.resize=64"),
    ("data.classes", _classes_ok, "null or a list of two or more distinct class ids in 0..9", "data.classes=[0,6]"),
    ("data.batches_per_step", lambda v: v is None or (_is_int(v) and v >= 1), "null or an integer >= 1",
     "data.batches_per_step=8"),
    ("data.normalize", lambda v: isinstance(v, bool), "true or false", "data.normalize=true"),
    ("data.download", lambda v: isinstance(v, bool), "true or false", "data.download=true"),
    ("trainer.max_epochs", lambda v: _is_int(v) and v >= 1, "an integer >= 1", "trainer.max_epochs=10"),
    ("loss.margin", lambda v: _is_number(v) and v > 0, "a number > 0", "loss.margin=1.0"),
    ("loss.delta", lambda v: _is_number(v) and v > 0, "a number > 0", "loss.delta=1.0"),
    ("loss.on", lambda v: v in ("logits", "probs"), "logits or probs", "loss.on=probs"),
    ("model.init_std", lambda v: _is_number(v) and v >= 0, "a number >= 0", "model.init_std=0.01"),
    ("seed", _is_int, "an integer", "seed=42"),
]
_MISSING = object()


def validate_config(cfg: DictConfig) -> None:
    """Raise one ConfigError listing every value out of range, naming the key, what is allowed and an example."""
    faults = []
    for key, ok, allowed, example in RULES:
        value = OmegaConf.select(cfg, key, default=_MISSING, throw_on_missing=False)
        if value is _MISSING:
            continue
        if not ok(value):
            shown = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
            faults.append(f"{key}={shown!r} is not allowed: expected {allowed} (e.g. {example})")
    if faults:
        raise ConfigError("invalid config: " + "; ".join(faults) + ".")
