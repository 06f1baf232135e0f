"""Payload encryption: AES-256-GCM on every payload the Temporal server stores, by key id.

With ``SUPPORT_CODEC_KEYS`` set (or ``SUPPORT_CODEC_KEYS_FILE`` naming a file that holds
the same value, e.g. a mounted secret), every client and worker of this project encrypts
workflow inputs, results, signals, queries, activity arguments, memos and failure messages
before they leave the process, so the server, its database and its Web UI never hold a
ticket's description, subject, reporter address or agents' notes in clear.

The value is ``key_id:base64_key`` entries separated by commas; the **first** entry is the
active key (new payloads are encrypted with it), the others are only used to decrypt
payloads written under them. Each encrypted payload names its key id in its metadata, so
rotating a key is: put a new key first, keep the old one after it until no open ticket's
history needs it (the namespace's retention after the last ticket written under it closed),
then drop it. Payloads written without encryption stay readable, so turning it on does not
break tickets already in flight.

``python -m runtime.codec new-key [KEY_ID]`` prints a fresh ``key_id:key`` entry.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import re
import secrets
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import (
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    PayloadCodec,
)

from runtime.converter import support_data_converter

KEYS_ENV = "SUPPORT_CODEC_KEYS"
KEYS_FILE_ENV = "SUPPORT_CODEC_KEYS_FILE"
ENCODING = b"binary/encrypted"
KEY_ID_METADATA = "encryption-key-id"
NONCE_BYTES = 12
_KEY_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class CodecConfigError(ValueError):
    """The key configuration is malformed; the message names the variable and the entry."""


class DecryptionError(ValueError):
    """A payload cannot be decrypted: its key is not configured, or it was tampered with.

    The message names no key id, neither the payload's nor the configured ones: it reaches
    HTTP clients (the codec server, the API) and an id tells an outsider which keys exist.
    Operators find the ids in the payloads' metadata and in their own configuration."""


class EncryptionCodec(PayloadCodec):
    """AES-GCM with a random 96-bit nonce per payload; the key id is authenticated data, so
    a payload cannot be passed off as written under another key."""

    def __init__(self, keys: Mapping[str, bytes], active: str) -> None:
        if active not in keys:
            raise CodecConfigError(f"the active key {active!r} is not among the keys")
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keys.items()}
        self.active = active

    @property
    def key_ids(self) -> list[str]:
        return list(self._ciphers)

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encrypt(p) for p in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decrypt(p) for p in payloads]

    def encrypt(self, payload: Payload) -> Payload:
        nonce = secrets.token_bytes(NONCE_BYTES)
        key_id = self.active.encode()
        sealed = self._ciphers[self.active].encrypt(nonce, payload.SerializeToString(), key_id)
        return Payload(
            metadata={"encoding": ENCODING, KEY_ID_METADATA: key_id}, data=nonce + sealed
        )

    def decrypt(self, payload: Payload) -> Payload:
        if payload.metadata.get("encoding") != ENCODING:
            return payload  # written before encryption was turned on
        key_id = payload.metadata.get(KEY_ID_METADATA, b"").decode(errors="replace")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise DecryptionError(
                "payload encrypted with a key that is not configured here (keep every key"
                f" still in use in {KEYS_ENV} after the active one)"
            )
        nonce, sealed = payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:]
        try:
            plain = cipher.decrypt(nonce, sealed, key_id.encode())
        except InvalidTag as err:
            raise DecryptionError("payload failed authentication (wrong key or altered)") from err
        return Payload.FromString(plain)


class KeylessCodec(PayloadCodec):
    """For a process without keys: payloads pass through, but an encrypted one is refused
    with a message saying what to configure (not a bare "unknown payload encoding")."""

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return list(payloads)

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        for payload in payloads:
            if payload.metadata.get("encoding") == ENCODING:
                raise DecryptionError(
                    f"payloads are encrypted: set {KEYS_ENV} or {KEYS_FILE_ENV} to the keys"
                    " the workers use"
                )
        return list(payloads)


def parse_keys(value: str, source: str = KEYS_ENV) -> EncryptionCodec:
    """``id:base64key,id:base64key`` (first active) -> codec; errors name entry and fault."""
    keys: dict[str, bytes] = {}
    entries = [e.strip() for e in value.replace("\n", ",").split(",") if e.strip()]
    entries = [e for e in entries if not e.startswith("#")]
    if not entries:
        raise CodecConfigError(f"{source}: no keys given (expected key_id:base64_key,...)")
    for number, entry in enumerate(entries, start=1):
        key_id, sep, encoded = entry.partition(":")
        where = f"{source}: entry {number}"
        if not sep or not _KEY_ID.match(key_id):
            raise CodecConfigError(
                f"{where} must be key_id:base64_key with a key id of letters, digits, '.', '_'"
                " or '-' (at most 64)"
            )
        if key_id in keys:
            raise CodecConfigError(f"{where}: key id {key_id!r} is given twice")
        try:
            # URL-safe or standard alphabet, padding optional; anything else is refused.
            standard = encoded.translate(str.maketrans("-_", "+/"))
            key = base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
        except (binascii.Error, ValueError) as err:
            raise CodecConfigError(f"{where} ({key_id}): the key is not valid base64") from err
        if len(key) != 32:
            raise CodecConfigError(
                f"{where} ({key_id}): the key must be 32 bytes (AES-256), not {len(key)};"
                " make one with `python -m runtime.codec new-key`"
            )
        keys[key_id] = key
    return EncryptionCodec(keys, active=entries[0].partition(":")[0])


def codec_from_env(environ: Mapping[str, str] | None = None) -> EncryptionCodec | None:
    """The configured codec, or None when encryption is off (neither variable set)."""
    env = os.environ if environ is None else environ
    if env.get(KEYS_ENV):
        return parse_keys(env[KEYS_ENV])
    if env.get(KEYS_FILE_ENV):
        path = Path(env[KEYS_FILE_ENV])
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise CodecConfigError(f"{KEYS_FILE_ENV}: cannot read {path}: {err}") from err
        return parse_keys(text, source=f"{KEYS_FILE_ENV} ({path})")
    return None


def data_converter(codec: PayloadCodec | None) -> DataConverter:
    """The project's converter (pydantic), encrypting payloads and failure messages with
    ``codec`` when given; without it, encrypted payloads are refused with a clear error."""
    if codec is None:
        return dataclasses.replace(support_data_converter, payload_codec=KeylessCodec())
    return dataclasses.replace(
        support_data_converter,
        payload_codec=codec,
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


def new_key(key_id: str | None = None) -> str:
    """A fresh ``key_id:base64_key`` entry (the id defaults to today's date)."""
    key_id = key_id or datetime.now(UTC).strftime("k%Y%m%d")
    if not _KEY_ID.match(key_id):
        raise CodecConfigError(f"key id {key_id!r}: use letters, digits, '.', '_' or '-'")
    return f"{key_id}:{base64.urlsafe_b64encode(AESGCM.generate_key(bit_length=256)).decode()}"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] != "new-key" or len(args) > 2:
        print("usage: python -m runtime.codec new-key [KEY_ID]", file=sys.stderr)
        return 2
    try:
        print(new_key(args[1] if len(args) == 2 else None))
    except CodecConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
