"""Exceptions raised by kdet."""


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights are needed but cannot be downloaded (offline, server down).

    The message names the URL, the file to place and the directory to place it
    in; placing the file there makes the next ``kdet.load`` work offline.
    """
