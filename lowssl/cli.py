"""One parser base and one way to end for every stage's command line (``python -m lowssl.<stage>``).

Detectron2's train_net tool (``facebookresearch/detectron2@v0.6:tools/train_net.py``) is a short
entry point over one shared parser; lowssl's stages are the same: each ``__main__.py`` builds a
:class:`StageParser`, adds its own arguments, and hands the work to :func:`run_stage`, which turns
lowssl's two failure kinds (:mod:`lowssl.errors`) into one line on stderr and one exit code: 2 for bad
input (as argparse's usage errors), 1 for a run that failed.

One convention across stages: a checkpoint is ``--checkpoint PATH`` (lowssl.checkpoints.cli), lowssl's own
configs take ``key=value`` overrides after the flags (lowssl.config.add_overrides_argument), and a
``--config`` is a file or a preset's name (:func:`config_argument`). A spelling of an older release is
refused with the command spelt the new way (:meth:`StageParser.formerly_positional`,
:meth:`StageParser.now_overrides`).
"""

from __future__ import annotations

import argparse
import difflib
import re
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from lowssl.errors import BadInput, RunFailed
from lowssl.progress import add_quiet_argument

__all__ = ["StageParser", "add_quiet_argument", "config_argument", "error_line", "presets", "run_stage"]

#: Exit codes: the same in every stage.
EXIT_BAD_INPUT = 2
EXIT_RUN_FAILED = 1


class StageParser(argparse.ArgumentParser):
    """argparse with lowssl's error line: ``error: <message> (see <prog> --help)``, exit 2; and a
    command line spelt as an older release spelt it refused with the new spelling of the same command."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._formerly_positional: tuple[tuple[str, str], ...] = ()
        self._now_overrides: dict[str, str] = {}

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"error: {message} (see {self.prog} --help)\n")

    def formerly_positional(self, *flags: tuple[str, str]) -> None:
        """Older spelling: the values of ``flags`` (``("--checkpoint", "the checkpoint")``, ...) were
        positional words, in this order (``convert CKPT OUT``); such words are refused."""
        self._formerly_positional = flags

    def now_overrides(self, **flags: str) -> None:
        """Older spelling: ``--flag N`` for what is the override ``key=N`` now (``max_steps="--max-steps"``)."""
        self._now_overrides = {flag: key for key, flag in flags.items()}

    def parse_known_args(self, args: Sequence[str] | None = None, namespace=None):
        words = list(sys.argv[1:] if args is None else args)
        self._refuse_moved_positionals(words)
        self._refuse_flags_now_overrides(words)
        return super().parse_known_args(args, namespace)

    def parse_args(self, args: Sequence[str] | None = None, namespace=None):
        """As argparse's, except that ``key=value`` overrides may also come after flags
        (``... max_eval_images=8 --resume never epochs=2``): they are kept, in their order."""
        parsed, extra = self.parse_known_args(args, namespace)
        late = [word for word in extra if "=" in word and not word.startswith("-")]
        unknown = [word for word in extra if word not in late]
        if unknown or (late and not hasattr(parsed, "overrides")):
            self.error(f"unrecognized arguments: {' '.join(unknown or late)}")
        if late:
            parsed.overrides = [*(parsed.overrides or []), *late]
        return parsed

    def _refuse(self, message: str, words: list[str]) -> None:
        self.exit(EXIT_BAD_INPUT, f"error: {message} now: {self.prog} {shlex.join(words)}\n")

    def _refuse_moved_positionals(self, words: list[str]) -> None:
        positions = self._positional_positions(words) if self._formerly_positional else []
        given = {word.partition("=")[0] for word in words}
        missing = [(flag, noun) for flag, noun in self._formerly_positional if flag not in given]
        if not positions or len(positions) > len(missing):
            return  # none, or more words than the old spelling took: argparse's own error says so
        moved = missing[: len(positions)]
        flag_at = {at: flag for (flag, _), at in zip(moved, positions, strict=True)}
        spelt = [
            part
            for at, word in enumerate(words)
            for part in ((flag_at[at], word) if at in flag_at else (word,))
        ]
        nouns = " and ".join(noun for _, noun in moved)
        verb = "is" if len(moved) == 1 else "are"
        self._refuse(f"{nouns} {verb} given as {' '.join(f'{flag} PATH' for flag, _ in moved)}", spelt)

    def _refuse_flags_now_overrides(self, words: list[str]) -> None:
        rest, overrides, old = [], [], []
        words = iter(words)
        for word in words:
            flag, equals, value = word.partition("=")
            if flag not in self._now_overrides:
                rest.append(word)
                continue
            value = value if equals else next(words, "N")
            overrides.append(f"{self._now_overrides[flag]}={value}")
            old.append(f"{flag} N")
        if old:
            new = ", ".join(f"{override.partition('=')[0]}=N" for override in overrides)
            many = len(old) > 1
            self._refuse(
                f"{', '.join(old)} {'are' if many else 'is'} the override{'s' if many else ''} {new}",
                [*rest, *overrides],
            )

    def _positional_positions(self, words: list[str]) -> list[int]:
        """Where the words that are no flag and no flag's value are (up to a lone ``--``)."""
        positions, skip = [], False
        for at, word in enumerate(words):
            if word == "--":
                break
            if skip:
                skip = False
            elif word.startswith("-") and len(word) > 1:
                flag, equals, _ = word.partition("=")
                action = self._option_string_actions.get(flag)
                skip = not equals and action is not None and action.nargs != 0
            else:
                positions.append(at)
        return positions


def presets(folder: Path) -> list[str]:
    """The config names under ``folder``: each YAML's path below it without ``.yaml``
    (``tiny/dino_resnet18_ours``), the files other configs build on (``_base_/``, ``Base-*``) left out."""
    names = []
    for path in folder.rglob("*.yaml"):
        relative = path.relative_to(folder)
        if not any(part.startswith(("_base_", "Base-")) for part in relative.parts):
            names.append(relative.with_suffix("").as_posix())
    return sorted(names)


def config_argument(folder: Path) -> Callable[[str], Path]:
    """The ``type=`` of a ``--config``: a YAML file, or a preset's name (:func:`presets`) resolved to its
    file under ``folder``; anything else is refused naming the closest preset."""

    def resolve(value: str) -> Path:
        if Path(value).is_file():
            return Path(value)
        known = presets(folder)
        if value in known:
            preset = folder / f"{value}.yaml"
            return preset.relative_to(Path.cwd()) if preset.is_relative_to(Path.cwd()) else preset
        name = re.sub(r"^.*configs/|\.ya?ml$", "", value)
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise argparse.ArgumentTypeError(f"no config file or preset named {value}{hint}")

    return resolve


def error_line(error: BaseException) -> str:
    """The one line a stage prints for ``error``: its message with line breaks folded into spaces."""
    return "error: " + " ".join(str(error).split())


def run_stage(body: Callable[[], int | None], cleanup: Callable[[], None] | None = None) -> int:
    """Run a stage's work and return its exit code: 0, or 2 (:class:`BadInput`) / 1 (:class:`RunFailed`)
    with :func:`error_line` on stderr. Any other exception is a bug and keeps its traceback.
    ``cleanup`` runs in every case (e.g. leaving the process group)."""
    try:
        return body() or 0
    except BadInput as error:
        print(error_line(error), file=sys.stderr)
        return EXIT_BAD_INPUT
    except RunFailed as error:
        print(error_line(error), file=sys.stderr)
        return EXIT_RUN_FAILED
    finally:
        if cleanup is not None:
            cleanup()
