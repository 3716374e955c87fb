"""HTTP only: the app factory, wire schemas, routes, middleware and error handlers."""

from cogserve.api.app import create_app

__all__ = ["create_app"]
