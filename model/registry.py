"""A registry of plug-ins that live one per module in a package.

Both the context-selection strategies (:mod:`.strategies`) and the quality signals
(:mod:`.quality_signals`) are registries: each module of the package registers one entry, and
the registry imports every module of its package on first use, so adding an entry is adding
one file. Entries carry a ``name`` (the spelling users write).
"""
from __future__ import annotations

import pkgutil
from importlib import import_module
from typing import Dict, Generic, Sequence, Tuple, TypeVar

Entry = TypeVar("Entry")


class Registry(Generic[Entry]):
    """Entries of one package by name; ``kind`` names them in errors ("selection")."""

    def __init__(self, package: str, path: Sequence[str], kind: str, first: str = ""):
        self._package, self._path, self.kind, self._first = package, list(path), kind, first
        self._entries: Dict[str, Entry] = {}

    def register(self, entry: Entry) -> Entry:
        """Add ``entry`` under its name (a second entry of the same name is an error)."""
        name = entry.name
        if name in self._entries and self._entries[name] is not entry:
            raise ValueError(f"a {self.kind} named {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str):
        """Remove the entry ``name`` (tests that register a throwaway entry)."""
        self._entries.pop(name)

    def all(self) -> Dict[str, Entry]:
        """Every entry by name: ``first`` (if given) first, then alphabetical."""
        for module in pkgutil.iter_modules(self._path):
            import_module(f"{self._package}.{module.name}")
        names = sorted(self._entries, key=lambda n: (n != self._first, n))
        return {name: self._entries[name] for name in names}

    def names(self) -> Tuple[str, ...]:
        return tuple(self.all())

    def get(self, name: str) -> Entry:
        """The entry ``name``; ``ValueError`` naming the choices otherwise."""
        found = self.all()
        if name not in found:
            raise ValueError(f"{self.kind} must be one of {', '.join(found)}, got {name!r}")
        return found[name]

    def docs_table(self, header: Tuple[str, str]) -> str:
        """The entries as a Markdown table of ``name`` and ``summary``."""
        rows = [f"| `{e.name}` | {e.summary} |" for e in self.all().values()]
        return "\n".join([f"| {header[0]} | {header[1]} |", "| --- | --- |", *rows])
