"""Translation between Hydra override syntax and Optuna distributions.

A sweep override becomes a distribution: ``choice(a, b)`` or ``a,b`` a
categorical one, ``range(start, stop, step)`` an integer or stepped float
one over the same values, ``interval(low, high)`` a continuous float one
(``tag(log, ...)`` for a log scale, ``tag(int, ...)`` for integers). Any
other override is applied unchanged to every trial.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep, Override, RangeSweep
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

log = logging.getLogger(__name__)

_INTERVAL_TAGS = {"log", "int"}
_CATEGORY_TYPES = (type(None), bool, int, float, str)


@dataclass
class SearchSpace:
    """The swept parameters and the overrides shared by all trials."""

    #: Optuna distribution by config key (without ``+``/``++`` prefix).
    distributions: dict[str, BaseDistribution] = field(default_factory=dict)
    #: The key as written in the override, prefix included, by config key.
    override_keys: dict[str, str] = field(default_factory=dict)
    #: ``key=value`` overrides applied unchanged to every trial.
    fixed_overrides: list[str] = field(default_factory=list)

    def trial_overrides(self, params: dict[str, Any]) -> list[str]:
        """Return the fixed overrides plus one ``key=value`` override per sampled parameter."""
        swept = [format_override(self.override_keys[name], value) for name, value in params.items()]
        return [*self.fixed_overrides, *swept]


def _distribution(override: Override) -> BaseDistribution:
    key = override.get_key_element()
    if override.is_choice_sweep():
        choices = list(override.sweep_iterator())
        bad = [choice for choice in choices if not isinstance(choice, _CATEGORY_TYPES)]
        if bad:
            raise ValueError(f"choices of {key} must be numbers, strings, booleans or null, got {bad}")
        return CategoricalDistribution(choices)

    if override.is_range_sweep():
        sweep = override.value()
        assert isinstance(sweep, RangeSweep)
        values = list(sweep.range())
        if not values:
            raise ValueError(f"{key}={override.get_value_element_as_str()} is an empty range")
        low, high, step = min(values), max(values), abs(sweep.step)
        if all(isinstance(value, int) for value in values):
            return IntDistribution(low, high, step=int(step))
        return FloatDistribution(float(low), float(high), step=float(step))

    sweep = override.value()
    assert isinstance(sweep, IntervalSweep)
    assert sweep.start is not None
    assert sweep.end is not None
    unknown = set(sweep.tags) - _INTERVAL_TAGS
    if unknown:
        raise ValueError(
            f"interval tags of {key} must be among {sorted(_INTERVAL_TAGS)}, got {sorted(unknown)}"
        )
    log_scale = "log" in sweep.tags
    if "int" in sweep.tags:
        return IntDistribution(int(sweep.start), int(sweep.end), log=log_scale)
    return FloatDistribution(float(sweep.start), float(sweep.end), log=log_scale)


def parse_search_space(overrides: list[str], parser: OverridesParser) -> SearchSpace:
    """Split ``key=value`` overrides into distributions and fixed overrides.

    A key given twice keeps its last value, so command-line overrides
    replace entries of ``hydra.sweeper.params`` that come before them.

    Raises
    ------
    ValueError
        If a sweep cannot be expressed as an Optuna distribution.
    """
    by_key: dict[str, Override] = {}
    for override in parser.parse_overrides(overrides):
        by_key.pop(override.key_or_group, None)
        by_key[override.key_or_group] = override

    space = SearchSpace()
    for name, override in by_key.items():
        if override.is_sweep_override():
            space.distributions[name] = _distribution(override)
            space.override_keys[name] = override.get_key_element()
        else:
            space.fixed_overrides.append(
                f"{override.get_key_element()}={override.get_value_element_as_str()}"
            )
    return space


def format_override(key: str, value: Any) -> str:
    """Write ``key=value`` so that Hydra parses ``value`` back unchanged.

    Strings are quoted only when the bare text would parse as something
    else, for example ``"1"`` (an int) or a text with a comma.

    Raises
    ------
    ValueError
        If no spelling of ``value`` parses back to it.
    """
    parser = OverridesParser.create()
    if value is None:
        candidates = ["null"]
    elif isinstance(value, bool):
        candidates = ["true" if value else "false"]
    elif isinstance(value, (int, float)):
        candidates = [repr(value)]
    else:
        text = str(value)
        escaped = text.replace("\\", "\\\\").replace("'", "\\'")
        candidates = [text, f"'{escaped}'"]
    for candidate in candidates:
        line = f"{key}={candidate}"
        try:
            parsed = parser.parse_override(line).value()
        except Exception as error:  # noqa: BLE001 - an unparsable spelling moves on to the quoted one.
            log.debug("%s does not parse: %s", line, error)
            continue
        if parsed == value and type(parsed) is type(value):
            return line
    raise ValueError(f"cannot write {value!r} as a Hydra override value of {key}")
