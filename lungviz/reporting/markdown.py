"""Data shown as literal text where a page renders Markdown.

File names, DICOM header values and error messages are data: a file called
`![x](http://host/beacon.png).png` must not make every viewer's browser fetch
that URL, and `[click](javascript:...)` must not become a link. Streamlit
renders Markdown in headers, captions, alerts, status and progress labels and
table cells, so the pages pass such text through `literal` (one place, no
Streamlit import: the dialect is all this module needs to know).
"""

from __future__ import annotations

import re

WORD_JOINER = "\u2060"
"""Invisible and zero-width: breaks a pattern that Streamlit rewrites after escapes are resolved."""

_ASCII_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")
"""CommonMark lets a backslash escape every ASCII punctuation character, which makes it plain text."""
_REWRITTEN_AFTER_PARSING = re.compile(r"(?<=:)(?=[\w+/-])|(?<=@)(?=\w)|(?<=www)(?=\.)|(?<=[<>~-])(?=[<>=~-])", re.I)
"""Where a word joiner goes: Streamlit rewrites some text after Markdown is parsed, where escapes no longer
count: `:material_x:` icons, `:streamlit:` and `:emoji:` shortcodes (a colon before a word), bare
`http://`, `www.` and `name@host` autolinks, and `->`, `--`, `>=` typography."""
_CONTROLS = {code: " " if chr(code).isspace() else "\ufffd" for code in [*range(32), 127]}
"""Line breaks and tabs would split a header or start Markdown blocks; other controls are shown as �."""


def literal(text: str) -> str:
    """`text` as Streamlit Markdown that shows as that very text, on one line.

    Line breaks and tabs show as spaces and other control characters as �; the
    word joiners are invisible.
    """
    joined = _REWRITTEN_AFTER_PARSING.sub(WORD_JOINER, text.translate(_CONTROLS))
    return _ASCII_PUNCTUATION.sub(r"\\\1", joined)
