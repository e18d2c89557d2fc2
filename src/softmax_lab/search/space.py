"""The search space, in Hydra's sweep syntax, as Optuna distributions.

The sweeper's `params` and the command line are read the way Hydra's Optuna sweeper reads them:
`interval(a, b)` is a float range (`tag(log, ...)` on a log scale, `tag(int, ...)` whole numbers), `range(a, b,
step=s)` Hydra's end-exclusive range, `choice(...)` or `a,b,c` a categorical choice. A plain `key=value` on the
command line for a key the space searches fixes it: the command line wins, and the search says so (`fixed`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep

from softmax_lab.errors import ConfigError


@dataclass
class SearchSpace:
    """What a search varies (key -> Optuna distribution) and how each sampled value is written as an override."""

    distributions: dict = field(default_factory=dict)
    spelled: dict = field(default_factory=dict)  # key -> {native value: its override spelling}, for choices
    described: dict = field(default_factory=dict)  # key -> the syntax the user wrote, e.g. "tag(log, interval(...))"
    written: dict = field(default_factory=dict)  # key -> how the override names it ("+trainer.x" for an added key)
    fixed: dict = field(default_factory=dict)  # key -> (value given on the command line, the searched syntax it beat)
    overrides: list = field(default_factory=list)  # the command line's other overrides, passed to every trial

    def override(self, key: str, value) -> str:
        """`key=value` as Hydra parses it back to `value`."""
        return f"{self.written.get(key, key)}={self.spelled.get(key, {}).get(_hashable(value), spell(value))}"

    def trial_overrides(self, params: dict) -> list[str]:
        return [self.override(k, params[k]) for k in self.distributions]


def spell(value) -> str:
    """A value as a Hydra override spells it (true, null, quoted strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return repr(value) if isinstance(value, float) else str(value)


def _hashable(value):
    return (type(value).__name__, value)


def distribution(override: Override):
    """The Optuna distribution an override's sweep stands for; ConfigError for one Optuna cannot sample."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    sweep, key = override.value(), override.key_or_group
    if isinstance(sweep, ChoiceSweep):
        return CategoricalDistribution(list(sweep.list))
    if isinstance(sweep, RangeSweep):
        values = list(override.sweep_iterator())
        if not values:
            raise ConfigError(f"search space: {override.input_line} is empty. Fix: give a range with values.")
        if all(isinstance(v, int) for v in values):  # a descending range is the same set of values, ascending
            return IntDistribution(min(values), max(values), step=abs(int(sweep.step)))
        return CategoricalDistribution(values)  # a float range: its values, as Hydra would sweep them
    if isinstance(sweep, IntervalSweep):
        log, as_int = "log" in sweep.tags, "int" in sweep.tags
        if log and sweep.start <= 0:
            raise ConfigError(f"search space: {override.input_line} is on a log scale from {sweep.start}. "
                              "Fix: start the interval above 0.")
        if as_int:
            return IntDistribution(int(sweep.start), int(sweep.end), log=log)
        return FloatDistribution(float(sweep.start), float(sweep.end), log=log)
    raise ConfigError(f"search space: {key}={override.input_line.split('=', 1)[1]} is not something Optuna samples. "
                      "Fix: use interval(a, b), tag(log, interval(a, b)), range(a, b, step=s) or choice(a, b).")


def search_space(params: dict | None, arguments: list[str]) -> SearchSpace:
    """The space from the sweeper's `params` and the command line's overrides (the command line wins)."""
    parser = OverridesParser.create()
    space = SearchSpace()
    searched = parser.parse_overrides([f"{k}={v}" for k, v in (params or {}).items()])
    given = parser.parse_overrides(list(arguments))
    given_keys = {o.key_or_group for o in given}
    for o in searched:
        if o.key_or_group not in given_keys:
            _add(space, o)
    for o in given:
        if o.is_sweep_override():
            _add(space, o)
            continue
        before = [s.input_line.split("=", 1)[1] for s in searched if s.key_or_group == o.key_or_group]
        if before:  # the command line fixes what the space would search: it wins, and the search says so
            space.fixed[o.key_or_group] = (o.input_line.split("=", 1)[1], before[0])
        space.overrides.append(o.input_line)
    return space


def _add(space: SearchSpace, o: Override) -> None:
    key = o.key_or_group
    space.written[key] = o.get_key_element()
    if o.is_delete():
        raise ConfigError(f"search space: {o.input_line} deletes a key; a search can only vary values.")
    space.distributions[key] = distribution(o)
    space.described[key] = o.input_line.split("=", 1)[1]
    if o.is_choice_sweep() or o.is_range_sweep():
        space.spelled[key] = {_hashable(v): s for v, s in zip(o.sweep_iterator(), o.sweep_string_iterator(),
                                                                strict=True)}
