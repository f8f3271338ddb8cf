"""WordVectors: trained embeddings, their queries and their files.

    wv.most_similar("list", k=10)          # [(word, cosine), ...], the word itself excluded
    wv.analogy("man", "king", "woman")     # b - a + c on unit vectors, inputs excluded (gensim's 3CosAdd)
    wv.save_word2vec("v.txt")  /  wv.save_word2vec("v.bin", binary=True)   # word2vec.c formats
    wv.save("v.safetensors")               # the matrix; the word list in the file's metadata
    WordVectors.load(path)                 # any of the three, by content

The word2vec files are the ones word2vec.c writes and gensim's KeyedVectors.load_word2vec_format
reads: a "count dim" header line, then per word the word and its dim numbers (text) or float32s
(binary, little-endian, a newline after each vector). Reading never unpickles anything.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

SAFETENSORS_FORMAT = "fastlm-word-vectors"


class WordVectors:
    """`words` (list), `vectors` (float32 tensor (len(words), dim)), `index` (word -> row)."""

    def __init__(self, words: list[str], vectors: torch.Tensor | np.ndarray, meta: dict | None = None):
        vectors = torch.as_tensor(np.asarray(vectors, dtype=np.float32) if isinstance(vectors, np.ndarray) else vectors)
        if vectors.dim() != 2 or vectors.shape[0] != len(words):
            raise ValueError(f"vectors must be (len(words), dim) = ({len(words)}, dim), got {tuple(vectors.shape)}")
        if len(set(words)) != len(words):
            raise ValueError("the word list has duplicates")
        self.words = list(words)
        self.vectors = vectors.float().contiguous()
        self.index = {w: i for i, w in enumerate(self.words)}
        self.meta = dict(meta or {})
        self._unit: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word in self.index

    def __getitem__(self, word: str) -> torch.Tensor:
        return self.vectors[self.row(word)]

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def row(self, word: str) -> int:
        """The row of `word`; ValueError naming it when it is not in the vocabulary."""
        try:
            return self.index[word]
        except KeyError:
            raise ValueError(f"word {word!r} is not in the vocabulary ({len(self.words)} words)") from None

    def unit_vectors(self) -> torch.Tensor:
        """The rows scaled to length 1 (zero rows stay zero)."""
        if self._unit is None:
            norms = self.vectors.norm(dim=1, keepdim=True)
            self._unit = self.vectors / norms.clamp_min(1e-12)
        return self._unit

    # ------------------------------------------------------------ queries

    def most_similar(self, word: str, k: int = 10) -> list[tuple[str, float]]:
        """The k words of highest cosine similarity to `word`, best first, `word` excluded."""
        return self._nearest(self.unit_vectors()[self.row(word)], {self.row(word)}, k)

    def analogy(self, a: str, b: str, c: str, k: int = 10) -> list[tuple[str, float]]:
        """a is to b as c is to ...: the k words nearest to unit(b) - unit(a) + unit(c) (normalized),
        a, b and c excluded (gensim's most_similar(positive=[b, c], negative=[a]))."""
        rows = [self.row(w) for w in (a, b, c)]
        unit = self.unit_vectors()
        query = unit[rows[1]] - unit[rows[0]] + unit[rows[2]]
        return self._nearest(query / query.norm().clamp_min(1e-12), set(rows), k)

    def _nearest(self, query: torch.Tensor, exclude: set[int], k: int) -> list[tuple[str, float]]:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        scores = self.unit_vectors() @ query
        scores[list(exclude)] = -float("inf")
        k = min(k, len(self.words) - len(exclude))
        if k <= 0:
            return []
        top = torch.topk(scores, k)
        return [(self.words[i], float(s)) for s, i in zip(top.values.tolist(), top.indices.tolist())]

    # ------------------------------------------------------------ files

    def save_word2vec(self, path: str | os.PathLike, binary: bool = False) -> Path:
        """Write word2vec.c's text (or binary) format; written to a temporary name, then renamed."""
        bad = next((w for w in self.words if not w or any(ch.isspace() for ch in w)), None)
        if bad is not None:
            raise ValueError(f"word {bad!r} cannot be written in the word2vec format (empty or has whitespace)")
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        data = self.vectors.numpy().astype("<f4", copy=False)
        with open(tmp, "wb") as f:
            f.write(f"{len(self.words)} {self.dim}\n".encode())
            for word, vec in zip(self.words, data):
                if binary:
                    f.write(word.encode("utf-8") + b" " + vec.tobytes() + b"\n")
                else:
                    f.write((word + " " + " ".join(f"{x:.9g}" for x in vec.tolist()) + "\n").encode("utf-8"))
        os.replace(tmp, path)
        return path

    def save(self, path: str | os.PathLike) -> Path:
        """Write a safetensors file: tensor "vectors", the word list as JSON in its metadata."""
        from safetensors.torch import save_file

        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        meta = {"format": SAFETENSORS_FORMAT, "words": json.dumps(self.words, ensure_ascii=False)}
        save_file({"vectors": self.vectors}, str(tmp), metadata=meta)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> WordVectors:
        """Read a file save() (a .safetensors name) or save_word2vec() (text or binary, by content) wrote."""
        path = Path(path)
        if path.suffix == ".safetensors":
            return cls._load_safetensors(path)
        return cls.load_word2vec(path)

    @classmethod
    def _load_safetensors(cls, path: Path) -> WordVectors:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                vectors = f.get_tensor("vectors")
        except (SafetensorError, OSError, KeyError, ValueError) as e:  # a corrupt or foreign file
            raise ValueError(f"{path}: not a fastlm word-vector safetensors file ({e})") from None
        if meta.get("format") != SAFETENSORS_FORMAT or "words" not in meta:
            raise ValueError(f"{path}: not a fastlm word-vector safetensors file (no word list in its metadata)")
        return cls(json.loads(meta["words"]), vectors)

    @classmethod
    def load_word2vec(cls, path: str | os.PathLike, binary: bool | None = None) -> WordVectors:
        """Read word2vec.c's text or binary format (binary=None: decide by the content)."""
        path = Path(path)
        data = path.read_bytes()
        newline = data.find(b"\n")
        try:
            count, dim = (int(x) for x in data[:newline].split())
        except ValueError:
            raise ValueError(f"{path}: not a word2vec file (the first line must be 'count dim')") from None
        if count < 0 or dim < 1:
            raise ValueError(f"{path}: bad word2vec header {data[:newline]!r}")
        body = data[newline + 1:]
        if binary is None:
            binary = _looks_binary(body, dim)
        words, rows = (_parse_binary if binary else _parse_text)(body, count, dim, path)
        return cls(words, torch.from_numpy(np.asarray(rows, dtype=np.float32).reshape(count, dim)))


def _looks_binary(body: bytes, dim: int) -> bool:
    """Text files hold only printable numbers after the first word; binary float32s rarely do."""
    line_end = body.find(b"\n")
    first_line = body[:line_end if line_end >= 0 else len(body)]
    try:
        parts = first_line.decode("utf-8").split()
        [float(x) for x in parts[1:]]
        return len(parts) != dim + 1
    except (UnicodeDecodeError, ValueError):
        return True


def _parse_text(body: bytes, count: int, dim: int, path: Path):
    lines = body.decode("utf-8").splitlines()
    lines = [line for line in lines if line.strip()]
    if len(lines) != count:
        raise ValueError(f"{path}: the header says {count} words, the file has {len(lines)} lines")
    words, rows = [], []
    for n, line in enumerate(lines, start=2):
        parts = line.rstrip().split(" ")
        if len(parts) != dim + 1:
            raise ValueError(f"{path}:{n}: expected a word and {dim} numbers, got {len(parts)} fields")
        words.append(parts[0])
        rows.append([float(x) for x in parts[1:]])
    return words, rows


def _parse_binary(body: bytes, count: int, dim: int, path: Path):
    words, rows = [], []
    pos, size = 0, dim * 4
    for _ in range(count):
        while pos < len(body) and body[pos:pos + 1] in (b"\n", b" "):
            pos += 1
        space = body.find(b" ", pos)
        if space < 0 or space + 1 + size > len(body):
            raise ValueError(f"{path}: truncated word2vec binary file (after {len(words)} of {count} words)")
        words.append(body[pos:space].decode("utf-8"))
        rows.append(np.frombuffer(body, dtype="<f4", count=dim, offset=space + 1))
        pos = space + 1 + size
    return words, (np.stack(rows) if rows else np.zeros((0, dim), np.float32))
