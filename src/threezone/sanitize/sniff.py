"""What an attachment is, from its first bytes rather than from what the sender declared.

A declared content type is one more attacker-chosen string: an executable sent as
``image/png`` or an HTML page sent as ``application/pdf`` is how malware and phishing
pages travel. The reader looks at the content's leading bytes (never more than
:data:`SNIFF_BYTES`) and names what it finds with a MIME type, so the executor and the
policy can compare the two. Only the head is read, so the cost is constant per part.

This is a table of well-known signatures, not libmagic: it names the formats a mail or
chat attachment usually is, tells apart the ones that can run code (executables,
scripts, HTML, SVG, shortcuts, Java), and answers ``application/octet-stream`` for
anything else. Pure: bytes in, a string out; it never raises.
"""

from __future__ import annotations

import codecs
import re

SNIFF_BYTES = 8_192

EMPTY = "application/x-empty"
BINARY = "application/octet-stream"
TEXT = "text/plain"
ZIP = "application/zip"
PE = "application/vnd.microsoft.portable-executable"
ELF = "application/x-elf"
MACHO = "application/x-mach-binary"
SCRIPT = "text/x-shellscript"
HTML = "text/html"
SVG = "image/svg+xml"
SHORTCUT = "application/x-ms-shortcut"
JAVA = "application/java-archive"
OLE = "application/x-ole-storage"

# Formats that run code, or render active content, when opened.
ACTIVE = frozenset({PE, ELF, MACHO, SCRIPT, HTML, SVG, SHORTCUT, JAVA, "application/x-java-vm"})

_OOXML = "application/vnd.openxmlformats-officedocument"
# (offset, magic, type), checked in order; the first match wins.
_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"%PDF-", "application/pdf"),
    (0, b"\x89PNG\r\n\x1a\n", "image/png"),
    (0, b"\xff\xd8\xff", "image/jpeg"),
    (0, b"GIF87a", "image/gif"),
    (0, b"GIF89a", "image/gif"),
    (0, b"II*\x00", "image/tiff"),
    (0, b"MM\x00*", "image/tiff"),
    (0, b"\x00\x00\x01\x00", "image/x-icon"),
    (0, b"\x7fELF", ELF),
    (0, b"\xcf\xfa\xed\xfe", MACHO),
    (0, b"\xce\xfa\xed\xfe", MACHO),
    (0, b"\xca\xfe\xba\xbe", "application/x-java-vm"),  # also a fat Mach-O; both run code
    (0, b"L\x00\x00\x00\x01\x14\x02\x00", SHORTCUT),
    (0, b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", OLE),
    (0, b"\x1f\x8b", "application/gzip"),
    (0, b"BZh", "application/x-bzip2"),
    (0, b"\xfd7zXZ\x00", "application/x-xz"),
    (0, b"(\xb5/\xfd", "application/zstd"),
    (0, b"7z\xbc\xaf'\x1c", "application/x-7z-compressed"),
    (0, b"Rar!\x1a\x07", "application/vnd.rar"),
    (257, b"ustar", "application/x-tar"),
    (0, b"\x00asm", "application/wasm"),
    (0, b"ID3", "audio/mpeg"),
    (0, b"OggS", "audio/ogg"),
    (0, b"fLaC", "audio/flac"),
    (0, b"\x1aE\xdf\xa3", "video/webm"),
    (0, b"{\\rtf", "application/rtf"),
)
_BMP_INFO_SIZES = frozenset({12, 40, 52, 56, 64, 108, 124})
_RIFF = {b"WEBP": "image/webp", b"WAVE": "audio/wav", b"AVI ": "video/x-msvideo"}
_FTYP = {
    b"heic": "image/heic",
    b"heix": "image/heic",
    b"avif": "image/avif",
    b"qt  ": "video/quicktime",
}
_ZIP_MEMBERS = (
    (b"word/", f"{_OOXML}.wordprocessingml.document"),
    (b"xl/", f"{_OOXML}.spreadsheetml.sheet"),
    (b"ppt/", f"{_OOXML}.presentationml.presentation"),
    (b"AndroidManifest.xml", "application/vnd.android.package-archive"),
    (b"META-INF/MANIFEST.MF", JAVA),
)
_ODF = re.compile(rb"^mimetype(application/vnd\.oasis\.opendocument\.[a-z.-]{1,40})")
_TEXT_MARKERS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"#!"), SCRIPT),
    (re.compile(r"begin:vcalendar", re.IGNORECASE), "text/calendar"),
    (re.compile(r"begin:vcard", re.IGNORECASE), "text/vcard"),
    (re.compile(r"(?:<\?xml[^>]{0,200}>\s*)?(?:<!--.{0,500}?-->\s*)?<svg\b", re.I | re.S), SVG),
    (
        re.compile(
            r"(?:<!--.{0,500}?-->\s*)?<(?:!doctype\s+html|html|head|body|script|iframe|meta"
            r"|title|div|p|a|form|style|table|img)\b",
            re.IGNORECASE | re.DOTALL,
        ),
        HTML,
    ),
    (re.compile(r"<\?xml\b"), "application/xml"),
)
_BOMS = (
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1a\x1c-\x1f\x7f]")


def sniff(untrusted_data: bytes) -> str:
    """The MIME type that the first bytes of ``untrusted_data`` show it to be."""
    head = untrusted_data[:SNIFF_BYTES]
    if not head:
        return EMPTY
    return _binary_type(head) or _text_type(head) or BINARY


def is_active(sniffed_type: str) -> bool:
    """True for content that runs code or renders active content when opened."""
    return sniffed_type in ACTIVE


def _binary_type(head: bytes) -> str | None:
    if head.startswith(b"PK\x03\x04"):
        return _zip_type(head)
    if head.startswith(b"RIFF") and head[8:12] in _RIFF:
        return _RIFF[head[8:12]]
    if head[4:8] == b"ftyp":
        return _FTYP.get(head[8:12], "video/mp4")
    for offset, magic, kind in _SIGNATURES:
        if head.startswith(magic, offset):
            return kind
    return _two_byte_magic(head)


def _two_byte_magic(head: bytes) -> str | None:
    """ "MZ" and "BM" also start ordinary text, so each needs its header to agree.

    A DOS/PE header is binary (NUL bytes) in its first 64 bytes; a BMP names the size
    of its info header, one of a few known values, at offset 14.
    """
    if head.startswith(b"MZ") and b"\x00" in head[2:64]:
        return PE
    if head.startswith(b"BM") and int.from_bytes(head[14:18], "little") in _BMP_INFO_SIZES:
        return "image/bmp"
    return None


def _zip_type(head: bytes) -> str:
    """Office, OpenDocument, Java and Android files are zips; the member names say which.

    The names sit in local headers near the start, so the head usually shows them; a
    zip whose telling member comes later is reported as a plain zip.
    """
    odf = _ODF.match(head[30:])
    if odf:
        return odf.group(1).decode("ascii")
    for marker, kind in _ZIP_MEMBERS:
        if marker in head:
            return kind
    return _OOXML if b"[Content_Types].xml" in head else ZIP


def _text_type(head: bytes) -> str | None:
    """Text (after any BOM), and which kind of text, or None when the bytes are not text."""
    encoding = "utf-8"
    for bom, name in _BOMS:
        if head.startswith(bom):
            head, encoding = head[len(bom) :], name
            break
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    try:
        text = decoder.decode(head, final=False)  # the cut may split a character
    except UnicodeDecodeError:
        return None
    if _CONTROL.search(text):
        return None
    start = text.lstrip()
    for pattern, kind in _TEXT_MARKERS:
        if pattern.match(start):
            return kind
    return TEXT
