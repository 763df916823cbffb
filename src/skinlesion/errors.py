"""The one exception users see: a plain sentence saying what is wrong and what to do."""


class SkinLesionError(Exception):
    """An error caused by the user's input (data, model file, option).

    The message is shown as is, without a traceback, so it must say what is wrong
    and what to do about it.
    """
