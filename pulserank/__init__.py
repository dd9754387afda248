"""The `pulserank` command: a thin dispatcher to pipelines, servers and tools."""

__version__ = "0.1.0"
