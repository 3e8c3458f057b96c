"""Flags of a tool's own, so that one process (a test session, a notebook) can import every
command-line tool: absl's global FLAGS would hold one `--workdir` for all of them."""

from collections.abc import Callable

from absl import flags


def own_flags_parser(tool_flags: flags.FlagValues) -> Callable[[list[str]], list[str]]:
    """An `app.run` flags parser: absl's own flags (--help, logging) first, then the tool's.

    A bad or missing flag of the tool is one line, `error: ...`, and exit status 1.
    """

    def parse(argv: list[str]) -> list[str]:
        rest = flags.FLAGS(argv, known_only=True)
        try:
            return tool_flags(rest)
        except flags.Error as error:
            raise SystemExit(f"error: {error}") from None

    return parse
