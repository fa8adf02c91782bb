"""Exceptions raised by kdet."""

from __future__ import annotations


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights are needed but cannot be downloaded (offline, server down).

    The message names the URL, the file to place and the directory to place it
    in; placing the file there makes the next ``kdet.load`` work offline.
    """


class MissingExtraError(ImportError):
    """A feature needs a package that ships in one of kdet's optional extras.

    Args:
        feature: what was asked for, as the user wrote it (e.g. ``"Augmenter(mosaic=0.5)"``).
        package: the missing distribution (e.g. ``"keras-cv"``).
        extra: the kdet extra that installs it (e.g. ``"mosaic"``).

    Example:
        >>> error = MissingExtraError("Augmenter(mosaic=0.5)", "keras-cv", "mosaic")
        >>> str(error).endswith('pip install "kdet[mosaic]"')
        True
    """

    def __init__(self, feature: str, package: str, extra: str):
        super().__init__(f"{feature} needs {package}, which kdet installs only with its {extra!r} extra: "
                         f'pip install "kdet[{extra}]"', name=package.replace("-", "_"))
        self.feature, self.package, self.extra = feature, package, extra
