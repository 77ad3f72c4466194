"""Entry point of ``./dev bench``: ``python bench/run.py [OPTIONS]`` (see ``--help``)."""

import sys
from pathlib import Path

# As a script, only bench/ is on sys.path: add the checkout (for the ``bench`` package) and its
# src/ (so the homeport measured and imported is this checkout's, not an installed copy).
_REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(_REPO / "src"), str(_REPO)]

from bench.cli import main  # noqa: E402
from bench.editor_cli import main as editor_main  # noqa: E402

if __name__ == "__main__":
    # ``./dev bench editor ...``: the editor workloads (issue 15); anything else: issue 3's bench.
    if sys.argv[1:2] == ["editor"]:
        editor_main(sys.argv[2:], prog_name="./dev bench editor")
    else:
        main()
