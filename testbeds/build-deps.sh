#!/usr/bin/env bash
# What building the gateway needs from the system besides Rust: librdkafka is built from
# source (rdkafka-sys) by its bash `configure` with a C and a C++ compiler and make, and links
# zlib and the system OpenSSL (rdkafka's `libz` and `ssl` features), found with pkg-config.
# Run as root with apt-get at hand, installs the Debian packages that are missing; otherwise
# names them and fails. Quick and silent when everything is there.
#
#   testbeds/build-deps.sh      (testbeds/test-all and testbeds/e2e.sh call it)
set -euo pipefail

missing=()
command -v cc >/dev/null 2>&1 || missing+=(gcc)
command -v c++ >/dev/null 2>&1 || missing+=(g++)
command -v make >/dev/null 2>&1 || missing+=(make)
# The tests make RSA keys and TLS certificates with the openssl command.
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if command -v pkg-config >/dev/null 2>&1; then
  pkg-config --exists openssl || missing+=(libssl-dev)
  pkg-config --exists zlib || missing+=(zlib1g-dev)
else
  missing+=(pkg-config libssl-dev zlib1g-dev)
fi
((${#missing[@]} == 0)) && exit 0

if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
  printf 'build-deps: installing %s with apt-get\n' "${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  exit 0
fi
printf 'build-deps: building the gateway needs %s (Debian package names); install them\n' "${missing[*]}" >&2
exit 1
