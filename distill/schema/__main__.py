"""``python -m distill.schema --markdown``: print the results section of ``docs/schemas.md``."""

from __future__ import annotations

import sys

from distill.schema import markdown


def main(argv: list[str] | None = None) -> int:
    """Print the generated section with ``--markdown``; a usage line and 2 otherwise."""
    args = sys.argv[1:] if argv is None else argv
    if args != ["--markdown"]:
        print("usage: python -m distill.schema --markdown", file=sys.stderr)
        return 2
    sys.stdout.write(markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
