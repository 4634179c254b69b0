"""Fetching a search's image_url without letting it reach the server's own network (SSRF).

The host is resolved first and every address it resolves to is judged: loopback, private,
link-local (cloud metadata at 169.254.169.254), multicast, reserved and other non-public
addresses are refused unless PRODVEC_FETCH_ALLOW names the host or a network holding the
address. The connection then goes to the address that was judged (no second lookup that a
rebinding DNS server could answer differently), and every redirect is judged the same way.
Bounded like the worker's fetches: total time, size, redirects.

``resolver`` and ``connector`` are the two places that touch the network: tests swap them to
judge addresses without ever connecting to one.
"""
from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

from prodvec.images.load import FETCH_TIMEOUT_SECONDS, MAX_REDIRECTS
from prodvec.service.errors import BadRequest, FetchFailed, TooLarge
from prodvec.service.settings import FetchAllowList

#: host, port → the addresses to consider (IPv4/IPv6 text).
Resolver = Callable[[str, int], list[str]]
#: address, port, timeout → a connected socket.
Connector = Callable[[str, int, float], socket.socket]

_REDIRECTS = (301, 302, 303, 307, 308)
_CHUNK_BYTES = 64 * 1024
_ADDRESS_KINDS = (  # the first that applies names the refusal
    ("is_loopback", "a loopback"),
    ("is_link_local", "a link-local (cloud metadata)"),
    ("is_private", "a private"),
    ("is_multicast", "a multicast"),
    ("is_unspecified", "an unspecified"),
    ("is_reserved", "a reserved"),
)


def system_resolver(host: str, port: int) -> list[str]:
    return [str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


def system_connector(address: str, port: int, timeout: float) -> socket.socket:
    return socket.create_connection((address, port), timeout=timeout)


@dataclass(frozen=True)
class ImageFetcher:
    allow: FetchAllowList
    max_bytes: int
    timeout: float = FETCH_TIMEOUT_SECONDS
    resolver: Resolver = field(default=system_resolver)
    connector: Connector = field(default=system_connector)

    def fetch(self, url: str) -> bytes:
        """The body at ``url`` (redirects followed, each judged); BadRequest when refused."""
        deadline = time.monotonic() + self.timeout
        for _ in range(MAX_REDIRECTS + 1):
            scheme, host, port, target = _parts(url)
            address = self.judge(host, port)
            pinned = _PinnedTLSConnection if scheme == "https" else _PinnedConnection
            connection = pinned(host, port, address, self.connector, self._left(deadline, url))
            try:
                connection.request("GET", target, headers={"User-Agent": "prodvec-serve", "Accept": "image/*"})
                response = connection.getresponse()
                if response.status in _REDIRECTS:
                    location = response.getheader("Location")
                    if not location:
                        raise FetchFailed(f"image_url {url} redirects without a Location header")
                    url = urljoin(url, location)
                    continue
                if response.status != 200:
                    raise FetchFailed(f"image_url answered HTTP {response.status}: check the URL, or upload the photo")
                return self._body(response, url, deadline)
            except (OSError, http.client.HTTPException) as exc:
                raise FetchFailed(f"cannot fetch image_url {url}: {str(exc) or type(exc).__name__}") from None
            finally:
                connection.close()
        raise FetchFailed(f"image_url redirects more than {MAX_REDIRECTS} times: give the photo's own URL")

    def judge(self, host: str, port: int) -> str:
        """The address to connect to; BadRequest when any address of the host is not allowed."""
        try:
            addresses = [ipaddress.ip_address(host)]
        except ValueError:
            try:
                addresses = [ipaddress.ip_address(text.split("%")[0]) for text in self.resolver(host, port)]
            except OSError as exc:
                raise FetchFailed(f"cannot resolve the image_url host {host!r}: {exc}") from None
        if not addresses:
            raise FetchFailed(f"the image_url host {host!r} has no address")
        for address in addresses:  # all of them: a client library may pick any
            refusal = _refusal(address)
            if refusal and not (self.allow.allows_host(host) or self.allow.allows_address(address)):
                raise BadRequest(
                    f"image_url refused: {_named(host, str(address))}{refusal} address, which this server does "
                    "not fetch from. Use a public http(s) URL or upload the photo (an operator may allow the host in "
                    "PRODVEC_FETCH_ALLOW)"
                )
        return str(addresses[0])

    def _body(self, response: http.client.HTTPResponse, url: str, deadline: float) -> bytes:
        declared = response.getheader("Content-Length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise TooLarge(f"the photo at image_url is {declared} bytes, over the {self.max_bytes}-byte limit")
        body = bytearray()
        while chunk := response.read1(_CHUNK_BYTES):
            body += chunk
            if len(body) > self.max_bytes:
                raise TooLarge(f"the photo at image_url is over this server's {self.max_bytes}-byte limit")
            self._left(deadline, url)
        return bytes(body)

    def _left(self, deadline: float, url: str) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise FetchFailed(f"fetching image_url {url} took longer than {self.timeout:g} s")
        return left


def _parts(url: str) -> tuple[str, str, int, str]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise BadRequest(f"image_url {url!r} is not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise BadRequest(f"image_url must be an http(s) URL, not {scheme or 'a path'}: upload a local photo instead")
    if not parts.hostname:
        raise BadRequest(f"image_url {url!r} has no host")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return scheme, parts.hostname, port or (443 if scheme == "https" else 80), target


def _refusal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    for test, kind in _ADDRESS_KINDS:
        if getattr(address, test):
            return kind
    return None if address.is_global else "a non-public"


class _PinnedConnection(http.client.HTTPConnection):
    """HTTP to ``host`` (its Host header) over a socket to the judged ``address``."""

    def __init__(self, host: str, port: int, address: str, connector: Connector, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address
        self._connector = connector

    def connect(self) -> None:
        self.sock = self._pinned_socket()

    def _pinned_socket(self) -> socket.socket:
        return self._connector(self._address, self.port, float(self.timeout or FETCH_TIMEOUT_SECONDS))


class _PinnedTLSConnection(_PinnedConnection):
    """HTTPS: the certificate is checked against ``host``, whatever address the socket went to."""

    default_port = http.client.HTTPS_PORT

    def connect(self) -> None:
        self.sock = _TLS.wrap_socket(self._pinned_socket(), server_hostname=self.host)


_TLS = ssl.create_default_context()


def _named(host: str, address: str) -> str:
    """'localhost is 127.0.0.1, ' for a name; '127.0.0.1 is ' for an address given as itself."""
    return f"{address} is " if host.strip("[]") == address else f"{host} is {address}, "
