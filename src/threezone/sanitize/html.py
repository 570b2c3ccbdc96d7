"""HTML to the text a person would actually see, with what they would not see set aside.

An injection hidden from the person but shown to the model is the cheapest attack on
a mail-reading agent, so this renderer drops everything a mail client would not
display: non-content elements (script, style, head), comments, ``<template>`` and
``<noscript>`` content, the ``hidden`` attribute, and the usual CSS tricks (display,
visibility, opacity, zero font size, zero-height boxes, off-screen positioning, text
coloured like its background), whether set inline or by simple ``<style>`` rules.

Hidden text is never returned as part of the body; it comes back separately, labelled
with how it was hidden, so the detector can look at it. Everything here is pure: a
string in, a :class:`RenderedHtml` out. The tree is walked with an explicit stack,
because lexbor builds arbitrarily deep trees and Python recursion would not survive
an attacker's ten thousand nested ``<div>`` elements.

What this does not model (yet): the full cascade (complex selectors, specificity,
``!important``, media queries, external stylesheets), ``transform``, ``clip-path``
shapes, ``<details>``, and attribute text such as ``alt`` and ``title``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from selectolax.lexbor import LexborHTMLParser, LexborNode

MAX_HIDDEN_SNIPPETS = 200
MAX_SNIPPET_CHARS = 5_000
MAX_STYLE_CHARS = 200_000

_NOT_CONTENT = frozenset(
    {"script", "style", "head", "title", "meta", "link", "base", "iframe", "object", "embed"}
)
# Block boundaries are emitted as markers and resolved in _tidy, so that two adjacent
# boundaries (</li><li>) make one line break rather than a blank line.
_LINE = "\x00l"
_PARAGRAPH = "\x00p"
_BREAK_AROUND = {
    "p": _PARAGRAPH,
    "h1": _PARAGRAPH,
    "h2": _PARAGRAPH,
    "h3": _PARAGRAPH,
    "h4": _PARAGRAPH,
    "h5": _PARAGRAPH,
    "h6": _PARAGRAPH,
    "blockquote": _PARAGRAPH,
    "table": _PARAGRAPH,
    "ul": _LINE,
    "ol": _LINE,
    "dl": _LINE,
    "div": _LINE,
    "li": _LINE,
    "tr": _LINE,
    "dt": _LINE,
    "dd": _LINE,
    "pre": _LINE,
    "hr": _LINE,
    "section": _LINE,
    "article": _LINE,
    "header": _LINE,
    "footer": _LINE,
    "nav": _LINE,
    "aside": _LINE,
    "main": _LINE,
    "center": _LINE,
    "form": _LINE,
    "fieldset": _LINE,
    "address": _LINE,
    "figure": _LINE,
    "figcaption": _LINE,
    "td": " ",
    "th": " ",
}
_SPACES = re.compile(r"[^\S\n]+")
_BLANK_LINES = re.compile(r"\n{3,}")
_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class HiddenText:
    """Text a person would not see, and how it was hidden (for the detector only)."""

    how: str
    text: str


@dataclass(frozen=True)
class HtmlLink:
    """A visible ``<a href>``: the text a person sees and the address it goes to."""

    text: str
    url: str


@dataclass(frozen=True)
class RenderedHtml:
    """The visible text, its links, and what was hidden (count and snippets)."""

    text: str
    links: tuple[HtmlLink, ...]
    hidden_chars: int
    hidden: tuple[HiddenText, ...]


def html_to_text(untrusted_html: str) -> RenderedHtml:
    """Render untrusted HTML to the text a mail client would show.

    The input is handed to lexbor as UTF-8 bytes with lone surrogates replaced, since
    a ``str`` that cannot be encoded would otherwise raise inside the parser.
    """
    tree = LexborHTMLParser(untrusted_html.encode("utf-8", errors="replace"))
    walker = _Walker(StyleRules.from_css(_style_text(tree)))
    if tree.root is not None:
        walker.walk(tree.root)
    return walker.result()


# --- CSS: just enough to see what is hidden ---------------------------------------------------

_CSS_COMMENT = re.compile(r"/\*.*?(?:\*/|$)", re.DOTALL)
_CSS_HEX_ESCAPE = re.compile(r"\\([0-9a-fA-F]{1,6})\s?")
_CSS_CHAR_ESCAPE = re.compile(r"\\([^0-9a-fA-F\n])")
_IMPORTANT = re.compile(r"!\s*important\b")
_SIMPLE_SELECTOR = re.compile(r"^([a-z][a-z0-9-]*)?(?:([.#])(-?[_a-zA-Z][\w-]*))?$")
_LENGTH = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))\s*([a-z%]*)")


def parse_declarations(untrusted_css: str) -> dict[str, str]:
    """``a: b; c: d`` -> ``{"a": "b", "c": "d"}``, lowercased, unescaped, ``!important`` dropped.

    Escapes are resolved because ``disp\\lay:n\\6f ne`` hides text as well as
    ``display:none`` does, and an attacker will write whichever one we miss.
    """
    decls: dict[str, str] = {}
    for item in _css_unescape(_CSS_COMMENT.sub(" ", untrusted_css)).split(";"):
        name, sep, value = item.partition(":")
        if sep:
            clean = _WHITESPACE.sub(" ", _IMPORTANT.sub("", value)).strip().lower()
            decls[name.strip().lower()] = clean
    return decls


def _css_unescape(css: str) -> str:
    css = _CSS_HEX_ESCAPE.sub(_hex_escape, css)
    return _CSS_CHAR_ESCAPE.sub(r"\1", css)


def _hex_escape(match: re.Match[str]) -> str:
    code = int(match.group(1), 16)
    return chr(code) if 0 < code <= 0x10FFFF and not 0xD800 <= code <= 0xDFFF else "\ufffd"


@dataclass(frozen=True)
class StyleRules:
    """Declarations from ``<style>`` blocks, keyed by simple selector (``p``, ``.x``, ``p#y``).

    Only top-level rules with simple selectors count; ``@media`` and other at-rule
    blocks are skipped on purpose, since a rule that applies only on some screens
    hides nothing from the person reading on the others.
    """

    by_selector: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    @classmethod
    def from_css(cls, untrusted_css: str) -> StyleRules:
        merged: dict[str, dict[str, str]] = {}
        for selectors, block in _top_level_rules(untrusted_css[:MAX_STYLE_CHARS]):
            decls = parse_declarations(block)
            for selector in selectors.split(","):
                key = _selector_key(selector.strip())
                if key is not None:
                    merged.setdefault(key, {}).update(decls)
        return cls(merged)

    def declarations_for(self, tag: str, attrs: Mapping[str, str | None]) -> dict[str, str]:
        """Merge rules for tag, then classes, then id (a rough specificity order)."""
        decls: dict[str, str] = {}
        for key in _keys_for(tag, attrs):
            decls.update(self.by_selector.get(key, {}))
        return decls


def _keys_for(tag: str, attrs: Mapping[str, str | None]) -> Iterator[str]:
    yield tag
    for name in (attrs.get("class") or "").split():
        yield f".{name}"
        yield f"{tag}.{name}"
    element_id = attrs.get("id")
    if element_id:
        yield f"#{element_id}"
        yield f"{tag}#{element_id}"


def _selector_key(selector: str) -> str | None:
    match = _SIMPLE_SELECTOR.match(selector)
    if match is None or not selector:
        return None
    tag, kind, name = match.groups()
    return f"{(tag or '').lower()}{kind or ''}{name or ''}"


def _top_level_rules(css: str) -> Iterator[tuple[str, str]]:
    """Yield ``(selectors, declarations)`` for each top-level rule, skipping at-rules."""
    css = _CSS_COMMENT.sub(" ", css).replace("<!--", " ").replace("-->", " ")
    pos = 0
    while (open_at := css.find("{", pos)) >= 0:
        close_at = _matching_brace(css, open_at)
        selectors = css[pos:open_at].rpartition(";")[2].rpartition("}")[2].strip()
        if not selectors.startswith("@"):
            yield selectors, css[open_at + 1 : close_at]
        pos = close_at + 1


def _matching_brace(css: str, open_at: int) -> int:
    depth = 0
    for index in range(open_at, len(css)):
        char = css[index]
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return index
    return len(css)


def _style_text(tree: LexborHTMLParser) -> str:
    return "\n".join(node.text() for node in tree.css("style"))


# --- what counts as hidden --------------------------------------------------------------------


def hiding_technique(decls: Mapping[str, str]) -> str | None:
    """Name the CSS technique that hides an element with these declarations, if any."""
    for check in _CHECKS:
        how = check(decls)
        if how is not None:
            return how
    return None


def _display_none(decls: Mapping[str, str]) -> str | None:
    return "display:none" if decls.get("display", "").startswith("none") else None


def _visibility_hidden(decls: Mapping[str, str]) -> str | None:
    hidden = decls.get("visibility", "") in {"hidden", "collapse"}
    return "visibility:hidden" if hidden else None


def _transparent(decls: Mapping[str, str]) -> str | None:
    opacity = _length(decls.get("opacity", ""))
    if opacity is not None:
        value = opacity[0] / 100 if opacity[1] == "%" else opacity[0]
        if value <= 0.05:
            return "opacity:0"
    return None


def _tiny_font(decls: Mapping[str, str]) -> str | None:
    size = _length(decls.get("font-size", ""))
    if size is None:
        return None
    value, unit = size
    limits = {"": 0.0, "px": 1.0, "pt": 1.0, "em": 0.1, "rem": 0.1, "%": 10.0}
    return "font-size:0" if value <= limits.get(unit, 0.0) else None


def _zero_box(decls: Mapping[str, str]) -> str | None:
    overflow = " ".join(decls.get(p, "") for p in ("overflow", "overflow-x", "overflow-y"))
    if "hidden" not in overflow.split():
        return None
    for prop in ("max-height", "height", "max-width", "width"):
        size = _length(decls.get(prop, ""))
        if size is not None and size[0] <= 0:
            return f"{prop}:0 with overflow:hidden"
    return None


def _off_screen(decls: Mapping[str, str]) -> str | None:
    moved = decls.get("position", "") in {"absolute", "fixed", "relative"}
    props = ("left", "top", "text-indent", "margin-left", "margin-top")
    for prop in props:
        if prop in {"left", "top"} and not moved:
            continue
        size = _length(decls.get(prop, ""))
        if size is not None and _is_far_negative(*size):
            return f"off-screen {prop}"
    return None


def _clipped(decls: Mapping[str, str]) -> str | None:
    clip = decls.get("clip", "").replace(" ", "")
    if clip.startswith("rect(0") and decls.get("position", "") in {"absolute", "fixed"}:
        return "clip:rect(0)"
    return None


def _is_far_negative(value: float, unit: str) -> bool:
    if unit in {"em", "rem"}:
        return value <= -60.0
    if unit in {"%", "vw", "vh"}:
        return value <= -100.0
    return value <= -1000.0


def _length(value: str) -> tuple[float, str] | None:
    match = _LENGTH.match(value)
    if match is None:
        return None
    return float(match.group(1)), match.group(2)


_CHECKS = (
    _display_none,
    _visibility_hidden,
    _transparent,
    _tiny_font,
    _zero_box,
    _off_screen,
    _clipped,
)


# --- colours: text painted in its own background ------------------------------------------------

_HEX3 = re.compile(r"^#([0-9a-f])([0-9a-f])([0-9a-f])$")
_HEX6 = re.compile(r"^#[0-9a-f]{6}$")
_RGB = re.compile(
    r"^rgba?\(\s*(\d{1,3})[\s,]+(\d{1,3})[\s,]+(\d{1,3})\s*(?:[,/]\s*(\d*\.?\d+)%?)?\s*\)$"
)
_NAMED = {"white": "#ffffff", "black": "#000000", "red": "#ff0000", "blue": "#0000ff"}
_NOT_A_COLOUR = frozenset({"inherit", "initial", "unset", "currentcolor", "revert", "none"})


def normalize_colour(value: str | None) -> str | None:
    """A comparable form of a CSS colour; ``transparent`` for fully transparent ones.

    Unknown names compare as themselves, which is all a same-colour check needs.
    """
    value = (value or "").strip().lower()
    if (match := _HEX3.match(value)) is not None:
        return "#" + "".join(c * 2 for c in match.groups())
    if (match := _RGB.match(value)) is not None:
        return _rgb_colour(match)
    if _HEX6.match(value) or (value.isalpha() and value not in _NOT_A_COLOUR):
        return _NAMED.get(value, value)
    return None


def _rgb_colour(match: re.Match[str]) -> str:
    red, green, blue, alpha = match.groups()
    if alpha is not None and float(alpha) == 0.0:
        return "transparent"
    return "#" + "".join(f"{min(int(c), 255):02x}" for c in (red, green, blue))


def _background(decls: Mapping[str, str], attrs: Mapping[str, str | None]) -> str | None:
    candidates = [decls.get("background-color", "")]
    candidates += decls.get("background", "").split()
    candidates.append(attrs.get("bgcolor") or "")
    for candidate in candidates:
        colour = normalize_colour(candidate)
        if colour is not None and colour != "transparent":
            return colour
    return None


def _foreground(tag: str, decls: Mapping[str, str], attrs: Mapping[str, str | None]) -> str | None:
    colour = normalize_colour(decls.get("color"))
    if colour is None and tag == "font":
        colour = normalize_colour(attrs.get("color"))
    return colour


# --- the walk ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Context:
    """What an element inherits: effective colours and whether it is already hidden."""

    colour: str | None = None
    background: str | None = None
    hidden: bool = False


@dataclass(frozen=True)
class _Exit:
    """Work to do after an element's children: close a line, a link, or a hidden group."""

    newline: str
    href: str | None
    link_start: int
    hidden_how: str | None


class _Walker:
    """Renders a tree into visible text, links and hidden snippets."""

    def __init__(self, rules: StyleRules) -> None:
        self._rules = rules
        self._visible: list[str] = []
        self._hidden_parts: list[str] | None = None
        self._links: list[HtmlLink] = []
        self._hidden: list[HiddenText] = []
        self._hidden_chars = 0

    def walk(self, root: LexborNode) -> None:
        stack: list[tuple[LexborNode, _Context] | _Exit] = [(root, _Context())]
        while stack:
            item = stack.pop()
            if isinstance(item, _Exit):
                self._leave(item)
            else:
                stack.extend(self._visit(*item))

    def result(self) -> RenderedHtml:
        return RenderedHtml(
            text=_tidy(self._visible),
            links=tuple(self._links),
            hidden_chars=self._hidden_chars,
            hidden=tuple(self._hidden),
        )

    def _sink(self) -> list[str]:
        return self._visible if self._hidden_parts is None else self._hidden_parts

    def _visit(
        self, node: LexborNode, context: _Context
    ) -> list[tuple[LexborNode, _Context] | _Exit]:
        """Handle one node; return what to push (its exit marker, then its children reversed)."""
        if node.is_text_node:
            text = (node.text_content or "").replace("\x00", "")
            self._sink().append(_WHITESPACE.sub(" ", text))
            return []
        if node.is_comment_node:
            self._set_aside("comment", node.comment_content or "")
            return []
        tag = node.tag or ""
        if tag.startswith("-") or tag in _NOT_CONTENT:
            return []
        if tag == "template":
            self._set_aside("<template>", " ".join(f.text() for f in node.template_fragments()))
            return []
        if tag == "br":
            self._sink().append("\n")
            return []
        return self._enter(node, tag, context)

    def _enter(
        self, node: LexborNode, tag: str, context: _Context
    ) -> list[tuple[LexborNode, _Context] | _Exit]:
        attrs = node.attributes
        inner, how = self._context_for(tag, attrs, context)
        starts_hidden = how is not None and not context.hidden
        if starts_hidden:
            self._hidden_parts = []
        newline = _BREAK_AROUND.get(tag, "")
        self._sink().append(newline)
        href = attrs.get("href") if tag == "a" and not inner.hidden else None
        exit_marker = _Exit(newline, href, len(self._visible), how if starts_hidden else None)
        return [exit_marker, *self._children(node, inner)]

    def _children(
        self, node: LexborNode, context: _Context
    ) -> list[tuple[LexborNode, _Context] | _Exit]:
        children = list(node.iter(include_text=True))
        return [(child, context) for child in reversed(children)]

    def _context_for(
        self, tag: str, attrs: Mapping[str, str | None], context: _Context
    ) -> tuple[_Context, str | None]:
        decls = self._rules.declarations_for(tag, attrs)
        decls.update(parse_declarations(attrs.get("style") or ""))
        colour = _foreground(tag, decls, attrs)
        background = _background(decls, attrs)
        inner = _Context(
            colour=colour or context.colour,
            background=background or context.background,
            hidden=context.hidden,
        )
        how = _hidden_by_markup(tag, attrs) or hiding_technique(decls)
        if how is None and (colour or background):
            how = _same_colour(inner)
        if how is not None:
            inner = _Context(inner.colour, inner.background, hidden=True)
        return inner, how

    def _leave(self, item: _Exit) -> None:
        self._sink().append(item.newline)
        if item.href is not None and self._hidden_parts is None:
            text = _one_line("".join(self._visible[item.link_start :]))
            self._links.append(HtmlLink(text=text, url=item.href.strip()))
        if item.hidden_how is not None and self._hidden_parts is not None:
            parts, self._hidden_parts = self._hidden_parts, None
            self._set_aside(item.hidden_how, "".join(parts))

    def _set_aside(self, how: str, untrusted_text: str) -> None:
        text = _one_line(untrusted_text)
        if not text:
            return
        self._hidden_chars += len(text)
        if len(self._hidden) < MAX_HIDDEN_SNIPPETS:
            self._hidden.append(HiddenText(how=how, text=text[:MAX_SNIPPET_CHARS]))


def _hidden_by_markup(tag: str, attrs: Mapping[str, str | None]) -> str | None:
    if tag == "noscript":
        return "<noscript>"
    if "hidden" in attrs:
        return "hidden attribute"
    return None


def _same_colour(context: _Context) -> str | None:
    if context.colour == "transparent":
        return "transparent text"
    if context.colour is not None and context.colour == context.background:
        return "text colour equals background"
    return None


def _one_line(text: str) -> str:
    text = text.replace(_LINE, " ").replace(_PARAGRAPH, " ")
    return _WHITESPACE.sub(" ", text).strip()


def _tidy(parts: list[str]) -> str:
    """Resolve block markers, collapse spaces, strip each line, allow one blank line at most.

    A linear pass over the parts, not a regex: a pattern like ``\\s*marker`` rescans
    long whitespace runs from every position, which is quadratic on hostile input.
    """
    text = "".join(_resolve_breaks(parts))
    lines = (_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def _resolve_breaks(parts: list[str]) -> Iterator[str]:
    """Adjacent block markers (and the spaces between them) make one break, the widest."""
    pending = ""
    for part in parts:
        if part in (_LINE, _PARAGRAPH):
            pending = "\n\n" if "\n\n" in (pending, _break(part)) else "\n"
        elif pending and part.isspace() and "\n" not in part:
            continue
        elif part:
            yield pending
            pending = ""
            yield part
    yield pending


def _break(marker: str) -> str:
    return "\n\n" if marker == _PARAGRAPH else "\n"
