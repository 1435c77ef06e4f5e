"""Request signatures: DingTalk's signed robot URL and CityGate's own webhook HMAC (sans-IO)."""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import quote_plus

SIGNATURE_HEADER = "X-CityGate-Signature"
TIMESTAMP_HEADER = "X-CityGate-Timestamp"


def dingtalk_sign(secret: str, timestamp_ms: int) -> str:
    """DingTalk's `sign`: urlencode(base64(HMAC-SHA256(secret, f"{timestamp}\\n{secret}")))."""
    to_sign = f"{timestamp_ms}\n{secret}".encode()
    digest = hmac.new(secret.encode(), to_sign, hashlib.sha256).digest()
    return quote_plus(base64.b64encode(digest).decode())


def dingtalk_url(url: str, secret: str | None, timestamp_ms: int) -> str:
    """The robot URL to POST to: unchanged, or with `&timestamp=..&sign=..` in signed mode."""
    if not secret:
        return url
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}timestamp={timestamp_ms}&sign={dingtalk_sign(secret, timestamp_ms)}"


def webhook_signature(secret: str, body: bytes) -> str:
    """`sha256=<hex>` HMAC of the raw request body, the value of X-CityGate-Signature."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def webhook_headers(secret: str | None, body: bytes, timestamp_ms: int) -> dict[str, str]:
    """Headers for a CityGate webhook POST; the signature only when a secret is configured."""
    headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: str(timestamp_ms)}
    if secret:
        headers[SIGNATURE_HEADER] = webhook_signature(secret, body)
    return headers


def verify_webhook(secret: str, body: bytes, signature: str) -> bool:
    """Check a received X-CityGate-Signature in constant time (for receivers and tests)."""
    return hmac.compare_digest(webhook_signature(secret, body), signature)
