"""The executor's one way out: every HTTP request and mail connection passes here.

The planner is assumed hijacked, so any URL or host it names is hostile until the
owner's allowlist (``[egress]`` in ``threezone.toml``) says otherwise. This module
enforces that in three places:

* **Destinations.** A connector may reach only the ``host:port`` pairs its rules list
  (optionally narrowed by HTTP method and path prefix). Hosts are compared in one
  canonical form: lower case, IDNA (UTS 46) punycode, no trailing dot, IPv4 written
  as a dotted quad whatever spelling it came in (``2130706433``, ``0x7f.1``).
* **Addresses.** A name is resolved once, *every* answer must be a public address
  (unless its network is listed in ``allow_private``), and the socket is then opened
  to one of exactly those addresses. Nothing resolves the name a second time, so DNS
  rebinding between the check and the connect has nothing to act on. TLS still
  verifies the certificate against the *name* (SNI and verification use the host).
* **Arguments.** :meth:`Egress.check_argument_values` finds URLs and hosts inside
  action arguments (the text the executor is about to send to someone else) and
  names every host no rule allows. It is pure: no DNS.

HTTP goes through :meth:`Egress.http_client`, an ``httpx2.AsyncClient`` whose only
transport checks every request (redirect hops included: each hop is a new request
through the same transport) and whose connections are opened by a network backend
that pins the resolved address. httpx2 has no public hook for a network backend yet
(encode/httpx#3749 proposes one), so the transport wraps httpcore2's public
``AsyncConnectionPool(network_backend=...)`` itself. Mail connectors call
:meth:`Egress.connect_target` or :meth:`Egress.open_connection`.

:func:`nft_ruleset` renders the same allowlist as an nftables table for the
executor's uid, a second fence that holds even if code bypasses this module.
"""

from __future__ import annotations

import asyncio
import html
import ipaddress
import socket
import ssl
import unicodedata
import urllib.parse
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import httpcore2
import httpx2
import idna
import re2

from threezone.config.schema import EgressConfig, EgressRule
from threezone.errors import ConfigError, EgressDenied, EgressUnresolvable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443, "ftp": 21}
_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


# --- resolvers ------------------------------------------------------------------------


class Resolver(Protocol):
    """Turns a host name into addresses. Called at most once per connection."""

    async def resolve(self, host: str, port: int) -> list[IPAddress]: ...


class SystemResolver:
    """The operating system's resolver (``getaddrinfo``), via the running event loop."""

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


class StaticResolver:
    """Fixed answers: for pins computed once (the nftables set) and for tests.

    A name it does not know does not resolve.
    """

    def __init__(self, answers: Mapping[str, Sequence[IPAddress | str]]) -> None:
        self._answers = {
            normalize_host(host) or host: [ipaddress.ip_address(a) for a in addresses]
            for host, addresses in answers.items()
        }

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        found = self._answers.get(host)
        if found is None:
            raise socket.gaierror(socket.EAI_NONAME, f"{host} is not in the static answers")
        return list(found)


@dataclass(frozen=True, slots=True)
class Pinned:
    """A checked destination: connect to ``addresses`` (in order), verify TLS as ``host``."""

    connector: str
    host: str
    port: int
    addresses: tuple[IPAddress, ...]

    @property
    def address(self) -> IPAddress:
        return self.addresses[0]


# --- host names -----------------------------------------------------------------------


def normalize_host(untrusted_host: str) -> str | None:
    """The canonical spelling of a host, or None if it is not a valid host at all.

    IPv6 literals lose their brackets and are compressed; anything that ends in a
    number is parsed the way browsers do (WHATWG), so ``2130706433`` is ``127.0.0.1``;
    names become lower-case punycode without the trailing dot.
    """
    host = untrusted_host
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host).compressed
        except ValueError:
            return None
    if host.endswith("."):
        host = host[:-1]
    if not host or len(host) > 253:
        return None
    if _ends_in_number(host):
        v4 = _whatwg_ipv4(host)
        return None if v4 is None else str(v4)
    try:
        return idna.encode(host, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError, ValueError):
        return None


def _ends_in_number(host: str) -> bool:
    last = host.rsplit(".", 1)[-1]
    if last.isascii() and last.isdigit():
        return True
    return last[:2].lower() == "0x" and all(c in "0123456789abcdefABCDEF" for c in last[2:])


def _whatwg_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """Decimal, octal (``0177``), hex (``0x7f``) and short forms (``127.1``), as browsers do."""
    numbers = [_ipv4_number(part) for part in host.split(".")]
    if not 1 <= len(numbers) <= 4 or any(n is None for n in numbers):
        return None
    values = [n for n in numbers if n is not None]
    if any(v > 255 for v in values[:-1]) or values[-1] >= 256 ** (5 - len(values)):
        return None
    total = values[-1] + sum(v * 256 ** (3 - i) for i, v in enumerate(values[:-1]))
    return ipaddress.IPv4Address(total)


def _ipv4_number(part: str) -> int | None:
    if not part or not part.isascii():
        return None
    digits, radix = part, 10
    if part[:2].lower() == "0x":
        digits, radix = part[2:] or "0", 16
    elif len(part) > 1 and part.startswith("0"):
        digits, radix = part[1:], 8
    try:
        return int(digits, radix)
    except ValueError:
        return None


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class _HostPattern:
    """An exact host, or ``*.example.com``: every name strictly below example.com."""

    host: str
    wildcard: bool

    def matches(self, host: str) -> bool:
        if self.wildcard:
            return host.endswith("." + self.host)
        return host == self.host


def _compile_pattern(raw: str, key_path: str) -> _HostPattern:
    wildcard = raw.startswith("*.")
    body = raw[2:] if wildcard else raw
    host = normalize_host(body) if "*" not in body else None
    if host is None:
        raise ConfigError("egress", key_path, f"{raw!r} is not a host name or IP address")
    if wildcard and (_ip_literal(host) is not None or "." not in host):
        raise ConfigError(
            "egress", key_path, f"{raw!r}: a wildcard needs a domain of two labels or more"
        )
    return _HostPattern(host, wildcard)


# --- addresses ------------------------------------------------------------------------


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, NAT64, 6to4, Teredo, compatible)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if any(address in net for net in _NAT64) or (address in _IPV4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return None


def _canonical_address(address: IPAddress) -> IPAddress:
    """``::ffff:a.b.c.d`` is the IPv4 host a.b.c.d: check and connect to it as such."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _category(address: IPAddress) -> str | None:
    """Why ``address`` is not a public unicast address, or None if it is."""
    checks = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
        ("non-global", not address.is_global),
    )
    return next((name for name, hit in checks if hit), None)


def address_problem(address: IPAddress, allow_private: Sequence[IPNetwork]) -> str | None:
    """Why the executor must not connect to ``address``; None when it may."""
    address = _canonical_address(address)
    if any(address in net for net in allow_private):
        return None
    category = _category(address)
    if category is not None:
        return f"{address} is a {category} address"
    if isinstance(address, ipaddress.IPv6Address):
        inner = _embedded_ipv4(address)
        if inner is not None and not any(inner in net for net in allow_private):
            inner_category = _category(inner)
            if inner_category is not None:
                return f"{address} embeds {inner}, a {inner_category} address"
    return None


# --- rules ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Rule:
    connector: str
    pattern: _HostPattern
    port: int
    methods: frozenset[str]
    path_prefix: str

    def path_ok(self, path: str) -> bool:
        if not self.path_prefix:
            return True
        if _path_is_ambiguous(path):
            return False
        if self.path_prefix.endswith("/"):
            return path.startswith(self.path_prefix)
        return path == self.path_prefix or path.startswith(self.path_prefix + "/")


def _path_is_ambiguous(path: str) -> bool:
    """Paths a server might read differently from us: encoded dots, slashes, dot segments."""
    lowered = path.lower()
    if any(token in lowered for token in ("%2e", "%2f", "%5c", "\\", "%00")):
        return True
    segments = lowered.split("/")
    return any(segment in (".", "..") for segment in segments)


def _compile_rule(index: int, rule: EgressRule) -> _Rule:
    key = f"allow[{index}]"
    if rule.path_prefix and not rule.path_prefix.startswith("/"):
        raise ConfigError("egress", f"{key}.path_prefix", "must start with '/'")
    return _Rule(
        connector=rule.connector,
        pattern=_compile_pattern(rule.host, f"{key}.host"),
        port=rule.port,
        methods=frozenset(m.upper() for m in rule.methods),
        path_prefix=rule.path_prefix,
    )


def _compile_networks(raw: Sequence[str]) -> tuple[IPNetwork, ...]:
    networks: list[IPNetwork] = []
    for index, text in enumerate(raw):
        try:
            networks.append(ipaddress.ip_network(text, strict=True))
        except ValueError as exc:
            raise ConfigError("egress", f"allow_private[{index}]", str(exc)) from None
    return tuple(networks)


# --- the egress layer -----------------------------------------------------------------

_FORBIDDEN_CLIENT_OPTIONS = frozenset(
    {"transport", "mounts", "proxy", "trust_env", "verify", "cert", "app", "uds", "http2"}
)


class Egress:
    """The allowlist, compiled once; the only way the executor opens connections."""

    def __init__(
        self,
        config: EgressConfig,
        resolver: Resolver | None = None,
        *,
        resolve_timeout: float = 10.0,
    ) -> None:
        self._rules = tuple(_compile_rule(i, rule) for i, rule in enumerate(config.allow))
        self._allow_private = _compile_networks(config.allow_private)
        self._resolver: Resolver = resolver if resolver is not None else SystemResolver()
        self._resolve_timeout = resolve_timeout

    # Destinations ------------------------------------------------------------------

    def check_destination(self, connector: str, host: str, port: int) -> str:
        """The canonical host if ``connector`` may reach ``host:port``; else EgressDenied."""
        name = normalize_host(host)
        if name is None:
            raise EgressDenied(connector, host, port, "not a valid host name")
        self._rules_for(connector, name, port)
        return name

    def check_request(self, connector: str, method: str, url: httpx2.URL) -> None:
        """EgressDenied unless some rule admits this scheme, host, port, method and path."""
        port = url.port or DEFAULT_PORTS.get(url.scheme, 0)
        host = url.raw_host.decode("ascii", "replace")
        if url.scheme not in ("http", "https"):
            raise EgressDenied(connector, host, port, f"scheme {url.scheme!r} is not HTTP")
        name = normalize_host(host)
        if name is None:
            raise EgressDenied(connector, host, port, "not a valid host name")
        rules = self._rules_for(connector, name, port)
        method = method.upper()
        rules = [r for r in rules if not r.methods or method in r.methods]
        if not rules:
            raise EgressDenied(connector, name, port, f"method {method} is not allowed")
        path = url.raw_path.split(b"?", 1)[0].decode("ascii", "replace")
        if not any(r.path_ok(path) for r in rules):
            raise EgressDenied(connector, name, port, f"path {path[:200]!r} is not allowed")

    def _rules_for(self, connector: str, name: str, port: int) -> list[_Rule]:
        rules = [r for r in self._rules if r.connector == connector]
        if not rules:
            raise EgressDenied(connector, name, port, "this connector has no egress rule")
        rules = [r for r in rules if r.pattern.matches(name)]
        if not rules:
            raise EgressDenied(connector, name, port, "host is not in the allowlist")
        rules = [r for r in rules if r.port == port]
        if not rules:
            raise EgressDenied(connector, name, port, f"port {port} is not allowed for this host")
        return rules

    def host_allowed(self, host: str) -> bool:
        """Whether any rule, of any connector and port, names ``host``."""
        name = normalize_host(host)
        return name is not None and self._name_allowed(name)

    def _name_allowed(self, name: str) -> bool:
        return any(r.pattern.matches(name) for r in self._rules)

    # Resolution and pinning --------------------------------------------------------

    async def connect_target(self, connector: str, host: str, port: int) -> Pinned:
        """Check the destination, resolve it once, refuse if any answer is not public.

        Connect to ``Pinned.addresses`` and nothing else; use ``Pinned.host`` for TLS.
        """
        name = self.check_destination(connector, host, port)
        literal = _ip_literal(name)
        answers = [literal] if literal is not None else await self._resolve(connector, name, port)
        addresses: list[IPAddress] = []
        for answer in map(_canonical_address, answers):
            problem = address_problem(answer, self._allow_private)
            if problem is not None:
                raise EgressDenied(connector, name, port, problem)
            if answer not in addresses:
                addresses.append(answer)
        return Pinned(connector, name, port, tuple(addresses))

    async def _resolve(self, connector: str, name: str, port: int) -> list[IPAddress]:
        try:
            async with asyncio.timeout(self._resolve_timeout):
                answers = await self._resolver.resolve(name, port)
        except (OSError, TimeoutError, UnicodeError) as exc:
            raise EgressUnresolvable(connector, name, port, f"does not resolve: {exc}") from None
        if not answers:
            raise EgressUnresolvable(connector, name, port, "resolved to no address")
        return answers

    async def open_connection(
        self,
        connector: str,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 30.0,
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A stream to a pinned address (implicit TLS verified as ``host`` if ``ssl_context``).

        For STARTTLS, pass no context here and call ``writer.start_tls(ctx,
        server_hostname=pinned_host)`` later with the same host you connected to.
        """
        pinned = await self.connect_target(connector, host, port)
        last: OSError | None = None
        for address in pinned.addresses:
            try:
                async with asyncio.timeout(timeout):
                    return await asyncio.open_connection(
                        str(address),
                        port,
                        ssl=ssl_context,
                        server_hostname=pinned.host if ssl_context is not None else None,
                    )
            except (OSError, TimeoutError) as exc:
                last = exc if isinstance(exc, OSError) else OSError(str(exc) or "timed out")
        raise EgressUnresolvable(connector, pinned.host, port, f"no address answered: {last}")

    async def pin_all(self) -> dict[str, list[IPAddress]]:
        """Resolve and check every named (non-wildcard) host once, e.g. for nftables."""
        pins: dict[str, list[IPAddress]] = {}
        for rule in self._rules:
            if rule.pattern.wildcard or rule.pattern.host in pins:
                continue
            pinned = await self.connect_target(rule.connector, rule.pattern.host, rule.port)
            pins[pinned.host] = list(pinned.addresses)
        return pins

    # HTTP --------------------------------------------------------------------------

    def http_client(
        self, connector: str, *, ssl_context: ssl.SSLContext | None = None, **options: Any
    ) -> httpx2.AsyncClient:
        """An AsyncClient whose every request, redirect hop included, passes this layer.

        Proxies (explicit or from the environment), other transports and mounts are
        refused: each would be a path around the checks. ``ssl_context`` replaces the
        system trust store (tests pass one trusting their own CA); there is no way to
        turn verification off.
        """
        refused = sorted(_FORBIDDEN_CLIENT_OPTIONS & options.keys())
        if refused:
            raise TypeError(f"egress http_client does not accept {', '.join(refused)}")
        options.setdefault("max_redirects", 5)
        context = ssl_context if ssl_context is not None else ssl.create_default_context()
        transport = _EgressTransport(self, connector, context)
        # httpx2 already ignores proxy variables once a transport is given; trust_env=False
        # says so explicitly, should a later httpx2 read more of the environment.
        return httpx2.AsyncClient(transport=transport, trust_env=False, **options)

    # Argument text -----------------------------------------------------------------

    def check_argument_values(self, values: Iterable[str]) -> list[str]:
        """One problem per host, found in ``values``, that no egress rule allows.

        Pure (no DNS). Over-reports rather than under-reports: every plausible reading
        of a URL (browser, RFC 3986, percent- and entity-decoded, NFKC) is checked.
        """
        problems: dict[str, str] = {}
        looked_at: set[str] = set()
        for value in values:
            for raw_host, seen in find_hosts(value):
                if raw_host in looked_at:
                    continue
                looked_at.add(raw_host)
                name = normalize_host(raw_host)
                key = name or raw_host.lower()
                if key in problems or (name is not None and self._name_allowed(name)):
                    continue
                what = f"{name!r}" if name is not None else f"invalid host {raw_host[:80]!r}"
                if name is not None and name != raw_host.lower():
                    what += f" (written {raw_host[:80]!r})"
                problems[key] = f"{what} in {seen[:120]!r} is not an allowed egress destination"
        return list(problems.values())


# --- httpcore plumbing ----------------------------------------------------------------


class _PinnedBackend(httpcore2.AsyncNetworkBackend):
    """Opens each TCP connection to an address the egress layer checked, never the name."""

    def __init__(self, egress: Egress, connector: str) -> None:
        self._egress = egress
        self._connector = connector
        self._inner = httpcore2.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore2.SOCKET_OPTION] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        pinned = await self._egress.connect_target(self._connector, host, port)
        failure: httpcore2.ConnectError | None = None
        for address in pinned.addresses:
            try:
                return await self._inner.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except httpcore2.ConnectError as exc:
                failure = exc
        assert failure is not None  # Pinned always holds at least one address
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore2.SOCKET_OPTION] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        raise EgressDenied(self._connector, path, 0, "Unix sockets are not egress")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


_EXCEPTIONS: tuple[tuple[type[Exception], type[httpx2.TransportError]], ...] = (
    (httpcore2.ConnectTimeout, httpx2.ConnectTimeout),
    (httpcore2.ReadTimeout, httpx2.ReadTimeout),
    (httpcore2.WriteTimeout, httpx2.WriteTimeout),
    (httpcore2.PoolTimeout, httpx2.PoolTimeout),
    (httpcore2.TimeoutException, httpx2.TimeoutException),
    (httpcore2.ConnectError, httpx2.ConnectError),
    (httpcore2.ReadError, httpx2.ReadError),
    (httpcore2.WriteError, httpx2.WriteError),
    (httpcore2.NetworkError, httpx2.NetworkError),
    (httpcore2.ProxyError, httpx2.ProxyError),
    (httpcore2.UnsupportedProtocol, httpx2.UnsupportedProtocol),
    (httpcore2.RemoteProtocolError, httpx2.RemoteProtocolError),
    (httpcore2.LocalProtocolError, httpx2.LocalProtocolError),
    (httpcore2.ProtocolError, httpx2.ProtocolError),
)


@contextmanager
def _httpx_errors(request: httpx2.Request) -> Iterator[None]:
    """httpcore2's exceptions as the httpx2 ones callers catch."""
    try:
        yield
    except Exception as exc:
        mapped = next((ours for theirs, ours in _EXCEPTIONS if isinstance(exc, theirs)), None)
        if mapped is None:
            raise
        raise mapped(str(exc), request=request) from exc


class _ResponseStream(httpx2.AsyncByteStream):
    def __init__(self, stream: AsyncIterable[bytes], request: httpx2.Request) -> None:
        self._stream = stream
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _httpx_errors(self._request):
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        close = getattr(self._stream, "aclose", None)
        if close is not None:
            await close()


class _EgressTransport(httpx2.AsyncBaseTransport):
    """Checks each request, then sends it over connections made by :class:`_PinnedBackend`."""

    def __init__(self, egress: Egress, connector: str, ssl_context: ssl.SSLContext) -> None:
        self._egress = egress
        self._connector = connector
        self._pool = httpcore2.AsyncConnectionPool(
            ssl_context=ssl_context,
            network_backend=_PinnedBackend(egress, connector),
            http1=True,
            http2=False,
            retries=0,
        )

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        self._egress.check_request(self._connector, request.method, request.url)
        self._check_names(request)
        core_request = httpcore2.Request(
            method=request.method,
            url=httpcore2.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _httpx_errors(request):
            core_response = await self._pool.handle_async_request(core_request)
        assert isinstance(core_response.stream, AsyncIterable)  # an async pool streams async
        return httpx2.Response(
            status_code=core_response.status,
            headers=core_response.headers,
            stream=_ResponseStream(core_response.stream, request),
            extensions=core_response.extensions,
        )

    def _check_names(self, request: httpx2.Request) -> None:
        """No domain fronting: the Host header and SNI must name the checked host."""
        url = request.url
        port = url.port or DEFAULT_PORTS.get(url.scheme, 0)
        name = normalize_host(url.raw_host.decode("ascii", "replace"))
        claimed = [("Host header", v) for v in request.headers.get_list("host")]
        sni = request.extensions.get("sni_hostname")
        if sni is not None:
            claimed.append(("SNI", str(sni)))
        for label, value in claimed:
            host, claimed_port = _split_host_port(value)
            if normalize_host(host) != name or claimed_port not in ("", str(port)):
                raise EgressDenied(
                    self._connector, str(name), port, f"{label} {value[:100]!r} names another host"
                )

    async def aclose(self) -> None:
        await self._pool.aclose()


def _split_host_port(value: str) -> tuple[str, str]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` as (host, port or "")."""
    if value.startswith("["):
        host, _, rest = value.partition("]")
        return host + "]", rest.removeprefix(":")
    if value.count(":") == 1:
        host, _, port = value.partition(":")
        return host, port
    return value, ""


# --- hosts inside argument text ---------------------------------------------------------

# re2 (linear time) because the text is attacker-written. \p{L}\p{N} admit IDNs.
_LABEL = r"[\p{L}\p{N}\p{M}_-]+"
_SPECIAL_URL = re2.compile(r"(?i)\b(?:https?|wss?|ftp):[/\\]*([^\s/\\?#<>\"'`]*)")
_SPECIAL_URL_RFC = re2.compile(r"(?i)\b(?:https?|wss?|ftp)://([^\s/?#<>\"'`]*)")
_OTHER_URL = re2.compile(r"(?i)\b[a-z][a-z0-9+.-]*://([^\s/\\?#<>\"'`]*)")
_PROTOCOL_RELATIVE = re2.compile(r"(?:^|[\s(<\"'=])//([^\s/\\?#<>\"'`]+)")
_MAILTO = re2.compile(r"(?i)\bmailto:([^\s?#<>\"'`]*)")
_BARE_WITH_PATH = re2.compile(r"(" + _LABEL + r"(?:\." + _LABEL + r")+)(?:[/?]|:\d)")
_WWW = re2.compile(r"(?i)\b(www\." + _LABEL + r"(?:\." + _LABEL + r")*)")
_DOTTED_QUAD = re2.compile(r"\b(\d{1,3}(?:\.\d{1,3}){3})\b")
_IDEOGRAPHIC_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})


def _views(untrusted_text: str) -> list[str]:
    """The text as written, and as a browser or mail client may end up reading it."""
    decoded = untrusted_text
    for _ in range(3):
        decoded = urllib.parse.unquote(decoded, errors="replace")
    decoded = unicodedata.normalize("NFKC", html.unescape(decoded))
    decoded = "".join(c for c in decoded if unicodedata.category(c) != "Cf")
    decoded = decoded.translate(_IDEOGRAPHIC_DOTS)
    return [untrusted_text] if decoded == untrusted_text else [untrusted_text, decoded]


def _authority_host(authority: str) -> str:
    """The host of ``user:pass@host:port`` (the userinfo ends at the *last* ``@``)."""
    host_port = authority.rpartition("@")[2]
    if host_port.startswith("["):
        return host_port.split("]", 1)[0] + "]"
    return urllib.parse.unquote(host_port.partition(":")[0], errors="replace")


def find_hosts(untrusted_text: str) -> list[tuple[str, str]]:
    """Every host the text names as ``(host as written, the match it came from)``.

    Finds http(s), ws(s), ftp and any ``scheme://`` URL (authority read both the
    browser way, where ``\\`` is ``/``, and the RFC 3986 way, where it is not),
    ``//host`` links, ``mailto:`` domains, bare ``host.tld/path`` and ``host.tld:port``,
    ``www.`` names and dotted-quad IPv4. Bare e-mail addresses are not hosts.
    """
    found: list[tuple[str, str]] = []
    for view in _views(untrusted_text):
        for pattern in (_SPECIAL_URL, _SPECIAL_URL_RFC, _OTHER_URL, _PROTOCOL_RELATIVE):
            for match in pattern.finditer(view):
                host = _authority_host(match.group(1))
                if host:
                    found.append((host, match.group(0)))
        for match in _MAILTO.finditer(view):
            found.extend(
                (address.rpartition("@")[2], match.group(0))
                for address in match.group(1).split(",")
                if "@" in address
            )
        for pattern in (_BARE_WITH_PATH, _WWW, _DOTTED_QUAD):
            for match in pattern.finditer(view):
                host = match.group(1)
                if pattern is not _BARE_WITH_PATH or not _ends_in_number(host):
                    found.append((host, match.group(0)))
    return found


# --- nftables ---------------------------------------------------------------------------


def nft_ruleset(
    config: EgressConfig,
    uid: int,
    resolved: Mapping[str, Sequence[IPAddress]],
    *,
    dns_servers: Sequence[IPAddress] = (),
) -> str:
    """An nftables table letting ``uid`` open TCP only to the pinned addresses and ports.

    ``resolved`` maps allowlisted host names to the addresses the executor pinned (see
    :meth:`Egress.pin_all`); IP-literal rules need no entry. ``dns_servers`` may be
    reached on port 53. Everything else that uid sends is rejected. Loading the text
    replaces any previous version of the table atomically.
    """
    if not 0 <= uid < 2**32:
        raise ValueError(f"uid {uid} is out of range")
    pairs = _nft_pairs(Egress(config), config, resolved)
    v4 = sorted({f"{a} . {p}" for a, p in pairs if a.version == 4})
    v6 = sorted({f"{a} . {p}" for a, p in pairs if a.version == 6})
    dns = sorted({str(_canonical_address(a)) for a in dns_servers})
    lines = [
        "# threezone egress: generated, do not edit; load with `nft -f FILE`",
        "table inet threezone_egress",
        "delete table inet threezone_egress",
        "table inet threezone_egress {",
        *_nft_set("allowed_v4", "ipv4_addr . inet_service", v4),
        *_nft_set("allowed_v6", "ipv6_addr . inet_service", v6),
        "    chain output {",
        "        type filter hook output priority filter; policy accept;",
        f"        meta skuid {uid} jump executor",
        "    }",
        "    chain executor {",
        "        ct state established,related accept",
        "        ip daddr . tcp dport @allowed_v4 accept",
        "        ip6 daddr . tcp dport @allowed_v6 accept",
        *[_nft_dns_rule(d) for d in dns],
        "        meta l4proto tcp reject with tcp reset",
        "        reject with icmpx type admin-prohibited",
        "    }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def _nft_pairs(
    egress: Egress, config: EgressConfig, resolved: Mapping[str, Sequence[IPAddress]]
) -> set[tuple[IPAddress, int]]:
    allow_private = _compile_networks(config.allow_private)
    wanted: dict[str, Sequence[IPAddress]] = dict(resolved)
    for rule in egress._rules:
        literal = _ip_literal(rule.pattern.host)
        if literal is not None and not rule.pattern.wildcard:
            wanted.setdefault(rule.pattern.host, [literal])
    pairs: set[tuple[IPAddress, int]] = set()
    for host, addresses in wanted.items():
        name = normalize_host(host)
        ports = {r.port for r in egress._rules if name is not None and r.pattern.matches(name)}
        if not ports:
            raise EgressDenied("nftables", host, 0, "no egress rule names this host")
        for address in map(_canonical_address, addresses):
            problem = address_problem(address, allow_private)
            if problem is not None:
                raise EgressDenied("nftables", host, 0, problem)
            pairs.update((address, port) for port in ports)
    return pairs


def _nft_set(name: str, kind: str, elements: list[str]) -> list[str]:
    body = [f"        elements = {{ {', '.join(elements)} }}"] if elements else []
    return [f"    set {name} {{", f"        type {kind}", *body, "    }"]


def _nft_dns_rule(address: str) -> str:
    family = "ip6" if ":" in address else "ip"
    return f"        {family} daddr {address} meta l4proto {{ tcp, udp }} th dport 53 accept"
