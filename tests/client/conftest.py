"""The client's tests run against a real gateway: the gateway tests' fixtures, shared."""

from __future__ import annotations

from ..gateway.conftest import browsers, gateway, make_gateway, serving  # noqa: F401 - fixtures (and a helper)
