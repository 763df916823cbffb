"""The one exception users see: a plain sentence saying what is wrong and what to do."""


class SkinLesionError(Exception):
    """An error caused by the user's input (data, model file, option).

    The message is shown as is, without a traceback, so it must say what is wrong
    and what to do about it.
    """


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
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / ".skinlesion.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise SkinLesionError(
            f"Another skinlesion {what} is writing into {folder}; wait for it to finish or choose another --out."
        ) from None
    return lock
