"""Data through `literal` reads back as exactly that text, with nothing left for Markdown or Streamlit to act on.

What a browser makes of it is checked by tests/ui/e2e/test_browser.py; here the
escaping itself: every ASCII punctuation character escaped (CommonMark), and the
patterns Streamlit rewrites after parsing (icons, shortcodes, autolinks,
typography) broken by an invisible word joiner.
"""

from __future__ import annotations

import re

import pytest

from lungviz.reporting.markdown import WORD_JOINER, literal

PUNCTUATION = r"[!-/:-@\[-`{-~]"
STREAMLIT_REWRITES = re.compile(
    r":material_\w+:|:streamlit:|:[\w+-]+:|https?://|www\.|\w@\w|(^|\s)(<->|->|<-|--|>=|<=|~=)(\s|$)", re.I
)
HOSTILE = [
    "![beacon](http://127.0.0.1:8600/beacon.png).png",
    "[click](javascript:alert(1)).png",
    "<img src=x onerror=alert(1)>.png",
    ":material/home: :material_home: :streamlit: :smile: :+1: :red[alarm] :blue-badge[x].png",
    "$x^2$ and $$y$$ \\$5.png",
    "# **bold** _it_ ~~s~~ `code` | a | > quote &amp; &#65; \\*.png",
    "- 1. [ref]: http://a.b <http://a.b> HTTPS://X.ORG WWW.example.com john@example.com",
    "a -> b -- c >= d <= e <- f <-> g ~= h",
    "IM-0001-0001.dcm",
]


def shown_text(markdown: str) -> str:
    """What CommonMark shows for escaped text: each backslash-escaped character as itself, word joiners invisible."""
    return re.sub(rf"\\({PUNCTUATION})", r"\1", markdown).replace(WORD_JOINER, "")


@pytest.mark.parametrize("text", HOSTILE)
def test_literal_markdown_shows_the_text_as_written_and_nothing_else(text):
    markdown = literal(text)
    assert shown_text(markdown) == text
    assert re.fullmatch(rf"(\\{PUNCTUATION}|(?!{PUNCTUATION}).)*", markdown), "unescaped Markdown punctuation"
    parsed = re.sub(rf"\\({PUNCTUATION})", r"\1", markdown)  # the text Streamlit's plugins see after parsing
    assert not STREAMLIT_REWRITES.search(parsed)


def test_plain_names_stay_readable_in_the_markdown_source():
    assert literal("chest_xray 01.png") == "chest\\_xray 01\\.png"


def test_line_breaks_and_controls_cannot_start_new_markdown_blocks():
    assert literal("a\nb\r\n# c\td\x00e\x7f") == "a b  \\# c d\ufffde\ufffd"
