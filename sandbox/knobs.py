"""Knob specs from the goal file (`{low, high, log}` or `{choices: [...]}`) and value checks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sandbox.errors import EditError
from sandbox.metrics import is_finite

Scalar = int | float | str | bool


def _number(name: str, key: str, raw: Any) -> float | int:
    # PyYAML reads `1e-4` (no dot) as a string, so numeric strings are accepted here.
    if isinstance(raw, bool):
        raise EditError(
            f"knob {name}: `{key}` must be a number, not {raw!r}; write e.g. {key}: 0.1"
        )
    value = raw if isinstance(raw, int | float) else _float(raw)
    if value is None or not is_finite(value):
        raise EditError(
            f"knob {name}: `{key}` must be a finite number, not {_short(raw)}; "
            f"write e.g. {key}: 0.1"
        )
    return value


def _float(raw: Any) -> float | None:
    try:
        return float(raw)
    except (TypeError, ValueError):
        return None


def _short(value: Any) -> str:
    """repr for a message, cut short (an overlong number would fill the screen)."""
    if _numeric(value) and not is_finite(value) and isinstance(value, int):
        return "an integer too large for a float"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(frozen=True)
class KnobSpec:
    name: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    choices: tuple[Scalar, ...] | None = None
    integer: bool = False

    @classmethod
    def parse(cls, name: str, raw: Mapping[str, Any]) -> KnobSpec:
        """Validate one goal-file knob entry."""
        if not isinstance(raw, Mapping):
            raise EditError(f"knob {name}: spec must be a mapping like {{low: 1, high: 8}}")
        unknown = set(raw) - {"low", "high", "log", "choices", "type"}
        if unknown:
            raise EditError(
                f"knob {name}: unknown key(s) {sorted(unknown)}; use low/high/log, choices or type"
            )
        kind = raw.get("type")
        if kind not in (None, "int", "float"):
            raise EditError(f"knob {name}: type must be int or float, not {kind!r}")
        if "choices" in raw:
            if "low" in raw or "high" in raw:
                raise EditError(f"knob {name}: give either choices or low/high, not both")
            choices = raw["choices"]
            if isinstance(choices, str | bytes) or not isinstance(choices, Sequence) or not choices:
                raise EditError(f"knob {name}: choices must be a non-empty list, e.g. [2, 4, 6]")
            return cls(name, choices=tuple(choices))
        if "low" not in raw or "high" not in raw:
            raise EditError(f"knob {name}: needs both low and high (or choices: [...])")
        low, high = _number(name, "low", raw["low"]), _number(name, "high", raw["high"])
        if low > high:
            raise EditError(f"knob {name}: needs low <= high, got {low} and {high}")
        log = bool(raw.get("log", False))
        if log and low <= 0:
            raise EditError(f"knob {name}: log scale needs low > 0, got {low}")
        integer = kind == "int" or (
            kind is None and isinstance(raw["low"], int) and isinstance(raw["high"], int)
        )
        return cls(name, low=low, high=high, log=log, integer=integer)

    def check(self, value: Any, current: Any = None) -> Scalar:
        """Return `value` coerced to the knob's type, or raise EditError naming the allowed range.

        `current` is the literal now in the file: a float there keeps `{low: 0, high: 1}` a float
        knob, so an int spec written without decimals does not turn a float constant into an int.
        """
        if self.choices is not None:
            for choice in self.choices:
                if type(choice) is type(value) and choice == value:
                    return choice
            for choice in self.choices:  # 4.0 for 4: take the declared choice (keeps its type)
                if _numeric(choice) and _numeric(value) and choice == value:
                    return choice
            raise EditError(
                f"knob {self.name}={value!r} is not allowed; choose one of {list(self.choices)}"
            )
        if not is_finite(value):
            raise EditError(f"knob {self.name} takes a number, not {_short(value)}; "
                            "give a finite number")
        assert self.low is not None and self.high is not None
        if not self.low <= value <= self.high:
            raise EditError(
                f"knob {self.name}={value!r} is outside [{self.low}, {self.high}]; "
                "choose a value in that range"
            )
        if self.integer and not isinstance(current, float):
            if float(value) != int(value):
                raise EditError(
                    f"knob {self.name} is an integer; {value!r} is not a whole number, round it"
                )
            return int(value)
        return float(value)


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse_knobs(raw: Mapping[str, Any] | None) -> dict[str, KnobSpec]:
    """Validate the goal file's `knobs:` mapping."""
    specs: dict[str, KnobSpec] = {}
    for name, spec in (raw or {}).items():
        if not str(name).isidentifier():
            raise EditError(f"knob {name!r} is not a Python name; use the constant's name")
        specs[str(name)] = spec if isinstance(spec, KnobSpec) else KnobSpec.parse(str(name), spec)
    return specs
