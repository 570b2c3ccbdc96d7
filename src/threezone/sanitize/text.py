"""Unicode cleaning for untrusted text: drop what a reader cannot see, keep what they can.

A language model reads code points; a person reads glyphs. Every code point that
renders as nothing (zero-width characters, bidi controls, the tag block, stray control
characters) is a channel a person cannot audit, so it is removed and counted. Two of
those channels carry whole hidden strings ("ASCII smuggling" with tag characters, and
bytes encoded as runs of variation selectors); those are decoded and handed back so
the detector can judge them, and never returned as part of the text.

Normalization is NFC plus a *chosen part* of NFKC. Full NFKC is not safe for the text a
person and the planner read: it turns "x" + superscript two into "x2", "H" + subscript
two + "O" into "H2O", the vulgar fraction one half into "1" + fraction slash + "2", the
trade mark sign into "TM" and the ellipsis into "...", and rewrites Arabic ligatures
and CJK squared forms, which changes what a message says. So only the compatibility
forms that are pure styling of the same letters are folded: fullwidth and halfwidth
forms, mathematical alphanumerics (bold, italic, script ...), Arabic presentation
forms, small and no-break variants, and letter-only ligatures, circled and squared
letters (U+FB01, U+24D0, U+1F130). Fullwidth "ignore" (U+FF49 U+FF47 ...) therefore
becomes "ignore" in the text itself, and legitimate Cyrillic, Greek or CJK text is
left as written. The detector applies full NFKC and a
lookalike skeleton to its own copy (see :mod:`threezone.sanitize.detect`).

Chat-template control tokens (``<|im_start|>``, ``[INST]``, ``<<SYS>>``,
``<start_of_turn>``, ``</s>`` ...) and role labels at the start of a line ("Human:",
"Assistant:", "### System:") are *neutralized*: their ASCII brackets, pipes and colons
are swapped for look-alike characters that no tokenizer treats as special and NFKC does
not fold back (``<`` -> U+2039, ``>`` -> U+203A single angle quotation marks, ``|`` ->
U+00A6 broken bar, ``[`` / ``]`` -> U+27E6 / U+27E7 white square brackets, ``:`` ->
U+A789 modifier letter colon). A person still sees
what was written; the planner's model never receives a working token or a line that
parses as a turn of its own conversation. The count is in :attr:`CleanText.role_tokens`
and the detector flags them from the neutralized text itself, so every reader gets
both without extra code. Neutralizing is idempotent: cleaned text cleans to itself.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

# Characters that render as nothing and have no business in a message shown to a model.
# Zero-width and joiners, soft hyphen, bidi embeddings/overrides/isolates, invisible
# operators, deprecated format characters, fillers that render blank, interlinear
# annotation marks, musical and shorthand format controls, Egyptian format controls,
# and every C0/C1 control except newline and tab (newline-like ones were mapped first).
_INVISIBLE = re.compile(
    "["
    "\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f"
    "\u200b-\u200f\u202a-\u202e\u2060-\u206f\u3164\ufeff\uffa0\ufff9-\ufffb"
    "\U0001d173-\U0001d17a\U0001bca0-\U0001bca3\U00013430-\U0001343f"
    "\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f"
    "]"
)
_NEWLINES = re.compile("\r\n|[\r\x0b\x0c\x85\u2028\u2029]")
_SURROGATE = re.compile("[\ud800-\udfff]")

# The tag block. Tags U+E0020..U+E007E mirror printable ASCII; U+E007F cancels.
_TAG_RUN = re.compile("[\U000e0000-\U000e007f]+")
_TAG_BASE = 0xE0000
# A subdivision flag (England, Scotland, Wales): black flag, 2-6 tag letters, cancel tag.
_FLAG_SEQUENCE = re.compile("\U0001f3f4[\U000e0030-\U000e0039\U000e0061-\U000e007a]{2,6}\U000e007f")

# Variation selectors. One after a base character is legitimate (emoji presentation,
# CJK variants); a run of them is how arbitrary bytes get hidden behind one glyph.
_VS_RUN = re.compile("[\ufe00-\ufe0f\U000e0100-\U000e01ef]{2,}")

_WHITESPACE = re.compile(r"\s+")

# Compatibility forms folded in the visible text (see the module docstring for why not all).
_FOLD_ALWAYS = frozenset(
    ("<font>", "<wide>", "<narrow>", "<small>", "<noBreak>", "<initial>", "<medial>", "<final>")
) | {"<isolated>"}
_FOLD_IF_LETTERS = frozenset(("<compat>", "<circle>", "<square>"))
_NON_ASCII = re.compile(r"[^\x00-\x7f]")

# Chat-template control tokens of the common model families, after folding (so fullwidth
# and styled variants arrive here as ASCII). ``▁`` appears in DeepSeek's token names.
CHAT_TOKEN = re.compile(
    r"<\|[A-Za-z0-9_\u2581 .:/-]{1,40}\|>"  # <|im_start|>, <|eot_id|>, <|begin▁of▁sentence|>
    r"|</?(?:s|bos|eos)>|<</?SYS>>"  # Llama 2, Gemma
    r"|<(?:start|end)_of_turn>"  # Gemma
    r"|</?(?:tool_call|tool_response|function_call)>"  # Hermes, Qwen tool turns
    r"|\[/?(?:INST|SYSTEM_PROMPT|AVAILABLE_TOOLS|TOOL_CALLS|TOOL_RESULTS)\]",  # Mistral
    re.IGNORECASE,
)
# A line that opens a conversational turn: "Human:", "### System:", "[assistant]:".
# [ \t]* rather than \s*: with MULTILINE, \s* would rescan newline runs (quadratic).
ROLE_LINE = re.compile(
    r"^([ \t>]{0,8}(?:#{1,6}[ \t]{0,4})?[\[(]?(?:system(?:[ _]message)?|assistant|human|user"
    r"|ai|model|developer|instructions?|response)[\])]?[ \t]{0,4}):",
    re.IGNORECASE | re.MULTILINE,
)
_NEUTRAL = str.maketrans(
    {"<": "\u2039", ">": "\u203a", "|": "\u00a6", "[": "\u27e6", "]": "\u27e7"}
)
NEUTRAL_COLON = "\ua789"


@dataclass(frozen=True)
class CleanText:
    """Cleaned text, how many invisible code points went, and any decoded hidden string.

    ``role_tokens`` counts the chat-template tokens and role-label lines neutralized.
    """

    text: str
    invisible_chars: int
    smuggled: str
    role_tokens: int = 0


def clean_text(untrusted_text: str) -> CleanText:
    """Remove invisible code points, decode smuggled strings, normalize, neutralize tokens.

    Lone surrogates (which the stdlib email package produces for undecodable header
    bytes) become U+FFFD so the result always encodes as UTF-8.
    """
    text = _SURROGATE.sub("\ufffd", untrusted_text)
    text = _NEWLINES.sub("\n", text)
    smuggled: list[str] = []
    text, flag_chars = _drop_flag_tags(text)
    text, tag_chars = _take_tag_runs(text, smuggled)
    text, selector_chars = _take_selector_runs(text, smuggled)
    text, removed = _INVISIBLE.subn("", text)
    text = fold_compatibility(text)
    text, removed_after = _INVISIBLE.subn("", text)
    text, role_tokens = neutralize_role_tokens(text)
    invisible = flag_chars + tag_chars + selector_chars + removed + removed_after
    hidden = _INVISIBLE.sub("", _TAG_RUN.sub("", " ".join(smuggled)))
    return CleanText(text=text, invisible_chars=invisible, smuggled=hidden, role_tokens=role_tokens)


def fold_compatibility(text: str) -> str:
    """NFC, then NFKC for the styling-only compatibility forms (module docstring says which)."""
    text = unicodedata.normalize("NFC", text)
    if text.isascii():
        return text
    return _NON_ASCII.sub(lambda m: _fold_char(m.group()), text)


@lru_cache(maxsize=8192)
def _fold_char(char: str) -> str:
    decomposition = unicodedata.decomposition(char)
    if not decomposition.startswith("<"):
        return char
    tag = decomposition.split(" ", 1)[0]
    folded = unicodedata.normalize("NFKC", char)
    if tag in _FOLD_ALWAYS:
        return folded
    if tag in _FOLD_IF_LETTERS and folded.isascii() and folded.isalpha():
        return folded
    return char


def neutralize_role_tokens(text: str) -> tuple[str, int]:
    """Defuse chat-template tokens and role-label lines; return the text and how many."""
    text, tokens = CHAT_TOKEN.subn(lambda m: m.group().translate(_NEUTRAL), text)
    text, lines = ROLE_LINE.subn(lambda m: m.group(1).translate(_NEUTRAL) + NEUTRAL_COLON, text)
    return text, tokens + lines


def squash(text: str) -> str:
    """Collapse every run of whitespace (newlines included) to one space, for one-line fields."""
    return _WHITESPACE.sub(" ", text).strip()


def truncate(text: str, max_chars: int) -> str:
    """Cut ``text`` to at most ``max_chars`` characters, marking the cut with an ellipsis."""
    if len(text) <= max_chars:
        return text
    if max_chars <= 0:
        return ""
    return text[: max_chars - 1] + "\u2026"


def _drop_flag_tags(text: str) -> tuple[str, int]:
    """A subdivision flag is not smuggling: keep the black flag, drop its tag letters.

    The tag letters are still removed (and counted): they are invisible code points
    all the same, and the flag still reads as a flag without them.
    """
    removed = 0

    def keep_base(match: re.Match[str]) -> str:
        nonlocal removed
        removed += len(match.group()) - 1
        return "\U0001f3f4"

    return _FLAG_SEQUENCE.sub(keep_base, text), removed


def _take_tag_runs(text: str, smuggled: list[str]) -> tuple[str, int]:
    """Remove tag-block runs, appending the ASCII each run spells to ``smuggled``."""
    removed = 0

    def decode(match: re.Match[str]) -> str:
        nonlocal removed
        run = match.group()
        removed += len(run)
        ascii_text = "".join(chr(ord(c) - _TAG_BASE) for c in run if 0xE0020 <= ord(c) <= 0xE007E)
        if ascii_text.strip():
            smuggled.append(ascii_text)
        return ""

    return _TAG_RUN.sub(decode, text), removed


def _take_selector_runs(text: str, smuggled: list[str]) -> tuple[str, int]:
    """Remove runs of variation selectors, appending the bytes they encode as text.

    The known encoding maps byte ``b`` to U+FE00+b for b < 16 and U+E0100+(b-16)
    otherwise; decoding with it is harmless for runs that were never meant as bytes.
    """
    removed = 0

    def decode(match: re.Match[str]) -> str:
        nonlocal removed
        run = match.group()
        removed += len(run)
        data = bytes(_selector_byte(c) for c in run)
        decoded = data.decode("utf-8", errors="replace")
        if decoded.strip():
            smuggled.append(decoded)
        return ""

    return _VS_RUN.sub(decode, text), removed


def _selector_byte(char: str) -> int:
    code = ord(char)
    if code <= 0xFE0F:
        return code - 0xFE00
    return code - 0xE0100 + 16
