"""Head families: the kinds of model the trainer compares (`TrainParams.families`), by name.

A family is a small plug-in, one module each:

* `search(data)`: fit its candidates on `SearchData` (the same fitting and validation examples for
  every family) and return them as `Candidate`s, each scored with `data.score`;
* `final(chosen, data)`: the served model of its chosen candidate: refitted on all the data
  (`FinalData.refit`) or the search fit itself, with the prior shift folded in (`Final`);
* `default_params(p)`: the params of its default candidate, the simple baseline every other
  candidate must clearly beat (heads.training.selection), or None. logreg's C=10 is the default.

The served model is a `heads.model.HeadModel` (numpy only; its own head types, "mlp" and "logreg",
i.e. a network or a linear layer), so a new family reuses the serving format and nothing serving
imports changes. To add a family: a module with a `FAMILY` object, and one line in `_BUILTIN`
(or `register(family)` at run time, as the tests do). Family modules are imported on first use:
this registry is plain Python (the interface is heads.training.family_api), so validating a head config (`TrainParams.families`) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

# A family: heads.training.family_api.Family. Typed loosely here so that this registry imports
# nothing of the trainer (validating a head config imports it).
_BUILTIN = {  # name -> module holding its FAMILY
    "mlp": "heads.training.mlp",
    "logreg": "heads.training.logreg",
    "blend": "heads.training.blend",
}
_registered: dict[str, Any] = {}


def register(family: Any) -> Any:
    """Make `family` available by its name (replacing one of the same name)."""
    _registered[family.name] = family
    return family


def unregister(name: str) -> None:
    _registered.pop(name, None)


def names() -> list[str]:
    return list(dict.fromkeys([*_BUILTIN, *_registered]))


def get(name: str) -> Any:
    if name not in _registered:
        if name not in _BUILTIN:
            raise KeyError(f"unknown head family {name!r} (one of {names()})")
        _registered[name] = importlib.import_module(_BUILTIN[name]).FAMILY
    return _registered[name]
