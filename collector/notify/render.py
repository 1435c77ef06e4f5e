"""Channel bodies rendered from a Notice: pure functions, no I/O and no clock."""

from __future__ import annotations

import html
from dataclasses import asdict, fields
from email.message import EmailMessage
from typing import Any

import orjson

from collector.notify.model import Fact, Notice

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


_NOTICE_FIELDS = {f.name for f in fields(Notice)}
_FACT_FIELDS = {f.name for f in fields(Fact)}


def notice_from_json(text: str) -> Notice:
    """Rebuild a Notice from its payload JSON (rows queued by older versions have no facts)."""
    data: dict[str, Any] = {k: v for k, v in orjson.loads(text).items() if k in _NOTICE_FIELDS}
    data["mention_phones"] = tuple(data.get("mention_phones") or ())
    data["emails"] = tuple(data.get("emails") or ())
    data["facts"] = tuple(Fact(**{k: v for k, v in f.items() if k in _FACT_FIELDS})
                          for f in data.get("facts") or () if isinstance(f, dict))
    return Notice(**data)


# --- facts ----------------------------------------------------------------------------------

def running_time(since_ms: int, now_ms: int) -> str:
    """Elapsed time as "mm:ss" (or "h:mm:ss" from an hour on); never negative."""
    total = max(0, now_ms - since_ms) // 1000
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes:02d}:{seconds:02d}"


def fact_value(fact: Fact, sent_ms: int) -> str:
    """The value of a fact as sent: a running time is counted up to `sent_ms`."""
    return running_time(fact.since_ms, sent_ms) if fact.since_ms is not None else fact.value


def shown_facts(notice: Notice, sent_ms: int) -> list[tuple[Fact, str]]:
    """The facts that have something to say, with their values as sent."""
    return [(f, v) for f in notice.facts if (v := fact_value(f, sent_ms))]


def facts_markdown(notice: Notice, sent_ms: int) -> str:
    """A markdown list of the facts, links where a fact has one (tel:, map)."""
    return "\n".join(f"- **{f.label}**: " + (f"[{v}]({f.href})" if f.href else v)
                      for f, v in shown_facts(notice, sent_ms))


def facts_text(notice: Notice, sent_ms: int) -> str:
    """Plain lines "Label: value" (a map link follows its value; phone numbers stand alone)."""
    return "\n".join(f"{f.label}: {v}" + (f" {f.href}" if f.href.startswith("http") else "")
                      for f, v in shown_facts(notice, sent_ms))


def facts_json(notice: Notice, sent_ms: int) -> list[dict[str, Any]]:
    """Facts for programs: their rendered value plus what it came from."""
    return [{**asdict(f), "value": v} for f, v in shown_facts(notice, sent_ms)]


def _with_facts(block: str, body: str) -> str:
    return f"{block}\n\n{body}" if block else body


def webhook_body(notice: Notice, notification_id: int, sent_ms: int) -> bytes:
    """JSON for a generic webhook; `sent_ms` is inside the signed body so replays show."""
    doc = {"v": 1, "id": notification_id, "sent_ms": sent_ms, **asdict(notice),
           "facts": facts_json(notice, sent_ms)}
    return orjson.dumps(doc)


def dingtalk_body(notice: Notice, sent_ms: int | None = None) -> dict[str, Any]:
    """A DingTalk markdown message that @-mentions `mention_phones` (they must be in the text)."""
    sent = notice.created_ms if sent_ms is None else sent_ms
    mentions = " ".join(f"@{p}" for p in notice.mention_phones)
    tail = f"\n\n[{ACK_LABEL}]({notice.link})" + (f"\n\n{mentions}" if mentions else "")
    body = _with_facts(facts_markdown(notice, sent), notice.text)
    text = clip(f"#### {notice.title}\n\n{body}", DINGTALK_MAX_BYTES - len(tail.encode()))
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


def wecom_body(notice: Notice, msgtype: str = "markdown",
               sent_ms: int | None = None) -> dict[str, Any]:
    """A WeCom robot message: markdown, or text with `mentioned_mobile_list`.

    WeCom only honours mentioned_mobile_list in text messages; markdown renders the
    title, severity colour and link but cannot @-mention by phone.
    """
    sent = notice.created_ms if sent_ms is None else sent_ms
    if msgtype == "text":
        link = f"\n{ACK_LABEL}: {notice.link}"
        body = _with_facts(facts_text(notice, sent), notice.text).replace("\n\n", "\n")
        content = clip(f"{notice.title}\n{body}", WECOM_TEXT_MAX_BYTES - len(link.encode()))
        return {"msgtype": "text", "text": {"content": content + link,
                                            "mentioned_mobile_list": list(notice.mention_phones)}}
    colour = _WECOM_COLOUR.get(notice.severity, "comment")
    link = f"\n[{ACK_LABEL}]({notice.link})"
    head = f"**{notice.title}**\n> <font color=\"{colour}\">{notice.severity}</font>\n"
    body = _with_facts(facts_markdown(notice, sent), notice.text)
    content = clip(head + body, WECOM_MARKDOWN_MAX_BYTES - len(link.encode()))
    return {"msgtype": "markdown", "markdown": {"content": content + link}}


def _facts_html(notice: Notice, sent_ms: int) -> str:
    rows = "".join(
        f"<tr><th align=left>{html.escape(f.label)}</th><td>"
        + (f"<a href=\"{html.escape(f.href, quote=True)}\">{html.escape(v)}</a>" if f.href
           else html.escape(v)) + "</td></tr>"
        for f, v in shown_facts(notice, sent_ms))
    return f"<table>{rows}</table>" if rows else ""


def email_message(notice: Notice, sender: str, to: list[str],
                  sent_ms: int | None = None) -> EmailMessage:
    """A multipart/alternative e-mail: the markdown as plain text, plus simple HTML."""
    sent = notice.created_ms if sent_ms is None else sent_ms
    msg = EmailMessage()
    msg["Subject"] = notice.title
    msg["From"] = sender
    msg["To"] = ", ".join(email_recipients(to, notice))
    msg["X-CityGate-Key"] = notice.key
    plain_facts = "\n".join(f"{f.label}: {v}" + (f" <{f.href}>" if f.href else "")
                             for f, v in shown_facts(notice, sent))
    msg.set_content(_with_facts(plain_facts, f"{notice.text}\n\n{ACK_LABEL}: {notice.link}\n"))
    paragraphs = "".join(
        "<p>" + "<br>".join(html.escape(line) for line in block.splitlines()) + "</p>"
        for block in notice.text.split("\n\n") if block.strip())
    msg.add_alternative(
        "<html><body>"
        f"<h3>{html.escape(notice.title)}</h3>{_facts_html(notice, sent)}{paragraphs}"
        f"<p><a href=\"{html.escape(notice.link, quote=True)}\">{ACK_LABEL}</a></p>"
        "</body></html>", subtype="html")
    return msg


def email_recipients(to: list[str], notice: Notice) -> list[str]:
    """Configured recipients plus the notice's on-call addresses, without duplicates."""
    return list(dict.fromkeys([*to, *notice.emails]))


def mqtt_payload(notice: Notice, notification_id: int, sent_ms: int) -> bytes:
    """The JSON published to a crew topic."""
    return webhook_body(notice, notification_id, sent_ms)


# --- SMS ------------------------------------------------------------------------------------

def sms_values(notice: Notice, sent_ms: int) -> dict[str, str]:
    """What an SMS template may use: title, severity, link, key and every fact by its key."""
    values = {"title": notice.title, "severity": notice.severity, "link": notice.link,
              "key": notice.key}
    values.update({f.key: v for f, v in shown_facts(notice, sent_ms)})
    return values


def sms_params(notice: Notice, sent_ms: int, names: tuple[str, ...],
               max_chars: int | None = None) -> dict[str, str]:
    """The template variables `names` (a missing fact is "-": providers refuse empty ones)."""
    values = sms_values(notice, sent_ms)
    out = {n: values.get(n) or "-" for n in names}
    return {n: v[:max_chars] for n, v in out.items()} if max_chars else out


def sms_text(notice: Notice, sent_ms: int, max_chars: int = 500) -> str:
    """A free-text SMS (generic gateways): title, facts, link."""
    facts = "; ".join(f"{f.label}: {v}" for f, v in shown_facts(notice, sent_ms))
    link = f" {notice.link}"
    text = notice.title + (f" — {facts}" if facts else "")
    return text[: max(0, max_chars - len(link))] + link
