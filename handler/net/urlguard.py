"""SSRF-safe URL handling: every URL the service fetches or calls goes through here.

A URL is vetted before anything connects: the scheme (https in cloud mode), the host name,
and every address its name resolves to. Non-global addresses (loopback, private, link-local,
reserved, multicast, the metadata server) are refused unless `urls.url_allowlist` names
the host or a network that holds the address. Connections then go to the vetted address
itself, so a DNS answer that changes between check and connect (rebinding) cannot redirect
them, and every redirect hop is vetted again.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

from handler import errors
from handler.config.cloud import CloudSettings
from handler.config.urls import UrlSettings
from handler.net import connpool, watchdog
from handler.net.connpool import IPAddress

MAX_REDIRECTS = 5
# Response bodies of webhook receivers are only kept for diagnostics.
MAX_POST_RESPONSE_BYTES = 64 * 1024

# Names that reach a cloud metadata server without going through DNS we could inspect.
_METADATA_HOSTS = frozenset({"metadata", "metadata.google.internal", "metadata.goog"})
_METADATA_IPS = frozenset(ipaddress.ip_address(a) for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254"))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class FetchFailed(errors.BadRequest):
    """The URL was acceptable but fetching it did not produce a usable answer."""

    code = "fetch_failed"


@dataclass(frozen=True)
class Target:
    """A vetted URL: where to connect (the addresses) and what to ask for (host, path)."""

    url: str
    scheme: str
    host: str
    port: int
    path: str  # path + query, as sent on the request line
    addresses: tuple[IPAddress, ...]


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    url: str  # the final URL after redirects
    redirects: list[str] = field(default_factory=list)


# --- the policy -------------------------------------------------------------------------------


def check_url(url: str, *, urls: UrlSettings, cloud: CloudSettings, purpose: str) -> None:
    """Raise errors.UnsafeURL unless `url` may be fetched or called. Resolves DNS."""
    vet(url, urls=urls, cloud=cloud, purpose=purpose)


def vet(url: str, *, urls: UrlSettings, cloud: CloudSettings, purpose: str) -> Target:
    """check_url, returning the addresses a connection may use (CLOUD_MODE: https only)."""
    if not isinstance(url, str) or not url:
        raise errors.UnsafeURL(f"{purpose}: a URL is required")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise errors.UnsafeURL(f"{purpose}: not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    allowed = ("https",) if cloud.cloud_mode else ("https", "http")
    if scheme not in allowed:
        need = "https" if cloud.cloud_mode else "http or https"
        raise errors.UnsafeURL(f"{purpose}: scheme must be {need}, got {scheme or 'none'!r}")
    if parts.username is not None or parts.password is not None:
        raise errors.UnsafeURL(f"{purpose}: credentials in the URL are not accepted")
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise errors.UnsafeURL(f"{purpose}: the URL has no host")
    port = port or (443 if scheme == "https" else 80)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query

    host_allowed = _host_allowlisted(host, urls.url_allowlist)
    if host in _METADATA_HOSTS and not host_allowed:
        raise errors.UnsafeURL(f"{purpose}: {host} is the metadata server")

    addresses = _resolve(host, port, purpose)
    networks = _allowlisted_networks(urls.url_allowlist)
    for ip in addresses:
        if host_allowed or any(ip in net for net in networks if net.version == ip.version):
            continue
        reason = _refusal(ip)
        if reason:
            shown = host if host == str(ip) else f"{host} ({ip})"
            raise errors.UnsafeURL(f"{purpose}: {shown} is {reason}; add it to URL_ALLOWLIST to allow it")
    return Target(url=url, scheme=scheme, host=host, port=port, path=path, addresses=addresses)


def _refusal(ip: IPAddress) -> str | None:
    """Why this address may not be called, or None when it is a public address."""
    if ip in _METADATA_IPS:
        return "the metadata server"
    if isinstance(ip, ipaddress.IPv6Address):
        # An IPv6 form that carries an IPv4 address is judged by that address.
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return _refusal(embedded)
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_private:
        return "a private address"
    if ip.is_reserved or not ip.is_global:
        return "a reserved address"
    return None


def _resolve(host: str, port: int, purpose: str) -> tuple[IPAddress, ...]:
    try:
        return (ipaddress.ip_address(host),)
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise errors.UnsafeURL(f"{purpose}: cannot resolve {host} ({exc})") from None
    seen: dict[IPAddress, None] = {}
    for _family, _type, _proto, _name, sockaddr in infos:
        # Drop an IPv6 zone ("fe80::1%eth0"): the address alone decides.
        seen.setdefault(ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0]), None)
    if not seen:
        raise errors.UnsafeURL(f"{purpose}: {host} resolves to no address")
    return tuple(seen)


def _host_allowlisted(host: str, allowlist: Iterable[str]) -> bool:
    for entry in allowlist:
        entry = entry.strip().lower().rstrip(".")
        if not entry or "/" in entry:
            continue
        if entry.startswith("*."):  # *.example.com: any subdomain
            if host.endswith(entry[1:]):
                return True
        elif host == entry:
            return True
    return False


def _allowlisted_networks(allowlist: Iterable[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    nets = []
    for entry in allowlist:
        try:
            nets.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            continue  # a host name, handled by _host_allowlisted
    return nets


# --- connecting to a vetted address -----------------------------------------------------------


def _read_capped(resp: http.client.HTTPResponse, max_bytes: int, deadline: float) -> tuple[bytes, bool]:
    """Read at most max_bytes; returns (data, truncated). Stops at the overall deadline."""
    length = resp.getheader("Content-Length")
    if length and length.isdigit() and int(length) > max_bytes:
        return b"", True
    chunks, total = [], 0
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError("response took too long")
        chunk = resp.read1(min(65536, max_bytes + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        if total > max_bytes:
            return b"".join(chunks)[:max_bytes], True
    return b"".join(chunks), False


def _request(
    method: str,
    url: str,
    *,
    urls: UrlSettings,
    cloud: CloudSettings,
    purpose: str,
    body: bytes | None,
    headers: Mapping[str, str],
    timeout: float,
    max_bytes: int,
    follow: frozenset[int],
) -> tuple[Response, bool]:
    deadline = time.monotonic() + timeout
    # A socket timeout bounds each read, not the whole: a server sending one byte a second would
    # hold us forever. The watchdog cuts the connection at the deadline, wherever it blocks.
    opened: list[connpool.Connection] = []
    expired = threading.Event()

    def cut() -> None:
        expired.set()
        for conn in list(opened):
            sock = conn.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    alarm = watchdog.arm(timeout, cut)
    try:
        result = _request_hops(method, url, urls, cloud, purpose, body, headers, deadline, max_bytes, follow, opened)
    except (OSError, http.client.HTTPException):
        if expired.is_set():
            raise TimeoutError(f"no complete answer within {timeout:g} s") from None
        raise
    finally:
        alarm.disarm()
    if expired.is_set():  # a cut read may look like a short, complete one
        raise TimeoutError(f"no complete answer within {timeout:g} s")
    return result


def _request_hops(
    method: str,
    url: str,
    urls: UrlSettings,
    cloud: CloudSettings,
    purpose: str,
    body: bytes | None,
    headers: Mapping[str, str],
    deadline: float,
    max_bytes: int,
    follow: frozenset[int],
    opened: list[connpool.Connection],
) -> tuple[Response, bool]:
    redirects: list[str] = []
    while True:
        target = vet(url, urls=urls, cloud=cloud, purpose=purpose)
        conn, resp = connpool.send(
            target.scheme,
            target.host,
            target.port,
            target.addresses,
            (method, target.path, body, headers),
            max(0.1, deadline - time.monotonic()),
            opened,
        )
        complete = False  # read to its end: the connection may serve the next call
        try:
            location = resp.getheader("Location")
            if resp.status in follow and location:
                if len(redirects) >= MAX_REDIRECTS:
                    raise FetchFailed(f"{purpose}: more than {MAX_REDIRECTS} redirects")
                url = urljoin(url, location)
                redirects.append(url)
                continue
            data, truncated = _read_capped(resp, max_bytes, deadline)
            complete = not truncated
            return (
                Response(
                    status=resp.status,
                    headers={k.lower(): v for k, v in resp.getheaders()},
                    body=data,
                    url=url,
                    redirects=redirects,
                ),
                truncated,
            )
        finally:
            connpool.release(conn, resp, complete=complete)


def fetch_bytes(
    url: str,
    *,
    urls: UrlSettings,
    cloud: CloudSettings,
    max_bytes: int,
    purpose: str = "input URL",
    timeout_s: float | None = None,
) -> bytes:
    """GET a URL's body, at most `max_bytes`, following up to 5 vetted redirects, all within
    `timeout_s` (default URL_FETCH_TIMEOUT_S)."""
    try:
        resp, truncated = _request(
            "GET",
            url,
            urls=urls,
            cloud=cloud,
            purpose=purpose,
            body=None,
            headers={"User-Agent": "comfyrun", "Accept": "*/*"},
            timeout=urls.url_fetch_timeout_s if timeout_s is None else timeout_s,
            max_bytes=max_bytes,
            follow=frozenset({301, 302, 303, 307, 308}),
        )
    except (OSError, http.client.HTTPException) as exc:
        raise FetchFailed(f"{purpose}: could not fetch {redact_url(url)}: {describe_error(exc)}") from None
    if truncated:
        raise errors.PayloadTooLarge(f"{purpose}: {redact_url(url)} is larger than {max_bytes} bytes")
    if not 200 <= resp.status < 300:
        raise FetchFailed(f"{purpose}: {redact_url(url)} answered HTTP {resp.status}")
    return resp.body


def post_json(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    urls: UrlSettings,
    cloud: CloudSettings,
    timeout: float,
    purpose: str = "webhook URL",
) -> Response:
    """POST a JSON body to a vetted URL. Follows 307/308 (which keep the body) up to 5 times.

    Returns the response whatever its status; raises errors.UnsafeURL when a hop is refused
    and OSError / http.client.HTTPException when the receiver cannot be reached.
    """
    all_headers = {"Content-Type": "application/json", "User-Agent": "comfyrun"}
    all_headers.update(headers)
    resp, _ = _request(
        "POST",
        url,
        urls=urls,
        cloud=cloud,
        purpose=purpose,
        body=body,
        headers=all_headers,
        timeout=timeout,
        max_bytes=MAX_POST_RESPONSE_BYTES,
        follow=frozenset({307, 308}),
    )
    return resp


def redact_url(url: str) -> str:
    """The one way a URL is shown (errors, logs, job views): without credentials or query
    string, which may carry tokens."""
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(invalid URL)"
    return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timed out"
    return str(exc) or type(exc).__name__
