"""How CI schedules this suite (`pytest -n 2 --dist loadgroup`, tests/conftest.py): the tests that
share a module-scoped fixture or an `xdist_group` mark run in one process, one after another, so the
fixture is built once and the big-process tests never run beside each other; the rest spreads over
both processes. Checked on a small suite of sleeping tests run the same way."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

HERE = Path(__file__).resolve().parent

RECORD = """
import json, os, time

def record(name, log):
    began = time.time()
    time.sleep(0.5)
    with open(log, "a") as f:
        f.write(json.dumps([name, os.environ["PYTEST_XDIST_WORKER"], began, time.time()]) + "\\n")
"""


def test_grouped_tests_run_in_one_process_one_after_another(tmp_path):
    log = tmp_path / "log.jsonl"
    # The suite's own hooks; without its torchvision import, which only costs time here.
    hooks = (HERE / "conftest.py").read_text().replace("\nimport torchvision\n", "\n")
    (tmp_path / "conftest.py").write_text(hooks)
    (tmp_path / "record.py").write_text(RECORD)
    (tmp_path / "test_a.py").write_text(
        textwrap.dedent(f"""
        import pytest
        from record import record

        @pytest.mark.xdist_group("big_processes")
        def test_big_a():
            record("big_a", {str(log)!r})

        @pytest.mark.parametrize("i", range(4))
        def test_free_a(i):
            record(f"free_a{{i}}", {str(log)!r})
        """)
    )
    (tmp_path / "test_b.py").write_text(
        textwrap.dedent(f"""
        import pytest
        from record import record

        @pytest.fixture(scope="module")
        def shared():
            record("fixture", {str(log)!r})

        @pytest.mark.xdist_group("big_processes")
        def test_big_b(shared):
            record("big_b", {str(log)!r})

        def test_shares_the_fixture(shared):  # in the group through the fixture
            record("shares", {str(log)!r})

        @pytest.mark.parametrize("i", range(4))
        def test_free_b(i):
            record(f"free_b{{i}}", {str(log)!r})
        """)
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "loadgroup", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    runs = {
        name: (worker, began, ended) for name, worker, began, ended in map(json.loads, log.read_text().splitlines())
    }
    assert len(runs) == 12
    group = ["big_a", "big_b", "fixture", "shares"]
    assert len({runs[name][0] for name in group}) == 1, runs  # one process (and the fixture built once)
    assert {worker for worker, _, _ in runs.values()} == {"gw0", "gw1"}, runs  # the rest spread over both
