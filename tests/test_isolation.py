"""Hostile and benign programs against optima_nb.isolation: every hostile run must end ok=False with a recorded
reason, and this test process (the sandbox's parent) must come out unharmed."""
import asyncio
import os
import re
import time
from pathlib import Path

import pytest

from optima_nb.isolation import (SandboxLimits, arun_workflows, run_code, run_tests, run_workflow, run_workflows)

FAST = SandboxLimits(wall_s=1.5, cpu_s=5, memory_mb=256)
AS_ROOT = os.geteuid() == 0
SECRET = "optima-test-secret-7f3a"

# (id, code, expected reason: a regex matched from the start). `{canary}` is a file outside the sandbox,
# `{outside}` a path next to it that must not be created.
HOSTILE_CODE = [
    ("infinite_loop", "while True:\n    pass", "timeout$"),
    ("sleep_forever", "import time\ntime.sleep(1000)", "timeout$"),
    ("fork_bomb", "import os\nwhile True:\n    os.fork()", "blocked: import os$"),
    ("fork_bomb_via_allowed_module", "import random\nwhile True:\n    random._os.fork()", "blocked: os.fork$"),
    ("shell_fork_bomb", "import asyncio\nasyncio.base_events.subprocess.Popen(['sh', '-c', ':(){{ :|:& }};:'])",
     "blocked: subprocess.Popen$"),
    ("memory_bomb", "x = bytearray(10**10)", "memory$"),
    ("memory_growth", "xs = []\nwhile True:\n    xs.append(bytearray(10**7))", "memory$"),
    ("deep_recursion", "def f(n):\n    return f(n + 1) + 1\nf(0)", "exception: RecursionError"),
    ("huge_output", "while True:\n    print('x' * 10000)", "output_limit$"),
    ("write_outside", "open({outside!r}, 'w').write('escaped')", "blocked: open for writing outside"),
    ("write_outside_relative", "open('../escaped.txt', 'w').write('escaped')", "blocked: open for writing outside"),
    ("delete_canary", "import random\nrandom._os.remove({canary!r})", "blocked: os.remove outside"),
    ("rename_canary", "import random\nrandom._os.rename({canary!r}, {outside!r})", "blocked: os.rename outside"),
    ("truncate_canary", "open({canary!r}, 'w').close()", "blocked: open for writing outside"),
    ("read_env_secret", "import random\nraise RuntimeError(random._os.environ.get('OPTIMA_TEST_SECRET'))",
     "exception: RuntimeError: None$"),
    ("read_parent_environ", "import random\nprint(open(f'/proc/{{random._os.getppid()}}/environ').read())",
     "blocked: open for reading outside"),
    ("import_os_then_harm", "import os\nos.system('touch {outside}')", "blocked: import os$"),
    ("dunder_import_os", "__import__('os').system('touch {outside}')", "blocked: import os$"),
    ("import_subprocess", "import subprocess\nsubprocess.run(['touch', {outside!r}])", "blocked: import subprocess$"),
    ("import_ctypes", "import ctypes\nctypes.CDLL(None).kill(0, 9)", "blocked: import ctypes$"),
    ("ctypes_via_sys_modules", "import asyncio\nc = asyncio.base_events.sys.modules['ctypes']\nc.CDLL(None).kill(0, 9)",
     "blocked: ctypes"),
    ("import_socket", "import socket\nsocket.create_connection(('1.1.1.1', 80))", "blocked: import socket$"),
    ("socket_via_allowed_module", "import asyncio\ns = asyncio.base_events.socket.socket()\ns.connect(('1.1.1.1', 80))",
     "blocked: socket.__new__$"),
    ("kill_parent", "import random\nrandom._os.kill(random._os.getppid(), 9)", "blocked: os.kill$"),
    ("kill_parent_group", "import random\no = random._os\no.killpg(o.getpgid(o.getppid()), 9)", "blocked: os.killpg$"),
    ("sys_exit", "raise SystemExit(0)", "exit 0$"),
    ("hard_exit_without_result", "import random\nrandom._os._exit(0)", "exit 0 without a result$"),
    ("import_signal", "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)", "blocked: import signal$"),
    ("ignore_sigterm_then_loop",
     "import asyncio\ns = asyncio.unix_events.signal\ns.signal(s.SIGTERM, s.SIG_IGN)\nwhile True:\n    pass", "timeout$"),
    ("many_files", "for i in range(1000):\n    open(f'f{{i}}', 'w').close()", "blocked: too many files$"),
    ("huge_file", "open('big.bin', 'w').write('x' * (64 * 2**20))", "file_size$"),
    ("gc_walk_past_the_import_filter",
     "import asyncio\nreal_import = asyncio.base_events.sys.modules['builtins'].__import__\nreal_import('gc').get_objects()",
     "blocked: import gc$"),
    ("path_object_that_lies",  # names the canary once, then a harmless file: the guard sees the path actually used
     "import random\nclass P:\n    calls = 0\n    def __fspath__(self):\n        P.calls += 1\n"
     "        return {canary!r} if P.calls == 1 else 'harmless.txt'\nrandom._os.remove(P())",
     "blocked: os.remove outside the sandbox"),
    ("str_subclass_fools_import_filter", "class S(str):\n    def partition(self, sep):\n        return ('math', '', '')\n"
     "__import__(S('os')).system('touch {outside}')", "blocked: import os$"),
    ("forge_result_on_pipe", "open(3, 'w').write('{{\"t\": \"result\", \"ok\": true}}\\n')", "blocked: open of descriptor"),
]


@pytest.fixture
def canary(tmp_path, monkeypatch):
    "A file outside any sandbox that must survive, and a secret in our environment that must not leak."
    monkeypatch.setenv("OPTIMA_TEST_SECRET", SECRET)
    path = tmp_path / "canary.txt"
    path.write_text("still here")
    return path


@pytest.mark.parametrize("name,code,expected", HOSTILE_CODE, ids=[c[0] for c in HOSTILE_CODE])
def test_hostile_code_fails_cleanly(name, code, expected, canary):
    outside = canary.parent / "escaped.txt"
    start = time.monotonic()
    r = run_code(code.format(canary=str(canary), outside=str(outside)), limits=FAST)
    assert r.ok is False and r.value is None
    assert r.reason and re.match(expected, r.reason), (r.reason, r.stderr[-500:])
    assert time.monotonic() - start < FAST.wall_s + 5          # a hung child was killed in time
    assert canary.read_text() == "still here"                  # nothing outside was touched
    assert not outside.exists() and not (canary.parent.parent / "escaped.txt").exists()
    assert SECRET not in r.stdout + r.stderr + str(r.reason)   # our environment never reached the child
    assert os.getppid() > 1                                     # and we are alive to check all this


def test_cpu_time_limit():
    r = run_code("while True:\n    pass", limits=SandboxLimits(wall_s=10, cpu_s=1))
    assert (r.ok, r.reason) == (False, "cpu_time") and r.wall_s < 5


def test_huge_return_value_hits_message_cap():
    r = run_code("def f():\n    return 'x' * 5_000_000\n", entry="f", limits=FAST)
    assert (r.ok, r.reason) == (False, "output_limit")


def test_allowed_modules_work_in_the_sandbox():
    code = ("import datetime, fractions, random, re, statistics\nfrom collections import Counter\n"
            "def f():\n    random.seed(0)\n"
            "    return [datetime.datetime.strptime('2024-01-02', '%Y-%m-%d').day, str(fractions.Fraction(1, 3) * 3),\n"
            "            statistics.mean([1, 2, 3]), Counter('aab')['a'], re.findall(r'\\d', 'a1b2'), len(str(random.random()))]\n")
    r = run_code(code, entry="f")
    assert r.ok and r.value[:5] == [2, "1", 2, 2, ["1", "2"]], (r.reason, r.stderr[-800:])


# ---- unit tests: hostile solutions score 0 -------------------------------------------------------------
CHECK = "def check(candidate):\n    assert candidate(2) == 4\n"


@pytest.mark.parametrize("solution,expected", [
    ("raise SystemExit(0)\ndef double(x):\n    return 2 * x\n", "exit 0$"),
    ("def double(x):\n    while True:\n        pass\n", "timeout$"),
    ("import os\ndef double(x):\n    return 2 * x\n", "blocked: import os$"),
    ("def double(x):\n    return x\n", "exception: AssertionError"),
], ids=["exit_before_tests", "hang_in_solution", "import_os", "wrong_answer"])
def test_hostile_or_wrong_solution_fails(solution, expected):
    r = run_tests(solution, CHECK, "double", limits=FAST)
    assert r.ok is False and re.match(expected, r.reason), r.reason


def test_correct_solutions_pass_all_test_formats():
    solution = "def double(x):\n    return 2 * x\n"
    assert run_tests(solution, CHECK, "double").ok                                        # HumanEval
    assert run_tests(solution, "def check():\n    assert double(3) == 6\n", "double").ok  # MBPP (AFlow form)
    assert run_tests(solution, ["assert candidate(5) == 10", "assert candidate(0) == 0"], "double").ok  # public
    assert run_tests("import math\ndef double(x):\n    return math.prod([2, x])\n", CHECK, "double").ok


# ---- workflows ----------------------------------------------------------------------------------------
def _echo_ops():
    async def custom(instruction=""): return f"answer to {instruction}"
    return {"custom": custom}


@pytest.mark.parametrize("body,expected", [
    ("        await asyncio.Future()", "timeout$"),
    ("        while True:\n            pass", "timeout$"),
    ("        while True:\n            await self.custom('again')", "operator_limit$"),
    ("        await asyncio.gather(*[self.custom(str(i)) for i in range(10000)])", "operator_limit$"),
    ("        await self.custom('x' * 5_000_000)", "output_limit$"),
    ("        import os\n        return os.getcwd()", "blocked: import os$"),
], ids=["awaits_forever", "busy_forever", "floods_sequentially", "floods_concurrently", "oversized_request", "imports_os"])
def test_hostile_workflows_fail(body, expected):
    code = f"import asyncio\nclass Workflow:\n    async def run_workflow(self):\n{body}\n"
    start = time.monotonic()
    r = run_workflow(code, "Workflow", _echo_ops(), "p", limits=FAST)
    assert r.ok is False and re.match(expected, r.reason), r.reason
    assert time.monotonic() - start < FAST.wall_s + 5


def test_workflow_returns_operator_results():
    code = ("class Workflow:\n    async def run_workflow(self):\n"
            "        a = await self.custom(instruction=self.problem)\n        return [a, await self.double(21)]\n")
    ops = {**_echo_ops(), "double": lambda x: 2 * x}   # sync operators run in a worker thread
    r = run_workflow(code, "Workflow", ops, "2+2")
    assert (r.ok, r.value, r.operator_calls, r.reason) == (True, ["answer to 2+2", 42], 2, None)


class ConcurrencyMeter:
    "An async operator that records how many calls are in flight at once."
    def __init__(self): self.active = self.peak = self.calls = 0
    async def __call__(self, text):
        self.active += 1; self.calls += 1; self.peak = max(self.peak, self.active)
        await asyncio.sleep(0.3)
        self.active -= 1
        return text.upper()


def test_concurrent_workflows_reach_the_parent_together():
    meter = ConcurrencyMeter()
    code = "class Workflow:\n    async def run_workflow(self):\n        return await self.generate(self.problem)\n"
    problems = [f"q{i}" for i in range(6)]
    results = asyncio.run(arun_workflows([code] * 6, "Workflow", {"generate": meter}, problems))
    assert [r.value for r in results] == [p.upper() for p in problems]
    assert meter.calls == 6 and meter.peak > 1, meter.peak


def test_gathered_operator_calls_of_one_workflow_overlap():
    meter = ConcurrencyMeter()
    code = ("import asyncio\nclass Workflow:\n    async def run_workflow(self):\n"
            "        return await asyncio.gather(*[self.generate(f'{self.problem}{i}') for i in range(4)])\n")
    r = run_workflows([code], "Workflow", {"generate": meter}, ["s"])[0]
    assert r.ok and r.value == ["S0", "S1", "S2", "S3"] and meter.peak == 4


# ---- housekeeping and the OS layers on their own ------------------------------------------------------
def test_private_folder_is_removed_and_no_process_is_left():
    r = run_code("import random\ndef where():\n    return random._os.getcwd()\n", entry="where")
    assert r.ok and "optima-sandbox-" in r.value and not Path(r.value).exists()
    uids = [int(layer.split()[1]) for layer in r.layers if layer.startswith("uid ")]
    for uid in uids:
        assert not [p for p in Path("/proc").iterdir() if p.name.isdigit() and _owner(p) == uid]


def _owner(proc_dir):
    try: return proc_dir.stat().st_uid
    except OSError: return None


needs_root = pytest.mark.skipif(not AS_ROOT, reason="the per-run uid layer needs the parent to run as root")
NO_GUARDS = SandboxLimits(wall_s=3, python_guards=False)


@needs_root
def test_layers_as_root():
    r = run_code("x = 1")
    assert {"rlimits", "netns", "audit-hook", "import-filter", "parent-death-signal"} <= set(r.layers), r.layers
    assert any(layer.startswith("uid ") for layer in r.layers)


@needs_root
@pytest.mark.parametrize("code,expected", [
    ("import os\nos.kill(os.getppid(), 9)", "exception: PermissionError"),
    ("import os\nos.fork()", "exception: BlockingIOError"),
    ("import os\nos.remove({canary!r})", "exception: PermissionError"),
    ("import os\nprint(open(f'/proc/{{os.getppid()}}/environ').read())", "exception: PermissionError"),
    ("import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)", "exception: OSError: \\[Errno 101\\]"),
], ids=["kill_parent", "fork", "delete_canary", "read_parent_environ", "network"])
def test_os_layers_hold_without_python_guards(code, expected, canary):
    r = run_code(code.format(canary=str(canary)), limits=NO_GUARDS)
    assert r.ok is False and re.match(expected, r.reason), (r.reason, r.layers)
    assert canary.read_text() == "still here"
