"""How a webhook body is signed, and how a receiver checks it. No Django here: a
receiver may copy `verify_signature` as it is (docs/webhooks.md shows it).

The signed message is `<timestamp>.<raw body>` (the timestamp as sent in
`X-PrefLoop-Timestamp`, seconds since the epoch), keyed with the hook's secret:
`X-PrefLoop-Signature: sha256=<hex of HMAC-SHA256>`. Signing the timestamp with the body
lets a receiver refuse an old request replayed by someone who recorded it."""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-PrefLoop-Signature"
TIMESTAMP_HEADER = "X-PrefLoop-Timestamp"
EVENT_ID_HEADER = "X-PrefLoop-Event-Id"
EVENT_TYPE_HEADER = "X-PrefLoop-Event"
DEFAULT_TOLERANCE_SECONDS = 300


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The X-PrefLoop-Signature value for this body sent at this time."""
    digest = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_signature(secret: str, body: bytes, timestamp_header: str, signature_header: str,
                     tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS, now: float | None = None) -> bool:
    """A receiver's check: the signature matches the raw body and the timestamp, and the
    timestamp is within `tolerance_seconds` of the receiver's clock."""
    try:
        timestamp = int(timestamp_header)
    except (TypeError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_seconds:
        return False
    return hmac.compare_digest(signature(secret, timestamp, body), signature_header or "")
