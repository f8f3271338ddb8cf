"""`data.deidentify` in corpus preparation: each document is de-identified before the tokenizer sees it.

The settings' fingerprint goes into the prepared corpus's cache key, so a corpus prepared without
de-identification (or with other types, another operation or key) is never reused for this one."""
import hashlib
import hmac
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

# Bump when a detector or an operation changes what it writes: cached corpora are then rebuilt.
DEID_VERSION = 1


@dataclass(frozen=True)
class DeidSettings:
    types: tuple[str, ...]
    operation: str = "anonymize"
    key: bytes | None = None

    def fingerprint(self) -> dict:
        # The key itself never goes into a cache key or a file: a keyed digest of a fixed label names it.
        key_id = hmac.new(self.key, b"fastlm-deid-cache-key", hashlib.sha256).hexdigest() if self.key else None
        return {"version": DEID_VERSION, "types": sorted(self.types), "operation": self.operation, "key": key_id}


def deid_settings(types, operation: str = "anonymize", key: bytes | None = None) -> DeidSettings | None:
    """Checked settings; None when there is nothing to de-identify (types None or [])."""
    from fastlm.data.deid.detectors import resolve_types
    from fastlm.data.deid.operations import check_operation

    if types is None or (not isinstance(types, str) and len(types) == 0):
        return None
    check_operation(operation, key)
    return DeidSettings(tuple(resolve_types(types)), operation, key)


def deidentify_documents(docs: Iterable[str], settings: DeidSettings, counts: dict | None = None,
                         batch: int = 64) -> Iterator[str]:
    """The documents de-identified, in order (batches of `batch` for the name model); suppressed ones left out."""
    from fastlm.data.deid.operations import deidentify_texts

    pending: list[str] = []
    for doc in docs:
        pending.append(doc)
        if len(pending) == batch:
            yield from _run(pending, settings, counts, deidentify_texts)
            pending = []
    if pending:
        yield from _run(pending, settings, counts, deidentify_texts)


def _run(docs, settings, counts, deidentify_texts):
    for out in deidentify_texts(docs, settings.types, settings.operation, settings.key, counts):
        if out:
            yield out


def read_key_file(path, where: str = "key file") -> bytes:
    """The key file's bytes (any content: an HMAC key needs no format); FastlmError naming it if unreadable/empty."""
    from pathlib import Path

    from fastlm.train.errors import FastlmError

    try:
        key = Path(path).expanduser().read_bytes()
    except OSError as e:
        raise FastlmError(f"{where} = {str(path)!r}: cannot read the key ({e.strerror or e})") from None
    if not key.strip():
        raise FastlmError(f"{where} = {str(path)!r}: the key file is empty")
    return key
