"""What every reader shares: strict bounded JSON, the text collector, and the verdict.

The chat readers (Telegram, Slack) decode attacker-controlled JSON; the rules are the
same for both, so they live here once: the size is checked before a byte is decoded,
nesting depth right after, counts of entities, blocks, links and files before any
rendering, and every failure becomes a :class:`~threezone.errors.ReaderError`.
:func:`guarded` is the top of every reader: whatever a bug or a library raises on
hostile input leaves as :class:`MalformedInputError`, never as a traceback.

:class:`Seen` gathers, while a reader renders a message, what it cleaned away
(invisible code points, smuggled text), what a person would not see (hidden text for
the detector), the links and the findings; :func:`finish` turns it into the strict
:class:`SanitizedMessage` with its injection verdict.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import msgspec

from threezone.errors import InputTooLargeError, MalformedInputError, ReaderError
from threezone.protocol.messages import (
    MAX_BODY,
    MAX_LINE,
    MAX_LIST,
    MAX_REASONS,
    MAX_SHORT,
    MAX_URL,
    Attachment,
    Channel,
    Dropped,
    Injection,
    Link,
    SanitizedMessage,
)
from threezone.sanitize.detect import DEFAULT_DETECTOR, DetectorInput, Finding, combine, quote
from threezone.sanitize.html import HiddenText
from threezone.sanitize.links import check_links, url_host
from threezone.sanitize.sniff import is_active
from threezone.sanitize.text import clean_text, squash, truncate

MIB = 1024 * 1024
DISGUISED_WEIGHT = 0.4
UNDISPLAYED_WEIGHT = 0.3

T = TypeVar("T")


@dataclass(frozen=True)
class ChatLimits:
    """Bounds on one chat event. Exceeding any raises InputTooLargeError.

    The defaults sit well above what the platforms allow (Telegram: 4,096 characters
    of text, 100 entities; Slack: 40,000 characters, 50 blocks, 100 attachments), so
    a genuine event never trips them and a forged one cannot cost much.
    """

    max_raw_bytes: int = MIB
    max_depth: int = 32
    max_text_chars: int = 50_000
    max_body_chars: int = 100_000
    max_entities: int = 1_000
    max_blocks: int = 100
    max_elements: int = 5_000
    max_links: int = 200
    max_files: int = 100

    def __post_init__(self) -> None:
        if not 0 < self.max_body_chars <= MAX_BODY:
            raise ValueError(f"max_body_chars must be in 1..{MAX_BODY}")
        if not 0 <= self.max_links <= MAX_LIST or not 0 <= self.max_files <= MAX_LIST:
            raise ValueError(f"max_links and max_files must be at most {MAX_LIST}")


CHAT_LIMITS = ChatLimits()


# --- the top of a reader ----------------------------------------------------------------------


def guarded(what: str, read: Callable[[], T]) -> T:
    """Run ``read``; anything but a ReaderError it raises becomes a typed reader error."""
    try:
        return read()
    except ReaderError:
        raise
    except (RecursionError, MemoryError) as exc:
        raise InputTooLargeError(f"{what} too complex to read ({type(exc).__name__})") from None
    except Exception as exc:  # a bug on hostile input must not become a traceback
        raise MalformedInputError(f"{what} could not be read ({type(exc).__name__})") from None


def check_message_id(message_id: str) -> None:
    """The caller's own id, not untrusted input: a bad one is the caller's ValueError."""
    if len(message_id) > MAX_SHORT:
        raise ValueError(f"message_id longer than {MAX_SHORT} characters")


# --- strict, bounded JSON ---------------------------------------------------------------------

_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")
_DEPTH_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def decode_json(untrusted_raw: bytes, kind: type[T], what: str, limits: ChatLimits) -> T:
    """Decode ``untrusted_raw`` into ``kind``, bounded in size and depth, or raise a reader error.

    The structs ignore unknown fields (the platforms add fields every release) but
    check the type of every field they name. msgspec skips unknown values without
    building them; its own recursion guard stops pathological nesting there, and
    :func:`json_depth` bounds the rest.
    """
    if len(untrusted_raw) > limits.max_raw_bytes:
        raise InputTooLargeError(f"{what}: {len(untrusted_raw)} bytes, over {limits.max_raw_bytes}")
    try:
        decoded = msgspec.json.decode(untrusted_raw, type=kind)
    except RecursionError:
        raise InputTooLargeError(f"{what}: JSON nested too deeply") from None
    except msgspec.ValidationError as exc:
        raise MalformedInputError(f"{what}: {truncate(str(exc), 300)}") from None
    except msgspec.DecodeError as exc:
        raise MalformedInputError(f"{what}: not valid JSON ({truncate(str(exc), 200)})") from None
    depth = json_depth(untrusted_raw)
    if depth > limits.max_depth:
        raise InputTooLargeError(f"{what}: JSON nested {depth} deep, over {limits.max_depth}")
    return decoded


def json_depth(valid_json: bytes) -> int:
    """The deepest nesting of arrays and objects in a document msgspec already accepted.

    Strings are removed first (brackets inside them do not count); on valid JSON
    that regular expression never backtracks far, so this is linear.
    """
    brackets = _JSON_STRING.sub(b"", valid_json).translate(None, _NOT_BRACKETS)
    depth = deepest = 0
    for byte in brackets:
        depth += _DEPTH_STEP[byte]
        deepest = max(deepest, depth)
    return deepest


def count(untrusted_number: int) -> int:
    """A size the platform declared, clamped into the schema's range."""
    return min(max(untrusted_number, 0), 2**53)


def at_most(count: int, limit: int, what: str) -> None:
    """Refuse a count over its limit, naming what was counted."""
    if count > limit:
        raise InputTooLargeError(f"{count} {what}, over {limit}")


# --- collecting what a message shows and hides ------------------------------------------------


@dataclass
class Seen:
    """What a reader met while rendering one message, beyond the text it shows."""

    invisible_chars: int = 0
    hidden_chars: int = 0
    dropped_parts: int = 0
    smuggled: list[str] = field(default_factory=list)
    hidden: list[HiddenText] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    def clean(self, untrusted_text: str) -> str:
        """``clean_text`` that keeps count of what it removed and decoded."""
        cleaned = clean_text(untrusted_text)
        self.invisible_chars += cleaned.invisible_chars
        if cleaned.smuggled:
            self.smuggled.append(cleaned.smuggled)
        return cleaned.text

    def line(self, untrusted_text: str, max_chars: int = MAX_SHORT) -> str:
        """Cleaned, on one line, cut to ``max_chars``: for names, titles and labels."""
        return truncate(squash(self.clean(untrusted_text)), max_chars)

    def link(self, untrusted_text: str, untrusted_url: str) -> None:
        """Record a link as shown (its text) and as it goes (its target)."""
        url = truncate(squash(self.clean(untrusted_url)), MAX_URL)
        if not url:
            return
        # the text is part of the body too, which counts what cleaning removes from it
        text = truncate(squash(clean_text(untrusted_text).text), MAX_LINE) or truncate(
            url, MAX_LINE
        )
        self.links.append(Link(text=text, url=url, host=url_host(url)))

    def hide(self, how: str, untrusted_text: str, removed: bool = True) -> None:
        """Hand the detector text a person may not see; ``removed`` if the body lacks it.

        A Telegram spoiler stays in the body (one tap shows it) yet is still judged as
        hidden text: an instruction behind a spoiler was put where eyes skip it.
        """
        text = self.clean(untrusted_text) if removed else clean_text(untrusted_text).text
        if text.strip():
            self.hidden.append(HiddenText(how, text))
            self.hidden_chars += len(text) if removed else 0

    def undisplayed(self, how: str, untrusted_text: str, shown_text: str) -> None:
        """Flag text the platform sends but the client does not show, where it says more.

        Like email's plain/HTML alternatives: Slack's ``text`` beside ``blocks``, an
        attachment's ``fallback``. Its novel lines go to the detector as hidden text.
        """
        novel = novel_lines(self.clean(untrusted_text), clean_text(shown_text).text)
        if not novel:
            return
        self.hidden.append(HiddenText(how, "\n".join(novel)))
        self.hidden_chars += sum(len(line) for line in novel)
        reason = f"{how} disagrees with what is displayed ({len(novel)} lines not shown)"
        self.findings.append(Finding(UNDISPLAYED_WEIGHT, reason))


def finish(
    *,
    channel: Channel,
    message_id: str,
    sender: str,
    subject: str,
    body: str,
    seen: Seen,
    attachments: Sequence[Attachment],
    limits: ChatLimits,
    thread_id: str | None = None,
    reply_to_id: str | None = None,
) -> SanitizedMessage:
    """The strict message: body cut to size, links bounded, the detector's verdict."""
    at_most(len(seen.links), limits.max_links, "links")
    body = cut_body(tidy_lines(body), limits.max_body_chars)
    findings = DEFAULT_DETECTOR.findings(
        DetectorInput(
            visible=f"{subject}\n{body}", hidden=seen.hidden, smuggled=" ".join(seen.smuggled)
        )
    )
    findings += check_links(body, seen.links)
    findings += attachment_findings(attachments)
    return SanitizedMessage(
        channel=channel,
        id=message_id,
        sender=truncate(squash(sender), MAX_SHORT),
        subject=truncate(squash(subject), MAX_LINE),
        body=body,
        links=dedupe_links(seen.links),
        attachments=list(attachments),
        injection=injection([*findings, *seen.findings]),
        sanitized=True,
        dropped=Dropped(
            hidden_chars=seen.hidden_chars,
            invisible_chars=seen.invisible_chars,
            parts=seen.dropped_parts,
        ),
        thread_id=short_id(thread_id),
        reply_to_id=short_id(reply_to_id),
    )


def dedupe_links(links: Iterable[Link]) -> list[Link]:
    """Each target once, first text wins."""
    seen: set[str] = set()
    kept = []
    for link in links:
        if link.url not in seen:
            seen.add(link.url)
            kept.append(link)
    return kept


def short_id(untrusted_id: str | None) -> str | None:
    """A platform's conversation key on one short line, or None when there is none."""
    if untrusted_id is None:
        return None
    text = truncate(squash(clean_text(untrusted_id).text), MAX_SHORT)
    return text or None


def attachment_findings(attachments: Iterable[Attachment]) -> list[Finding]:
    """A finding for content that runs code while its declared type says it is inert."""
    disguised = [
        f"{quote(a.name or '(no name)')} is declared {a.content_type} but is {a.sniffed_type}"
        for a in attachments
        if is_active(a.sniffed_type) and _inert(a.content_type)
    ]
    if not disguised:
        return []
    listed = "; ".join(disguised[:3])
    return [Finding(DISGUISED_WEIGHT, f"attachment disguised as another type: {listed}")]


def _inert(declared: str) -> bool:
    kind = declared.lower()
    return (
        kind.startswith(("image/", "audio/", "video/", "text/plain", "text/calendar"))
        or kind
        in {
            "application/pdf",
            "application/msword",
            "application/zip",
        }
        or kind.startswith("application/vnd.")
    )


def injection(findings: list[Finding]) -> Injection:
    """The combined verdict, reasons cut to the schema's bounds."""
    verdict = combine(findings)
    reasons = [truncate(reason, MAX_LINE) for reason in verdict.reasons[:MAX_REASONS]]
    return Injection(flagged=verdict.flagged, score=verdict.score, reasons=reasons)


# --- text shape -------------------------------------------------------------------------------

_WORD = re.compile(r"[^\W_]{3,}")
_URL_IN_TEXT = re.compile(r"https?://\S+", re.IGNORECASE)
_BLANK_RUN = re.compile(r"\n{3,}")


def novel_lines(plain_text: str, shown_text: str, min_words: int = 3) -> list[str]:
    """Lines of ``plain_text`` whose words are mostly absent from ``shown_text``.

    Word sets rather than a diff: alternatives legitimately differ in layout, links
    and line breaks, and a diff of two 200 KB texts is quadratic.
    """
    shown_words = set(_words(shown_text))
    novel = []
    for line in plain_text.split("\n"):
        words = _words(line)
        missing = [w for w in words if w not in shown_words]
        if len(missing) >= min_words and len(missing) * 2 > len(words):
            novel.append(line.strip())
    return novel


def _words(text: str) -> list[str]:
    return _WORD.findall(_URL_IN_TEXT.sub(" ", text).lower())


def tidy_lines(text: str) -> str:
    """Drop trailing spaces and runs of blank lines (a cheap way to push text out of view).

    Per-line ``rstrip`` rather than a ``[ \t]+$`` regex, which is quadratic on a long
    run of spaces that does not end a line.
    """
    lines = "\n".join(line.rstrip(" \t") for line in text.split("\n"))
    return _BLANK_RUN.sub("\n\n", lines).strip("\n")


def cut_body(text: str, max_chars: int) -> str:
    """Cut an over-long body, saying so at the end (Dropped has no field for it)."""
    if len(text) <= max_chars:
        return text
    marker = f"\n[threezone: body truncated, {len(text) - max_chars} more characters not shown]"
    return text[: max(0, max_chars - len(marker))] + marker
