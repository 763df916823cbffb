"""The one exception users see (a plain sentence saying what is wrong and what to do), and the two
rules every writer follows: one writer per folder (:func:`lock_folder`) and atomic files
(:func:`atomic_write`)."""


class SkinLesionError(Exception):
    """An error caused by the user's input (data, model file, option).

    The message is shown as is, without a traceback, so it must say what is wrong
    and what to do about it.
    """


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped a run; the message says how to continue it (the CLI prints it and exits 130).

    Typer turns any ``KeyboardInterrupt`` into a bare exit code 130, so the latest message is also kept
    here (``Interrupted.last``) for the CLI to print."""

    last: str = ""

    def __init__(self, message: str = ""):
        super().__init__(message)
        Interrupted.last = message


def lock_folder(folder, what: str = "run"):
    """Hold an exclusive lock on ``folder`` (the ``filelock`` package) for one writer; refuse a second one.

    Returns the held lock (release it, or let the process end). Only the launching process of a
    multi-process (DDP) run takes it: the ranks it starts share its folder.
    """
    import os
    from pathlib import Path

    from filelock import FileLock, Timeout

    if os.environ.get("LOCAL_RANK", "0") != "0" or os.environ.get("NODE_RANK", "0") != "0":
        return None
    folder = Path(folder)
    make_folder(folder)
    lock = FileLock(str(folder / ".skinlesion.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise SkinLesionError(
            f"Another skinlesion {what} is writing into {folder}; wait for it to finish or choose another --out."
        ) from None
    return lock


def atomic_write(path, write, *, what: str = "--out"):
    """Write ``path`` through ``write(tmp)`` to a temporary file in the same folder, then rename it.

    Readers never see half a file, and a failure leaves nothing behind: an ``OSError`` (full or
    read-only disk, a folder where a file should be) becomes one sentence naming the path.
    Returns ``path``.
    """
    import os
    from pathlib import Path

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if path.is_dir():
            raise IsADirectoryError(21, "it is a folder", str(path))
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        _remove(tmp)
        raise SkinLesionError(write_failure(path, exc, what)) from None
    except BaseException:
        _remove(tmp)
        raise
    return path


def write_failure(path, exc: OSError, what: str = "--out") -> str:
    """The one sentence for a file that could not be written: what happened, and what to do about it."""
    import errno

    why = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"Could not write {path} ({why}); free some space or choose another {what}."
    if exc.errno == errno.EROFS:
        return f"Could not write {path}: the file system is read-only; choose another {what}."
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"Could not write {path}: permission denied, it cannot be written; choose another {what}."
    return f"Could not write {path} ({why}); choose another {what}."


def os_error_in(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc``: itself, one in its cause/context chain, or one a library reported only in words
    (torch's and safetensors' writers say "No space left on device" in a RuntimeError). None when there is none."""
    import errno

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno is not None:
            return exc
        text = str(exc)
        for code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
            if os_strerror(code) in text:
                return OSError(code, os_strerror(code))
        exc = exc.__cause__ or exc.__context__
    return None


def os_strerror(code: int) -> str:
    import os

    return os.strerror(code)


def _remove(path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:  # its folder is not a folder, or not writable: nothing was left there
        pass


def atomic_text(path, text: str, *, what: str = "--out"):
    """:func:`atomic_write` for a text file."""
    return atomic_write(path, lambda t: t.write_text(text), what=what)


def make_folder(folder, *, what: str = "--out"):
    """Create an output folder (and its parents), or say in one sentence why it cannot be one."""
    from pathlib import Path

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise SkinLesionError(f"{what} {folder} is a file; pass a folder (it is created if missing).")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SkinLesionError(f"Could not create the folder {folder} ({exc.strerror or exc}); choose another {what}.") from None
    return folder


def missing(path) -> str:
    """Why ``path`` cannot be read: a plain "does not exist", or what is wrong with a symbolic link."""
    import os
    from pathlib import Path

    path = Path(path)
    if path.is_symlink():
        try:
            path.resolve(strict=True)
        except RuntimeError:  # Python 3.11 and 3.12 raise this for a loop
            return f"{path} is a symbolic link in a loop (it leads back to itself); point it at a real file or folder"
        except OSError as exc:
            if exc.errno == 40:  # ELOOP
                return f"{path} is a symbolic link in a loop (it leads back to itself); point it at a real file or folder"
            return f"{path} is a symbolic link to {os.readlink(path)}, which does not exist; fix the link"
    return f"{path} does not exist"


def walk_files(root):
    """Every file under the folder ``root``, sorted, following linked folders once each: a link loop is
    skipped instead of being followed 40 levels deep."""
    import os
    from pathlib import Path

    seen = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if os.path.realpath(os.path.join(dirpath, d)) not in seen)
        for fn in sorted(filenames):
            p = Path(dirpath) / fn
            if p.is_file():
                yield p
