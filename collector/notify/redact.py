"""Keep push-channel secrets out of logs, reprs, exceptions and API output."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

MASK = "***"

# Query parameters that carry a secret: DingTalk access_token and sign, WeCom key, and the
# usual suspects. `=` may arrive percent-encoded when a URL is nested inside another.
_QUERY_SECRET = re.compile(
    r"(?i)((?:[?&]|%3F|%26)(?:access_token|key|sign|secret|token|password|passwd|apikey)"
    r"(?:=|%3D))[^&#\s\"'<>]*")
# user:password@ in any scheme://
_USERINFO = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^/\s:@]*:)[^@/\s]+@")


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Return `text` with URL query secrets, URL passwords and the given literal secrets masked."""
    out = _QUERY_SECRET.sub(lambda m: m.group(1) + MASK, text)
    out = _USERINFO.sub(lambda m: m.group(1) + MASK + "@", out)
    for s in sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True):
        out = out.replace(s, MASK)
    return out


class RedactingFilter(logging.Filter):
    """A logging filter that rewrites each record's message through `redact()`."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__("")
        self.secrets = tuple(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        """Replace the record's message by its redacted rendering; never drops a record."""
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is the caller's bug; keep the raw message
            message = str(record.msg)
        record.msg, record.args = redact(message, self.secrets), None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info),
                                     self.secrets)
            record.exc_info = None
        return True


# A logger's filters run only for records created on that very logger (not its children), so
# every logger that may carry a URL is named here. httpx logs each request URL at INFO.
LOGGERS = ("collector.notify.dispatcher", "collector.notify.transports", "collector.notify.queue",
           "httpx", "httpcore.connection", "httpcore.http11", "httpcore.http2",
           "httpcore.proxy", "mail.log")


def install_log_redaction(secrets: Iterable[str] = ()) -> RedactingFilter:
    """Attach one redacting filter to this package's and the HTTP client's loggers; return it."""
    flt = RedactingFilter(secrets)
    for name in LOGGERS:
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, RedactingFilter)]:
            logger.removeFilter(old)
        logger.addFilter(flt)
    return flt
