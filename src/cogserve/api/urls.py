"""The base URL clients reached us at, for the image links we hand out."""

from __future__ import annotations

from starlette.requests import Request

from cogserve.settings import ServerSettings


def public_base_url(request: Request, settings: ServerSettings) -> str:
    """``--public-url`` if set; else the request's own address, honouring X-Forwarded-Proto/Host/Prefix
    only from peers in ``forwarded_allow_ips`` (anyone else could point links at their own host)."""
    if settings.public_url:
        return settings.public_url
    base = str(request.base_url).rstrip("/")
    peer = request.client.host if request.client else ""
    trusted = "*" in settings.forwarded_allow_ips or peer in settings.forwarded_allow_ips
    headers = request.headers
    if not trusted or not (headers.get("x-forwarded-host") or headers.get("x-forwarded-proto")):
        return base
    proto = _first(headers.get("x-forwarded-proto")) or request.url.scheme
    host = _first(headers.get("x-forwarded-host")) or request.url.netloc
    prefix = (_first(headers.get("x-forwarded-prefix")) or "").rstrip("/")
    if proto not in ("http", "https") or any(c in host for c in "/\\@ ") or not host:
        return base
    if prefix and not prefix.startswith("/"):
        prefix = "/" + prefix
    return f"{proto}://{host}{prefix}"


def _first(value: str | None) -> str | None:
    # A chain of proxies appends: "client-facing, next-hop"; the first is what the client used.
    return value.split(",", 1)[0].strip() if value else None
