#!/usr/bin/env bash
# Installs with apt-get what a fresh Debian machine with only the Rust
# toolchain lacks, and only what is missing. Safe to run repeatedly.
#
#   scripts/setup.sh build   what building and running a node needs:
#                            libclang for rocksdb's bindings, a C++
#                            compiler and make (scripts/dev.sh)
#   scripts/setup.sh [all]   that, and what the test command, the local
#                            cluster and the benchmarks use: curl, Python
#                            with venv, iproute2, nftables and faketime
#                            (scripts/test.sh, scripts/cluster.sh,
#                            benches/compare.sh)
set -euo pipefail

purpose=${1:-all}
case "$purpose" in
  build | all) ;;
  *) echo "usage: $0 [build|all]" >&2; exit 2 ;;
esac

need=()
# clang-sys loads libclang.so or libclang-<version>.so; libclang-cpp (which
# some machines have without libclang) does not do.
if ! ldconfig -p 2>/dev/null | grep -qE 'libclang(-[0-9.]+)?\.so' &&
  ! ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/llvm-*/lib/libclang-[0-9]*.so* >/dev/null 2>&1; then
  need+=(libclang-dev)
fi
command -v c++ >/dev/null 2>&1 || need+=(g++)
command -v make >/dev/null 2>&1 || need+=(make)

if [ "$purpose" = all ]; then
  # The test command polls nodes with curl and runs schemathesis from a
  # Python virtualenv.
  command -v curl >/dev/null 2>&1 || need+=(curl)
  command -v python3 >/dev/null 2>&1 || need+=(python3)
  python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
  # jepsen-lite builds its cluster from network namespaces (iproute2), cuts
  # links with nftables and skews clocks with libfaketime (so do the node's
  # process tests).
  command -v ip >/dev/null 2>&1 || need+=(iproute2)
  command -v nft >/dev/null 2>&1 || need+=(nftables)
  ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1 || need+=(faketime)
fi

if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}" >&2
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${need[@]}" >/dev/null
fi
