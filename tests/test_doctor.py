"""`tuneforge doctor`: each check says ✓/!/✗ with a fix, and a broken piece makes the exit code non-zero."""

from __future__ import annotations

import importlib.metadata
import json
import re
import sys

import pytest
from typer.testing import CliRunner

from tests.helpers import die_of_sigill
from tuneforge import doctor
from tuneforge.cli import app


def by_name(checks):
    return {check.name: check for check in checks}


def test_a_healthy_machine_passes_and_names_versions_cpu_precision_and_threads():
    checks = by_name(doctor.run_checks(smoke=False, ray=False))
    assert checks["torch"].status == "ok" and checks["torch"].detail.startswith("2.")
    assert {"transformers", "peft", "ray", "cpu", "training precision", "threads", "bundled models"} <= set(checks)
    assert "avx2" in checks["cpu"].detail and "amx_tile" in checks["cpu"].detail
    assert checks["training precision"].detail.split()[0] in ("bf16", "fp32")
    assert doctor.exit_code(list(checks.values())) == 0


def test_a_missing_package_fails_with_the_install_command(monkeypatch):
    real_version = importlib.metadata.version

    def version(name):
        if name == "peft":
            raise importlib.metadata.PackageNotFoundError(name)
        return real_version(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    checks = doctor.run_checks(smoke=False, ray=False)
    peft = by_name(checks)["peft"]
    assert peft.status == "fail" and "make install" in peft.fix
    assert doctor.exit_code(checks) == 1


def test_a_crashing_llama_cpp_build_is_a_failed_check_not_a_dead_doctor(monkeypatch, tmp_path):
    pytest.importorskip("llama_cpp")
    model = tmp_path / "smoke.gguf"
    model.write_bytes(b"GGUF")
    monkeypatch.setattr(doctor, "smoke_model", lambda: model)
    monkeypatch.setattr(doctor, "llama_one_token", die_of_sigill)
    result = CliRunner().invoke(app, ["doctor", "--no-ray"])
    assert result.exit_code == 1
    smoke = next(line for line in result.stdout.splitlines() if "llama.cpp smoke" in line)
    assert smoke.startswith("✗") and "SIGILL" in smoke and "illegal instruction" in smoke
    assert "make install-dev" in result.stdout  # the fix line


def test_llama_cpp_built_with_amx_on_an_amx_cpu_is_flagged(monkeypatch):
    monkeypatch.setattr(doctor, "cpu_flags", lambda: {"avx2", "amx_tile", "amx_int8"})
    check = doctor.build_check({"version": "0.3.36", "system_info": "CPU : AVX2 = 1 | AMX_INT8 = 1 |"})
    assert check.status == "fail" and "AMX" in check.detail and "install-dev" in check.fix
    monkeypatch.setattr(doctor, "cpu_flags", lambda: {"avx2"})
    assert doctor.build_check({"version": "0.3.36", "system_info": "CPU : AVX2 = 1 |"}).status == "ok"


def test_json_output_lists_every_check():
    result = CliRunner().invoke(app, ["doctor", "--no-ray", "--no-smoke", "--json"])
    checks = json.loads(result.stdout)
    assert result.exit_code == 0
    assert {"name", "status", "detail", "fix"} <= set(checks[0]) and any(c["name"] == "cpu" for c in checks)


def write_lock(path, pins, python=None):
    python = python or "{}.{}".format(*sys.version_info[:2])
    path.write_text("# the tested versions\n" + "".join(f'{pin} ; python_version == "{python}"\n' for pin in pins))
    return path


def test_installed_versions_matching_the_lock_pass(tmp_path):
    torch_version = importlib.metadata.version("torch").partition("+")[0]  # the lock has no local label (+cpu)
    typing_version = importlib.metadata.version("typing-extensions")
    lock = write_lock(tmp_path / "constraints.txt", [f"torch=={torch_version}", f"Typing_Extensions=={typing_version}"])
    check = doctor.lock_check(lock)
    assert check.status == "ok" and check.detail == "2 of 2 as in constraints.txt" and check.fix is None


def test_a_version_other_than_the_locked_one_is_named_with_both_versions(tmp_path):
    installed = importlib.metadata.version("pyyaml")
    lock = write_lock(tmp_path / "constraints.txt", ["PyYAML==0.0.1", f"torch=={importlib.metadata.version('torch')}"])
    check = doctor.lock_check(lock)
    assert check.status == "warn" and f"pyyaml: {installed} vs locked 0.0.1" in check.detail
    assert "1 differ" in check.detail and "torch" not in check.detail.partition("differ")[2]
    assert "make install-dev" in check.fix and "make lock" in check.fix
    assert doctor.exit_code([check]) == 0  # drift is a caveat, not a broken machine


def test_many_differences_are_cut_to_a_handful(tmp_path):
    names = sorted({re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower()
                    for dist in importlib.metadata.distributions()})[:8]
    check = doctor.lock_check(write_lock(tmp_path / "constraints.txt", [f"{name}==0.0.0.1" for name in names]))
    assert check.status == "warn" and check.detail.endswith(f"and {len(names) - doctor.SHOWN_DIFFERENCES} more")


def test_a_locked_package_that_is_not_installed_is_reported(tmp_path):
    check = doctor.lock_check(write_lock(tmp_path / "constraints.txt", ["no-such_package.here==1.0"]))
    assert check.status == "ok"  # a `make install` venv lacks the dev extras
    assert "not installed: no-such-package-here" in check.detail


def test_pins_for_another_python_are_left_alone(tmp_path):
    check = doctor.lock_check(write_lock(tmp_path / "constraints.txt", ["torch==0.0.1"], python="2.7"))
    assert check.status == "warn" and "another Python" in check.detail


def test_no_lock_file_is_not_a_source_checkout(tmp_path):
    check = doctor.lock_check(tmp_path / "constraints.txt")
    assert check.status == "ok" and "not a source checkout" in check.detail


def test_the_repository_lock_is_found_and_checked():
    assert doctor.LOCK_FILE.is_file()
    assert "locked versions" in {check.name for check in doctor.run_checks(smoke=False, ray=False)}
