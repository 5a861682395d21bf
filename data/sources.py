"""
Where text and tokens come from: the GPT-2 tokenizer, the local mirror of public data
($SPDF_DATA_MIRROR, laid out like ../shared/data) and downloads, and token files on disk.
"""
import os
from pathlib import Path

from common import UsageError, check

EOT = 50256  # GPT-2 <|endoftext|>: ends every document and every fine-tuning context and completion


def get_tokenizer():
    """GPT-2 BPE via tiktoken (offline when TIKTOKEN_CACHE_DIR holds its cached files)."""
    import tiktoken
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # tiktoken raises plain exceptions when the download fails
        raise UsageError(f"cannot load the GPT-2 tokenizer ({type(e).__name__}); "
                         "set TIKTOKEN_CACHE_DIR to a folder with its cached files") from e


def mirror_file(relpath):
    """Path of `relpath` inside $SPDF_DATA_MIRROR (laid out like ../shared/data), or None."""
    root = os.environ.get("SPDF_DATA_MIRROR")
    if root and (Path(root) / relpath).exists():
        return Path(root) / relpath
    return None


def fetch(url, relpath, cache_dir):
    """The mirror's copy of `relpath` if there is one, else download `url` into cache_dir once."""
    local = mirror_file(relpath)
    if local is not None:
        return local
    dest = Path(cache_dir) / Path(relpath).name
    if not dest.exists():
        import urllib.request
        dest.parent.mkdir(parents=True, exist_ok=True)
        print(f"downloading {url}")
        tmp = dest.with_suffix(dest.suffix + ".part")
        try:
            urllib.request.urlretrieve(url, tmp)
        except OSError as e:
            raise UsageError(f"cannot download {url} ({e}); set SPDF_DATA_MIRROR to a local copy") from e
        os.replace(tmp, dest)
    return dest


def read_bin(path):
    """A token file (uint16) as a read-only memmap; empty or odd-sized files are a one-line error."""
    import numpy as np
    size = os.path.getsize(path)
    check(size > 0, f"{path} is empty")
    check(size % 2 == 0, f"{path} has an odd size ({size} bytes): not a file of uint16 tokens")
    return np.memmap(path, dtype=np.uint16, mode="r")
