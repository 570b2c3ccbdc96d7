"""The email reader's conversation keys and attachment sniffing."""

from __future__ import annotations

from email.message import EmailMessage

import pytest

from threezone.readers import read, read_email


def mail(**headers: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "Alice <alice@example.com>"
    message["Subject"] = "Re: plan"
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content("Sounds good.")
    return message


@pytest.mark.parametrize(
    ("headers", "thread", "reply"),
    [
        ({"Message_ID": "<c@x.example>"}, "<c@x.example>", None),
        (
            {"Message_ID": "<c@x>", "In_Reply_To": "<b@x>", "References": "<a@x> <b@x>"},
            "<a@x>",
            "<b@x>",
        ),
        ({"Message_ID": "<c@x>", "In_Reply_To": "<b@x> (Bob's note)"}, "<b@x>", "<b@x>"),
        ({"In_Reply_To": "not an id"}, None, None),
    ],
)
def test_thread_and_reply_ids_come_from_the_headers(
    headers: dict[str, str], thread: str | None, reply: str | None
) -> None:
    result = read_email(mail(**headers).as_bytes(), "m")
    assert (result.thread_id, result.reply_to_id) == (thread, reply)


def test_folded_references_are_read_across_lines() -> None:
    raw = (
        b"From: a@x.example\r\nSubject: Re: hi\r\nMessage-ID: <c@x>\r\n"
        b"References: <a@x>\r\n <b@x>\r\n\r\nok\r\n"
    )
    result = read_email(raw, "m")
    assert (result.thread_id, result.reply_to_id) == ("<a@x>", "<b@x>")


def test_a_long_references_header_is_not_a_reason_to_refuse() -> None:
    """References grows with every reply; it is read raw, outside the header budget."""
    references = " ".join(f"<{i}.long-thread@lists.example>" for i in range(800))
    result = read_email(mail(Message_ID="<c@x>", References=references).as_bytes(), "m")
    assert result.thread_id == "<0.long-thread@lists.example>"
    assert result.reply_to_id == "<799.long-thread@lists.example>"


def test_attachments_carry_what_their_bytes_are() -> None:
    message = mail()
    message.add_attachment(
        b"%PDF-1.7\n...", maintype="application", subtype="pdf", filename="a.pdf"
    )
    message.add_attachment(
        b"\x89PNG\r\n\x1a\n....", maintype="image", subtype="png", filename="p.png"
    )
    result = read_email(message.as_bytes(), "m")
    assert [(a.name, a.content_type, a.sniffed_type) for a in result.attachments] == [
        ("a.pdf", "application/pdf", "application/pdf"),
        ("p.png", "image/png", "image/png"),
    ]
    assert not result.injection.flagged
    assert result.injection.reasons == []


def test_an_executable_declared_as_a_document_is_reported() -> None:
    message = mail()
    pe = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00" + b"\x00" * 64
    message.add_attachment(pe, maintype="application", subtype="pdf", filename="invoice.pdf")
    result = read_email(message.as_bytes(), "m")
    assert result.attachments[0].sniffed_type == "application/vnd.microsoft.portable-executable"
    assert any("disguised" in r and "invoice.pdf" in r for r in result.injection.reasons)


def test_an_attached_message_is_sniffed_as_a_message() -> None:
    inner = mail()
    outer = mail()
    outer.add_attachment(inner)
    result = read_email(outer.as_bytes(), "m")
    assert [a.sniffed_type for a in result.attachments] == ["message/rfc822"]


def test_read_dispatches_by_channel() -> None:
    raw = mail().as_bytes()
    assert read("email", raw, "m") == read_email(raw, "m")
    with pytest.raises(ValueError, match="no reader"):
        read("fax", raw, "m")  # type: ignore[arg-type]  # the caller's mistake, on purpose
