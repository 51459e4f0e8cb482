"""routeq's HTTP API (`routeq serve`): an OpenAI-compatible front door plus routeq's own routes."""

from producer.api.app import create_app, serve_app
from producer.api.context import ApiContext

__all__ = ["ApiContext", "create_app", "serve_app"]
