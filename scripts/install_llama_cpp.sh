#!/usr/bin/env bash
# Installs llama-cpp-python (sdist only: it compiles) into the project's venv, built for the CPU it runs on.
#
# Usage: scripts/install_llama_cpp.sh PYTHON [native|portable]
#   native   (default) -march=native with Intel AMX turned off. Fastest on the machine that builds it.
#   portable AVX2/FMA/F16C only (x86-64-v3): for a venv or image that moves between machines.
#
# Why AMX is off: on Intel Xeon (Sapphire Rapids) VMs ggml's AMX kernels die with SIGILL at `tileloadd` even though
# the CPU and the OS advertise AMX; explicit -mno-amx-* win over -march=native in GCC and Clang, whatever the order.
# The AVX-512 build suggested in ENVIRONMENT.md is no answer either: some of our AMD EPYC machines have no AVX-512.
# llama.cpp's runtime dispatch (GGML_BACKEND_DL + GGML_CPU_ALL_VARIANTS) picks its `sapphirerapids` variant, which
# is built with AMX_TILE/AMX_INT8, on exactly the CPUs that crash.
#
# pip's wheel cache is keyed by the sdist, not by CMAKE_ARGS or the CPU, so a wheel built elsewhere (or with other
# flags) would be reused silently. We keep our own wheelhouse keyed by version, flags, compiler and CPU flags.
set -euo pipefail
PYTHON=${1:?usage: install_llama_cpp.sh PYTHON [native|portable]}
MODE=${2:-native}
VERSION=0.3.36

CMAKE_ARGS="-DLLAVA_BUILD=off -DLLAMA_BUILD_EXAMPLES=off -DLLAMA_BUILD_TESTS=off -DLLAMA_BUILD_SERVER=off"
CMAKE_ARGS+=" -DLLAMA_BUILD_TOOLS=off"
EXTRA_CFLAGS=""
case "$MODE:$(uname -m)" in
  native:x86_64)  CMAKE_ARGS+=" -DGGML_NATIVE=on"; EXTRA_CFLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" ;;
  native:*)       CMAKE_ARGS+=" -DGGML_NATIVE=on" ;;
  portable:x86_64)
    CMAKE_ARGS+=" -DGGML_NATIVE=off -DGGML_AVX=on -DGGML_AVX2=on -DGGML_FMA=on -DGGML_F16C=on -DGGML_BMI2=on"
    CMAKE_ARGS+=" -DGGML_AVX512=off -DGGML_AMX_TILE=off -DGGML_AMX_INT8=off -DGGML_AMX_BF16=off" ;;
  portable:*)     CMAKE_ARGS+=" -DGGML_NATIVE=off" ;;
  *) echo "install_llama_cpp.sh: unknown mode '$MODE' (use native or portable)" >&2; exit 2 ;;
esac

cpu_flags=$(grep -m1 -E '^(flags|Features)' /proc/cpuinfo 2>/dev/null || uname -m)
compiler=$(${CC:-cc} --version 2>/dev/null | head -1 || echo unknown)
key=$(printf '%s\n' "$VERSION" "$MODE" "$CMAKE_ARGS" "$EXTRA_CFLAGS" "$compiler" "$cpu_flags" | sha256sum | cut -c1-16)
WHEELHOUSE=${TUNEFORGE_WHEELHOUSE:-${XDG_CACHE_HOME:-$HOME/.cache}/tuneforge/wheels}/llama-cpp-$key

if ! ls "$WHEELHOUSE"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  echo "building llama-cpp-python $VERSION ($MODE) for this CPU: 4-6 min on 2 cores, once per machine and mode"
  mkdir -p "$WHEELHOUSE.tmp"
  CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) CMAKE_ARGS="$CMAKE_ARGS" \
    CFLAGS="${CFLAGS:-} $EXTRA_CFLAGS" CXXFLAGS="${CXXFLAGS:-} $EXTRA_CFLAGS" \
    "$PYTHON" -m pip wheel -q --no-deps --no-cache-dir -w "$WHEELHOUSE.tmp" "llama-cpp-python==$VERSION"
  rm -rf "$WHEELHOUSE" && mv "$WHEELHOUSE.tmp" "$WHEELHOUSE"
fi
printf '%s\n' "mode=$MODE" "cmake_args=$CMAKE_ARGS" "cflags=$EXTRA_CFLAGS" > "$WHEELHOUSE/BUILD"
# Reinstalled from our wheelhouse even where some llama-cpp-python is present: it may have been built for another CPU.
"$PYTHON" -m pip install -q --no-deps --force-reinstall "$WHEELHOUSE"/llama_cpp_python-*.whl
"$PYTHON" -m pip install -q "$(ls "$WHEELHOUSE"/llama_cpp_python-*.whl)"  # its own dependencies, if missing
cp "$WHEELHOUSE/BUILD" "$("$PYTHON" -c \
  'import importlib.util, os; print(os.path.dirname(importlib.util.find_spec("llama_cpp").origin))')/TUNEFORGE_BUILD"
