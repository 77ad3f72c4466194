"""llama.cpp's own tools (llama-server, llama-bench, llama-batched-bench), built for the benchmark.

They are compiled from the llama.cpp source that the llama-cpp-python sdist on PyPI vendors, so the
peers run the very llama.cpp that homeport runs in-process. The build is cached outside the repo,
one folder per llama-cpp-python version, and redone only when that version (or the build flags)
change. The source and intermediate files are removed once the binaries are in place.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

TARGETS = ("llama-server", "llama-bench", "llama-batched-bench")
DISTRIBUTION = "llama-cpp-python"
# Static binaries with the same CPU tuning as the library llama-cpp-python compiled (GGML_NATIVE
# is llama.cpp's default); no web UI, curl or TLS, since the build machine may be offline.
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
)
DOWNLOAD_TIMEOUT = 600.0
BUILD_TIMEOUT = 3600.0
_NINJA_STEP = re.compile(rb"^\[(\d+)/(\d+)\]")


class BuildError(RuntimeError):
    """The tools could not be built; the message says where the log is."""


@dataclass(frozen=True)
class LlamaTools:
    """Where the built binaries are, and the llama-cpp-python version they come from."""

    version: str
    bin_dir: Path

    def path(self, name: str) -> Path:
        return self.bin_dir / name


def installed_version() -> str:
    return importlib.metadata.version(DISTRIBUTION)


def _stamp(version: str) -> dict[str, object]:
    return {"version": version, "targets": list(TARGETS), "cmake_flags": list(CMAKE_FLAGS)}


def cached_tools(cache_dir: Path, version: str) -> LlamaTools | None:
    """The tools built earlier for ``version`` with today's flags, or None."""
    root = cache_dir / f"llama.cpp-{version}"
    tools = LlamaTools(version, root / "bin")
    try:
        stamp = json.loads((root / "build.json").read_text())
    except (OSError, ValueError):
        return None
    if stamp != _stamp(version) or not all(os.access(tools.path(t), os.X_OK) for t in TARGETS):
        return None
    return tools


def ensure_tools(cache_dir: Path, console: Console, *, allow_build: bool = True) -> LlamaTools:
    """The cached tools for the installed llama-cpp-python, building them first if needed."""
    version = installed_version()
    tools = cached_tools(cache_dir, version)
    if tools is not None:
        return tools
    if not allow_build:
        raise BuildError(f"llama.cpp tools for llama-cpp-python {version} are not built yet "
                         f"in {cache_dir}; run without --skip-build once")
    root = cache_dir / f"llama.cpp-{version}"
    root.mkdir(parents=True, exist_ok=True)
    log_path = root / "build.log"
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=root, prefix="work-") as work_name:
        work = Path(work_name)
        with log_path.open("wb") as log:
            source = _fetch_source(version, work, log, console)
            build_dir = work / "build"
            ninja = shutil.which("ninja")
            _configure(source, build_dir, ninja is not None, log, console)
            _compile(build_dir, ninja, os.cpu_count() or 1, log, console)
        bin_dir = root / "bin"
        bin_dir.mkdir(exist_ok=True)
        for target in TARGETS:
            shutil.copy2(build_dir / "bin" / target, bin_dir / target)
    (root / "build.json").write_text(json.dumps(_stamp(version), indent=2))
    console.print(f"built {', '.join(TARGETS)} from llama-cpp-python {version} "
                  f"in {time.monotonic() - started:.0f}s ({root})")
    return LlamaTools(version, bin_dir)


def _run_logged(command: list[str], log: BinaryIO, what: str,
                timeout: float = BUILD_TIMEOUT) -> None:
    log.write(f"$ {' '.join(command)}\n".encode())
    log.flush()
    result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT,
                            timeout=timeout, check=False)
    if result.returncode != 0:
        raise BuildError(f"{what} failed (exit {result.returncode}); see {log.name}")


def _fetch_source(version: str, work: Path, log: BinaryIO, console: Console) -> Path:
    """Download and unpack the sdist; return its vendored llama.cpp folder."""
    with console.status(f"downloading the {DISTRIBUTION} {version} sdist from PyPI"):
        _run_logged([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
                     "--disable-pip-version-check", "-d", str(work),
                     f"{DISTRIBUTION}=={version}"], log, "pip download", timeout=DOWNLOAD_TIMEOUT)
    archives = sorted(work.glob("*.tar.gz"))
    if not archives:
        raise BuildError(f"pip download left no sdist; see {log.name}")
    with console.status("unpacking"), tarfile.open(archives[0]) as archive:
        archive.extractall(work / "src", filter="data")
    found = sorted((work / "src").glob("*/vendor/llama.cpp/CMakeLists.txt"))
    if not found:
        raise BuildError("the sdist does not contain vendor/llama.cpp")
    return found[0].parent


def _configure(source: Path, build_dir: Path, use_ninja: bool, log: BinaryIO,
               console: Console) -> None:
    generator = ["-G", "Ninja"] if use_ninja else []
    with console.status("configuring llama.cpp (cmake)"):
        _run_logged(["cmake", "-S", str(source), "-B", str(build_dir), *generator, *CMAKE_FLAGS],
                    log, "cmake configure")


def _compile(build_dir: Path, ninja: str | None, jobs: int, log: BinaryIO,
             console: Console) -> None:
    """Build the targets, showing ninja's step counter as a progress bar."""
    # ninja itself, not `cmake --build`, which holds ninja's output back until the end.
    command = ([ninja, "-C", str(build_dir), "-j", str(jobs), *TARGETS] if ninja else
               ["cmake", "--build", str(build_dir), "--parallel", str(jobs), "--target", *TARGETS])
    log.write(f"$ {' '.join(command)}\n".encode())
    columns = (TextColumn("compiling llama.cpp"), BarColumn(),
               TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("build", total=None)
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            assert process.stdout is not None
            for line in process.stdout:
                log.write(line)
                step = _NINJA_STEP.match(line)
                if step:
                    progress.update(task, completed=int(step.group(1)), total=int(step.group(2)))
            returncode = process.wait(timeout=BUILD_TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    if returncode != 0:
        raise BuildError(f"building {', '.join(TARGETS)} failed (exit {returncode}); see {log.name}")
