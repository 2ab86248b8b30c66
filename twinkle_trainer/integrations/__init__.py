"""Integrations with other training libraries (each imports its library only in its own module)."""
