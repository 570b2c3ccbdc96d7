"""The egress layer, attacked: real loopback HTTP(S) servers, fake resolvers, nftables.

Every server binds 127.0.0.x with a random port and records what reached it, so a
test proves a refusal by showing that *nothing arrived*, not only that an exception
was raised. Loopback is allowed explicitly (``allow_private``) wherever a test needs
a connection to succeed; the tests that leave it out prove loopback is refused.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import os
import shutil
import ssl
import subprocess
import sys
import threading
from collections.abc import Coroutine, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from threezone.config.schema import EgressConfig, EgressRule
from threezone.errors import ConfigError, EgressDenied, EgressUnresolvable
from threezone.executor.egress import (
    Egress,
    IPAddress,
    StaticResolver,
    address_problem,
    nft_ruleset,
    normalize_host,
)

T = TypeVar("T")
LOOPBACK = ["127.0.0.0/8"]


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


# --- loopback servers -------------------------------------------------------------------


class Recorded:
    def __init__(self, method: str, path: str, host: str) -> None:
        self.method, self.path, self.host = method, path, host


class RecordingServer:
    """An HTTP(S) server on one loopback address that records every request it got.

    ``redirects`` maps a path to the Location it answers with (302).
    """

    def __init__(
        self,
        address: str = "127.0.0.1",
        *,
        tls: ssl.SSLContext | None = None,
        redirects: dict[str, str] | None = None,
    ) -> None:
        self.requests: list[Recorded] = []
        self.redirects = redirects or {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, so a client can reuse its connection

            def _answer(self) -> None:
                server.requests.append(
                    Recorded(self.command, self.path, self.headers.get("Host", ""))
                )
                location = server.redirects.get(self.path)
                body = f"hello from {address}".encode()
                self.send_response(302 if location else 200)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        family_server = type("Server", (ThreadingHTTPServer,), {"address_family": _family(address)})
        self._httpd = family_server((address, 0), Handler)
        if tls is not None:
            self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> RecordingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def _family(address: str) -> int:
    import socket

    return socket.AF_INET6 if ":" in address else socket.AF_INET


@pytest.fixture
def server() -> Iterator[RecordingServer]:
    with RecordingServer() as s:
        yield s


def rule(host: str, port: int, connector: str = "web", **kw: Any) -> EgressRule:
    return EgressRule(connector=connector, host=host, port=port, **kw)


def egress_for(
    rules: Sequence[EgressRule],
    answers: dict[str, list[str]] | None = None,
    allow_private: Sequence[str] = LOOPBACK,
) -> Egress:
    config = EgressConfig(allow=list(rules), allow_private=list(allow_private))
    return Egress(config, StaticResolver(answers or {}))


async def get(egress: Egress, url: str, connector: str = "web", **kw: Any) -> httpx2.Response:
    async with egress.http_client(connector, **kw) as client:
        return await client.get(url)


# --- allowed and refused destinations ---------------------------------------------------


def test_an_allowed_get_reaches_the_server_with_the_host_name(server: RecordingServer) -> None:
    egress = egress_for([rule("api.test", server.port)], {"api.test": ["127.0.0.1"]})
    response = run(get(egress, f"http://api.test:{server.port}/v1/x"))
    assert response.status_code == 200
    assert response.text == "hello from 127.0.0.1"
    assert [(r.path, r.host) for r in server.requests] == [("/v1/x", f"api.test:{server.port}")]


def test_an_ip_literal_rule_needs_no_dns(server: RecordingServer) -> None:
    egress = egress_for([rule("127.0.0.1", server.port)])  # the resolver knows nothing
    assert run(get(egress, f"http://127.0.0.1:{server.port}/")).status_code == 200


@pytest.mark.parametrize(
    ("url_host", "port_offset", "connector", "reason"),
    [
        ("evil.test", 0, "web", "host is not in the allowlist"),
        ("api.test", 1, "web", "is not allowed for this host"),
        ("api.test", 0, "llm", "this connector has no egress rule"),
    ],
)
def test_refused_host_port_or_connector_never_reaches_the_network(
    server: RecordingServer, url_host: str, port_offset: int, connector: str, reason: str
) -> None:
    answers = {"api.test": ["127.0.0.1"], "evil.test": ["127.0.0.1"]}
    egress = egress_for([rule("api.test", server.port)], answers)
    url = f"http://{url_host}:{server.port + port_offset}/"
    with pytest.raises(EgressDenied, match=reason) as caught:
        run(get(egress, url, connector))
    assert caught.value.connector == connector
    assert server.requests == []


def test_methods_and_path_prefix_narrow_a_rule(server: RecordingServer) -> None:
    narrow = rule("api.test", server.port, methods=["get"], path_prefix="/v1")
    egress = egress_for([narrow], {"api.test": ["127.0.0.1"]})
    base = f"http://api.test:{server.port}"

    async def scenario() -> list[str]:
        outcomes = []
        async with egress.http_client("web") as client:
            for method, path in [
                ("GET", "/v1"),
                ("GET", "/v1/messages?x=1"),
                ("POST", "/v1/messages"),
                ("GET", "/v2/x"),
                ("GET", "/v1x"),
                ("GET", "/v1/%2e%2e/admin"),
                ("GET", "/v1/%2E%2e%2fadmin"),
                ("GET", "/v1/..%5cadmin"),
                ("GET", "/v1/../admin"),
            ]:
                try:
                    await client.request(method, base + path)
                    outcomes.append(f"{method} {path} ok")
                except EgressDenied as exc:
                    outcomes.append(f"{method} {path} denied: {exc.reason.split()[0]}")
        return outcomes

    assert run(scenario()) == [
        "GET /v1 ok",
        "GET /v1/messages?x=1 ok",
        "POST /v1/messages denied: method",
        "GET /v2/x denied: path",
        "GET /v1x denied: path",
        "GET /v1/%2e%2e/admin denied: path",
        "GET /v1/%2E%2e%2fadmin denied: path",
        "GET /v1/..%5cadmin denied: path",
        "GET /v1/../admin denied: path",  # httpx2 resolves it to /admin before we see it
    ]
    assert [r.path for r in server.requests] == ["/v1", "/v1/messages?x=1"]


def test_loopback_is_refused_unless_allowed_explicitly(server: RecordingServer) -> None:
    rules = [rule("api.test", server.port), rule("127.0.0.1", server.port)]
    egress = egress_for(rules, {"api.test": ["127.0.0.1"]}, allow_private=[])
    for url in (f"http://api.test:{server.port}/", f"http://127.0.0.1:{server.port}/"):
        with pytest.raises(EgressDenied, match="loopback"):
            run(get(egress, url))
    assert server.requests == []


# --- DNS: resolved once, pinned, every answer checked -----------------------------------


class RebindingResolver:
    """An attacker's DNS: a harmless answer for the first query, an internal one after."""

    def __init__(self, first: str, later: str) -> None:
        self.answers = [ipaddress.ip_address(first), ipaddress.ip_address(later)]
        self.queries: list[str] = []

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        self.queries.append(host)
        return [self.answers[min(len(self.queries) - 1, 1)]]


def test_dns_rebinding_meets_the_pinned_address() -> None:
    """The name is resolved once per connection and the socket goes to that answer.

    127.0.0.1 stands for the public server, 127.0.0.2 for an internal one the rebound
    name points at; only 127.0.0.1/32 is allowed. A layer that checked one answer and
    let the connection resolve again would reach 127.0.0.2 (or ask DNS twice).
    """
    with RecordingServer("127.0.0.1") as public, RecordingServer("127.0.0.2") as internal:
        internal_port_rule = rule("rebind.test", internal.port)
        resolver = RebindingResolver("127.0.0.1", "127.0.0.2")
        config = EgressConfig(
            allow=[rule("rebind.test", public.port), internal_port_rule],
            allow_private=["127.0.0.1/32"],
        )
        egress = Egress(config, resolver)

        async def scenario() -> None:
            async with egress.http_client("web") as client:
                first = await client.get(f"http://rebind.test:{public.port}/a")
                again = await client.get(f"http://rebind.test:{public.port}/b")  # kept alive
                assert (first.text, again.text) == ("hello from 127.0.0.1",) * 2
            assert resolver.queries == ["rebind.test"]
            with pytest.raises(EgressDenied, match=r"127\.0\.0\.2 is a loopback"):
                await get(egress, f"http://rebind.test:{internal.port}/c")

        run(scenario())
        assert [r.path for r in public.requests] == ["/a", "/b"]
        assert internal.requests == []


def test_one_private_answer_among_public_ones_refuses_the_name(server: RecordingServer) -> None:
    answers = {"mixed.test": ["93.184.216.34", "10.0.0.1"]}
    egress = egress_for([rule("mixed.test", server.port)], answers, allow_private=[])
    with pytest.raises(EgressDenied, match=r"10\.0\.0\.1 is a private"):
        run(egress.connect_target("web", "mixed.test", server.port))


def test_connect_target_pins_every_checked_public_answer() -> None:
    egress = egress_for([rule("pub.test", 443)], {"pub.test": ["93.184.216.34", "2606:2800::1"]})
    pinned = run(egress.connect_target("web", "PUB.test.", 443))
    assert pinned.host == "pub.test"
    assert [str(a) for a in pinned.addresses] == ["93.184.216.34", "2606:2800::1"]


def test_names_that_do_not_resolve_are_a_distinct_error() -> None:
    egress = egress_for([rule("gone.test", 443), rule("empty.test", 443)], {"empty.test": []})
    for host in ("gone.test", "empty.test"):
        with pytest.raises(EgressUnresolvable):
            run(egress.connect_target("web", host, 443))


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # carrier-grade NAT
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "240.0.0.1",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
        "::127.0.0.1",  # IPv4-compatible
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    egress = egress_for([rule("x.test", 443), rule(address, 443)], {"x.test": [address]}, [])
    for host in ("x.test", address):
        with pytest.raises(EgressDenied, match="address"):
            run(egress.connect_target("web", host, 443))


def test_an_ipv4_mapped_address_is_allowed_and_pinned_as_ipv4(server: RecordingServer) -> None:
    egress = egress_for([rule("::ffff:127.0.0.1", server.port)])
    pinned = run(egress.connect_target("web", "[::ffff:127.0.0.1]", server.port))
    assert [str(a) for a in pinned.addresses] == ["127.0.0.1"]
    assert run(get(egress, f"http://[::ffff:127.0.0.1]:{server.port}/")).status_code == 200


@given(st.ip_addresses())
def test_only_global_unicast_addresses_pass(address: IPAddress) -> None:
    problem = address_problem(address, ())
    if not address.is_global or address.is_multicast:
        assert problem is not None
    if isinstance(address, ipaddress.IPv4Address):
        mapped = ipaddress.IPv6Address(f"::ffff:{address}")
        assert (address_problem(mapped, ()) is None) == (problem is None)


# --- redirects, proxies, fronting -------------------------------------------------------


def test_a_redirect_to_a_refused_host_raises_and_reaches_nothing() -> None:
    with RecordingServer("127.0.0.2") as evil, RecordingServer() as api:
        api.redirects = {
            "/evil": f"http://evil.test:{evil.port}/loot",
            "/literal": f"http://127.0.0.2:{evil.port}/loot",
            "/path": f"http://api.test:{api.port}/admin",
            "/fine": f"http://api.test:{api.port}/v1/ok",
        }
        answers = {"api.test": ["127.0.0.1"], "evil.test": ["127.0.0.2"]}
        egress = egress_for([rule("api.test", api.port)], answers)
        base = f"http://api.test:{api.port}"
        for path in ("/evil", "/literal"):
            with pytest.raises(EgressDenied, match="host is not in the allowlist"):
                run(get(egress, base + path, follow_redirects=True))
        narrow = egress_for([rule("api.test", api.port, path_prefix="/")], answers)
        assert run(get(narrow, base + "/fine", follow_redirects=True)).url.path == "/v1/ok"
        narrow = egress_for([rule("api.test", api.port, path_prefix="/path")], answers)
        with pytest.raises(EgressDenied, match="path '/admin'"):
            run(get(narrow, base + "/path", follow_redirects=True))
        assert evil.requests == []


def test_proxies_in_the_environment_are_not_used(
    server: RecordingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    with RecordingServer("127.0.0.3") as proxy:
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
            monkeypatch.setenv(name, f"http://127.0.0.3:{proxy.port}")
        egress = egress_for([rule("api.test", server.port)], {"api.test": ["127.0.0.1"]})
        assert run(get(egress, f"http://api.test:{server.port}/")).status_code == 200
        assert proxy.requests == []
    assert len(server.requests) == 1


@pytest.mark.parametrize("option", ["proxy", "mounts", "transport", "trust_env", "verify"])
def test_client_options_that_would_bypass_the_layer_are_refused(option: str) -> None:
    with pytest.raises(TypeError, match=option):
        egress_for([]).http_client("web", **{option: None})


def test_domain_fronting_through_host_header_or_sni_is_refused(server: RecordingServer) -> None:
    answers = {"api.test": ["127.0.0.1"]}
    egress = egress_for([rule("api.test", server.port)], answers)
    url = f"http://api.test:{server.port}/"

    async def scenario() -> None:
        async with egress.http_client("web") as client:
            ok = await client.get(url, headers={"Host": f"API.test:{server.port}"})
            assert ok.status_code == 200
            with pytest.raises(EgressDenied, match="Host header"):
                await client.get(url, headers={"Host": "evil.test"})
            with pytest.raises(EgressDenied, match="SNI"):
                await client.get(url, extensions={"sni_hostname": "evil.test"})

    run(scenario())
    assert len(server.requests) == 1


# --- TLS verifies the name, not the pinned address --------------------------------------


def _self_signed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls_is_verified_against_the_host_name_not_the_pinned_address(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path, "api.test")
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    client_tls = ssl.create_default_context(cafile=str(cert))
    with RecordingServer(tls=server_tls) as server:
        answers = {"api.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]}
        rules = [rule("api.test", server.port), rule("other.test", server.port)]
        egress = egress_for(rules, answers)
        ok = run(get(egress, f"https://api.test:{server.port}/", ssl_context=client_tls))
        assert ok.text == "hello from 127.0.0.1"
        with pytest.raises(httpx2.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            run(get(egress, f"https://other.test:{server.port}/", ssl_context=client_tls))
    assert len(server.requests) == 1


# --- mail connectors: streams to pinned addresses ---------------------------------------


def test_open_connection_reaches_the_pinned_address_only() -> None:
    async def scenario() -> None:
        async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"220 mail.test ready\r\n")
            await writer.drain()
            writer.close()

        listener = await asyncio.start_server(greet, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        answers = {"mail.test": ["127.0.0.1"], "relay.test": ["127.0.0.1"]}
        egress = egress_for([rule("mail.test", port, connector="smtp")], answers)
        async with listener:
            reader, writer = await egress.open_connection("smtp", "mail.test", port)
            assert await reader.readline() == b"220 mail.test ready\r\n"
            writer.close()
            with pytest.raises(EgressDenied):
                await egress.open_connection("smtp", "relay.test", port)

    run(scenario())


# --- host names and configuration -------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "canonical"),
    [
        ("API.Example.COM.", "api.example.com"),
        ("Bücher.DE", "xn--bcher-kva.de"),
        ("xn--bcher-kva.de", "xn--bcher-kva.de"),
        ("2130706433", "127.0.0.1"),
        ("0x7f.0.0.1", "127.0.0.1"),
        ("0177.1", "127.0.0.1"),
        ("[::FFFF:7f00:1]", "::ffff:7f00:1"),
        ("evil\\.com", None),
        ("a..b", None),
        ("256.1.1.1", None),
        ("", None),
    ],
)
def test_host_normalisation(written: str, canonical: str | None) -> None:
    assert normalize_host(written) == canonical


def test_wildcards_match_strictly_below_their_domain() -> None:
    egress = egress_for([rule("*.example.com", 443)])
    assert egress.check_destination("web", "api.EXAMPLE.com", 443) == "api.example.com"
    assert egress.check_destination("web", "a.b.example.com.", 443) == "a.b.example.com"
    for host in ("example.com", "evilexample.com", "example.com.evil.test"):
        with pytest.raises(EgressDenied):
            egress.check_destination("web", host, 443)


def test_an_idn_rule_matches_its_punycode_and_not_a_homograph() -> None:
    egress = egress_for([rule("bücher.de", 443)])
    assert egress.check_destination("web", "xn--bcher-kva.de", 443) == "xn--bcher-kva.de"
    with pytest.raises(EgressDenied):
        egress.check_destination("web", "bucher.de", 443)


@pytest.mark.parametrize(
    ("config", "key_path"),
    [
        (EgressConfig(allow=[rule("*", 443)]), "allow[0].host"),
        (EgressConfig(allow=[rule("*.com", 443)]), "allow[0].host"),
        (EgressConfig(allow=[rule("a*.example.com", 443)]), "allow[0].host"),
        (EgressConfig(allow=[rule("*.127.0.0.1", 443)]), "allow[0].host"),
        (EgressConfig(allow=[rule("x.test", 443, path_prefix="v1")]), "allow[0].path_prefix"),
        (EgressConfig(allow_private=["127.0.0.1/8"]), "allow_private[0]"),
        (EgressConfig(allow_private=["loopback"]), "allow_private[0]"),
    ],
)
def test_a_bad_egress_config_is_a_config_error(config: EgressConfig, key_path: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Egress(config)
    assert caught.value.key_path == key_path


def test_an_empty_allowlist_lets_nothing_out() -> None:
    egress = Egress(EgressConfig())
    with pytest.raises(EgressDenied, match="no egress rule"):
        run(egress.connect_target("web", "example.com", 443))
    assert egress.check_argument_values(["see https://example.com/"]) != []


# --- hosts inside action arguments ------------------------------------------------------

ARGUMENT_EGRESS = egress_for(
    [
        rule("api.allowed.com", 443, connector="llm"),
        rule("*.example.org", 443),
        rule("1.2.3.4", 443),
    ]
)


@pytest.mark.parametrize(
    "text",
    [
        "Read more at https://api.allowed.com/v1/docs",
        "HTTPS://API.ALLOWED.COM/x and https://docs.example.org/y",
        "https://api.allowed.com.:443/ and http://1.2.3.4/",
        "write to alice@evil.test or bob@contacts.test",  # addresses are not URLs
        "version 1.2/3, at 10:30, in notes.txt: fine",
        "https://evil.test@api.allowed.com/",  # userinfo only, the host is allowed
    ],
)
def test_argument_text_naming_only_allowed_hosts_passes(text: str) -> None:
    assert ARGUMENT_EGRESS.check_argument_values([text]) == []


@pytest.mark.parametrize(
    ("text", "bad_host"),
    [
        ("see https://evil.test/?d=secret", "'evil.test'"),
        ("HTTPS://EVIL.TEST/X", "'evil.test'"),
        ("https://api.allowed.com@evil.test/", "'evil.test'"),
        ("https://api.allowed.com:pw@evil.test:8443/", "'evil.test'"),
        ("https://api.allowed.com\\@evil.test", "'evil.test'"),
        ("https:\\\\evil.test\\x", "'evil.test'"),
        ("http:evil.test/x", "'evil.test'"),
        ("http:/\\/evil.test", "'evil.test'"),
        ("https://evil.test#@api.allowed.com", "'evil.test'"),
        ("https://api.allowed.com.evil.test/", "'api.allowed.com.evil.test'"),
        ("https://evil%2etest/", "'evil.test'"),
        ("https%3A%2F%2Fevil.test%2Fx", "'evil.test'"),
        ("https%253A%252F%252Fevil.test", "'evil.test'"),
        ("&#104;ttps://evil&#46;test/", "'evil.test'"),
        ("evil%2etest/steal?d=1", "'evil.test'"),
        ("\uff45\uff56\uff49\uff4c\u3002\uff54\uff45\uff53\uff54/x", "'evil.test'"),  # fullwidth
        ("e\u200bvil.test/x", "'evil.test'"),
        ("https://\u0430pi.allowed.com/", "'xn--pi-6kc.allowed.com'"),  # Cyrillic a
        ("https://xn--pi-6kc.allowed.com/", "'xn--pi-6kc.allowed.com'"),
        ("http://2130706433/", "'127.0.0.1'"),
        ("http://0x7f.1/", "'127.0.0.1'"),
        ("http://0177.0.0.1/", "'127.0.0.1'"),
        ("http://[::1]:8080/", "'::1'"),
        ("call 169.254.169.254 now", "'169.254.169.254'"),
        ("wss://evil.test/socket", "'evil.test'"),
        ("ftp://evil.test/pub", "'evil.test'"),
        ("gopher://evil.test:70/", "'evil.test'"),
        ("<img src=//evil.test/p.gif>", "'evil.test'"),
        ("mailto:x@api.allowed.com,y@evil.test", "'evil.test'"),
        ("visit www.evil.test today", "'www.evil.test'"),
        ("evil.test:8080", "'evil.test'"),
        ("user@evil.test/path", "'evil.test'"),
        ("example.org/x", "'example.org'"),  # the wildcard does not cover the apex
    ],
)
def test_argument_text_naming_another_host_is_reported(text: str, bad_host: str) -> None:
    problems = ARGUMENT_EGRESS.check_argument_values(["harmless", text])
    assert any(p.startswith(bad_host) for p in problems), problems


def test_invalid_hosts_in_urls_are_reported_not_skipped() -> None:
    problems = ARGUMENT_EGRESS.check_argument_values(["http://bad_host.test/", "http://256.1/"])
    assert len(problems) == 2
    assert all("invalid host" in p for p in problems)


def test_argument_scanning_is_linear_on_hostile_text() -> None:
    hostile = ["a" * 100_000, "a." * 50_000, "http://" + "@" * 100_000, "%25" * 30_000]
    assert len(ARGUMENT_EGRESS.check_argument_values(hostile)) <= 4


# --- nftables ---------------------------------------------------------------------------

NFT = shutil.which("nft")
UNSHARE = shutil.which("unshare")
IP = shutil.which("ip")


def nft_config(port: int) -> EgressConfig:
    return EgressConfig(
        allow=[rule("api.test", port), rule("127.0.0.1", port + 1), rule("*.wild.test", 443)],
        allow_private=[*LOOPBACK, "::1/128"],
    )


def test_the_ruleset_names_the_uid_and_only_pinned_pairs() -> None:
    resolved = {"api.test": [ipaddress.ip_address("127.0.0.9"), ipaddress.ip_address("::1")]}
    text = nft_ruleset(
        nft_config(18080), 1234, resolved, dns_servers=[ipaddress.ip_address("127.0.0.53")]
    )
    assert "meta skuid 1234 jump executor" in text
    assert "elements = { 127.0.0.1 . 18081, 127.0.0.9 . 18080 }" in text
    assert "elements = { ::1 . 18080 }" in text
    assert "ip daddr 127.0.0.53 meta l4proto { tcp, udp } th dport 53 accept" in text
    assert text.index("delete table inet threezone_egress") < text.index("chain output")


def test_the_ruleset_refuses_what_the_egress_layer_refuses() -> None:
    config = EgressConfig(allow=[rule("api.test", 443)])
    with pytest.raises(EgressDenied, match="loopback"):
        nft_ruleset(config, 1000, {"api.test": [ipaddress.ip_address("127.0.0.1")]})
    with pytest.raises(EgressDenied, match="no egress rule"):
        nft_ruleset(config, 1000, {"evil.test": [ipaddress.ip_address("93.184.216.34")]})
    with pytest.raises(ValueError, match="uid"):
        nft_ruleset(config, -1, {})


def _netns_available() -> str | None:
    if os.geteuid() != 0:
        return "needs root to load nftables"
    if NFT is None or UNSHARE is None or IP is None:
        return "needs nft (apt-get install nftables), unshare and ip"
    probe = subprocess.run(
        [UNSHARE, "-n", NFT, "list", "ruleset"], capture_output=True, check=False
    )
    if probe.returncode != 0:
        return f"cannot use nft in a network namespace: {probe.stderr!r}"
    return None


NETNS_SKIP = _netns_available()

# Runs as root inside a fresh network namespace: loads the ruleset, listens on two
# ports, then connects to each as root and as the restricted uid (in a child).
NETNS_PROBE = r"""
import json, os, socket, subprocess, sys
ruleset, uid, allowed, other = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
subprocess.run(["nft", "-c", "-f", ruleset], check=True)
subprocess.run(["nft", "-f", ruleset], check=True)
listeners = []
for port in (allowed, other):
    s = socket.socket(); s.bind(("127.0.0.1", port)); s.listen(); listeners.append(s)
def attempt(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        return "connected"
    except OSError as exc:
        return type(exc).__name__
results = {"root_other": attempt(other)}
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    os.setgid(uid); os.setuid(uid)
    found = {"uid_allowed": attempt(allowed), "uid_other": attempt(other)}
    os.write(write, json.dumps(found).encode())
    os._exit(0)
os.waitpid(pid, 0)
results.update(json.loads(os.read(read, 4096)))
print(json.dumps(results))
"""


PORTS = ("18080", "18082")  # a fresh namespace has no other listeners: fixed ports are safe


@pytest.mark.skipif(NETNS_SKIP is not None, reason=str(NETNS_SKIP))
def test_the_ruleset_loads_and_fences_the_uid_in_a_network_namespace(tmp_path: Path) -> None:
    uid = 65534
    resolved = {"api.test": [ipaddress.ip_address("127.0.0.1")]}
    ruleset = tmp_path / "egress.nft"
    ruleset.write_text(nft_ruleset(nft_config(18080), uid, resolved))
    done = subprocess.run(
        [str(UNSHARE), "-n", sys.executable, "-c", NETNS_PROBE, str(ruleset), str(uid), *PORTS],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "root_other": "connected",  # other users are not fenced
        "uid_allowed": "connected",
        "uid_other": "ConnectionRefusedError",  # tcp reset from the reject rule
    }
