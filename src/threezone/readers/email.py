"""Raw RFC 5322 bytes -> :class:`SanitizedMessage`. Pure: bytes in, a verified struct out.

Everything in ``untrusted_raw`` is attacker-controlled, so the reader checks sizes
before it decodes, counts parts and depth as it walks, and turns every failure into
a :class:`~threezone.errors.ReaderError`: :class:`InputTooLargeError` for a limit,
:class:`MalformedInputError` for anything else. The stdlib ``email`` package is
lenient and mostly records defects instead of raising, but it has had crash bugs on
hostile input; whatever it raises is caught at the top and reported as malformed,
never as a traceback (the executor quarantines the message either way).

The body is what a mail client would show: the HTML alternative rendered to visible
text when there is one, else the plain text. Hidden HTML, invisible Unicode and the
undisplayed plain alternative (when it says something else) go to the detector only.
Attachments are described (name, declared type, size), never passed on.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.headerregistry import AddressHeader
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import EmailPolicy
from typing import Any

from threezone.errors import InputTooLargeError, MalformedInputError, ReaderError
from threezone.protocol.messages import (
    MAX_BODY,
    MAX_LINE,
    MAX_LIST,
    MAX_SHORT,
    MAX_URL,
    Attachment,
    Dropped,
    Link,
    SanitizedMessage,
)
from threezone.readers.common import (
    attachment_findings,
    cut_body,
    injection,
    novel_lines,
    short_id,
    tidy_lines,
)
from threezone.sanitize.detect import DEFAULT_DETECTOR, DetectorInput, Finding
from threezone.sanitize.html import HiddenText, HtmlLink, html_to_text
from threezone.sanitize.links import check_links, url_host
from threezone.sanitize.sniff import sniff
from threezone.sanitize.text import clean_text, squash, truncate

MIB = 1024 * 1024
ALTERNATIVE_WEIGHT = 0.3
UNDISPLAYED_PLAIN = "text/plain alternative that is not displayed"
ATTACHED_MESSAGE = "message/rfc822"

__all__ = ["EmailLimits", "novel_lines", "read_email", "thread_ids", "url_host"]


@dataclass(frozen=True)
class EmailLimits:
    """Bounds on one untrusted email. Exceeding any of them raises InputTooLargeError.

    ``max_body_chars`` is the exception: a long body is cut (and the cut is marked at
    its end) rather than refused, since the beginning of a long mail is still useful.

    The three header limits bound the work of the stdlib header parser, which is
    pure Python and superlinear (an 8 KB Content-Type of semicolons takes 0.4 s, a
    320 KB one 17 s). They apply to each header value the reader actually parses
    (From, Subject, the Content-* headers), before the parser sees it:
    ``max_header_chars`` per value, ``max_mime_header_chars`` per Content-* value
    (legitimate ones are short), and ``max_total_header_chars`` over all distinct
    values parsed in one message.
    """

    max_raw_bytes: int = 25 * MIB
    max_parts: int = 100
    max_depth: int = 10
    max_body_chars: int = 200_000
    max_links: int = 200
    max_decoded_bytes: int = 10 * MIB
    max_header_chars: int = 8_192
    max_mime_header_chars: int = 2_048
    max_total_header_chars: int = 131_072

    def __post_init__(self) -> None:
        if not 0 < self.max_body_chars <= MAX_BODY:
            raise ValueError(f"max_body_chars must be in 1..{MAX_BODY}")
        if not 0 <= self.max_links <= MAX_LIST or not 0 < self.max_parts <= MAX_LIST:
            raise ValueError(f"max_links and max_parts must be at most {MAX_LIST}")


def read_email(
    untrusted_raw: bytes, message_id: str, limits: EmailLimits = EmailLimits()
) -> SanitizedMessage:
    """Parse one untrusted email into a bounded, sanitized message.

    Raises InputTooLargeError or MalformedInputError for bad input, and nothing else
    for any input; ``ValueError`` only if the caller's own ``message_id`` is too long.
    """
    if len(message_id) > MAX_SHORT:
        raise ValueError(f"message_id longer than {MAX_SHORT} characters")
    if len(untrusted_raw) > limits.max_raw_bytes:
        raise InputTooLargeError(f"{len(untrusted_raw)} bytes, over {limits.max_raw_bytes}")
    try:
        return _read(untrusted_raw, message_id, limits)
    except ReaderError:
        raise
    except (RecursionError, MemoryError) as exc:
        raise InputTooLargeError(f"email too complex to parse ({type(exc).__name__})") from None
    except Exception as exc:  # hostile input can trip any bug in the stdlib parser
        raise MalformedInputError(f"email could not be parsed ({type(exc).__name__})") from None


@dataclass
class _HeaderBudget:
    """The header-parsing work one message may cost; each distinct value is parsed once.

    The stdlib re-parses a header on every access (a part's Content-Type a dozen
    times), so the cache matters as much as the limits. Header objects are immutable,
    and the budget lives for one message only.
    """

    limits: EmailLimits
    spent: int = 0
    parsed: dict[tuple[str, str], Any] = field(default_factory=dict)

    def fetch(self, name: str, value: str, parse: Callable[[str, str], Any]) -> Any:
        key = (name.lower(), value)
        if key not in self.parsed:
            self._charge(key[0], len(value))
            self.parsed[key] = parse(name, value)
        return self.parsed[key]

    def _charge(self, name: str, size: int) -> None:
        mime = name.startswith("content-")
        limit = self.limits.max_mime_header_chars if mime else self.limits.max_header_chars
        if size > limit:
            shown = truncate(squash(name), 40)
            raise InputTooLargeError(f"a {shown!r} header is over {limit} characters")
        self.spent += size
        if self.spent > self.limits.max_total_header_chars:
            total = self.limits.max_total_header_chars
            raise InputTooLargeError(f"headers to parse add up to over {total} characters")


class _BoundedPolicy(EmailPolicy):
    """``policy.default`` whose header parsing goes through a :class:`_HeaderBudget`.

    The hook is ``header_fetch_parse`` because the parser itself fetches Content-Type
    while it splits multiparts, before any code of ours could look.
    """

    budget: _HeaderBudget | None = None

    def header_fetch_parse(self, name: str, value: str) -> Any:
        if self.budget is None:
            return super().header_fetch_parse(name, value)
        return self.budget.fetch(name, value, super().header_fetch_parse)


def _read(untrusted_raw: bytes, message_id: str, limits: EmailLimits) -> SanitizedMessage:
    # typeshed lists EmailPolicy's own keywords only; _PolicyBase accepts any class attribute
    options: dict[str, Any] = {"budget": _HeaderBudget(limits)}
    root = BytesParser(policy=_BoundedPolicy(**options)).parsebytes(untrusted_raw)
    if not isinstance(root, EmailMessage) or not root.keys():
        raise MalformedInputError("no header could be parsed: not an email")
    tree = _walk(root, limits)
    subject = clean_text(_header_text(root, "subject"))
    body = _Body.choose(root, tree, limits)
    links, links_cut = _links(body, limits)
    attachments = _attachments(tree, body.shown)
    findings = DEFAULT_DETECTOR.findings(
        DetectorInput(
            visible=f"{subject.text}\n{body.text}",
            hidden=body.hidden,
            smuggled=" ".join(s for s in (subject.smuggled, body.smuggled) if s),
        )
    )
    findings += check_links(body.text, links)
    findings += attachment_findings(attachments)
    thread_id, reply_to_id = thread_ids(root)
    return SanitizedMessage(
        channel="email",
        id=message_id,
        sender=_sender(root),
        subject=truncate(squash(subject.text), MAX_LINE),
        body=body.text,
        links=links,
        attachments=attachments,
        injection=injection([*findings, *body.findings]),
        sanitized=True,
        dropped=Dropped(
            hidden_chars=body.hidden_chars,
            invisible_chars=subject.invisible_chars + body.invisible_chars,
            parts=body.dropped_parts,
            links=links_cut,
        ),
        thread_id=thread_id,
        reply_to_id=reply_to_id,
    )


# --- structure --------------------------------------------------------------------------------


@dataclass
class _Tree:
    """The parts of a message, flattened, with what the walk learned on the way."""

    leaves: list[EmailMessage] = field(default_factory=list)
    attached: list[EmailMessage] = field(default_factory=list)
    sizes: dict[int, int] = field(default_factory=dict)
    sniffed: dict[int, str] = field(default_factory=dict)
    parents: dict[int, EmailMessage] = field(default_factory=dict)


def _walk(root: EmailMessage, limits: EmailLimits) -> _Tree:
    """Visit every part once (no recursion), enforcing count, depth and size limits.

    Parts inside an attached message (message/rfc822) are counted and sized but are
    not candidates for the body: a forwarded mail is an attachment, not what was said.
    """
    tree = _Tree()
    stack: list[tuple[EmailMessage, int, EmailMessage | None]] = [(root, 0, None)]
    count = 0
    while stack:
        part, depth, owner = stack.pop()
        count += 1
        if count > limits.max_parts:
            raise InputTooLargeError(f"more than {limits.max_parts} MIME parts")
        if depth > limits.max_depth:
            raise InputTooLargeError(f"MIME parts nested deeper than {limits.max_depth}")
        if part.is_multipart():
            stack.extend(_children(part, depth, owner, tree))
        elif owner is None:
            data = _decoded(part, limits)
            tree.leaves.append(part)
            tree.sizes[id(part)] = len(data)
            tree.sniffed[id(part)] = sniff(data)
        else:
            tree.sizes[id(owner)] += len(_decoded(part, limits))
    return tree


def _children(
    part: EmailMessage, depth: int, owner: EmailMessage | None, tree: _Tree
) -> list[tuple[EmailMessage, int, EmailMessage | None]]:
    if owner is None and part.get_content_maintype() == "message":
        owner = part
        tree.attached.append(part)
        tree.sizes[id(part)] = 0
        tree.sniffed[id(part)] = ATTACHED_MESSAGE
    payload = part.get_payload()
    listed = payload if isinstance(payload, list) else []
    children = [child for child in listed if isinstance(child, EmailMessage)]
    for child in children:
        tree.parents[id(child)] = part
    return [(child, depth + 1, owner) for child in reversed(children)]


def _decoded(part: EmailMessage, limits: EmailLimits) -> bytes:
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes):
        return b""
    if len(data) > limits.max_decoded_bytes:
        raise InputTooLargeError(f"a MIME part decodes to over {limits.max_decoded_bytes} bytes")
    return data


def _part_text(part: EmailMessage, limits: EmailLimits) -> str:
    """Decode a text part by its declared charset, or as UTF-8 when that charset fails.

    The charset is attacker-chosen: it may be unknown, or a codec that is not a text
    encoding (``rot13``, ``base64``) or that refuses ``errors="replace"`` (``idna``).
    """
    data = _decoded(part, limits)
    charset = part.get_content_charset() or "utf-8"
    try:
        codecs.lookup(charset)
        return data.decode(charset, errors="replace")
    except (LookupError, ValueError, TypeError):
        return data.decode("utf-8", errors="replace")


# --- the displayed body -----------------------------------------------------------------------


@dataclass
class _Body:
    """The text a client would display, plus what was set aside on the way."""

    text: str = ""
    shown: set[int] = field(default_factory=set)
    html_links: tuple[HtmlLink, ...] = ()
    hidden: list[HiddenText] = field(default_factory=list)
    hidden_chars: int = 0
    invisible_chars: int = 0
    smuggled: str = ""
    dropped_parts: int = 0
    findings: list[Finding] = field(default_factory=list)

    @classmethod
    def choose(cls, root: EmailMessage, tree: _Tree, limits: EmailLimits) -> _Body:
        body = cls()
        chosen = root.get_body(preferencelist=("html", "plain"))
        if isinstance(chosen, EmailMessage) and not chosen.is_multipart():
            body.shown.add(id(chosen))
            body._show(chosen, limits)
            if chosen.get_content_subtype() == "html":
                body._compare_plain(_plain_sibling(chosen, tree), limits)
        body.dropped_parts += sum(
            1 for leaf in tree.leaves if id(leaf) not in body.shown and not _is_attachment(leaf)
        )
        return body

    def _show(self, part: EmailMessage, limits: EmailLimits) -> None:
        untrusted_text = _part_text(part, limits)
        if part.get_content_subtype() == "html":
            rendered = html_to_text(untrusted_text)
            untrusted_text, self.html_links = rendered.text, rendered.links
            self.hidden_chars = rendered.hidden_chars
            self._set_aside(rendered.hidden)
        cleaned = clean_text(untrusted_text)
        self.text = cut_body(tidy_lines(cleaned.text), limits.max_body_chars)
        self.invisible_chars += cleaned.invisible_chars
        self._add_smuggled(cleaned.smuggled)

    def _set_aside(self, hidden: tuple[HiddenText, ...]) -> None:
        for snippet in hidden:
            cleaned = clean_text(snippet.text)
            self.hidden.append(HiddenText(snippet.how, cleaned.text))
            self._add_smuggled(cleaned.smuggled)

    def _add_smuggled(self, smuggled: str) -> None:
        if smuggled:
            self.smuggled = f"{self.smuggled} {smuggled}".strip()

    def _compare_plain(self, plain: EmailMessage | None, limits: EmailLimits) -> None:
        """Flag an undisplayed plain alternative that says something the HTML does not.

        Clients show the HTML; a model fed the plain part would read something else.
        Its novel lines go to the detector as hidden text.
        """
        if plain is None:
            return
        self.shown.add(id(plain))
        self.dropped_parts += 1
        cleaned = clean_text(_part_text(plain, limits))
        self._add_smuggled(cleaned.smuggled)
        novel = novel_lines(cleaned.text, self.text)
        if novel:
            self.hidden.append(HiddenText(UNDISPLAYED_PLAIN, "\n".join(novel)))
            reason = (
                "multipart/alternative: the plain-text and HTML versions disagree "
                f"({len(novel)} plain-text lines not in the displayed HTML)"
            )
            self.findings.append(Finding(ALTERNATIVE_WEIGHT, reason))


def _plain_sibling(html_part: EmailMessage, tree: _Tree) -> EmailMessage | None:
    """The text/plain alternative to ``html_part``, if it sits in a multipart/alternative."""
    node: EmailMessage | None = tree.parents.get(id(html_part))
    while node is not None and node.get_content_type() != "multipart/alternative":
        node = tree.parents.get(id(node))
    if node is None:
        return None
    plain = node.get_body(preferencelist=("plain",))
    return plain if isinstance(plain, EmailMessage) and not plain.is_multipart() else None


def _is_attachment(part: EmailMessage) -> bool:
    return (
        part.is_attachment()
        or part.get_filename() is not None
        or part.get_content_maintype() != "text"
    )


def _attachments(tree: _Tree, shown: set[int]) -> list[Attachment]:
    described = [leaf for leaf in tree.leaves if id(leaf) not in shown and _is_attachment(leaf)]
    return [
        _describe(part, tree.sizes[id(part)], tree.sniffed[id(part)])
        for part in [*described, *tree.attached]
    ]


def _describe(part: EmailMessage, size: int, sniffed: str) -> Attachment:
    name = clean_text(part.get_filename() or "").text
    return Attachment(
        name=truncate(squash(name), MAX_SHORT),
        content_type=truncate(part.get_content_type(), MAX_SHORT),
        size=size,
        sniffed_type=sniffed,
    )


# --- headers ----------------------------------------------------------------------------------


def _header_text(message: EmailMessage, name: str) -> str:
    """A header's decoded value, or its raw value if the header parser chokes on it."""
    try:
        value = message.get(name)
    except ReaderError:
        raise
    except Exception:  # known stdlib parser bugs on hostile headers; raw text still works
        return _raw_header(message, name)
    return "" if value is None else str(value)


def _raw_header(message: EmailMessage, name: str) -> str:
    for key, value in message.raw_items():
        if key.lower() == name:
            return str(value)
    return ""


_MSG_ID = re.compile(r"<[^<>\s]{1,250}>")


def thread_ids(message: EmailMessage) -> tuple[str | None, str | None]:
    """(thread, replied-to) from Message-ID, In-Reply-To and References, as stated.

    The thread is the first id in References (the conversation's root), else the
    replied-to message, else this message itself. The raw header values are read, not
    parsed: References grows with every reply and is all plain ``<id>`` tokens.
    """
    own = _first_id(_raw_header(message, "message-id"))
    references = _MSG_ID.findall(_raw_header(message, "references")[:65_536])
    replied = _first_id(_raw_header(message, "in-reply-to")) or (
        references[-1] if references else None
    )
    root = references[0] if references else replied or own
    return short_id(root), short_id(replied)


def _first_id(raw_value: str) -> str | None:
    match = _MSG_ID.search(raw_value[:4_096])
    return match.group() if match else None


def _sender(message: EmailMessage) -> str:
    """The From address as stated (unauthenticated: the executor knows better)."""
    try:
        header = message.get("from")
    except ReaderError:
        raise
    except Exception:  # see _header_text
        header = _raw_header(message, "from")
    address = str(header or "")
    if isinstance(header, AddressHeader) and header.addresses:
        address = header.addresses[0].addr_spec
    return truncate(squash(clean_text(address).text), MAX_SHORT)


# --- links and verdict ------------------------------------------------------------------------

_BARE_URL = re.compile(r"\bhttps?://[^\s<>\"'`{}|\\^\[\]]+", re.IGNORECASE)
_TRAILING = ".,;:!?)]}'\""


def _links(body: _Body, limits: EmailLimits) -> tuple[list[Link], int]:
    """Anchors from the HTML first, then bare URLs in the text; returns (kept, cut)."""
    links: list[Link] = []
    seen: set[str] = set()
    for text, url in _link_candidates(body):
        if url in seen:
            continue
        seen.add(url)
        links.append(Link(text=text, url=url, host=url_host(url)))
    kept = links[: limits.max_links]
    return kept, len(links) - len(kept)


def _link_candidates(body: _Body) -> Iterator[tuple[str, str]]:
    for link in body.html_links:
        url = truncate(squash(clean_text(link.url).text), MAX_URL)
        yield truncate(squash(clean_text(link.text).text), MAX_LINE), url
    for match in _BARE_URL.finditer(body.text):
        url = truncate(match.group().rstrip(_TRAILING), MAX_URL)
        yield truncate(url, MAX_LINE), url
