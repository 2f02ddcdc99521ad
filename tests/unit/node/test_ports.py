import socket
from pathlib import Path

import pytest

from slurm_llm import EngineError
from slurm_llm.node._ports import lease_port


def test_two_leases_never_share_a_port(tmp_path: Path) -> None:
    leases = [lease_port("127.0.0.1", (30000, 30010), tmp_path) for _ in range(10)]
    assert len({lease.port for lease in leases}) == 10
    with pytest.raises(EngineError, match="no free port"):
        lease_port("127.0.0.1", (30000, 30010), tmp_path)
    leases[3].release()
    assert lease_port("127.0.0.1", (30000, 30010), tmp_path).port == leases[3].port


def test_a_port_in_use_by_another_program_is_skipped(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(EngineError):
            lease_port("127.0.0.1", (port, port + 1), tmp_path)
