"""Turn Hydra/OmegaConf composition errors into one-line CvtoolErrors with a did-you-mean hint."""

from __future__ import annotations

import difflib
import re

from omegaconf import DictConfig

from cvtool.errors import CvtoolError

from .locate import group_choices


def dotted_keys(node, prefix: str = "") -> list[str]:
    """All dotted key paths of a config (lists are leaves)."""
    keys = []
    if isinstance(node, DictConfig):
        for key in node.keys():
            path = f"{prefix}{key}"
            keys.append(path)
            child = node._get_node(key)
            if isinstance(child, DictConfig):
                keys += dotted_keys(child, path + ".")
    return keys


def suggest(word: str, candidates: list[str], n: int = 2) -> str:
    close = difflib.get_close_matches(word, candidates, n=n, cutoff=0.6)
    return f"did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def unknown_key_error(key: str, known: list[str]) -> CvtoolError:
    if not key.startswith("hydra."):
        known = [k for k in known if not k.startswith("hydra.")]
    hint = suggest(key, known)
    fix = f"{hint} (+{key}=VALUE would add it as a new key)" if hint else (
        "see `cvtool config show` for the valid keys; +KEY=VALUE adds a new key")
    return CvtoolError(f"unknown config key '{key}'", where="override", fix=fix)


def _has_submitit_plugin() -> bool:
    import importlib.util

    return importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is not None


def translate(exc: BaseException, known_keys) -> CvtoolError | None:
    """Map a Hydra composition error to a CvtoolError; None if it is not a user error we recognise."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    text = str(exc)
    if isinstance(exc, MissingConfigException):
        found = re.search(r"Could not find '([^']+)/([^']+)'", text)
        if found:
            group, name = found.groups()
            group = group.lstrip("/")
            if group == "hydra/launcher" and name.startswith("submitit") and not _has_submitit_plugin():
                return CvtoolError(f"hydra/launcher={name} needs Hydra's submitit launcher plugin, which is not "
                                   "installed", where=f"hydra/launcher={name}",
                                   fix="pip install 'cvtool[slurm]' (hydra-submitit-launcher and submitit)")
            choices = group_choices(group)
            hint = suggest(name, choices)
            return CvtoolError(f"unknown {group} '{name}'", where=f"{group}={name}",
                               fix=(hint + " " if hint else "") + f"choose one of: {', '.join(choices)}")
        return CvtoolError(text.splitlines()[0], where="config")
    if isinstance(exc, OverrideParseException):
        return CvtoolError(f"cannot parse override: {text.splitlines()[0]}", where="command line",
                           fix="write overrides as key=value (Hydra syntax), e.g. trainer.epochs=5")
    if isinstance(exc, ConfigCompositionException):
        key = re.search(r"Could not override '([^']+)'", text)
        cause = exc.__cause__
        if key and isinstance(cause, (ConfigKeyError, ConfigAttributeError)):
            return unknown_key_error(key.group(1), known_keys())
        appended = re.search(r"Could not append to config. An item is already at '([^']+)'", text)
        if appended:
            return CvtoolError(f"config key '{appended.group(1)}' already exists", where="override",
                               fix=f"drop the '+': {appended.group(1)}=VALUE")
        return CvtoolError(text.splitlines()[0], where="config",
                           fix=str(cause).splitlines()[0] if cause else None)
    return None


def missing_value(exc: BaseException) -> CvtoolError | None:
    """A `???` config value read (directly or through an interpolation) -> a user error naming the key to set."""
    from omegaconf.errors import InterpolationToMissingValueError, MissingMandatoryValue

    if not isinstance(exc, (MissingMandatoryValue, InterpolationToMissingValueError)):
        return None
    found = re.search(r"Missing mandatory value: ?([\w.\[\]]+)", str(exc))
    key = found.group(1) if isinstance(exc, InterpolationToMissingValueError) and found else exc.full_key
    via = f" (needed by '{exc.full_key}')" if exc.full_key and exc.full_key != key else ""
    return CvtoolError(f"config key '{key}' needs a value{via}", where=key, fix=f"pass {key}=...")
