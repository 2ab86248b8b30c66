"""`trainer`: the old name of the embedded trainer, kept so that `from trainer.runtime import TrainingRuntime` (and
`python -m trainer`) keep working where nothing shadows it. The package is `twinkle_trainer`: a user's own
`trainer.py` (a common file name) next to a script must be what that script's `import trainer` finds, so nothing
of twinkle-tui imports this name.

`trainer.X` is the very module `twinkle_trainer.X` (the same object, not a copy), so classes, enums and module state
are shared whichever name a script uses.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import types

import twinkle_trainer

REAL = "twinkle_trainer"


class _AliasLoader(importlib.abc.Loader):
    """Loads `trainer.X` by importing `twinkle_trainer.X` and handing back that module itself."""

    def __init__(self) -> None:
        self.specs: dict[str, importlib.machinery.ModuleSpec | None] = {}

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        real = importlib.import_module(REAL + spec.name[len(__name__):])
        self.specs[real.__name__] = real.__spec__
        return real

    def exec_module(self, module: types.ModuleType) -> None:
        # module_from_spec gave the real module the alias's spec; it keeps its own (pickling, reload, spawn read it)
        module.__spec__ = self.specs.pop(module.__name__, module.__spec__)


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        if not name.startswith(__name__ + ".") or name == __name__ + ".__main__":  # its own __main__ runs the real one
            return None
        if importlib.util.find_spec(REAL + name[len(__name__):]) is None:
            return None
        return importlib.machinery.ModuleSpec(name, _AliasLoader(), is_package=False)


if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _AliasFinder())

__path__ = [os.path.dirname(__file__)]  # holds only __main__; every other submodule comes through the finder
__all__ = ["twinkle_trainer"]
