# Set up peerkd's dependencies on the GPU machine (no network, no package index there).
# Source it at the start of a device command, with `.whl` named in carry:
#     source benchmarks/gpu_setup.sh || exit 1
#     python3 -m simulations.cli run ...
# .whl/ (git-ignored, built here per ../shared/gpu/README.md) holds cp312 wheels of what the image
# lacks, plus the exact protobuf/packaging/typer/rich/fsspec versions flwr 1.39 and datasets accept
# (the image's newer ones break them); .whl/fallback/ holds older or spare wheels used only when
# the image's own versions miss a requirement, and .whl/reqcheck.py is a copy of
# ../shared/gpu/reqcheck.py (../shared does not travel). The image keeps torch.

_gpu_setup() {
    local root site=/tmp/site
    root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    if ! ls "$root"/.whl/*.whl >/dev/null 2>&1; then
        echo "gpu_setup: FAILED: no wheels in $root/.whl (name .whl in the run's carry)"
        return 1
    fi

    # A fresh folder each time, so no stale fallback is left beside a reinstalled wheel (about 6 s).
    rm -rf "$site"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$root"/.whl/*.whl ||
        { echo "gpu_setup: FAILED: pip install of .whl/*.whl into $site"; return 1; }
    export PYTHONPATH="$site:$root" PATH="$site/bin:$PATH"
    export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 RAY_USAGE_STATS_ENABLED=0

    # Requirements the image's versions miss (a grpcio older than 1.81.1, say): the first pass swaps
    # in .whl/fallback wheels, the second reports what is still unmet. uv is left out on purpose
    # (only Flower's `uv sync` uses it). Not fatal: the imports below decide.
    if [ -f "$root/.whl/reqcheck.py" ]; then
        local log=/tmp/gpu_setup_reqcheck
        (cd "$root" && python3 .whl/reqcheck.py runtime "$site" --fix .whl/fallback --ignore uv) >$log.1 2>&1 ||
            (cd "$root" && python3 .whl/reqcheck.py runtime "$site" --ignore uv) >$log.2 2>&1 ||
            { echo "gpu_setup: warning: requirements still unmet (logs $log.1, $log.2):"; grep '^UNMET' $log.2; }
        sed -n 's/^installing fallback/gpu_setup: &/p' $log.1
    fi

    # The imports a run needs (grpc_health's stubs refuse an older grpcio); one line either way.
    timeout 300 python3 - <<'EOF'
import sys
try:
    import flwr, ray, hydra, omegaconf, mlxtend, mnist1d, flwr_datasets, datasets, torch, grpc
    import grpc_health.v1.health_pb2_grpc, google.protobuf
    from importlib.metadata import version
except Exception as e:  # any import error, or RuntimeError from a version check
    print(f"gpu_setup: FAILED import: {type(e).__name__}: {e}")
    sys.exit(1)
print(f"gpu_setup: ok: torch {torch.__version__} cuda={torch.cuda.is_available()} flwr {version('flwr')} "
      f"ray {ray.__version__} grpcio {grpc.__version__} protobuf {google.protobuf.__version__}")
EOF
}

_gpu_setup
_gpu_setup_rc=$?
unset -f _gpu_setup
# `return` when sourced; `exit` when run as a script (then the exports do not outlive it).
return $_gpu_setup_rc 2>/dev/null || exit $_gpu_setup_rc
