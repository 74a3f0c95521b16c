"""Where lowssl writes when it is not told: under :func:`home`, never inside the installed package.

``$LOWSSL_HOME`` if set, else the working directory, holding the same sub-folders as a checkout of
the repository does (``results/runs/`` for the records, ``data/`` for generated data sets). For a
user working in the repository root without ``$LOWSSL_HOME``, outputs land where they always did.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "LOWSSL_HOME"


def home() -> Path:
    """``$LOWSSL_HOME``, or ``.`` (the working directory, kept relative so that the default paths
    built on it read as before, e.g. ``results/runs``). Read at each call: the variable may change."""
    return Path(os.environ.get(HOME_ENV) or ".")
