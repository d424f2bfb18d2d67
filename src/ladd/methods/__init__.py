"""Distillation methods behind one interface (ladd.methods.base); the trainer never imports them.

``METHODS`` maps the preset's ``method:`` to ``module:class``, imported when selected. Adding a method: one file
here, one entry below, one preset in configs/ (docs/architecture.md, "Adding a method").
"""

from __future__ import annotations

import importlib

from ladd.config import ConfigError

METHODS = {
    "ladd": "ladd.methods.ladd:LADD",
    "add": "ladd.methods.add:ADD",
    "dmd2": "ladd.methods.dmd2:DMD2",
    "few_step": "ladd.methods.few_step:FewStep",
    "lcm": "ladd.methods.lcm:LCM",
}


def method_class(name: str):
    """The ``Method`` subclass registered as ``name``."""
    if name not in METHODS:
        raise ConfigError(f"method: got {name!r}; use one of {sorted(METHODS)}")
    module, cls = METHODS[name].split(":")
    return getattr(importlib.import_module(module), cls)
