"""A Slack event envelope (JSON bytes) -> :class:`SanitizedMessage`. Pure.

Accepts an Events API callback (``{"type": "event_callback", "event": {...}}``) or a
Socket Mode envelope (``{"envelope_id": ..., "type": "events_api", "payload": {...}}``)
carrying a ``message`` (or ``app_mention``) event. An edit (``message_changed``) is
read as the new message, as the client shows it.

When a message has ``blocks``, they are what the client displays and ``text`` is only
the notification fallback; the body is rendered from the blocks, and a ``text`` that
says materially more is flagged and handed to the detector as hidden text, exactly
like an email's undisplayed plain alternative. The same goes for a legacy
attachment's ``fallback``. ``text`` itself is Slack mrkdwn: ``<https://x|label>``
shows "label" and goes to https://x, ``<@U1>`` is a mention, ``&amp;`` is "&".

Structs name only what the reader uses (Slack adds fields freely); every count is
bounded before rendering, and the block tree has a fixed depth by construction.
"""

from __future__ import annotations

import re

import msgspec

from threezone.errors import MalformedInputError
from threezone.protocol.messages import Attachment, SanitizedMessage
from threezone.readers.common import (
    CHAT_LIMITS,
    ChatLimits,
    Seen,
    at_most,
    check_message_id,
    count,
    decode_json,
    finish,
    guarded,
)

TEXT_NOT_SHOWN = "slack text not displayed (blocks are)"
FALLBACK_NOT_SHOWN = "slack attachment fallback not displayed"
MESSAGE_EVENTS = frozenset({"message", "app_mention"})


class _Struct(msgspec.Struct, frozen=True):
    """Base of the Slack shapes: typed, lenient about fields we do not read."""


class TextObject(_Struct, frozen=True):
    type: str = "plain_text"
    text: str = ""


class Leaf(_Struct, frozen=True):
    """An inline rich-text element, a context or actions element, or a text object."""

    type: str = ""
    text: str | TextObject | None = None
    url: str = ""
    user_id: str = ""
    channel_id: str = ""
    usergroup_id: str = ""
    name: str = ""
    unicode: str = ""
    range: str = ""
    fallback: str = ""
    value: str = ""


class Node(Leaf, frozen=True):
    """A rich_text_section inside a list, or an inline element beside others."""

    elements: list[Leaf] = []


class Part(Leaf, frozen=True):
    """rich_text_section / _list / _quote / _preformatted, or a context/actions element."""

    elements: list[Node] = []
    style: str = ""
    indent: int = 0


class Block(_Struct, frozen=True):
    type: str
    text: TextObject | None = None
    fields: list[TextObject] = []
    elements: list[Part] = []
    title: TextObject | None = None
    accessory: Leaf | None = None


class Field(_Struct, frozen=True):
    title: str = ""
    value: str = ""


class LegacyAttachment(_Struct, frozen=True):
    """A legacy attachment, or a link unfurl (which Slack sends in the same shape)."""

    fallback: str = ""
    pretext: str = ""
    service_name: str = ""
    author_name: str = ""
    author_link: str = ""
    title: str = ""
    title_link: str = ""
    text: str = ""
    fields: list[Field] = []
    footer: str = ""
    from_url: str = ""
    original_url: str = ""


class File(_Struct, frozen=True):
    name: str = ""
    title: str = ""
    mimetype: str = ""
    size: int = 0


class Message(_Struct, frozen=True):
    type: str = "message"
    subtype: str = ""
    channel: str = ""
    channel_type: str = ""
    user: str = ""
    bot_id: str = ""
    username: str = ""
    text: str = ""
    ts: str = ""
    thread_ts: str = ""
    blocks: list[Block] = []
    attachments: list[LegacyAttachment] = []
    files: list[File] = []


class Event(Message, frozen=True):
    message: Message | None = None  # message_changed: the new version


class Callback(_Struct, frozen=True):
    type: str = ""
    event: Event | None = None


class Envelope(Callback, frozen=True):
    payload: Callback | None = None  # Socket Mode wraps the callback


def read_slack(
    untrusted_raw: bytes, message_id: str, limits: ChatLimits = CHAT_LIMITS
) -> SanitizedMessage:
    """Read one untrusted Slack event envelope.

    Raises InputTooLargeError or MalformedInputError for bad input and nothing else
    for any input; ``ValueError`` only if the caller's own ``message_id`` is too long.
    """
    check_message_id(message_id)
    return guarded("slack event", lambda: _read(untrusted_raw, message_id, limits))


def _read(untrusted_raw: bytes, message_id: str, limits: ChatLimits) -> SanitizedMessage:
    envelope = decode_json(untrusted_raw, Envelope, "slack event", limits)
    event = envelope.payload.event if envelope.payload else envelope.event
    if event is None or event.type not in MESSAGE_EVENTS:
        kind = event.type if event else envelope.type
        raise MalformedInputError(f"slack envelope carries no message event ({kind[:40]!r})")
    shown: Message = event
    if event.subtype == "message_changed":
        if event.message is None:
            raise MalformedInputError("slack message_changed event without its new message")
        shown = event.message
    elif event.subtype == "message_deleted":
        raise MalformedInputError("slack message_deleted event: nothing left to show")
    return _read_message(shown, event.channel or shown.channel, message_id, limits)


def _read_message(
    message: Message, channel: str, message_id: str, limits: ChatLimits
) -> SanitizedMessage:
    _check_counts(message, limits)
    seen = Seen()
    text = render_mrkdwn(message.text, seen if not message.blocks else None)
    body = text
    if message.blocks:
        body = _blocks(message.blocks, seen)
        seen.undisplayed(TEXT_NOT_SHOWN, text, body)
    extra = [_attachment_text(a, seen) for a in message.attachments]
    body = "\n\n".join(part for part in (body, *extra) if part)
    ts, thread_ts = message.ts, message.thread_ts
    return finish(
        channel="slack",
        message_id=message_id,
        sender=_sender(message, seen),
        subject=_subject(channel, message.channel_type, seen),
        body=seen.clean(body),
        seen=seen,
        attachments=[_file(f, seen) for f in message.files],
        limits=limits,
        thread_id=f"{channel}:{thread_ts or ts}" if ts or thread_ts else None,
        reply_to_id=f"{channel}:{thread_ts}" if thread_ts and thread_ts != ts else None,
    )


def _check_counts(message: Message, limits: ChatLimits) -> None:
    texts = len(message.text) + sum(len(a.text) + len(a.fallback) for a in message.attachments)
    at_most(texts, limits.max_text_chars, "characters of text")
    at_most(
        len(message.blocks) + len(message.attachments), limits.max_blocks, "blocks and attachments"
    )
    at_most(_element_count(message.blocks), limits.max_elements, "block elements")
    at_most(len(message.files), limits.max_files, "files")


def _element_count(blocks: list[Block]) -> int:
    total = 0
    for block in blocks:
        total += len(block.fields) + len(block.elements)
        for part in block.elements:
            total += len(part.elements) + sum(len(node.elements) for node in part.elements)
    return total


# --- mrkdwn -----------------------------------------------------------------------------------

_ANGLE = re.compile(r"<([^<>|\n]{1,4096})(?:\|([^<>\n]{0,4096}))?>")
_ESCAPE = re.compile(r"&(amp|lt|gt);")
_UNESCAPED = {"amp": "&", "lt": "<", "gt": ">"}
_SPECIAL = {"here": "@here", "channel": "@channel", "everyone": "@everyone"}


def render_mrkdwn(untrusted_text: str, seen: Seen | None) -> str:
    """Slack mrkdwn as the client shows it; links go to ``seen`` when one is given.

    Formatting marks (``*bold*``, ``_italic_``) are left in place: they change how a
    word looks, not what it says.
    """

    def replace(match: re.Match[str]) -> str:
        target, label = match.group(1), match.group(2)
        shown = _angle(target, label)
        if seen is not None and _is_url(target):
            seen.link(_unescape(shown), _unescape(target))
        return shown

    return _unescape(_ANGLE.sub(replace, untrusted_text))


def _angle(target: str, label: str | None) -> str:
    if target.startswith(("@U", "@W", "@B")):
        return f"@{label or target[1:]}"
    if target.startswith("#C") or target.startswith("#G"):
        return f"#{label or target[1:]}"
    if target.startswith("!"):
        command = target[1:].split("^", 1)[0]
        return label or _SPECIAL.get(command, f"@{command}")
    return label if label else target


def _is_url(target: str) -> bool:
    return re.match(r"(?:https?|mailto|tel|ftp)://|mailto:|tel:", target, re.IGNORECASE) is not None


def _unescape(text: str) -> str:
    return _ESCAPE.sub(lambda m: _UNESCAPED[m.group(1)], text)


# --- blocks -----------------------------------------------------------------------------------


def _blocks(blocks: list[Block], seen: Seen) -> str:
    rendered = [_block(block, seen) for block in blocks]
    return "\n".join(text for text in rendered if text)


def _block(block: Block, seen: Seen) -> str:
    if block.type == "rich_text":
        return "\n".join(_rich_part(part, seen) for part in block.elements)
    if block.type in {"section", "header"}:
        texts = [block.text] if block.text else []
        lines = [_text_object(t, seen) for t in [*texts, *block.fields]]
        if block.accessory is not None and block.accessory.type == "button":
            lines.append(f"[button: {_leaf(block.accessory, seen)}]")
        return "\n".join(lines)
    if block.type == "context":
        return " ".join(_leaf(part, seen) for part in block.elements if part.type != "image")
    if block.type == "actions":
        return " ".join(f"[button: {_leaf(part, seen)}]" for part in block.elements)
    if block.type == "image":
        return _text_object(block.title, seen) if block.title else ""
    if block.type != "divider":
        seen.dropped_parts += 1  # a block kind this reader does not render: not shown
    return ""


def _rich_part(part: Part, seen: Seen) -> str:
    if part.type == "rich_text_list":
        items = [_inline(node.elements, seen).removesuffix("\n") for node in part.elements]
        indent = "  " * max(0, min(part.indent, 8))
        marks = [f"{n}." for n in range(1, len(items) + 1)] if part.style == "ordered" else None
        return "\n".join(
            f"{indent}{marks[i] if marks else '•'} {item}" for i, item in enumerate(items)
        )
    text = _inline(list(part.elements), seen).removesuffix("\n")
    if part.type == "rich_text_quote":
        return "\n".join(f"> {line}" for line in text.split("\n"))
    return text


def _inline(elements: list[Leaf] | list[Node], seen: Seen) -> str:
    return "".join(_leaf(element, seen) for element in elements)


def _leaf(leaf: Leaf, seen: Seen) -> str:
    """One inline element as the client draws it."""
    text = _plain(leaf.text, seen)
    if leaf.type == "link":
        seen.link(text or leaf.url, leaf.url)
        return text or leaf.url
    if leaf.type == "button":
        if leaf.url:
            seen.link(text, leaf.url)
        return text
    mention = {
        "user": f"@{leaf.user_id}",
        "channel": f"#{leaf.channel_id}",
        "usergroup": f"@{leaf.usergroup_id}",
        "broadcast": f"@{leaf.range}",
        "date": leaf.fallback,
        "color": leaf.value,
        "emoji": _emoji(leaf),
    }
    return mention.get(leaf.type, text)


def _plain(text: str | TextObject | None, seen: Seen) -> str:
    if text is None:
        return ""
    if isinstance(text, TextObject):
        return _text_object(text, seen)
    return text


def _text_object(text: TextObject, seen: Seen) -> str:
    return render_mrkdwn(text.text, seen) if text.type == "mrkdwn" else text.text


def _emoji(leaf: Leaf) -> str:
    """The emoji's character from its code points ("1f44b", "1f469-200d-1f4bb"), else :name:."""
    try:
        points = [int(code, 16) for code in leaf.unicode.split("-")[:10]]
        return "".join(chr(point) for point in points)
    except (ValueError, OverflowError):
        return f":{leaf.name}:"


# --- attachments, files, who and where --------------------------------------------------------


def _attachment_text(attachment: LegacyAttachment, seen: Seen) -> str:
    """A legacy attachment or unfurl as drawn: pretext, source, title, text, fields, footer."""
    lines = [render_mrkdwn(attachment.pretext, seen)]
    source = attachment.service_name or attachment.author_name
    lines.append(f"[{source}]" if source else "")
    if attachment.author_link:
        seen.link(source, attachment.author_link)
    lines.append(attachment.title)
    link = attachment.title_link or attachment.from_url or attachment.original_url
    if link:
        seen.link(attachment.title or link, link)
    lines.append(render_mrkdwn(attachment.text, seen))
    lines += [f"{field.title}: {render_mrkdwn(field.value, seen)}" for field in attachment.fields]
    lines.append(attachment.footer)
    shown = "\n".join(line for line in lines if line)
    if not shown:
        return render_mrkdwn(attachment.fallback, seen)
    if attachment.fallback:
        seen.undisplayed(FALLBACK_NOT_SHOWN, render_mrkdwn(attachment.fallback, None), shown)
    return shown


def _file(file: File, seen: Seen) -> Attachment:
    return Attachment(
        name=seen.line(file.name or file.title),
        content_type=seen.line(file.mimetype),
        size=count(file.size),
    )


def _sender(message: Message, seen: Seen) -> str:
    """``slack:<user id>``, or ``slack:bot:<bot id>`` with the name a bot gave itself."""
    if message.user:
        return f"slack:{seen.line(message.user)}"
    if message.bot_id:
        name = f" ({seen.line(message.username)})" if message.username else ""
        return f"slack:bot:{seen.line(message.bot_id)}{name}"
    return ""


def _subject(channel: str, channel_type: str, seen: Seen) -> str:
    kind = {"im": "direct message", "mpim": "group direct message", "group": "private channel"}
    name = seen.line(channel)
    return f"{kind.get(channel_type, 'channel')} {name}" if name else ""
