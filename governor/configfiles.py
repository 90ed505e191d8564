"""Reading the configuration files: one YAML file, or a directory whose *.yml/*.yaml files are
merged in name order (later files win, mappings merged key by key), with the file each key came
from, so that every problem names its file."""
from __future__ import annotations

import glob
import os
from typing import Dict, List, Tuple

from governor import safe_yaml
from governor.checker import kind_of


class ConfigError(Exception):
    """Raised with every problem found; str() lists one problem per line."""

    def __init__(self, problems: List[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def _yaml_files(path: str) -> List[str]:
    if os.path.isdir(path):
        files = sorted(glob.glob(os.path.join(path, "*.yml")) + glob.glob(os.path.join(path, "*.yaml")))
        return files
    return [path]


def _merge(base: dict, extra: dict, origin: Dict[str, str], src: str, prefix: str = "") -> None:
    for key, value in extra.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value, origin, src, dotted + ".")
        else:
            base[key] = value
            origin[dotted] = src
            if isinstance(value, dict):
                _record_origin(value, origin, src, dotted + ".")


def _record_origin(value: dict, origin: Dict[str, str], src: str, prefix: str) -> None:
    for key, sub in value.items():
        origin[f"{prefix}{key}"] = src
        if isinstance(sub, dict):
            _record_origin(sub, origin, src, f"{prefix}{key}.")


def read_raw(path: str) -> Tuple[dict, Dict[str, str]]:
    """Read and merge the YAML at `path`; returns (merged mapping, dotted key -> file)."""
    denied = ConfigError([f"{path}: permission denied (it holds passwords: root and the postgres group may read it;"
                          " use sudo)"])
    try:
        os.stat(path)
    except PermissionError:
        raise denied from None
    except OSError:
        raise ConfigError([f"{path}: no such file or directory"]) from None
    files = _yaml_files(path)
    if not files and os.path.isdir(path) and not os.access(path, os.R_OK | os.X_OK):
        raise denied
    if not files:
        raise ConfigError([f"{path}: directory holds no *.yml files"])
    merged: dict = {}
    origin: Dict[str, str] = {}
    problems = []
    for name in files:
        try:
            data = safe_yaml.load_file(name)
        except safe_yaml.YamlProblem as exc:
            problems.append(f"{name}: {exc}")
            continue
        if data is None:
            continue
        if not isinstance(data, dict):
            problems.append(f"{name}: expected a mapping of settings at the top level, got {kind_of(data)}")
            continue
        _merge(merged, data, origin, name)
    if problems:
        raise ConfigError(problems)
    return merged, origin
