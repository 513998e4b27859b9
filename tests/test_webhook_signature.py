"""The webhook signature format shared by the local server (signing) and the clients."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from asyncpromptcache import PromptCacheError, WebhookSignatureError
from asyncpromptcache._prompts.signatures import sign, verify_signature

BODY = b'{"id":"e1","type":"prompt-version"}'


def test_sign_is_hmac_sha256_of_timestamp_dot_body() -> None:
    expected = hmac.new(b"s3cret", b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert sign("s3cret", BODY, 1700000000) == f"t=1700000000,v1={expected}"


def test_a_good_signature_verifies_and_returns_its_timestamp() -> None:
    header = sign("s3cret", BODY, 1700000000)
    assert verify_signature("s3cret", BODY, header, now=1700000100) == 1700000000


@pytest.mark.parametrize(
    ("header", "now"),
    [
        (None, 1700000000),
        ("", 1700000000),
        ("garbage", 1700000000),
        ("t=1700000000", 1700000000),
        ("t=abc,v1=00", 1700000000),
        (sign("other", BODY, 1700000000), 1700000000),  # wrong secret
        (sign("s3cret", BODY + b" ", 1700000000), 1700000000),  # another body
        (sign("s3cret", BODY, 1700000000), 1700000301),  # too old
        (sign("s3cret", BODY, 1700000000), 1699999699),  # from the future
    ],
)
def test_a_bad_signature_is_a_typed_error(header: str | None, now: float) -> None:
    with pytest.raises(WebhookSignatureError) as info:
        verify_signature("s3cret", BODY, header, now=now)
    assert isinstance(info.value, PromptCacheError)
    assert "s3cret" not in str(info.value)


def test_any_of_several_v1_values_may_match() -> None:
    good = sign("s3cret", BODY, 1700000000).split(",v1=")[1]
    header = f"t=1700000000,v1={'0' * 64},v1={good}"
    assert verify_signature("s3cret", BODY, header, now=1700000000) == 1700000000


@pytest.mark.parametrize(
    "stamp",
    ["\u00b21700000000",  # "²" passes str.isdigit(), and int() refuses it
     "\uff11\uff17\uff10\uff10\uff10\uff10\uff10\uff10\uff10\uff10",  # fullwidth: int() takes it
     "\u0661\u0667\u0660\u0660\u0660\u0660\u0660\u0660\u0660\u0660",  # Arabic-Indic digits
     "+1700000000", "-1700000000", "17000 00000", "1_700_000_000", "0x65538000",
     "1" * 13, ""],
)
def test_a_timestamp_of_anything_but_ascii_digits_is_a_signature_error(stamp: str) -> None:
    mac = sign("s3cret", BODY, 1700000000).split(",v1=")[1]
    with pytest.raises(WebhookSignatureError, match="malformed"):
        verify_signature("s3cret", BODY, f"t={stamp},v1={mac}", now=1700000000)


@pytest.mark.parametrize(
    "mac",
    ["", "zz" * 32, "\u00e9" * 64, "\U0001f600" * 16, "\udc80" * 64, "0" * 63 + "\u0660",
     "\x00" * 64, "A" * 64, "0" * 1000],
)
def test_a_v1_of_non_hex_or_non_ascii_characters_is_a_signature_error(mac: str) -> None:
    with pytest.raises(WebhookSignatureError):
        verify_signature("s3cret", BODY, f"t=1700000000,v1={mac}", now=1700000000)
