#!/usr/bin/env bash
# Debian packages some tests start for real: Quantum ESPRESSO (pw.x 6.7 and its PBE
# pseudopotentials) and Slurm (a one-node cluster on 127.0.0.1, see tests/slurm/).
# Installs what is missing when run as root; otherwise says what the tests will skip.
set -euo pipefail
packages=(quantum-espresso quantum-espresso-data slurmctld slurmd slurm-client munge)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "system packages present: ${packages[*]}"
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  echo "not installing ${missing[*]} (needs root and apt-get); tests that need pw.x or Slurm will be skipped" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "installed: ${missing[*]}"
