"""API keys: who may call the service.

A key is ``slk_<id>_<secret>`` (``id``: 8 hex digits naming the key, ``secret``: 32 random bytes,
URL-safe base64), sent as ``Authorization: Bearer KEY``. The key file holds one line per key,
``<id>:<salt hex>:<sha256(salt + secret) hex>``, never the key itself; ``#`` starts a comment.
A presented key is hashed with its line's salt and compared with :func:`hmac.compare_digest`
(an unknown id is compared against a dummy, so both take the same time). Keys are random
256-bit secrets, so one salted SHA-256 is enough (a slow password hash would only slow every
request). Delete a line to revoke its key: the running service re-reads the file when it changes.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from ..errors import SkinLesionError

PREFIX = "slk"
HEADER = "# skinlesion API keys (id:salt:sha256(salt+secret)); add one with `skinlesion serve --new-key --api-keys FILE`\n"
_DUMMY = (b"\0" * 16, hashlib.sha256(b"\0" * 16).hexdigest())


def _digest(salt: bytes, secret: str) -> str:
    return hashlib.sha256(salt + secret.encode()).hexdigest()


def _split(key: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed key, else None."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX or len(parts[1]) != 8 or not parts[2]:
        return None
    return parts[1], parts[2]


def parse_key_file(path: Path) -> dict[str, tuple[bytes, str]]:
    """id -> (salt, hex digest); a malformed line is refused in one sentence naming it."""
    import stat

    try:
        if path.exists() and not stat.S_ISREG(path.stat().st_mode):  # a FIFO or device would block or never end
            raise SkinLesionError(f"The API key file {path} is not a regular file; point --api-keys at the file `--new-key` writes.")
        raw = path.read_bytes()
    except OSError as exc:
        raise SkinLesionError(f"The API key file {path} cannot be read ({exc.strerror or exc}); check --api-keys.") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SkinLesionError(
            f"The API key file {path} is not a text file (binary content); point --api-keys at the file `--new-key` writes."
        ) from None
    out = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split(":")
        try:
            kid, salt, digest = parts
            salt_bytes = bytes.fromhex(salt)
            bytes.fromhex(digest)
            if len(kid) != 8 or len(digest) != 64 or not salt_bytes:
                raise ValueError
        except ValueError:
            raise SkinLesionError(
                f"{path.name}, line {n} is not id:salt:hash; keep the lines `skinlesion serve --new-key` writes (delete a line to revoke a key)."
            ) from None
        out[kid] = (salt_bytes, digest)
    return out


def new_key(path: Path) -> str:
    """Create a key, append its salted hash to ``path`` (created if missing), and return the key (shown once)."""
    from filelock import FileLock

    path = Path(path)
    if path.is_dir():
        raise SkinLesionError(f"--api-keys {path} is a folder; pass a file name such as {path / 'api-keys.txt'}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.with_name(f".{path.name}.lock"))):  # two --new-key at once must not lose a key
        existing = parse_key_file(path) if path.exists() else {}
        text = path.read_text() if path.exists() else HEADER
        kid = secrets.token_hex(4)
        while kid in existing:
            kid = secrets.token_hex(4)
        secret = secrets.token_urlsafe(32)
        salt = os.urandom(16)
        if text and not text.endswith("\n"):
            text += "\n"
        _write_private(path, text + f"{kid}:{salt.hex()}:{_digest(salt, secret)}\n")
    return f"{PREFIX}_{kid}_{secret}"


def _write_private(path: Path, text: str) -> None:
    """Write the key file atomically (a temporary file, then a rename), readable by its owner only (0600)."""
    from ..errors import write_failure

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise SkinLesionError(write_failure(path, exc, "--api-keys")) from None


def loose_permissions(path: Path) -> bool:
    """Whether others than the owner may read or write the key file."""
    try:
        return bool(Path(path).stat().st_mode & 0o077)
    except OSError:
        return False


@dataclass
class Verdict:
    ok: bool
    key_id: str | None = None


class KeyRing:
    """The keys of one key file, re-read when the file changes (so a deleted line revokes its key)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._stamp = None
        self._keys: dict[str, tuple[bytes, str]] = {}
        self.reload()
        if not self._keys:
            raise SkinLesionError(
                f"The API key file {self.path} holds no key; add one with `skinlesion serve --new-key --api-keys {self.path}`."
            )

    def _signature(self):
        st = self.path.stat()
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def reload(self) -> None:
        try:
            stamp = self._signature()
        except OSError as exc:
            raise SkinLesionError(f"The API key file {self.path} cannot be read ({exc.strerror or exc}); check --api-keys.") from None
        if stamp != self._stamp:
            self._keys = parse_key_file(self.path)
            self._stamp = stamp

    def check(self, key: str) -> Verdict:
        """Whether ``key`` is one of the file's; raises SkinLesionError when the file became unreadable."""
        self.reload()
        parts = _split(key.strip())
        kid, secret = parts if parts else ("", key)
        salt, digest = self._keys.get(kid, _DUMMY)
        same = hmac.compare_digest(_digest(salt, secret), digest)
        ok = same and parts is not None and kid in self._keys
        return Verdict(ok, kid if ok else None)
