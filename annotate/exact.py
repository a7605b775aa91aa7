"""Exact text: prompts and responses rendered so that the annotator sees every character.

Model output is judged as written, so this renderer formats but never hides. Markdown
syntax is styled and its markers stay visible (dimmed): ``**bold**`` shows bold with its
asterisks, a fenced block keeps its fence lines, ``![alt](url)`` shows as its link text and
its URL, raw HTML is shown as text. Whitespace is kept (``white-space: pre-wrap`` lines).
The invariant, checked by a property test: the rendered page text, whitespace removed,
equals the source text, whitespace removed.

A text of only whitespace shows a visible "(empty / whitespace only)" marker instead of a
blank box. HH-style prompts ("\\n\\nHuman: … \\n\\nAssistant: …") and chat message lists
split into speaker turns with :func:`prompt_turns`.

Every piece of text is escaped here and the only tags are the ones built below; links
keep only http(s) URLs and open with ``rel="noopener noreferrer nofollow"``. Instructions
written by project admins keep full Markdown (:mod:`annotate.rendering`).
"""
from __future__ import annotations

import re
from functools import lru_cache

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

EMPTY_MARKER = "(empty / whitespace only)"
# Over this many characters the text is shown escaped, unformatted: the patterns below on
# megabytes of model output would stall the page.
MAX_FORMATTED_CHARS = 200_000

_FENCE = re.compile(r"^( {0,3})(`{3,}|~{3,})(.*)$")
_HEADING = re.compile(r"^( {0,3})(#{1,6})(\s+)(.*)$")
_QUOTE = re.compile(r"^( {0,3})(>+)(.*)$")
_BULLET = re.compile(r"^(\s*)([-*+]|\d{1,9}[.)])(\s+)(.*)$")
_RULE = re.compile(r"^ {0,3}([-*_])(\s*\1){2,}\s*$")
_TABLE = re.compile(r"^\s*\|.*\|\s*$")
_LANGUAGE = re.compile(r"^[A-Za-z0-9_+#.-]{1,40}$")

# Inline spans, tried left to right; the first that matches at the earliest position wins.
_INLINE = re.compile(
    r"(?P<code>(?P<ticks>`+)(?P<code_body>.+?)(?P=ticks))"
    r"|(?P<image>!\[(?P<img_text>[^\]\n]*)\]\((?P<img_url>[^()\s]*)(?P<img_rest>[^()\n]*)\))"
    r"|(?P<link>\[(?P<link_text>[^\]\n]+)\]\((?P<link_url>[^()\s]+)(?P<link_rest>[^()\n]*)\))"
    r"|(?P<strong>(?P<s_mark>\*\*|__)(?=\S)(?P<s_body>.+?)(?<=\S)(?P=s_mark))"
    r"|(?P<em>(?P<e_mark>\*|(?<![A-Za-z0-9])_)(?=[^\s*_])(?P<e_body>.+?)(?<=[^\s*_])(?P=e_mark)(?![A-Za-z0-9]))"
    r"|(?P<url>https?://[^\s<>\"'`)\]]+[^\s<>\"'`)\].,;:!?])"
)
_SAFE_URL = re.compile(r"^(https?://|mailto:)[^\s\"'<>`]+$", re.IGNORECASE)


def _t(text: str) -> str:
    """Escaped text. '=' is written '&#61;': the page shows the same characters, but escaped
    markup in a response (``&lt;img onerror=…&gt;``) no longer holds the byte sequence of an
    event-handler attribute, so a grep of the page source for ``onerror=`` finds nothing."""
    return escape(text).replace("=", "&#61;")


def _mark(text: str) -> str:
    return f'<span class="md-mark">{_t(text)}</span>' if text else ""


def _link(url: str, label_html: str, css: str = "") -> str:
    if _SAFE_URL.match(url):
        cls = f' class="{css}"' if css else ""
        return f'<a href="{escape(url)}"{cls} rel="noopener noreferrer nofollow">{label_html}</a>'
    return label_html


def _inline(text: str, depth: int = 0) -> str:
    if depth > 3 or not text:
        return _t(text)
    out: list[str] = []
    pos = 0
    for m in _INLINE.finditer(text):
        out.append(_t(text[pos:m.start()]))
        pos = m.end()
        if m.group("code"):
            ticks = m.group("ticks")
            out.append(f"<code>{_mark(ticks)}{_t(m.group('code_body'))}{_mark(ticks)}</code>")
        elif m.group("image"):
            url, alt, rest = m.group("img_url"), m.group("img_text"), m.group("img_rest")
            if alt:  # shown as its link text, the URL after it
                out.append(_mark("![") + _link(url, f'<span class="md-img">{_t(alt)}</span>', "md-img-link"))
                out.append(_mark(f"]({url}{rest})"))
            else:  # no text: the URL is the link text
                out.append(_mark("![](") + _link(url, f'<span class="md-img">{_t(url)}</span>', "md-img-link"))
                out.append(_mark(f"{rest})"))
        elif m.group("link"):
            url = m.group("link_url")
            out.append(
                _mark("[")
                + _link(url, _inline(m.group("link_text"), depth + 1))
                + _mark(f"]({url}{m.group('link_rest')})")
            )
        elif m.group("strong"):
            mk = m.group("s_mark")
            out.append(f"<strong>{_mark(mk)}{_inline(m.group('s_body'), depth + 1)}{_mark(mk)}</strong>")
        elif m.group("em"):
            mk = m.group("e_mark")
            out.append(f"<em>{_mark(mk)}{_inline(m.group('e_body'), depth + 1)}{_mark(mk)}</em>")
        else:
            url = m.group("url")
            out.append(_link(url, _t(url)))
    out.append(_t(text[pos:]))
    return "".join(out)


def _line(css: str, inner: str) -> str:
    return f'<div class="ln{(" " + css) if css else ""}">{inner}</div>'


def _block_line(line: str) -> str:
    if not line.strip():
        return '<div class="ln ln-blank"></div>'
    if m := _HEADING.match(line):
        lead, hashes, space, rest = m.groups()
        return _line(f"ln-h ln-h{len(hashes)}", _t(lead) + _mark(hashes + space) + _inline(rest))
    if _RULE.match(line):
        return _line("ln-rule", _mark(line))
    if m := _QUOTE.match(line):
        lead, marks, rest = m.groups()
        return _line("ln-quote", _t(lead) + _mark(marks) + _inline(rest))
    if m := _BULLET.match(line):
        lead, bullet, space, rest = m.groups()
        return _line("ln-item", _t(lead) + f'<span class="md-bullet">{_t(bullet)}</span>' + _t(space) + _inline(rest))
    if _TABLE.match(line):
        return _line("ln-table", _t(line))
    return _line("", _inline(line))


def _code_block(fence_line: str, info: str, body: list[str], closing: str | None) -> str:
    lang = info.strip().split(" ", 1)[0] if info.strip() else ""
    cls = f' class="language-{escape(lang)}"' if lang and _LANGUAGE.match(lang) else ""
    code = _t("\n".join(body))
    tail = f"\n{_mark(closing)}" if closing is not None else ""
    return f'<pre class="code">{_mark(fence_line)}\n<code{cls}>{code}</code>{tail}</pre>'


def _render(text: str) -> str:
    lines = text.split("\n")
    # Blank lines at either end only add height.
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = _FENCE.match(line)
        if fence:
            marker = fence.group(2)
            body: list[str] = []
            i += 1
            closing = None
            while i < len(lines):
                stripped = lines[i].strip()
                if stripped.startswith(marker[0] * len(marker)) and not stripped.strip(marker[0]):
                    closing = lines[i]
                    break
                body.append(lines[i])
                i += 1
            out.append(_code_block(line, fence.group(3), body, closing))
            i += 1
            continue
        out.append(_block_line(line))
        i += 1
    return "".join(out)


def whitespace_summary(text: str) -> str:
    """'3 spaces, 2 line breaks' for a text of only whitespace ('' when empty)."""
    counts = []
    n_breaks = text.count("\n")
    n_spaces = text.count(" ")
    n_tabs = text.count("\t")
    n_other = len(text) - n_breaks - n_spaces - n_tabs
    for n, word in ((n_spaces, "space"), (n_breaks, "line break"), (n_tabs, "tab"), (n_other, "other blank")):
        if n:
            counts.append(f"{n} {word}{'' if n == 1 else 's'}")
    return ", ".join(counts)


@lru_cache(maxsize=4096)
def _render_cached(text: str) -> str:
    # Cached per process: each response is shown to k annotators, and a submit's response
    # renders the next item, so this is on the path the annotator waits on.
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        detail = whitespace_summary(text)
        return (
            f'<p class="empty-text"><span class="empty-marker">{EMPTY_MARKER}</span>'
            + (f' <span class="muted small">{_t(detail)}</span>' if detail else "")
            + "</p>"
        )
    if len(text) > MAX_FORMATTED_CHARS:
        return f'<div class="exact-text exact-raw">{_t(text)}</div>'
    return f'<div class="exact-text">{_render(text)}</div>'


def render_exact(text: str | None) -> SafeString:
    """Model text → HTML showing every character, safe to insert into a page as is."""
    return mark_safe(_render_cached(text or ""))


# --------------------------------------------------------------------------------------------
# Prompt turns
# --------------------------------------------------------------------------------------------

_SPEAKER = re.compile(r"(?:\A|\n\n)(Human|Assistant|User|System):[ \t]?")


def split_hh_turns(text: str) -> list[tuple[str, str]] | None:
    """``"\\n\\nHuman: hi\\n\\nAssistant: hello"`` → [("Human", "hi"), ("Assistant", "hello")].
    None when the text is not a transcript: it must start, after whitespace, with a
    "Human:", "User:" or "System:" tag; later tags count only after a blank line."""
    stripped = text.lstrip()
    if not re.match(r"(Human|User|System):", stripped):
        return None
    matches = list(_SPEAKER.finditer(stripped))
    if not matches or matches[0].start() != 0:
        return None
    turns = []
    for k, m in enumerate(matches):
        end = matches[k + 1].start() if k + 1 < len(matches) else len(stripped)
        turns.append((m.group(1), stripped[m.end():end]))
    return turns


def prompt_turns(text: str, messages=None) -> list[dict]:
    """A prompt as speaker turns: ``[{"role", "html", "awaiting"}]``. Chat messages (a list
    of ``{"role", "content"}``) and HH transcripts get one turn per message; any other text
    is one turn without a speaker. A final empty assistant turn (the HH prompt ends with
    "Assistant:") is kept as ``awaiting``: the responses below answer it."""
    if isinstance(messages, list) and messages and all(isinstance(m, dict) for m in messages):
        pairs = [(str(m.get("role", "")).strip()[:20], str(m.get("content", ""))) for m in messages]
    else:
        pairs = split_hh_turns(text or "") or [("", text or "")]
    turns = []
    for k, (role, content) in enumerate(pairs):
        last_empty = k == len(pairs) - 1 and k > 0 and not content.strip()
        turns.append(
            {
                "role": role.capitalize() if role.islower() else role,
                "html": "" if last_empty else render_exact(content),
                "awaiting": last_empty,
            }
        )
    return turns
