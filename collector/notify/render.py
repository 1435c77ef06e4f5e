"""Channel bodies rendered from a Notice: pure functions, no I/O and no clock."""

from __future__ import annotations

import html
from dataclasses import asdict
from email.message import EmailMessage
from typing import Any

import orjson

from collector.notify.model import Notice

ACK_LABEL = "Acknowledge in CityGate"
SEVERITY_RANK = {"critical": 0, "major": 1, "minor": 2, "warning": 3, "info": 4}
# Provider limits on the body text (bytes, UTF-8); longer text is clipped with a marker.
DINGTALK_MAX_BYTES = 18_000
WECOM_MARKDOWN_MAX_BYTES = 4_000
WECOM_TEXT_MAX_BYTES = 2_000
_WECOM_COLOUR = {"critical": "warning", "major": "warning", "info": "info"}


def clip(text: str, max_bytes: int, marker: str = "\n…") -> str:
    """Cut `text` to at most `max_bytes` UTF-8 bytes without splitting a character."""
    raw = text.encode()
    if len(raw) <= max_bytes:
        return text
    keep = raw[: max(0, max_bytes - len(marker.encode()))].decode(errors="ignore")
    return keep + marker


def notice_to_json(notice: Notice) -> str:
    """The Notice as JSON text (the queue's payload column)."""
    return orjson.dumps(asdict(notice)).decode()


def notice_from_json(text: str) -> Notice:
    """Rebuild a Notice from its payload JSON."""
    data: dict[str, Any] = orjson.loads(text)
    data["mention_phones"] = tuple(data.get("mention_phones") or ())
    data["emails"] = tuple(data.get("emails") or ())
    return Notice(**data)


def webhook_body(notice: Notice, notification_id: int, sent_ms: int) -> bytes:
    """JSON for a generic webhook; `sent_ms` is inside the signed body so replays show."""
    doc = {"v": 1, "id": notification_id, "sent_ms": sent_ms, **asdict(notice)}
    return orjson.dumps(doc)


def dingtalk_body(notice: Notice) -> dict[str, Any]:
    """A DingTalk markdown message that @-mentions `mention_phones` (they must be in the text)."""
    mentions = " ".join(f"@{p}" for p in notice.mention_phones)
    tail = f"\n\n[{ACK_LABEL}]({notice.link})" + (f"\n\n{mentions}" if mentions else "")
    text = clip(f"#### {notice.title}\n\n{notice.text}", DINGTALK_MAX_BYTES - len(tail.encode()))
    return {
        "msgtype": "markdown",
        "markdown": {"title": notice.title, "text": text + tail},
        "at": {"atMobiles": list(notice.mention_phones), "isAtAll": False},
    }


def wecom_msgtype(notice: Notice, configured: str) -> str:
    """The WeCom message type: `auto` uses text only when someone must be @-mentioned."""
    if configured != "auto":
        return configured
    return "text" if notice.mention_phones else "markdown"


def wecom_body(notice: Notice, msgtype: str = "markdown") -> dict[str, Any]:
    """A WeCom robot message: markdown, or text with `mentioned_mobile_list`.

    WeCom only honours mentioned_mobile_list in text messages; markdown renders the
    title, severity colour and link but cannot @-mention by phone.
    """
    if msgtype == "text":
        link = f"\n{ACK_LABEL}: {notice.link}"
        content = clip(f"{notice.title}\n{notice.text}", WECOM_TEXT_MAX_BYTES - len(link.encode()))
        return {"msgtype": "text", "text": {"content": content + link,
                                            "mentioned_mobile_list": list(notice.mention_phones)}}
    colour = _WECOM_COLOUR.get(notice.severity, "comment")
    link = f"\n[{ACK_LABEL}]({notice.link})"
    head = f"**{notice.title}**\n> <font color=\"{colour}\">{notice.severity}</font>\n"
    content = clip(head + notice.text, WECOM_MARKDOWN_MAX_BYTES - len(link.encode()))
    return {"msgtype": "markdown", "markdown": {"content": content + link}}


def email_message(notice: Notice, sender: str, to: list[str]) -> EmailMessage:
    """A multipart/alternative e-mail: the markdown as plain text, plus simple HTML."""
    msg = EmailMessage()
    msg["Subject"] = notice.title
    msg["From"] = sender
    msg["To"] = ", ".join(email_recipients(to, notice))
    msg["X-CityGate-Key"] = notice.key
    msg.set_content(f"{notice.text}\n\n{ACK_LABEL}: {notice.link}\n")
    paragraphs = "".join(
        "<p>" + "<br>".join(html.escape(line) for line in block.splitlines()) + "</p>"
        for block in notice.text.split("\n\n") if block.strip())
    msg.add_alternative(
        "<html><body>"
        f"<h3>{html.escape(notice.title)}</h3>{paragraphs}"
        f"<p><a href=\"{html.escape(notice.link, quote=True)}\">{ACK_LABEL}</a></p>"
        "</body></html>", subtype="html")
    return msg


def email_recipients(to: list[str], notice: Notice) -> list[str]:
    """Configured recipients plus the notice's on-call addresses, without duplicates."""
    return list(dict.fromkeys([*to, *notice.emails]))


def mqtt_payload(notice: Notice, notification_id: int, sent_ms: int) -> bytes:
    """The JSON published to a crew topic."""
    return webhook_body(notice, notification_id, sent_ms)
