"""The two kinds of failure every stage reports the same way (:func:`lowssl.cli.run_stage`).

- :class:`BadInput`: what the user gave cannot be used (a config, checkpoint, dataset, subset, flag or
  run folder). Nothing was computed or changed; the message names the problem and the fix. Exit 2, as
  argparse's own usage errors.
- :class:`RunFailed`: the input was fine but the run itself failed (a non-finite loss, a full disk, a
  diverged probe); the last good checkpoint is kept. Exit 1.

Every error family of lowssl derives from one of them (beside the builtin it always derived from, so
``except ValueError`` and ``except OSError`` still catch what they caught), so a stage's ``main`` needs
no list of exception types that drifts from its neighbours'.
"""


class BadInput(Exception):
    """Input that cannot be used; the message says what and how to fix it (exit 2)."""


class RunFailed(Exception):
    """A run that failed on good input; the last good checkpoint is kept (exit 1)."""
