"""The annotator sees every character of a response: the exact-text renderer formats but never
hides (annotate.exact), checked as a hypothesis property over odd inputs and on real HH text."""
from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from annotate.exact import EMPTY_MARKER, prompt_turns, render_exact, split_hh_turns


class _Text(HTMLParser):
    """The text a browser shows for a fragment (character references decoded), and its tags."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.tags: list[tuple[str, list]] = []

    def handle_data(self, data):
        self.parts.append(data)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, attrs))


def shown(html: str) -> tuple[str, list]:
    p = _Text()
    p.feed(html)
    p.close()
    return "".join(p.parts), p.tags


def no_ws(s: str) -> str:
    return re.sub(r"\s+", "", s)


MARKDOWN_BITS = st.sampled_from(
    ["**", "*", "_", "__", "`", "```", "~~~", "#", "## ", "> ", "- ", "1. ", "|", "![", "](", "[", "]", "(", ")",
     "<", ">", "&", "&amp;", "<script>", "<img src=x onerror=alert(1)>", "https://x.org/a_b", "javascript:",
     "\n", "\n\n", "  ", "\t", "\r\n", "=", "'", '"', "\\", "---", "\u00a0", "\u200b", "é", "😀"]
)
ODD_TEXT = st.lists(st.one_of(MARKDOWN_BITS, st.text(max_size=8)), max_size=30).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ODD_TEXT)
@example("See ![d](https://x/a.png) here")
@example(">")
@example("> ")
@example("```\ncode")
@example("**a*b**_c_")
@example("[x](javascript:alert(1))")
def test_every_non_whitespace_character_is_shown(text):
    rendered, tags = shown(str(render_exact(text)))
    if not text.strip():
        assert EMPTY_MARKER in rendered
        return
    # Not a subset: the same characters in the same order, none added, none hidden.
    assert no_ws(rendered) == no_ws(text.replace("\r\n", "\n").replace("\r", "\n"))
    for tag, attrs in tags:
        assert tag in {"div", "span", "code", "pre", "strong", "em", "a", "p"}, tag
        for name, value in attrs:
            assert not name.startswith("on") and name != "style", (tag, name)
            if name == "href":
                assert re.match(r"^(https?://|mailto:)", value), value


def test_image_shows_its_link_text_and_raw_html_is_text():
    html = str(render_exact("See ![d](https://x/a.png) here <b>bold</b>"))
    text, tags = shown(html)
    assert no_ws(text) == no_ws("See ![d](https://x/a.png) here <b>bold</b>")
    assert ("a", [("href", "https://x/a.png"), ("class", "md-img-link"), ("rel", "noopener noreferrer nofollow")]) in tags
    assert "<img" not in html and "<b>" not in html and "&lt;b&gt;" in html


def test_formatting_is_kept_visible():
    html = str(render_exact("# Title\n**bold** and `code`\n\n```python\nprint(1)\n```"))
    assert '<code class="language-python">print(1)</code>' in html
    assert "<strong>" in html and 'class="ln ln-h ln-h1"' in html


@pytest.mark.parametrize("text", ["", "   ", "\n\n\n", " \t\n "])
def test_whitespace_only_shows_a_marker(text):
    html = str(render_exact(text))
    assert EMPTY_MARKER in html


def test_hh_prompt_splits_into_speaker_turns():
    text = "\n\nHuman: what are pranks?\n\nAssistant: Which kind?\n\nHuman: with a pen\n\nAssistant:"
    assert split_hh_turns(text) == [
        ("Human", "what are pranks?"), ("Assistant", "Which kind?"), ("Human", "with a pen"), ("Assistant", "")
    ]
    turns = prompt_turns(text)
    assert [t["role"] for t in turns] == ["Human", "Assistant", "Human", "Assistant"]
    assert turns[-1]["awaiting"] and not turns[0]["awaiting"]
    assert split_hh_turns("Tell me about Human: the species") is None
    assert prompt_turns("plain question")[0]["role"] == ""


def test_chat_messages_render_as_turns():
    turns = prompt_turns("ignored", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert [t["role"] for t in turns] == ["System", "User"]
    assert "Be brief." in str(turns[0]["html"])


def test_real_hh_texts_keep_every_character(shared_data):
    path = shared_data / "hh_harmless_dev.jsonl"
    with path.open() as f:
        rows = [json.loads(line) for _, line in zip(range(300), f)]
    for row in rows:
        for key in ("chosen", "rejected"):
            text, _ = shown(str(render_exact(row[key])))
            if row[key].strip():
                assert no_ws(text) == no_ws(row[key]), row[key]
        turns = split_hh_turns(row["prompt"])
        assert turns and turns[0][0] == "Human" and turns[-1] == ("Assistant", "")
        joined = "".join(f"{role}:{content}" for role, content in turns)
        assert no_ws(joined) == no_ws(row["prompt"])
