"""Type-check the values a user sets on the command line against the defaults they replace.

A default that is a bool, an int or a float (after interpolation, e.g. `${recipe:epochs}`) fixes the type of
its key: `trainer.epochs=abc` is refused at composition, naming the key, rather than failing deep in a run.
An int is a valid float (`optim.lr=1`), and null stays valid everywhere: several numeric keys give it a meaning
(`overlays`, `dataset.ignore_index`). Numeric keys whose default is null or a word are typed by `NUMBERS`.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from cvtool.errors import CvtoolError

from .locate import GROUPS

# numeric keys whose default (null, or a word such as `auto`, which stays valid) does not tell their type
NUMBERS: dict[str, type] = {
    "trainer.clip_grad_norm": float, "trainer.lr_reference_batch": int, "trainer.stop_after": int,
    "trainer.early_stop_patience": int, "data.limit": int, "data.workers": int, "inspect.num_classes": int,
    "inspect.depth": int, "optim.layer_decay": float,
}
_NAMES = {bool: "true or false", int: "an integer", float: "a number"}


def value_keys(overrides: list[str]) -> list[str]:
    """Config keys that `key=value` / `++key=value` overrides set (not groups, additions, deletions or hydra.*)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType

    keys = []
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if override.type in (OverrideType.CHANGE, OverrideType.FORCE_ADD) and not override.package \
                and not override.is_hydra_override() and key not in GROUPS and "/" not in key:
            keys.append(key)
    return keys


def expected_type(key: str, default) -> type | None:
    """The type a value of `key` must have, given its (resolved) default; None when any value goes."""
    if default is None or isinstance(default, str):
        return NUMBERS.get(key)
    return type(default) if type(default) in _NAMES else None


def fits(value, expected: type) -> bool:
    """`value` is null or of type `expected` (an int counts as a float, a bool as neither number)."""
    if value is None:
        return True
    if expected is bool or isinstance(value, bool):
        return expected is bool and isinstance(value, bool)
    return isinstance(value, int) or expected is float and isinstance(value, float)


_UNSET = object()


def _resolved(cfg: DictConfig, key: str):
    """`key`'s value with interpolations resolved; a sentinel where it cannot be (missing, failing resolver)."""
    try:
        return OmegaConf.select(cfg, key, default=_UNSET, throw_on_missing=True)
    except Exception:  # noqa: BLE001 - an unresolvable value is reported by the code that reads it
        return _UNSET


def check_types(cfg: DictConfig, defaults: DictConfig, keys: list[str]) -> None:
    """Refuse a value in `cfg` at one of `keys` whose type does not match its value in `defaults`."""
    for key in keys:
        value, default = _resolved(cfg, key), _resolved(defaults, key)
        if value is _UNSET or default is _UNSET or value == default and type(value) is type(default):
            continue
        expected = expected_type(key, default)
        if expected is None or fits(value, expected):
            continue
        raise CvtoolError(f"config key '{key}' must be {_NAMES[expected]}, got {_yaml(value)}", where="override",
                          fix=f"e.g. {key}={_yaml(default)} (its default)" if default is not None else
                          f"give {key} {_NAMES[expected]}, or null")


def _yaml(value) -> str:
    """`value` as it is written in an override: 'text', true, null, 12, 0.003."""
    if isinstance(value, str):
        return repr(value)
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
