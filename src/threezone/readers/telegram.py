"""A Telegram Bot API ``Update`` (JSON bytes) -> :class:`SanitizedMessage`. Pure.

The body is what the Telegram client shows: the text or caption, a "forwarded from"
line when the message was forwarded (the client shows it, and it changes what the
text means), a sticker's emoji, a poll, and the labels of inline buttons. Spoilers
are kept (one tap shows them) but noted, and also handed to the detector as text the
person may not have seen. Entities give links: a ``text_link`` shows its text and
goes to its ``url``, which is exactly the case the link checks compare.

Entity offsets and lengths count UTF-16 code units, not code points: an emoji or any
astral character counts two. Slicing the Python string with them would shift every
later entity, so text is sliced in its UTF-16 encoding.

The structs below name only the fields the reader uses; unknown fields are ignored,
because the Bot API adds some in every release, but each named field is type-checked
and every count is bounded before anything is rendered.
"""

from __future__ import annotations

import msgspec

from threezone.errors import MalformedInputError
from threezone.protocol.messages import MAX_LINE, Attachment, SanitizedMessage
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
from threezone.sanitize.detect import Finding

SPOILER_NOTE_WEIGHT = 0.05
SPOILER = "spoiler"


class _Struct(msgspec.Struct, frozen=True):
    """Base of the Bot API shapes: typed, lenient about fields we do not read."""


class User(_Struct, frozen=True):
    id: int
    is_bot: bool = False
    first_name: str = ""
    last_name: str = ""
    username: str = ""


class Chat(_Struct, frozen=True):
    id: int
    type: str = ""
    title: str = ""
    username: str = ""
    first_name: str = ""
    last_name: str = ""


class Entity(_Struct, frozen=True):
    type: str
    offset: int
    length: int
    url: str = ""


class File(_Struct, frozen=True):
    """Document, audio, video, voice, animation: the parts the reader describes."""

    file_name: str = ""
    mime_type: str = ""
    file_size: int = 0


class PhotoSize(_Struct, frozen=True):
    width: int = 0
    height: int = 0
    file_size: int = 0


class Origin(_Struct, frozen=True):
    """MessageOrigin: user, hidden_user, chat or channel."""

    type: str
    sender_user: User | None = None
    sender_user_name: str = ""
    sender_chat: Chat | None = None
    chat: Chat | None = None
    author_signature: str = ""


class MessageRef(_Struct, frozen=True):
    message_id: int


class Button(_Struct, frozen=True):
    text: str
    url: str = ""


class Keyboard(_Struct, frozen=True):
    inline_keyboard: list[list[Button]] = []


class Sticker(_Struct, frozen=True):
    emoji: str = ""


class PollOption(_Struct, frozen=True):
    text: str


class Poll(_Struct, frozen=True):
    question: str
    options: list[PollOption] = []


class Message(_Struct, frozen=True):
    message_id: int
    chat: Chat
    sender: User | None = msgspec.field(default=None, name="from")
    sender_chat: Chat | None = None
    message_thread_id: int | None = None
    text: str = ""
    entities: list[Entity] = []
    caption: str = ""
    caption_entities: list[Entity] = []
    forward_origin: Origin | None = None
    forward_from: User | None = None  # before Bot API 7.0
    forward_from_chat: Chat | None = None
    forward_sender_name: str = ""
    reply_to_message: MessageRef | None = None
    document: File | None = None
    audio: File | None = None
    video: File | None = None
    voice: File | None = None
    animation: File | None = None
    photo: list[PhotoSize] = []
    sticker: Sticker | None = None
    poll: Poll | None = None
    reply_markup: Keyboard | None = None


class CallbackQuery(_Struct, frozen=True):
    id: str
    sender: User = msgspec.field(name="from")
    message: Message | None = None
    data: str = ""


class Update(_Struct, frozen=True):
    update_id: int
    message: Message | None = None
    edited_message: Message | None = None
    channel_post: Message | None = None
    edited_channel_post: Message | None = None
    business_message: Message | None = None
    edited_business_message: Message | None = None
    callback_query: CallbackQuery | None = None

    def the_message(self) -> Message | None:
        return (
            self.message
            or self.edited_message
            or self.channel_post
            or self.edited_channel_post
            or self.business_message
            or self.edited_business_message
        )


def read_telegram(
    untrusted_raw: bytes, message_id: str, limits: ChatLimits = CHAT_LIMITS
) -> SanitizedMessage:
    """Read one untrusted Bot API update.

    Raises InputTooLargeError or MalformedInputError for bad input and nothing else
    for any input; ``ValueError`` only if the caller's own ``message_id`` is too long.
    """
    check_message_id(message_id)
    return guarded("telegram update", lambda: _read(untrusted_raw, message_id, limits))


def _read(untrusted_raw: bytes, message_id: str, limits: ChatLimits) -> SanitizedMessage:
    update = decode_json(untrusted_raw, Update, "telegram update", limits)
    message = update.the_message()
    if message is not None:
        return _read_message(message, message_id, limits)
    if update.callback_query is not None:
        return _read_callback(update.callback_query, message_id, limits)
    raise MalformedInputError("telegram update carries no message or button press")


def _read_message(message: Message, message_id: str, limits: ChatLimits) -> SanitizedMessage:
    _check_counts(message, limits)
    seen = Seen()
    parts = [
        _forwarded(message, seen),
        _entity_text(message.text, message.entities, seen),
        _entity_text(message.caption, message.caption_entities, seen),
        _extras(message, seen),
    ]
    thread = str(message.chat.id)
    if message.message_thread_id is not None:
        thread = f"{thread}:{message.message_thread_id}"
    reply = message.reply_to_message
    return finish(
        channel="telegram",
        message_id=message_id,
        sender=_sender(message.sender, message.sender_chat, seen),
        subject=_chat_name(message.chat, seen),
        body="\n\n".join(part for part in parts if part),
        seen=seen,
        attachments=_attachments(message, seen),
        limits=limits,
        thread_id=thread,
        reply_to_id=f"{message.chat.id}:{reply.message_id}" if reply else None,
    )


def _read_callback(query: CallbackQuery, message_id: str, limits: ChatLimits) -> SanitizedMessage:
    """A button press: the person pressed a button whose data the bot set (or a client forged)."""
    at_most(len(query.data), limits.max_text_chars, "characters of callback data")
    seen = Seen()
    chat = query.message.chat if query.message else None
    body = f"[pressed a button: {seen.line(query.data, MAX_LINE)}]"
    return finish(
        channel="telegram",
        message_id=message_id,
        sender=_sender(query.sender, None, seen),
        subject=_chat_name(chat, seen) if chat else "",
        body=body,
        seen=seen,
        attachments=[],
        limits=limits,
        thread_id=str(chat.id) if chat else None,
        reply_to_id=f"{chat.id}:{query.message.message_id}" if chat and query.message else None,
    )


def _check_counts(message: Message, limits: ChatLimits) -> None:
    at_most(len(message.text) + len(message.caption), limits.max_text_chars, "characters of text")
    at_most(len(message.entities) + len(message.caption_entities), limits.max_entities, "entities")
    buttons = (
        sum(len(row) for row in message.reply_markup.inline_keyboard) if message.reply_markup else 0
    )
    poll = len(message.poll.options) if message.poll else 0
    at_most(
        buttons + poll + len(message.photo), limits.max_entities, "buttons, options and photo sizes"
    )


# --- text and entities ------------------------------------------------------------------------


def _entity_text(untrusted_text: str, entities: list[Entity], seen: Seen) -> str:
    """The text as shown, with links and spoilers taken from its entities."""
    if not untrusted_text:
        return ""
    units = untrusted_text.encode("utf-16-le", "surrogatepass")
    for entity in entities:
        _apply(entity, _slice(units, entity), seen)
    return seen.clean(untrusted_text)


def _slice(units: bytes, entity: Entity) -> str:
    """The entity's text: offsets count UTF-16 code units, so slice the UTF-16 bytes."""
    start, end = entity.offset, entity.offset + entity.length
    if start < 0 or entity.length < 0 or 2 * end > len(units):
        raise MalformedInputError(
            f"a {entity.type[:40]!r} entity at {start}+{entity.length} lies outside its text"
        )
    return units[2 * start : 2 * end].decode("utf-16-le", "replace")


def _apply(entity: Entity, covered: str, seen: Seen) -> None:
    if entity.type == "text_link":
        seen.link(covered, entity.url)
    elif entity.type == "url":
        target = covered.strip()
        seen.link(covered, target if "://" in target else f"http://{target}")
    elif entity.type == "spoiler":
        seen.hide(SPOILER, covered, removed=False)
        note = f"{len(covered)} characters behind a spoiler (shown on tap, kept in the body)"
        seen.findings.append(Finding(SPOILER_NOTE_WEIGHT, note))


def _forwarded(message: Message, seen: Seen) -> str:
    """ "[forwarded from X]": the client says it above the text, so the body does too."""
    origin = _origin_name(message, seen)
    return f"[forwarded from {origin}]" if origin else ""


def _origin_name(message: Message, seen: Seen) -> str:
    origin = message.forward_origin
    if origin is None:
        if message.forward_from or message.forward_from_chat:
            return _sender(message.forward_from, message.forward_from_chat, seen)
        return seen.line(message.forward_sender_name)
    if origin.type == "user" and origin.sender_user:
        return _person(origin.sender_user, seen)
    if origin.type == "hidden_user":
        return f"{seen.line(origin.sender_user_name)} (account hidden)"
    chat = origin.sender_chat or origin.chat
    name = _chat_name(chat, seen) if chat else "a chat"
    if origin.author_signature:
        name = f"{name}, signed {seen.line(origin.author_signature)}"
    return name


def _extras(message: Message, seen: Seen) -> str:
    """Sticker emoji, poll, inline buttons: all on screen, all attacker-written."""
    lines = []
    if message.sticker is not None:
        lines.append(f"[sticker {seen.line(message.sticker.emoji)}]")
    if message.poll is not None:
        lines.append(f"[poll] {seen.line(message.poll.question, MAX_LINE)}")
        lines += [f"  ( ) {seen.line(option.text)}" for option in message.poll.options]
    if message.reply_markup is not None:
        for row in message.reply_markup.inline_keyboard:
            for button in row:
                label = seen.line(button.text)
                lines.append(f"[button: {label}]")
                if button.url:
                    seen.link(button.text, button.url)
    return "\n".join(lines)


# --- who and where ----------------------------------------------------------------------------


def _sender(user: User | None, chat: Chat | None, seen: Seen) -> str:
    """``tg:<id> @<username>`` as the platform states it (the executor decides on trust)."""
    if user is not None:
        handle = f"@{seen.line(user.username)}" if user.username else f"({_full_name(user, seen)})"
        return f"tg:{user.id} {handle}"
    if chat is not None:
        handle = f"@{seen.line(chat.username)}" if chat.username else f"({seen.line(chat.title)})"
        return f"tg:{chat.id} {handle}"
    return ""


def _person(user: User, seen: Seen) -> str:
    name = _full_name(user, seen)
    return f"{name} (@{seen.line(user.username)})" if user.username else name


def _full_name(user: User, seen: Seen) -> str:
    return seen.line(f"{user.first_name} {user.last_name}")


def _chat_name(chat: Chat | None, seen: Seen) -> str:
    if chat is None:
        return ""
    if chat.type == "private" or not chat.title:
        name = seen.line(f"{chat.first_name} {chat.last_name}")
        name = f"private chat with {name}" if chat.type == "private" else name
    else:
        name = seen.line(chat.title)
    return f"{name} (@{seen.line(chat.username)})" if chat.username else name


def _attachments(message: Message, seen: Seen) -> list[Attachment]:
    """Files the message carries, as declared: the reader never sees their bytes."""
    found = [
        (kind, part)
        for kind, part in (
            ("document", message.document),
            ("audio", message.audio),
            ("video", message.video),
            ("voice", message.voice),
            ("animation", message.animation),
        )
        if part is not None
    ]
    described = [
        Attachment(
            name=seen.line(part.file_name) or kind,
            content_type=seen.line(part.mime_type),
            size=count(part.file_size),
        )
        for kind, part in found
    ]
    if message.photo:
        largest = max(message.photo, key=lambda p: p.width * p.height)
        described.append(
            Attachment(name="photo", content_type="image/jpeg", size=count(largest.file_size))
        )
    return described
