"""Decrypting TeslaMate's API tokens (Cloak ``AES.GCM.V1`` ciphertext).

TeslaMate (1.27 and later) stores ``tokens.access`` and ``tokens.refresh`` as
``bytea`` encrypted by the Elixir library Cloak with the cipher TeslaMate
configures in ``TeslaMate.Vault``:

* key = SHA-256 of the raw ``ENCRYPTION_KEY`` string bytes (no salt, no KDF);
* AES-256-GCM with a 12-byte IV and a 16-byte tag;
* additional authenticated data: the constant ``AES256GCM`` from Cloak's
  cipher module, **not** the key tag;
* layout: ``0x01 | tag length | key tag "AES.GCM.V1" | IV (12) | GCM tag (16) | ciphertext``.

The column holds raw bytes: there is no base64 layer to remove.
"""

from __future__ import annotations

import hashlib

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gridmate.runtime.secrets import Secret

__all__ = [
    "AAD",
    "IV_LENGTH",
    "KEY_TAG",
    "CloakError",
    "CloakVault",
    "MalformedCiphertext",
    "WrongEncryptionKey",
    "decrypt",
    "derive_key",
    "split",
]

KEY_TAG = b"AES.GCM.V1"
AAD = b"AES256GCM"
IV_LENGTH = 12
GCM_TAG_LENGTH = 16
_TYPE = 0x01
_BASE64_ALPHABET = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\n\r"
)


class CloakError(Exception):
    """A TeslaMate token that cannot be decrypted."""


class WrongEncryptionKey(CloakError):
    """The ciphertext is well formed but does not authenticate with this key."""


class MalformedCiphertext(CloakError):
    """The bytes are not Cloak ``AES.GCM.V1`` ciphertext at all."""


def derive_key(encryption_key: str | bytes) -> bytes:
    """TeslaMate's AES key: SHA-256 of ``ENCRYPTION_KEY`` exactly as given."""
    raw = encryption_key.encode("utf-8") if isinstance(encryption_key, str) else encryption_key
    return hashlib.sha256(raw).digest()


def split(blob: bytes | bytearray | memoryview) -> tuple[bytes, bytes, bytes, bytes]:
    """(key tag, IV, GCM tag, ciphertext) of a Cloak blob, or MalformedCiphertext."""
    data = bytes(blob)
    if len(data) < 2:
        raise MalformedCiphertext(f"{len(data)} bytes is too short for a Cloak header")
    if data[0] != _TYPE:
        hint = ""
        if set(data) <= _BASE64_ALPHABET:
            hint = " (it looks like base64 text; the column should hold raw bytes)"
        raise MalformedCiphertext(f"first byte is {data[0]:#04x}, not 0x01{hint}")
    length = data[1]
    position = 2
    if length >= 0x80:
        # DER-style long form: the low bits count the bytes that hold the length.
        count = length - 0x80
        if count == 0 or len(data) < position + count:
            raise MalformedCiphertext("truncated key-tag length")
        length = int.from_bytes(data[position : position + count], "big")
        position += count
    key_tag = data[position : position + length]
    position += length
    if len(key_tag) != length:
        raise MalformedCiphertext("truncated key tag")
    if key_tag != KEY_TAG:
        raise MalformedCiphertext(
            f"key tag is {key_tag!r}, expected {KEY_TAG!r} (not TeslaMate's default cipher)"
        )
    rest = data[position:]
    if len(rest) < IV_LENGTH + GCM_TAG_LENGTH:
        raise MalformedCiphertext(
            f"{len(rest)} bytes after the key tag; IV and GCM tag alone need "
            f"{IV_LENGTH + GCM_TAG_LENGTH}"
        )
    iv = rest[:IV_LENGTH]
    gcm_tag = rest[IV_LENGTH : IV_LENGTH + GCM_TAG_LENGTH]
    ciphertext = rest[IV_LENGTH + GCM_TAG_LENGTH :]
    return key_tag, iv, gcm_tag, ciphertext


def decrypt(blob: bytes | bytearray | memoryview, key: bytes) -> bytes:
    """Plaintext of a Cloak ``AES.GCM.V1`` blob under the derived 32-byte ``key``."""
    if len(key) != 32:
        raise ValueError("the AES-256 key must be 32 bytes; use derive_key()")
    _tag, iv, gcm_tag, ciphertext = split(blob)
    try:
        return AESGCM(key).decrypt(iv, ciphertext + gcm_tag, AAD)
    except InvalidTag:
        raise WrongEncryptionKey(
            "the token does not decrypt with this ENCRYPTION_KEY (wrong key, or the row "
            "was written with another key)"
        ) from None


class CloakVault:
    """Decrypts TeslaMate tokens with one ``ENCRYPTION_KEY``; holds only the derived key."""

    __slots__ = ("_key",)

    def __init__(self, encryption_key: Secret) -> None:
        self._key = derive_key(encryption_key.reveal())

    def decrypt_text(self, blob: bytes | bytearray | memoryview) -> Secret:
        plaintext = decrypt(blob, self._key)
        try:
            text = plaintext.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedCiphertext("decrypted token is not UTF-8 text") from None
        return Secret(text, source="TeslaMate database")

    def __repr__(self) -> str:
        return "CloakVault(********)"
