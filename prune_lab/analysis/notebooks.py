"""Executing the notebooks of ``notebooks/`` (nbclient, from the ``dev`` extras): the notebook test runs them in
quick mode, and ``python -m prune_lab.analysis.notebooks notebooks/*.ipynb`` re-executes them in full and writes
them back with their outputs (what is committed).

Quick mode is the environment variable :data:`QUICK_ENV` = ``1``: each notebook's parameter cell shrinks its
sample counts. :data:`THREADS_ENV` sets the kernel's torch threads (1 by default).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from ..runtime.atomic import write_with

QUICK_ENV = "PRUNELAB_NOTEBOOK_QUICK"
THREADS_ENV = "PRUNELAB_NOTEBOOK_THREADS"


def execute_notebook(
    path: str | os.PathLike, *, quick: bool, cwd: str | os.PathLike, threads: int = 1, timeout: int | None = None
):
    """Run every cell of the notebook at `path` in a fresh kernel working in `cwd`; return the executed notebook.

    Args:
        quick: run with :data:`QUICK_ENV` = 1 (tiny sample counts).
        threads: torch / OpenMP threads of the kernel.
        timeout: seconds one cell may take (None: no limit; a full run's scoring cells take many minutes).

    Raises:
        FileNotFoundError: no notebook at `path`.
        nbclient.exceptions.CellExecutionError: a cell raised (its traceback in the message).
    """
    import nbformat
    from nbclient import NotebookClient

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"notebook {path} does not exist")
    nb = nbformat.read(path, as_version=4)
    env = {
        "HF_HUB_OFFLINE": "1",  # the notebooks use local models only: never wait on the network
        **os.environ,
        QUICK_ENV: "1" if quick else "0",
        THREADS_ENV: str(threads),
        "OMP_NUM_THREADS": str(threads),
    }
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", record_timing=False, resources={"metadata": {"path": str(cwd)}}
    )
    client.execute(env=env)
    return nb


def write_notebook(nb, path: str | os.PathLike) -> Path:
    """Write `nb` to `path` atomically (a half-written notebook never replaces a good one)."""
    import nbformat

    path = Path(path)
    write_with(path, lambda tmp: nbformat.write(nb, str(tmp)))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Execute notebooks in full (or --quick) and write their outputs.")
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--quick", action="store_true", help=f"run as CI does ({QUICK_ENV}=1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the kernel")
    args = parser.parse_args(argv)
    for path in args.notebooks:
        with tempfile.TemporaryDirectory() as cwd:
            nb = execute_notebook(path, quick=args.quick, cwd=cwd, threads=args.threads)
        size = write_notebook(nb, path).stat().st_size
        print(f"executed {path} ({size / 1e3:.0f} kB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
