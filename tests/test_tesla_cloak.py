"""Decrypting TeslaMate tokens, checked against an encoder written here from the published format.

The encoder below follows Cloak's ``Cloak.Ciphers.AES.GCM`` and
``Cloak.Tags.Encoder`` as TeslaMate's ``TeslaMate.Vault`` configures them
(tag ``AES.GCM.V1``, 12-byte IV, key = SHA-256 of ENCRYPTION_KEY, AAD
``AES256GCM``), independently of ``gridmate.tesla.cloak``.
"""

from __future__ import annotations

import base64
import hashlib
import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st

from gridmate.runtime.secrets import Secret
from gridmate.tesla.cloak import (
    CloakVault,
    MalformedCiphertext,
    WrongEncryptionKey,
    decrypt,
    derive_key,
)


def tlv(tag: bytes) -> bytes:
    """Cloak's key-tag header: type 1, then a DER-style length, then the tag."""
    if len(tag) < 128:
        return b"\x01" + bytes([len(tag)]) + tag
    length = len(tag).to_bytes((len(tag).bit_length() + 7) // 8, "big")
    return b"\x01" + bytes([0x80 + len(length)]) + length + tag


def teslamate_encrypt(
    plaintext: bytes,
    encryption_key: str,
    *,
    iv: bytes | None = None,
    aad: bytes = b"AES256GCM",
    tag: bytes = b"AES.GCM.V1",
) -> bytes:
    key = hashlib.sha256(encryption_key.encode("utf-8")).digest()
    iv = iv if iv is not None else os.urandom(12)
    sealed = AESGCM(key).encrypt(iv, plaintext, aad)
    ciphertext, ciphertag = sealed[:-16], sealed[-16:]
    return tlv(tag) + iv + ciphertag + ciphertext


KEY = "Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MGFiY2RlZmdoaWprbG1ub3BxcnN0dXZ3eHl6QUJD"
TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJleHAiOjE3MDAwMDAwMDB9.c2lnbmF0dXJl"


def test_decrypts_teslamate_ciphertext() -> None:
    blob = teslamate_encrypt(TOKEN.encode(), KEY)
    assert blob.startswith(bytes.fromhex("010a4145532e47434d2e5631"))
    assert len(blob) == 12 + 12 + 16 + len(TOKEN)
    assert decrypt(blob, derive_key(KEY)) == TOKEN.encode()


def test_bytea_arrives_as_memoryview_or_bytes() -> None:
    blob = teslamate_encrypt(TOKEN.encode(), KEY)
    vault = CloakVault(Secret(KEY))
    assert vault.decrypt_text(memoryview(blob)).reveal() == TOKEN
    assert vault.decrypt_text(bytearray(blob)).reveal() == TOKEN


def test_key_is_sha256_of_the_raw_string_without_trimming() -> None:
    assert derive_key("secret") == hashlib.sha256(b"secret").digest()
    assert derive_key("secret ") != derive_key("secret")
    blob = teslamate_encrypt(b"x" * 10, "secret ")
    with pytest.raises(WrongEncryptionKey):
        decrypt(blob, derive_key("secret"))


def test_wrong_key_is_reported_as_such() -> None:
    blob = teslamate_encrypt(TOKEN.encode(), KEY)
    with pytest.raises(WrongEncryptionKey, match="ENCRYPTION_KEY"):
        CloakVault(Secret("another-key-entirely")).decrypt_text(blob)


def test_the_key_tag_is_not_the_aad() -> None:
    # Encrypting with the key tag as AAD (TWCManager's mistake, mirrored) does not
    # authenticate under Cloak's real AAD; our decrypter uses the real one.
    wrong_aad = teslamate_encrypt(TOKEN.encode(), KEY, aad=b"AES.GCM.V1")
    with pytest.raises(WrongEncryptionKey):
        decrypt(wrong_aad, derive_key(KEY))


def test_base64_text_is_malformed_with_a_hint() -> None:
    blob = base64.b64encode(teslamate_encrypt(TOKEN.encode(), KEY))
    with pytest.raises(MalformedCiphertext, match="base64"):
        decrypt(blob, derive_key(KEY))


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", "too short"),
        (b"\x02\x0aAES.GCM.V1" + bytes(40), "0x01"),
        (b"\x01\x0aAES.GCM", "truncated key tag"),
        (b"\x01\x0aAES.GCM.V1" + bytes(27), "IV and GCM tag"),
        (b"\x01\x82\x01", "truncated key-tag length"),
        (b"\x01\x0aAES.GCM.V2" + bytes(40), "key tag"),
    ],
)
def test_malformed_input_is_named(blob: bytes, message: str) -> None:
    with pytest.raises(MalformedCiphertext, match=message):
        decrypt(blob, derive_key(KEY))


def test_long_form_tag_length_is_parsed() -> None:
    blob = teslamate_encrypt(b"token", KEY, tag=b"T" * 200)
    with pytest.raises(MalformedCiphertext, match="key tag is b'TTTT"):
        decrypt(blob, derive_key(KEY))


def test_empty_plaintext() -> None:
    assert decrypt(teslamate_encrypt(b"", KEY), derive_key(KEY)) == b""


@given(plaintext=st.binary(max_size=4096), key=st.text(min_size=1, max_size=80))
def test_round_trip(plaintext: bytes, key: str) -> None:
    assert decrypt(teslamate_encrypt(plaintext, key), derive_key(key)) == plaintext


def test_vault_repr_hides_the_key() -> None:
    vault = CloakVault(Secret(KEY))
    assert KEY not in repr(vault)
    assert derive_key(KEY).hex() not in repr(vault)
