"""Text from files (GGUF metadata, cluster files, plan JSON, paths) made safe for a terminal.

A name such as ``general.name`` is attacker-controlled: printed raw, an ESC sequence could
recolour or rewrite the screen, a CR or newline could forge an ``error:`` line, a bidi override
could reorder what the user reads. :func:`printable` escapes every such character as Python
would write it (``\\x1b``, ``\\n``, ``\\u202e``) and leaves all other text, non-ASCII letters
included, as it is. Every terminal output path applies it to each line it prints.
"""
from __future__ import annotations

import unicodedata

# C0/C1 controls and DEL (Cc), format characters: bidi embeddings, overrides and isolates,
# zero-width joiners, BOM (Cf), line and paragraph separators (Zl, Zp), lone surrogates (Cs).
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def _escape(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: object) -> str:
    """``str(text)`` with every control, format and separator character escaped: one line that
    shows exactly what the source held and cannot drive the terminal."""
    s = str(text)
    if s.isprintable() and s.isascii():
        return s  # the common case: nothing to look at
    return "".join(_escape(ch) if unicodedata.category(ch) in _UNSAFE_CATEGORIES else ch for ch in s)


__all__ = ["printable"]
