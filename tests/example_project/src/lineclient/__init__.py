"""A line-protocol client with retries and timeouts: the code under test."""

from .client import ClientError, LineClient, udp_request

__all__ = ["ClientError", "LineClient", "udp_request"]
