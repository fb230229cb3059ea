"""Device selection says one clear line; serving never imports torch or matplotlib."""

from __future__ import annotations

import subprocess
import sys

from tests.servers import TestGateway


def test_auto_device_reports_its_choice_in_one_line_per_backend(gateway: TestGateway) -> None:
    log = gateway.log()
    for role in ("teacher", "student"):
        choices = [line for line in log.splitlines() if f"{role}: device auto ->" in line]
        assert len(choices) == 1, log
    assert "[E:onnxruntime" not in log
    assert "Failed to create CUDAExecutionProvider" not in log


def test_serving_needs_neither_the_training_nor_the_plotting_stack() -> None:
    probe = (
        "import sys\n"
        "for name in ('torch', 'matplotlib', 'sklearn', 'onnx'):\n"
        "    sys.modules[name] = None  # any import of them now fails\n"
        "import gateway.cli, gateway.app, gateway.backends.onnx, gateway.backends.triton\n"
        "import controller.cli, controller.rollout, controller.local.traffic\n"
        "from gateway.config import load_settings\n"
        "load_settings(None)\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
