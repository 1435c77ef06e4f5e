"""Request signatures (sans-IO): DingTalk's signed robot URL, CityGate's own webhook HMAC,
Aliyun SMS (RPC HMAC-SHA1) and Tencent Cloud API 3.0 (TC3-HMAC-SHA256)."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from datetime import UTC, datetime
from urllib.parse import quote, quote_plus

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


# --- Aliyun SMS (Dysmsapi 2017-05-25, RPC style: HMAC-SHA1 over the sorted, encoded query) ------

ALIYUN_SMS_VERSION = "2017-05-25"


def aliyun_percent(text: str) -> str:
    """RFC 3986 percent-encoding as Aliyun's RPC signature wants it (space %20, `*` %2A, `~`)."""
    return quote(text, safe="~")


def aliyun_string_to_sign(method: str, params: Mapping[str, str]) -> str:
    """`METHOD&%2F&` + the encoded, key-sorted `k=v&...` of every parameter but Signature."""
    query = "&".join(f"{aliyun_percent(k)}={aliyun_percent(v)}"
                     for k, v in sorted(params.items()) if k != "Signature")
    return f"{method.upper()}&{aliyun_percent('/')}&{aliyun_percent(query)}"


def aliyun_signature(secret: str, method: str, params: Mapping[str, str]) -> str:
    """Base64 HMAC-SHA1, keyed with the AccessKey secret plus `&`, of the string to sign."""
    digest = hmac.new(f"{secret}&".encode(), aliyun_string_to_sign(method, params).encode(),
                      hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def aliyun_sms_params(access_key_id: str, *, phones: list[str], sign_name: str,
                      template_code: str, template_param: str, timestamp: str, nonce: str,
                      region: str = "cn-hangzhou") -> dict[str, str]:
    """The unsigned parameters of one SendSms call (`timestamp` as 2017-07-12T02:42:19Z)."""
    return {"AccessKeyId": access_key_id, "Action": "SendSms", "Format": "JSON",
            "PhoneNumbers": ",".join(phones), "RegionId": region, "SignName": sign_name,
            "SignatureMethod": "HMAC-SHA1", "SignatureNonce": nonce, "SignatureVersion": "1.0",
            "TemplateCode": template_code, "TemplateParam": template_param,
            "Timestamp": timestamp, "Version": ALIYUN_SMS_VERSION}


def aliyun_signed(secret: str, method: str, params: Mapping[str, str]) -> dict[str, str]:
    """The parameters plus their `Signature`."""
    return {**params, "Signature": aliyun_signature(secret, method, params)}


def verify_aliyun(secret: str, method: str, params: Mapping[str, str]) -> bool:
    """Recompute the Signature of received parameters (for receivers and tests)."""
    return hmac.compare_digest(aliyun_signature(secret, method, params),
                               params.get("Signature", ""))


# --- Tencent Cloud API 3.0 (TC3-HMAC-SHA256), as SMS SendSms 2021-01-11 uses it ---------------

TC3_ALGORITHM = "TC3-HMAC-SHA256"
TC3_SIGNED_HEADERS = "content-type;host"
TENCENT_SMS_VERSION = "2021-01-11"
JSON_UTF8 = "application/json; charset=utf-8"


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _hmac256(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def tc3_canonical_request(host: str, payload: bytes, content_type: str = JSON_UTF8,
                          method: str = "POST") -> str:
    """Method, URI `/`, empty query, the signed headers (content-type, host), payload hash."""
    headers = f"content-type:{content_type}\nhost:{host}\n"
    return f"{method}\n/\n\n{headers}\n{TC3_SIGNED_HEADERS}\n{_sha256_hex(payload)}"


def tc3_date(timestamp: int) -> str:
    """The UTC date of a timestamp, as the credential scope names it."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d")


def tc3_signature(secret_key: str, service: str, timestamp: int, canonical_request: str) -> str:
    """Hex HMAC-SHA256 of the string to sign, keyed by the date/service/tc3_request chain."""
    date = tc3_date(timestamp)
    to_sign = (f"{TC3_ALGORITHM}\n{timestamp}\n{date}/{service}/tc3_request\n"
               f"{_sha256_hex(canonical_request.encode())}")
    key = _hmac256(f"TC3{secret_key}".encode(), date)
    key = _hmac256(_hmac256(key, service), "tc3_request")
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def tc3_authorization(secret_id: str, secret_key: str, *, service: str, host: str,
                      timestamp: int, payload: bytes, content_type: str = JSON_UTF8) -> str:
    """The Authorization header of a TC3-signed POST."""
    canonical = tc3_canonical_request(host, payload, content_type)
    signature = tc3_signature(secret_key, service, timestamp, canonical)
    return (f"{TC3_ALGORITHM} Credential={secret_id}/{tc3_date(timestamp)}/{service}/"
            f"tc3_request, SignedHeaders={TC3_SIGNED_HEADERS}, Signature={signature}")


def verify_tc3(secret_id: str, secret_key: str, authorization: str, *, service: str, host: str,
               timestamp: int, payload: bytes, content_type: str = JSON_UTF8) -> bool:
    """Recompute a received Authorization header (for receivers and tests)."""
    expected = tc3_authorization(secret_id, secret_key, service=service, host=host,
                                 timestamp=timestamp, payload=payload, content_type=content_type)
    return hmac.compare_digest(expected, authorization)
