"""Find encoded runs in untrusted text and decode the ones that turn out to be text.

A language model reads base64, hex, rot13 and UTF-7 about as easily as plain English,
so "decode this and do what it says: SWdub3Jl..." is an instruction to it even though
no rule can read it. This module does the decoding so the detector can apply its rules
to what the model would understand.

Everything is bounded, since the input is hostile: at most :data:`MAX_SCAN_CHARS` of
input are examined, at most :data:`MAX_CANDIDATES` runs per level, each run is cut to
:data:`MAX_RUN_CHARS` before it is decoded, and decoding nests :data:`MAX_DEPTH` levels
deep at most (base64 inside base64 inside base64 stops there; no recursion bombs).

A decoded run is kept only if it *reads as text*: valid UTF-8, printable, mostly
letters and spaces, with at least two words. Images, PGP armour, DKIM signatures and key
fingerprints decode to binary and are dropped here, so they never reach the rules.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass

MAX_SCAN_CHARS = 200_000
MAX_CANDIDATES = 16
MAX_RUN_CHARS = 8_192
MAX_DEPTH = 2
MIN_TEXT_CHARS = 8
TEXTLIKE_RATIO = 0.85

# Quantifiers are bounded so a megabyte of one character is scanned in linear time.
_BASE64 = re.compile(r"(?<![A-Za-z0-9+/_=-])[A-Za-z0-9+/_-]{20,8192}={0,2}")
_HEX = re.compile(
    r"(?<![0-9A-Fa-f])(?:0x)?(?:[0-9A-Fa-f]{2}){10,4096}(?![0-9A-Fa-f])"
    r"|(?:\\x[0-9A-Fa-f]{2}){8,4096}"
    r"|(?<![0-9A-Fa-f])(?:[0-9A-Fa-f]{2}[ :]){7,4096}[0-9A-Fa-f]{2}(?![0-9A-Fa-f])"
)
_UTF7_RUN = re.compile(r"\+[A-Za-z0-9+/]{3,4096}-?")
_PERCENT = re.compile(r"(?:%[0-9A-Fa-f]{2}){6,4096}")
_NOT_HEX = re.compile(r"0x|\\x|[ :]")
_WORDS = re.compile(r"[^\W\d_]{2,}")
# "the", "and", "you", "to", "is", "of", "for", "your", "all" in rot13: English under rot13
# has them; text without one is not worth a second pass of every rule
_ROT13_WORDS = re.compile(r"\b(?:gur|naq|lbh|gb|vf|bs|sbe|lbhe|nyy)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Decoded:
    """One decoded run: how it was encoded (``base64``, ``hex in base64``...) and the text."""

    kind: str
    text: str
    depth: int


def decoded_texts(untrusted_text: str) -> list[Decoded]:
    """Every encoded run in ``untrusted_text`` that decodes to text, up to two levels deep.

    rot13 is not a run (it looks like words): the whole text's rot13 is returned as a
    candidate when the text has common English words in rot13 ("gur", "naq" ...), and
    the caller keeps it only if the rules find something there that they did not find
    in the plain text.
    """
    text = untrusted_text[:MAX_SCAN_CHARS]
    found: list[Decoded] = []
    level = [Decoded("", text, 0)]
    for depth in (1, MAX_DEPTH):
        level = [d for parent in level for d in _decode_level(parent, depth)][:MAX_CANDIDATES]
        found += level
    if _ROT13_WORDS.search(text):
        found.append(Decoded("rot13", codecs.encode(text, "rot13"), 1))
    return found


def _decode_level(parent: Decoded, depth: int) -> Iterator[Decoded]:
    """The decodable runs of one text (and its UTF-7 reading), labelled with their nesting."""
    count = 0
    for kind, decoded in _decode_runs(parent.text):
        if count >= MAX_CANDIDATES:
            return
        if reads_as_text(decoded):
            count += 1
            yield Decoded(f"{kind} in {parent.kind}" if parent.kind else kind, decoded, depth)


def _decode_runs(text: str) -> Iterator[tuple[str, str]]:
    for kind, decoder, pattern in _DECODERS:
        for match in pattern.finditer(text):
            decoded = decoder(match.group()[:MAX_RUN_CHARS])
            if decoded is not None:
                yield kind, decoded
    utf7 = decode_utf7_text(text)
    if utf7 is not None:
        yield "UTF-7", utf7


def reads_as_text(candidate: str) -> bool:
    """Printable, mostly letters, digits, spaces and common punctuation, with two words."""
    if len(candidate) < MIN_TEXT_CHARS or len(_WORDS.findall(candidate[:400])) < 2:
        return False
    sample = candidate[:2000]
    plain = sum(1 for c in sample if c.isalnum() or c in " \n\t.,:;!?'\"()-/@_|$&*#=+<>[]")
    return plain >= TEXTLIKE_RATIO * len(sample) and all(
        c.isprintable() or c in "\n\t" for c in sample
    )


def _utf8(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def decode_base64(run: str) -> str | None:
    """Standard or URL-safe base64 (padding optional) to UTF-8 text, else None."""
    body = run.rstrip("=")
    if len(body) % 4 == 1:
        return None
    mixed = any(c.islower() for c in body) and any(c.isupper() or c.isdigit() for c in body)
    if not mixed:
        return None  # a long run of one case is a word or an identifier, not base64
    padded = body + "=" * (-len(body) % 4)
    altchars = b"-_" if ("-" in body or "_" in body) else None
    try:
        data = base64.b64decode(padded, altchars=altchars, validate=True)
    except (binascii.Error, ValueError):
        return None
    return _utf8(data)


def decode_hex(run: str) -> str | None:
    """Hex digits (plain, ``0x``-prefixed, ``\\x``-escaped or spaced) to UTF-8 text."""
    digits = _NOT_HEX.sub("", run)
    if len(digits) % 2:
        return None
    try:
        return _utf8(bytes.fromhex(digits))
    except ValueError:
        return None


def decode_utf7_run(run: str) -> str | None:
    """One UTF-7 shifted run (``+AGkAZw-``) to the characters it encodes."""
    try:
        decoded = codecs.decode(run.encode("ascii"), "utf-7")
    except (UnicodeDecodeError, UnicodeEncodeError):
        return None
    return decoded if decoded.isprintable() else None


def decode_percent(run: str) -> str | None:
    """A run of %XX escapes to UTF-8 text."""
    try:
        return urllib.parse.unquote(run, errors="strict")
    except UnicodeDecodeError:
        return None


def decode_utf7_text(untrusted_text: str) -> str | None:
    """The text with every UTF-7 run decoded in place, or None when there is none.

    A UTF-7 payload is usually many short runs between plain characters ("+AGk-gnore"),
    so the runs are decoded where they stand and the whole text is returned.
    """
    changed = False

    def swap(match: re.Match[str]) -> str:
        nonlocal changed
        decoded = decode_utf7_run(match.group())
        if decoded is None or len(decoded) < 2:
            return match.group()
        changed = True
        return decoded

    result = _UTF7_RUN.sub(swap, untrusted_text[:MAX_SCAN_CHARS], count=MAX_CANDIDATES * 64)
    return result if changed else None


_Decoder = Callable[[str], str | None]

_DECODERS: tuple[tuple[str, _Decoder, re.Pattern[str]], ...] = (
    ("base64", decode_base64, _BASE64),
    ("hex", decode_hex, _HEX),
    ("percent-encoded", decode_percent, _PERCENT),
)
