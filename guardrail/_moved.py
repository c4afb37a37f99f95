"""Module paths that moved when guardrail was cut into layers keep working.

``import guardrail.tokens`` (and ``from guardrail.budget import PromptBuilder``...) finds
no file any more; this finder answers for the old paths, after every normal finder has
failed, by handing back the module that now holds those names (with a
DeprecationWarning). Every public name is also importable from ``guardrail`` itself.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType

MOVED = {
    "guardrail.anthropic": "guardrail.providers.anthropic",
    "guardrail.budget": "guardrail.prompt",
    "guardrail.images": "guardrail.counting.images",
    "guardrail.memory": "guardrail.prompt.conversation",
    "guardrail.models": "guardrail.catalog.models",
    "guardrail.openai": "guardrail.providers.openai",
    "guardrail.packing": "guardrail.prompt.packing",
    "guardrail.pricing": "guardrail.catalog.pricing",
    "guardrail.sinks": "guardrail.observe.sinks",
    "guardrail.tokens": "guardrail.counting",
    "guardrail.trimming": "guardrail.prompt.trimming",
    "guardrail.truncation": "guardrail.prompt.truncation",
}
"""Old module path -> the module that holds its public names now."""


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None  # a throwaway module: exec_module swaps in the real one

    def exec_module(self, module: ModuleType) -> None:
        new = MOVED[module.__name__]
        warnings.warn(
            f"{module.__name__} is now {new} (the old path keeps working)",
            DeprecationWarning,
            stacklevel=2,
        )
        # The import system hands back whatever sys.modules holds once this returns.
        sys.modules[module.__name__] = importlib.import_module(new)


def install() -> None:
    """Append the finder once: it is asked only after the real finders found nothing."""
    if not any(isinstance(f, MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
