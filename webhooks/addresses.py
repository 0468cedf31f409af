"""Which URLs a webhook may call, checked when a hook is made and again at every send
(a name may resolve elsewhere later), and the connection pinned to the address that was
checked, so a DNS answer that changes between the check and the connect cannot move it.

- `https://` to a public address: yes.
- loopback (127.0.0.0/8, ::1, `localhost`), over http or https: only with
  PREFLOOP_WEBHOOK_ALLOW_LOOPBACK (on with DJANGO_DEBUG): a development receiver. Plain
  `http://` is refused for anything else: the body and its signature would cross the
  network in the clear.
- private networks (10/8, 172.16/12, 192.168/16, fc00::/7, 100.64/10): only with
  PREFLOOP_WEBHOOK_ALLOW_PRIVATE_NETWORKS. A receiver inside the company network is
  common, but by default a hook must not turn the server into a probe of the network it
  sits in (a staff token, or a leaked one, could otherwise map internal services from the
  delivery log's status codes and errors).
- link-local (169.254/16, which holds cloud metadata services), multicast, reserved and
  unspecified addresses: never.
- credentials in the URL: never (the signature is the authentication, and the URL is
  shown on the hook's page).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings


class WebhookUrlError(ValueError):
    """The URL may not be a webhook's; the message says why."""


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str
    address: str
    """The checked IP address the connection goes to."""


def check_address(address: str, loopback_name: bool = False) -> None:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return check_address(str(ip.ipv4_mapped), loopback_name)
    if ip.is_loopback or loopback_name:
        if not settings.PREFLOOP_WEBHOOK_ALLOW_LOOPBACK:
            raise WebhookUrlError("loopback addresses (127.0.0.1, localhost) are for development only: set "
                                  "PREFLOOP_WEBHOOK_ALLOW_LOOPBACK=true (on with DJANGO_DEBUG)")
        if not ip.is_loopback:
            raise WebhookUrlError(f"localhost resolves to {address}, which is not a loopback address")
        return
    if ip.is_link_local or ip.is_multicast or ip.is_reserved or ip.is_unspecified:
        raise WebhookUrlError(f"{address} is a link-local, multicast or reserved address")
    if (ip.is_private or ip in ipaddress.ip_network("100.64.0.0/10")) and \
            not settings.PREFLOOP_WEBHOOK_ALLOW_PRIVATE_NETWORKS:
        raise WebhookUrlError(f"{address} is a private-network address: set "
                              "PREFLOOP_WEBHOOK_ALLOW_PRIVATE_NETWORKS=true to allow receivers inside your network")


def resolve(url: str) -> Target:
    """The URL's parts and a checked address to connect to; WebhookUrlError if the URL
    may not be a webhook's or its host does not resolve."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as error:
        raise WebhookUrlError(f"not a URL: {error}") from None
    if parts.scheme not in ("https", "http"):
        raise WebhookUrlError("a webhook URL must start with https:// (or http:// to a loopback address in "
                              "development)")
    if not parts.hostname:
        raise WebhookUrlError("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise WebhookUrlError("credentials in the URL are refused: receivers check the signature instead")
    host = parts.hostname
    loopback_name = host == "localhost" or host.endswith(".localhost")
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if parts.scheme == "http" and not (loopback_name or (literal is not None and literal.is_loopback)):
        raise WebhookUrlError("plain http:// is refused except to a loopback address (127.0.0.1, localhost) in "
                              "development: use https://")
    port = port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise WebhookUrlError(f"the host {host} does not resolve: {error}") from None
    addresses = sorted({info[4][0] for info in infos}, key=lambda a: (":" in a, a))  # IPv4 first
    for address in addresses:  # every one: the connection takes the first, DNS may rotate them
        check_address(address, loopback_name)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(parts.scheme, host, port, path, addresses[0])
