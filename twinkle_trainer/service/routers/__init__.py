"""The HTTP routes, one module per resource, as the official SDK (tinker 0.38.0) calls them."""
