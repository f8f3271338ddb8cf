"""Encrypted weights at rest: AES-256-GCM (the `cryptography` library) over whole files.

    [checkpoint]
    encrypt = true
    key_file = "secret/run.key"   # optional; else the environment variable FASTLM_CHECKPOINT_KEY

The key is 32 random bytes written as base64 text (`fastlm keygen PATH` makes one). Where it comes
from: checkpoint.key_file when the config sets it, else FASTLM_CHECKPOINT_KEY. The config records
the key file's path, never the key.

Every encrypted file is bound to its name within the run directory and to the run's identity: a
random run id that the run directory keeps in plaintext in run_id.json (written when the first
encrypted file is, kept on --resume). So a file that was modified, renamed, or copied from another
run fails to decrypt, as does a wrong key.

File format (version 1): a 13-byte header, then records of one chunk each:

    header  = b"FLMCRYPT" | version (1 byte) | chunk size (4 bytes, big-endian)
    record  = nonce (12 random bytes) | AES-GCM ciphertext of the chunk + 16-byte tag

Every chunk but the last holds `chunk size` bytes. Each chunk's associated data is the header, the
file name, the run id, the chunk's index and whether it is the last, so chunks cannot be reordered,
dropped or truncated away. A reader authenticates every chunk before it returns any byte.
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
import struct
from dataclasses import dataclass, field
from pathlib import Path

KEY_ENV = "FASTLM_CHECKPOINT_KEY"
KEY_BYTES = 32
RUN_ID_FILE = "run_id.json"
MAGIC = b"FLMCRYPT"
VERSION = 1
HEADER = struct.Struct(">8sBI")        # magic, version, chunk size
NONCE_BYTES, TAG_BYTES = 12, 16
CHUNK_BYTES = 64 << 20                 # AES-GCM in `cryptography` takes < 2 GiB per call
MAX_CHUNK_BYTES = 1 << 30
NO_KEY = (f"no key (set {KEY_ENV} to a base64 key of {KEY_BYTES} bytes, or checkpoint.key_file to a file "
          f"holding one; `fastlm keygen PATH` makes one)")
AUTH_FAILED = "authentication failed (wrong key, or the file was modified or belongs to another run)"


def _error(message: str) -> Exception:
    """A one-line fastlm.train.errors.FastlmError (imported here: fastlm.train imports this module)."""
    from fastlm.train.errors import FastlmError

    return FastlmError(message)


# ---------------------------------------------------------------- keys

def load_key(key_file: str | os.PathLike | None = None) -> bytes:
    """The 32-byte key: from key_file when given, else from $FASTLM_CHECKPOINT_KEY. FastlmError if absent or bad."""
    if key_file:
        try:
            text = Path(key_file).read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as e:
            raise _error(f"checkpoint.key_file = {str(key_file)!r}: cannot read the key "
                         f"({getattr(e, 'strerror', None) or e})") from None
        return _decode_key(text, f"checkpoint.key_file = {str(key_file)!r}")
    text = os.environ.get(KEY_ENV)
    if not text:
        raise _error(NO_KEY)
    return _decode_key(text, KEY_ENV)


def _decode_key(text: str, where: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise _error(f"{where}: the key is not base64 text") from None
    if len(key) != KEY_BYTES:
        raise _error(f"{where}: the key is {len(key)} bytes, expected {KEY_BYTES} (base64 of 32 random bytes)")
    return key


def new_key_text() -> str:
    """A fresh random key as base64 text (what key files and FASTLM_CHECKPOINT_KEY hold)."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii")


def write_key_file(path: str | os.PathLike, force: bool = False) -> Path:
    """Write a new key to path, readable by its owner only (mode 0600 from the start).

    An existing file is an error unless force; then the new key is written next to it and renamed over it."""
    path = Path(path)
    if path.exists() and not force:
        raise _error(f"{path} already exists (use --force to replace the key; data encrypted with the old "
                     f"key can then no longer be read)")
    target = path.with_name(f".{path.name}.tmp-{os.getpid()}") if force else path
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise _error(f"{target} already exists") from None
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(new_key_text() + "\n")
        if force:
            os.replace(target, path)
    except BaseException:
        Path(target).unlink(missing_ok=True)
        raise
    return path


# ---------------------------------------------------------------- run identity

def run_id(directory: str | os.PathLike, create: bool = False) -> str:
    """The run id in directory/run_id.json; with create, a new random one is written when there is none."""
    path = Path(directory) / RUN_ID_FILE
    if not path.is_file():
        if not create:
            raise _error(f"{path} is missing (it holds the run id encrypted files are bound to)")
        value = secrets.token_hex(16)
        tmp = path.with_name(f".{RUN_ID_FILE}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps({"run_id": value}) + "\n")
        os.replace(tmp, path)
        return value
    try:
        value = json.loads(path.read_text())["run_id"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise _error(f"{path} is damaged ({e})") from None
    if not isinstance(value, str) or not value:
        raise _error(f"{path} is damaged (run_id is not a string)")
    return value


# ---------------------------------------------------------------- files

def is_encrypted(path: str | os.PathLike) -> bool:
    """Whether the file starts with the encrypted-file magic."""
    with open(path, "rb") as f:
        return f.read(len(MAGIC)) == MAGIC


@dataclass
class Encryption:
    """Encrypts and decrypts the files of one directory `root` (a run, a quantized run, an export).

    The key (load_key(key_file)) and root's run id are read at the first use, so a reader's error
    names the file it was reading. create_id: a writer makes root/run_id.json when it is missing."""
    root: Path
    key_file: str | None = None
    create_id: bool = False
    chunk_bytes: int = CHUNK_BYTES
    _key_and_id: tuple[bytes, str] | None = field(default=None, repr=False)

    def write(self, path: str | os.PathLike, data: bytes | bytearray | memoryview, name: str) -> None:
        """Encrypt data as root's file `name` into path (a temporary name, renamed into place)."""
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if not 0 < self.chunk_bytes <= MAX_CHUNK_BYTES:
            raise ValueError(f"chunk_bytes = {self.chunk_bytes}: expected 1 .. {MAX_CHUNK_BYTES}")
        key, rid = self._resolve(path, writing=True)
        aes, view = AESGCM(key), memoryview(data).cast("B")
        header = HEADER.pack(MAGIC, VERSION, self.chunk_bytes)
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                f.write(header)
                count = max(1, -(-len(view) // self.chunk_bytes))
                for index in range(count):
                    chunk = view[index * self.chunk_bytes:(index + 1) * self.chunk_bytes]
                    nonce = secrets.token_bytes(NONCE_BYTES)
                    f.write(nonce)
                    f.write(aes.encrypt(nonce, chunk, _aad(header, name, rid, index, index == count - 1)))
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def read(self, path: str | os.PathLike, name: str) -> bytes:
        """The plaintext of root's file `name` stored at path, every chunk authenticated before it returns.
        FastlmError naming path if it is not encrypted, the key is missing or wrong, or it was changed."""
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        path = Path(path)
        with open(path, "rb") as f:
            head = f.read(HEADER.size)
            if not head.startswith(MAGIC):
                raise _error(f"{path}: not encrypted, but checkpoint.encrypt = true (expected an encrypted "
                             f"file; a plaintext file in an encrypted run is not read)")
            if len(head) < HEADER.size:
                raise _error(f"{path}: {AUTH_FAILED}")
            _, version, chunk_bytes = HEADER.unpack(head)
            if version != VERSION:
                raise _error(f"{path}: encrypted-file version {version} is not supported (expected {VERSION})")
            key, rid = self._resolve(path, writing=False)
            aes, record = AESGCM(key), NONCE_BYTES + chunk_bytes + TAG_BYTES
            body = os.fstat(f.fileno()).st_size - HEADER.size
            count = max(1, -(-body // record))
            last = body - (count - 1) * record
            if not 0 < chunk_bytes <= MAX_CHUNK_BYTES or last < NONCE_BYTES + TAG_BYTES:
                raise _error(f"{path}: {AUTH_FAILED}")  # a changed header or a truncated file
            chunks = []
            try:
                for index in range(count):
                    blob = f.read(record if index < count - 1 else last)
                    aad = _aad(head, name, rid, index, index == count - 1)
                    chunks.append(aes.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad))
            except InvalidTag:
                raise _error(f"{path}: {AUTH_FAILED}") from None
        return b"".join(chunks)

    def _resolve(self, path, writing: bool) -> tuple[bytes, str]:
        from fastlm.train.errors import FastlmError

        if self._key_and_id is None:
            try:
                self._key_and_id = (load_key(self.key_file), run_id(self.root, create=self.create_id and writing))
            except FastlmError as e:
                raise _error(f"{path}: cannot {'encrypt' if writing else 'decrypt'}: {e}") from None
        return self._key_and_id


def _aad(header: bytes, name: str, rid: str, index: int, last: bool) -> bytes:
    """A chunk's associated data; lengths first, so no two (name, run id) pairs give the same bytes."""
    name_b, rid_b = name.encode(), rid.encode()
    return header + struct.pack(">QB", index, last) + struct.pack(">I", len(name_b)) + name_b + rid_b


def encryption_for(directory: str | os.PathLike, checkpoint, create_id: bool = False) -> Encryption | None:
    """The Encryption of a run directory per its [checkpoint] section (None when encrypt is off)."""
    if not getattr(checkpoint, "encrypt", False):
        return None
    return Encryption(Path(directory), checkpoint.key_file, create_id=create_id)


def refuse_encrypted(path: str | os.PathLike) -> None:
    """FastlmError when path is encrypted but is being read as plaintext (its run says encrypt = false)."""
    if Path(path).is_file() and is_encrypted(path):
        raise _error(f"{path} is encrypted, but is read as plaintext (checkpoint.encrypt = false in the "
                     f"config of the run reading it)")
