"""Keys and masks: X25519 agreement, HKDF key derivation, ChaCha20 keystream expanded into a mask mod 2**k,
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
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
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


def expand_mask(key: bytes, numel: int, modulus_bits: int) -> torch.Tensor:
    """numel uniform residues mod 2**modulus_bits (int64) from the ChaCha20 keystream of `key`.

    Each key is used for one mask only (it is derived per round and pair), so the nonce is fixed."""
    encryptor = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
    stream = np.frombuffer(encryptor.update(bytes(8 * numel)), dtype="<u8")
    residues = (stream & np.uint64((1 << modulus_bits) - 1)).view(np.int64)  # < 2**62: a valid int64
    return torch.from_numpy(residues)


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
