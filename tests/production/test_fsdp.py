"""FSDP2 (``fully_shard``) on two CPU processes, without Lightning: statistics are reduced to the
same values on every rank, and the feeding layers' gradient norms, read from sharded DTensor
gradients, equal the norms of the full gradients."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # two processes started and joined: tens of seconds

SCRIPT = Path(__file__).with_name("fsdp_script.py")
TIMEOUT_S = 180


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("fsdp")
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_PORT", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK")}
    env["PYTHONWARNINGS"] = "ignore"
    try:
        proc = subprocess.run([sys.executable, str(SCRIPT), str(out), _free_port()], env=env, capture_output=True,
                              text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"FSDP run hung (> {TIMEOUT_S} s)")
    assert proc.returncode == 0, f"exit {proc.returncode}\n{(proc.stdout + proc.stderr)[-4000:]}"
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_fsdp_statistics_agree_across_ranks_without_failure(ranks):
    r0, r1 = ranks
    assert r0["failure"] is None and r1["failure"] is None and r0["warnings"] == r1["warnings"] == []
    assert r0["stats"] == r1["stats"] and sorted(r0["stats"]) == ["1", "3"]
    for st in r0["stats"].values():
        assert st["calls"] == 2 * 3  # two ranks, three steps
        assert st["grad_rms"] is not None and st["firing_rate"] is not None


def test_fsdp_feeding_layer_norms_are_the_full_gradient_norms(ranks):
    for r in ranks:
        for site, expected in r["param_grad_norm_by_hand"].items():
            assert r["stats"][site]["param_grad_norm"] == pytest.approx(expected, rel=1e-5), site
