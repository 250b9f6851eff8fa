"""Code the three polyhead services share: settings base, error taxonomy, logging, command line."""

__version__ = "0.1.0"
