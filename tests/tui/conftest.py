from ..gateway.conftest import browsers, gateway, make_gateway  # noqa: F401  (shared fixtures)
