#!/usr/bin/env bash
# The GPU checks of the performance work, in one call on a machine with a CUDA build of torch (and
# this package's dependencies) in the active Python: the statistics on the GPU against float64 by
# hand, then the overhead benchmark on the GPU (about 10 minutes). Prints the device first.
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'; print(torch.__version__, torch.cuda.get_device_name(0))"
python -m pytest -q -p no:cacheprovider tests/core/test_devices.py  # statistics and attention weights
python benchmarks/overhead.py --device cuda --rounds 3 --windows 4 --models mlp transformer "$@"
