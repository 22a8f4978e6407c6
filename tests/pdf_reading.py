"""The text of each page of a PDF written by reportlab, without a PDF library.

pypdf is not a LungViz dependency; reportlab's output is simple enough to read
directly: numbered objects, a page tree listing the pages in order, and each
page's content stream (ASCII85 then Flate encoded) drawing strings with `Tj`.
"""

from __future__ import annotations

import base64
import re
import zlib

_OBJECT = re.compile(rb"(\d+) 0 obj\s*(.*?)endobj", re.S)
_STREAM = re.compile(rb"stream\r?\n(.*?)\r?\n?endstream", re.S)
_SHOWN = re.compile(rb"\(((?:\\.|[^\\)])*)\)\s*Tj")
_ESCAPE = re.compile(rb"\\([0-7]{1,3}|.)", re.S)


def page_texts(pdf: bytes) -> list[str]:
    """Each page's drawn strings, one per line, in page order."""
    objects = {int(number): body for number, body in _OBJECT.findall(pdf)}
    (tree,) = [body for body in objects.values() if re.search(rb"/Type /Pages\b", body)]
    kids = re.search(rb"/Kids \[([^\]]*)\]", tree)
    assert kids is not None
    pages = [int(number) for number in re.findall(rb"(\d+) 0 R", kids.group(1))]
    texts = []
    for page in pages:
        assert re.search(rb"/Type /Page\b(?!s)", objects[page])
        contents = re.search(rb"/Contents (\d+) 0 R", objects[page])
        assert contents is not None
        stream = _decoded(objects[int(contents.group(1))])
        texts.append("\n".join(_unescaped(shown) for shown in _SHOWN.findall(stream)))
    return texts


def page_count(pdf: bytes) -> int:
    """Page objects in the file (counted apart from the page tree, which must agree)."""
    count = len(re.findall(rb"/Type /Page\b(?!s)", pdf))
    assert re.search(rb"/Count %d\b" % count, pdf)
    return count


def _decoded(body: bytes) -> bytes:
    match = _STREAM.search(body)
    assert match is not None
    data = match.group(1)
    if b"/ASCII85Decode" in body:
        data = base64.a85decode(data.strip().removesuffix(b"~>"))
    return zlib.decompress(data) if b"/FlateDecode" in body else data


def _unescaped(shown: bytes) -> str:
    """A PDF string's bytes (WinAnsi; escapes undone) as text."""

    def replace(match: re.Match[bytes]) -> bytes:
        code = match.group(1)
        if code.isdigit():
            return bytes([int(code, 8)])
        return {b"n": b"\n", b"r": b"\r", b"t": b"\t"}.get(code, code)

    return _ESCAPE.sub(replace, shown).decode("cp1252")
