"""``python -m xcache …``: the ``xcache`` command, run in this process by the package
(the same code as the Rust binary); ``python -m xcache demo`` runs check1 through the
package and prints numpy's time for the same loop beside it."""

from __future__ import annotations

import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["demo"] and "--device" not in args:
        from ._demo import main as demo

        return demo(args[1:])
    from ._native import cli_main

    sys.stdout.flush()
    return cli_main(["xcache", *args])


if __name__ == "__main__":
    sys.exit(main())
