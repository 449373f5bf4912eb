# Sourced by the GPU-machine scripts: make `import relaycore` see the installed layout
# (relaycore/ with reference/, fast/ and proofs/ mapped in as subpackages, as pyproject maps
# them) without pip, which has no registry there to fetch build requirements from.
# Usage: source scripts/mapped_site.sh <repo root>   — prepends the site to PYTHONPATH and sets
# RELAYCORE_SITE; run Python from outside the repository root afterwards, where the bare
# relaycore/ directory would shadow the mapped package.
relaycore_root="$1"
RELAYCORE_SITE="$(mktemp -d)"
mkdir -p "$RELAYCORE_SITE/relaycore"
cp -r "$relaycore_root/relaycore/." "$RELAYCORE_SITE/relaycore/"
for sub in reference fast proofs; do ln -sfn "$relaycore_root/$sub" "$RELAYCORE_SITE/relaycore/$sub"; done
export RELAYCORE_SITE
export PYTHONPATH="$RELAYCORE_SITE${PYTHONPATH:+:$PYTHONPATH}"
