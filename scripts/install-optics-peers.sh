#!/usr/bin/env bash
# Install the peer optics libraries that `dmicro bench optics --peers VENV` compares against into
# a separate virtual environment (never into the project's: they are not dependencies).
#   bash scripts/install-optics-peers.sh [VENV=.venv-peers]
# torch is pinned to the version of the python that runs this script (the CPU wheel here), so no
# peer can pull another (multi-GB CUDA) torch; setuptools < 81 keeps pkg_resources, which prysm
# imports. A peer that does not install is reported, not fatal.
set -uo pipefail
VENV=${1:-.venv-peers}
PEERS=(odak svetlanna torchoptics hcipy prysm diffractsim)
TORCH=$(python3 -c "import torch; print(torch.__version__.split('+')[0])" 2>/dev/null || echo "")
python3 -m venv "$VENV" || exit 1
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
CONSTRAINTS="$VENV/constraints.txt"
if [ -n "$TORCH" ]; then
    echo "torch==$TORCH" > "$CONSTRAINTS"
    "${PIP[@]}" "torch==$TORCH" numpy scipy "setuptools<81" || exit 1
else
    : > "$CONSTRAINTS"
    "${PIP[@]}" "torch==2.13.*" numpy scipy "setuptools<81" || exit 1
fi
ok=()
for p in "${PEERS[@]}"; do
    if "${PIP[@]}" -c "$CONSTRAINTS" "$p" >"$VENV/install-$p.log" 2>&1; then
        ok+=("$p")
        echo "installed $p"
    else
        echo "could not install $p (see $VENV/install-$p.log)"
    fi
done
"$VENV/bin/python" -m pip freeze > "$VENV/peers-freeze.txt"
echo "peer venv $VENV: ${ok[*]:-none}"
