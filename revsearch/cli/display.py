"""File names made safe to print: control characters escaped, undecodable bytes shown as ``\\xNN``."""

from __future__ import annotations

import base64

_NAMED = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(name: str) -> str:
    """``name`` with control characters (newline, escape...) and undecodable bytes escaped.

    A file name holding a newline cannot forge extra output lines, nor an ESC sequence recolour
    the terminal; printable non-ASCII characters are kept as they are.
    """
    out = []
    for ch in name:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch in _NAMED:
            out.append(_NAMED[ch])
        elif ch.isprintable():
            out.append(ch)
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        else:
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
    return "".join(out)


def json_path(key: str) -> dict[str, str]:
    """A file name for JSON output: ``path`` as valid UTF-8 (undecodable bytes become U+FFFD), plus
    ``path_bytes_b64``, the exact bytes in base64, when the name is not valid UTF-8."""
    raw = key.encode("utf-8", "surrogateescape")
    text = raw.decode("utf-8", "replace")
    return {"path": text} if text == key else {"path": text, "path_bytes_b64": base64.b64encode(raw).decode("ascii")}
