"""amoc: A Murder of Crows, massively parallel XMPP load tests."""

__version__ = "0.1.0"
