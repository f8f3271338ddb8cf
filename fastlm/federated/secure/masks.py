"""Keys and masks: X25519 agreement, HKDF key derivation, AES-256-CTR keystream expanded into a mask mod 2**k,
and AES-GCM for the shares that clients send each other through the server."""
from __future__ import annotations

import os

import numpy as np
import torch
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from fastlm.train.errors import FastlmError

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16


def new_private_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def private_bytes(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def agree(private: X25519PrivateKey | bytes, peer_public: bytes) -> bytes:
    """The X25519 shared secret of a private key and a peer's raw public key."""
    if isinstance(private, bytes):
        private = X25519PrivateKey.from_private_bytes(private)
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as e:  # a malformed or low-order public key
        raise FastlmError(f"secure aggregation: bad X25519 public key ({e})") from None


def derive_key(secret: bytes, round_seed: bytes, label: str, *ids: int) -> bytes:
    """A 32-byte key for one purpose (label) of one round between the given client ids."""
    info = b"fastlm-secagg/" + label.encode() + b"".join(i.to_bytes(4, "big") for i in ids)
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=round_seed, info=info).derive(secret)


def keystream(key: bytes, numel: int) -> np.ndarray:
    """numel uniform uint64 words: the AES-256-CTR keystream of `key` (read-only).

    Each key is derived for one mask of one round, so the counter block can start at zero."""
    encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    return np.frombuffer(encryptor.update(bytes(8 * numel)), dtype="<u8")


def expand_mask(key: bytes, numel: int, modulus_bits: int) -> torch.Tensor:
    """numel uniform residues mod 2**modulus_bits (int64): the low bits of the keystream's words."""
    residues = keystream(key, numel) & np.uint64((1 << modulus_bits) - 1)
    return torch.from_numpy(residues.view(np.int64))  # < 2**62: valid non-negative int64


def apply_masks(residues: torch.Tensor, add: list[bytes], subtract: list[bytes], modulus_bits: int) -> torch.Tensor:
    """residues + sum of the masks of `add` - sum of the masks of `subtract`, mod 2**modulus_bits.

    Works in uint64 in place (wrapping mod 2**64, a multiple of 2**k) and reduces once at the end:
    the same result as expand_mask and FixedPoint.add/sub one by one, a few times faster."""
    total = residues.detach().to("cpu", torch.int64).contiguous().numpy().view(np.uint64).copy()
    for key in add:
        np.add(total, keystream(key, total.size), out=total)
    for key in subtract:
        np.subtract(total, keystream(key, total.size), out=total)
    np.bitwise_and(total, np.uint64((1 << modulus_bits) - 1), out=total)
    return torch.from_numpy(total.view(np.int64))


def self_mask_commitment(seed: bytes, round_seed: bytes, client_id: int) -> bytes:
    """A binding of b_u published before masking, so a wrongly reconstructed seed is caught."""
    return derive_key(seed, round_seed, "self-mask-commitment", client_id)


def random_seed() -> bytes:
    return os.urandom(KEY_BYTES)


def encrypt(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def decrypt(key: bytes, ciphertext: bytes, associated: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:], associated)
    except (InvalidTag, ValueError):
        raise FastlmError("secure aggregation: a share message failed authentication (tampered or misrouted)") from None
