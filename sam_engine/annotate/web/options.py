"""Where and how the annotation page is served: checked before the server, the model or torch are loaded."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


@dataclass(frozen=True)
class ServeOptions:
    """Where and how the page is served (``annotator.web`` in the engine, the ``sam-annotate-web`` config).

    Attributes:
        host: the address to bind; loopback (127.0.0.1) unless ``allow_remote``.
        port: the port (0: any free one, printed).
        token: a secret every API request must carry; required with ``allow_remote``.
        allow_remote: allow binding beyond loopback (everyone who can reach the port sees the images).
        claim_minutes: an image held this long without a request from its page goes back to the others.
        max_request_mb: the largest request body accepted (an accepted mask is a PNG of the image's size).
    """

    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    allow_remote: bool = False
    claim_minutes: float = 30.0
    max_request_mb: float = 32.0

    def check(self) -> None:
        """Raise ValueError for a binding beyond loopback without ``allow_remote`` and a token of 16+ characters."""
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port={self.port}: expected 0..65535")
        if not self.claim_minutes > 0 or not self.max_request_mb > 0:
            raise ValueError("claim_minutes and max_request_mb must be positive")
        if self.token is not None and len(self.token) < 16:
            raise ValueError("token: use at least 16 characters (python -c 'import secrets; "
                             "print(secrets.token_urlsafe())')")
        if not is_loopback(self.host):
            if not self.allow_remote:
                raise ValueError(f"host={self.host}: not a loopback address; serving images beyond this machine "
                                 "needs allow_remote=true and a token")
            if self.token is None:
                raise ValueError(f"host={self.host} with allow_remote=true: a token is required")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
