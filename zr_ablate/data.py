"""Penn Treebank: fetch + verify into a cache (or use a local folder), vocabulary, BPTT windows.

The corpus is Mikolov's 10k-vocabulary PTB as shipped in `simple-examples` (929,589 / 73,760 / 82,430
tokens with one `<eos>` per line). Nothing here reads the global config: everything arrives as arguments.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

SPLITS = ("train", "valid", "test")
TRAIN_TOKENS = 929_589  # ptb.train.txt with one <eos> per line (checked in tests/test_data.py)
EOS = "<eos>"


class DataError(RuntimeError):
    """A data problem the user fixes (network, checksum, missing file): the message names the fix."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check(path: Path, expected: str | None, fix: str, name: str | None = None) -> None:
    """name: what to call the file in the message (a download's address rather than its temporary file)."""
    if expected is None:
        return
    actual = sha256_of(path)
    if actual != expected:
        raise DataError(f"checksum mismatch for {name or path}: expected sha256 {expected}, got {actual}; {fix}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _download(url: str, dest: Path, expected: str | None, timeout: float) -> None:
    """Download to a temporary file beside `dest`, verify, then rename: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            while block := resp.read(1 << 20):
                out.write(block)
        _check(
            Path(tmp),
            expected,
            f"the download from {url} is not the PTB file; check the URL in data.urls",
            name=f"{dest.name} downloaded from {url}",
        )
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600: a cache shared by users must stay readable
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def ensure_ptb(
    local_dir: str | None,
    cache_dir: str,
    urls: dict[str, str],
    sha256: dict[str, str],
    timeout: float = 30.0,
) -> Path:
    """Return a folder holding verified `ptb.{train,valid,test}.txt`.

    `local_dir` set: use it as is (files are verified, never modified). Otherwise fill `cache_dir` from
    `urls` under an exclusive file lock, so concurrent jobs download once and never see partial files.
    """
    names = {split: f"ptb.{split}.txt" for split in SPLITS}
    if local_dir:
        folder = Path(local_dir).expanduser()
        for name in names.values():
            path = folder / name
            if not path.is_file():
                raise DataError(f"missing PTB split file {path}; data.dir must hold {', '.join(names.values())}")
            _check(path, sha256.get(name), f"replace {path} with the original file or point data.dir elsewhere")
        return folder

    folder = Path(cache_dir).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = open(folder / ".lock", "w")
    except OSError as e:
        raise DataError(
            f"cannot write the PTB cache {folder} ({e.strerror}); set data.cache_dir or "
            f"ZR_ABLATE_CACHE to a writable folder, or data.dir to a local copy"
        ) from e
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        for split, name in names.items():
            path = folder / name
            if path.is_file() and sha256_of(path) == sha256.get(name, sha256_of(path)):
                continue  # already cached and intact
            try:
                _download(urls[split], path, sha256.get(name), timeout)
            except (urllib.error.URLError, OSError) as e:
                if isinstance(e, DataError):
                    raise
                reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or e
                raise DataError(
                    f"cannot download {urls[split]} ({reason}); with no network, pass data.dir=<folder> or set "
                    f"ZR_ABLATE_PTB_DIR=<folder>, a folder holding {', '.join(names.values())}"
                ) from e
    return folder


class Vocabulary:
    """Word <-> id, ids in order of first appearance in the training text (as pytorch/examples)."""

    def __init__(self, words: list[str]):
        self.itos = words
        self.stoi = {w: i for i, w in enumerate(words)}

    @classmethod
    def from_file(cls, path: Path) -> Vocabulary:
        seen: dict[str, None] = {}
        for line in _read_lines(path):
            for word in line.split() + [EOS]:
                seen.setdefault(word, None)
        return cls(list(seen))

    def __len__(self) -> int:
        return len(self.itos)

    def encode_file(self, path: Path) -> torch.Tensor:
        """Whole file as one id stream, `<eos>` closing each line. Shape [n_tokens]."""
        ids = []
        for line in _read_lines(path):
            for word in line.split() + [EOS]:
                if word not in self.stoi:
                    raise DataError(
                        f"{path} has the word {word!r}, absent from the training vocabulary; "
                        f"the file is not Mikolov's PTB"
                    )
                ids.append(self.stoi[word])
        return torch.tensor(ids, dtype=torch.long)


def _read_lines(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def batchify(stream: torch.Tensor, batch: int) -> torch.Tensor:
    """[n] -> [batch, n // batch]: `batch` contiguous streams, row b continuing the text of row b only.

    The tail that does not fill a row is dropped, as in Zaremba's reader.
    """
    n = stream.numel() // batch
    if n < 2:
        raise ValueError(f"{stream.numel()} tokens cannot fill {batch} streams; lower the batch size")
    return stream[: n * batch].view(batch, n)


class WindowDataset(Dataset):
    """Item i = (x, y), both [batch, <=bptt]: the i-th BPTT window of every stream, y shifted by one.

    Read in order (never shuffled) so the hidden state carried from window i is the context of window i+1.
    The last window may be shorter, so every token of the split is predicted exactly once.
    """

    def __init__(self, streams: torch.Tensor, bptt: int):
        if bptt < 1:
            raise ValueError(f"bptt must be >= 1, got {bptt}")
        self.streams, self.bptt = streams, bptt
        self.starts = list(range(0, streams.size(1) - 1, bptt))

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.starts[i]
        e = min(s + self.bptt, self.streams.size(1) - 1)
        return self.streams[:, s:e], self.streams[:, s + 1 : e + 1]


class PTBDataModule(pl.LightningDataModule):
    """Train windows [batch, bptt]; validation [batch, bptt] with its own carried state; test either the
    paper protocol (one stream, state carried over the whole test text) or the fast batched one."""

    def __init__(
        self,
        dir: str | None,
        cache_dir: str,
        urls: dict[str, str],
        sha256: dict[str, str],
        batch_size: int = 20,
        bptt: int = 35,
        eval_batch_size: int = 20,
        test_protocol: str = "paper",
        train_tokens: int | None = None,
        eval_tokens: int | None = None,
        download_timeout: float = 30.0,
    ):
        super().__init__()
        if test_protocol not in ("paper", "fast"):
            raise ValueError(f"data.test_protocol must be 'paper' or 'fast', got {test_protocol!r}")
        if train_tokens is not None and train_tokens < 2 * batch_size:
            raise ValueError(f"data.train_tokens={train_tokens} is too few for batch {batch_size}")
        self.dir, self.cache_dir, self.urls, self.sha256 = dir, cache_dir, dict(urls), dict(sha256)
        self.batch_size, self.bptt, self.eval_batch_size = batch_size, bptt, eval_batch_size
        self.test_protocol, self.timeout = test_protocol, download_timeout
        self.limits = {"train": train_tokens, "valid": eval_tokens, "test": eval_tokens}
        self.vocab: Vocabulary | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.vocab is not None:
            return
        folder = ensure_ptb(self.dir, self.cache_dir, self.urls, self.sha256, self.timeout)
        self.vocab = Vocabulary.from_file(folder / "ptb.train.txt")  # from the full train split
        self.tokens = {s: self.vocab.encode_file(folder / f"ptb.{s}.txt") for s in SPLITS}
        for split, limit in self.limits.items():
            if limit is not None:
                self.tokens[split] = self.tokens[split][:limit]
        self.check_shape(self.tokens["train"].numel())

    def check_shape(self, train_tokens: int | None = None) -> None:
        """The unroll must fit in each training stream; checkable before any data is read."""
        n = train_tokens or min(self.limits["train"] or TRAIN_TOKENS, TRAIN_TOKENS)
        if n // self.batch_size <= self.bptt:
            raise ValueError(
                f"unroll {self.bptt} is longer than each of the {self.batch_size} training "
                f"streams ({n} tokens); lower data.bptt or raise data.train_tokens"
            )

    @property
    def test_batch_size(self) -> int:
        return 1 if self.test_protocol == "paper" else self.eval_batch_size

    def _loader(self, split: str, batch: int) -> DataLoader:
        # batch_size=None: the dataset already yields whole [batch, bptt] windows.
        ds = WindowDataset(batchify(self.tokens[split], batch), self.bptt)
        return DataLoader(ds, batch_size=None, shuffle=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid", self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        # Paper protocol: batch 1, state carried over the whole stream. With dropout off the LSTM is
        # causal, so feeding the stream in bptt-long windows gives the same numbers as one step at a time
        # (tests/training/test_lightning_module.py checks it) at a fraction of the cost.
        return self._loader("test", self.test_batch_size)
