"""Hostile and benign programs against optima_nb.isolation: every hostile run must end ok=False with a recorded
reason, and this test process (the sandbox's parent) must come out unharmed."""
import asyncio
import json
import os
import re
import socket
import time
import uuid
from pathlib import Path

import pytest

from optima_nb.isolation import arun_workflows, run_code, run_tests, run_workflow, run_workflows
from optima_nb.jail import Opaque, SandboxLimits, _landlock_abi, decode_value, encode_value

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
    assert {"rlimits", "netns", "mount-namespace", "pivot_root", "seccomp", "audit-hook", "import-filter",
            "parent-death-signal"} <= set(r.layers), r.layers
    assert any(layer.startswith("uid ") for layer in r.layers)
    assert any(layer.startswith("landlock") for layer in r.layers) or _landlock_abi() == 0


@needs_root
@pytest.mark.parametrize("code,expected", [
    ("import os\nos.kill(os.getppid(), 9)", "exception: PermissionError"),
    ("import os\nos.fork()", "exception: BlockingIOError"),
    ("import os\nos.remove({canary!r})", "exception: FileNotFoundError"),            # not even visible
    ("import os\nprint(open(f'/proc/{{os.getppid()}}/environ').read())", "exception: FileNotFoundError"),  # no /proc
    ("import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)", "exception: (OSError|PermissionError)"),
], ids=["kill_parent", "fork", "delete_canary", "read_parent_environ", "network"])
def test_os_layers_hold_without_python_guards(code, expected, canary):
    r = run_code(code.format(canary=str(canary)), limits=NO_GUARDS)
    assert r.ok is False and re.match(expected, r.reason), (r.reason, r.layers)
    assert canary.read_text() == "still here"



# ---- the kernel is the boundary: guards patched away (issue 14) or switched off --------------------------------
# The guards live in the child's own interpreter; this prefix reaches the guard module through an allowed import and
# replaces its verdict function, then takes `os` and `ctypes` the same way. Whatever it does next, the kernel decides.
PATCH_GUARDS = ("import asyncio\nsys = asyncio.base_events.sys\niso = sys.modules['optima_nb.jail']\n"
                "iso.audit_verdict = lambda *a, **k: None\niso.GuardPolicy.__init__ = lambda *a, **k: None\n"
                "os = asyncio.base_events.os\n")
GUARD_MODES = {"guards_patched": SandboxLimits(wall_s=3), "guards_off": SandboxLimits(wall_s=3, python_guards=False)}


@pytest.fixture
def world(tmp_path, monkeypatch):
    "Things outside the sandbox: a canary, a file in a world-writable (non-sticky) folder, names that must not appear."
    monkeypatch.setenv("OPTIMA_TEST_SECRET", SECRET)
    canary = tmp_path / "canary.txt"; canary.write_text("still here")
    shared = tmp_path / "shared"; shared.mkdir(); shared.chmod(0o777)
    victim = shared / "victim.txt"; victim.write_text("keep me"); victim.chmod(0o666)
    tmp_path.chmod(0o755)
    tag = uuid.uuid4().hex[:12]
    new = [Path(f"/tmp/optima-escape-{tag}"), Path(f"/dev/shm/optima-escape-{tag}"), shared / f"new-{tag}",
           Path(os.__file__ + f".{tag}")]
    yield {"canary": canary, "victim": victim, "shared": shared, "new": new}
    for path in new:
        if path.exists(): path.unlink()


# (id, code: after PATCH_GUARDS, formatted with the `world` paths, and `assert_held(result, world)`)
ESCAPES = [
    ("write_tmp", "open({new[0]!r}, 'w').write('x')", None),
    ("write_dev_shm", "open({new[1]!r}, 'w').write('x')", None),
    ("write_world_writable_folder", "open({new[2]!r}, 'w').write('x')", None),
    ("write_next_to_the_stdlib", "open({new[3]!r}, 'w').write('x')", None),
    ("delete_in_world_writable_folder", "os.remove({victim!r})", None),
    ("truncate_in_world_writable_folder", "open({victim!r}, 'w').close()", None),
    ("rename_in_world_writable_folder", "os.rename({victim!r}, {new[2]!r})", None),
    ("read_etc_passwd", "print(open('/etc/passwd').read())", lambda r, w: "root:" not in r.stdout),
    ("read_canary", "print(open({canary!r}).read())", lambda r, w: "still here" not in r.stdout),
    ("list_root", "print(sorted(os.listdir('/')))", lambda r, w: "'etc'" not in r.stdout and "'usr'" not in r.stdout),
    ("list_outside_folder", "print(os.listdir({shared!r}))", lambda r, w: "victim" not in r.stdout),
    ("stat_outside_file", "print('SIZE', os.stat({canary!r}).st_size)", lambda r, w: "SIZE" not in r.stdout),
    ("scandir_home", "print([e.name for e in os.scandir(os.path.expanduser('~root'))])", lambda r, w: "[" not in r.stdout),
    ("read_parent_environ", "print(open(f'/proc/{{os.getppid()}}/environ').read())", lambda r, w: SECRET not in r.stdout),
    ("list_processes", "print(os.listdir('/proc'))", lambda r, w: "[" not in r.stdout),
    ("kill_parent", "os.kill(os.getppid(), 9)", None),
    ("kill_init_probe", "os.kill(1, 0)\nprint('SIGNALLED')", lambda r, w: "SIGNALLED" not in r.stdout),
    ("symlink_out", "os.symlink('/etc', 'e')\nprint(open('e/passwd').read())", lambda r, w: "root:" not in r.stdout),
    ("ctypes_mount_unshare_ptrace",
     "c = sys.modules['ctypes'].CDLL(None, use_errno=True)\n"
     "rcs = [c.unshare(0x10000000 | 0x20000), c.mount(b'none', b'/', b'tmpfs', 0, None), c.ptrace(16, os.getppid(), 0, 0),\n"
     "       c.umount2(b'/', 2), c.chroot(b'/')]\nprint('RCS', rcs)\nraise RuntimeError('every call refused' if set(rcs) == {{-1}} else rcs)",
     lambda r, w: "RCS" not in r.stdout or "every call refused" in r.reason),
    ("setuid_root", "os.setuid(0)\nprint('ROOT', os.getuid())", lambda r, w: "ROOT 0" not in r.stdout or not AS_ROOT),
    ("chmod_private_folder_then_escape", "os.chmod('.', 0o777)\nos.chdir('..')\nopen('x', 'w').write('x')", None),
]


@pytest.mark.parametrize("mode", sorted(GUARD_MODES))
@pytest.mark.parametrize("name,code,held", ESCAPES, ids=[e[0] for e in ESCAPES])
def test_kernel_holds_when_guards_are_patched_or_off(name, code, held, mode, world):
    fmt = {k: str(v) for k, v in world.items() if k != "new"}
    r = run_code(PATCH_GUARDS + code.format(new=[str(p) for p in world["new"]], **fmt), limits=GUARD_MODES[mode])
    assert r.ok is False, (r.stdout[-300:], r.layers)
    if mode == "guards_off": assert r.reason.startswith("exception: "), r.reason     # the kernel said no
    assert world["canary"].read_text() == "still here" and world["victim"].read_text() == "keep me"
    assert not any(p.exists() for p in world["new"]), [p for p in world["new"] if p.exists()]
    assert held is None or held(r, world), r.stdout[-500:]
    assert SECRET not in r.stdout + r.stderr
    assert os.getppid() > 1


def test_network_namespace_has_no_route_to_our_listener():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0)); server.listen(); server.settimeout(0.2)
        port = server.getsockname()[1]
        code = PATCH_GUARDS + (f"s = sys.modules['socket'].socket()\ns.settimeout(1)\ns.connect(('127.0.0.1', {port}))\n"
                               "print('CONNECTED')")
        for limits in GUARD_MODES.values():
            r = run_code(code, limits=limits)
            assert r.ok is False and "CONNECTED" not in r.stdout, r.reason
        with pytest.raises(socket.timeout): server.accept()


@pytest.mark.parametrize("code,expected", [
    ("import os\nwhile True:\n    os.fork()", "exception: BlockingIOError"),
    ("import threading\nwhile True:\n    threading.Thread(target=lambda: None).start()", "exception: RuntimeError"),
    ("x = bytearray(10**10)", "memory$"),
    ("xs = []\nwhile True:\n    xs.append(bytearray(10**7))", "memory$"),
    ("while True:\n    pass", "timeout$"),
    ("for i in range(10**6):\n    open(f'f{i}', 'w').close()", "exception: OSError: \\[Errno 28\\]"),
    ("for i in range(100):\n    open(f'f{i}', 'w').write('x' * 2**22)", "(exception: OSError: \\[Errno 28\\]|file_size)"),
], ids=["fork_bomb", "thread_bomb", "memory_bomb", "memory_growth", "infinite_loop", "inode_flood", "disk_flood"])
def test_resource_limits_hold_without_guards(code, expected):
    r = run_code(code, limits=SandboxLimits(wall_s=2, cpu_s=5, memory_mb=256, python_guards=False))
    assert r.ok is False and re.match(expected, r.reason), (r.reason, r.stderr[-300:])


def test_refusal_when_the_jail_cannot_be_built(monkeypatch):
    "A machine without the kernel features: the run is refused with the reason, or runs only when allowed to."
    r = run_code("x = 1", limits=SandboxLimits(max_disk_mb=-1))          # an impossible tmpfs: the jail step fails
    assert r.ok is False and r.reason.startswith("sandbox unavailable: "), r.reason
    r = run_code("def f():\n    return 1\n", entry="f", limits=SandboxLimits(max_disk_mb=-1, require_kernel_jail=False))
    assert r.ok and any(layer.startswith("no jail") for layer in r.layers), (r.reason, r.layers)


# ---- forged verdicts (issue 14, item 2) ---------------------------------------------------------------------
CHECK3 = ("def check(candidate):\n    assert all(map(candidate, [1, 2]))\n    assert candidate(2) == 4\n"
          "    assert candidate(3) == 6\n    assert candidate(0) == 0\n")
FORGE_ALL_FDS = ("import asyncio\nos = asyncio.base_events.os\n"
                 "LINES = (b'{{\"t\": \"ready\"}}\\n{{\"t\": \"ret\", \"id\": 0, \"ok\": true, \"value\": 4}}\\n'\n"
                 "         b'{{\"t\": \"result\", \"ok\": true, \"value\": null}}\\n{{\"t\": \"hello\", \"layers\": []}}\\n')\n"
                 "def forge():\n    for fd in range(3, 64):\n        try: os.write(fd, LINES)\n        except OSError: pass\n")


@pytest.mark.parametrize("solution", [
    FORGE_ALL_FDS + "forge()\ndef double(x):\n    return x\n",
    FORGE_ALL_FDS + "def double(x):\n    forge()\n    return x\n",
    FORGE_ALL_FDS + "def double(x):\n    forge()\n    os._exit(0)\n",
    "class Yes:\n    def __eq__(self, other): return True\n    def __ne__(self, other): return False\n"
    "def double(x):\n    return Yes()\n",
    "class LyingInt(int):\n    def __eq__(self, other): return True\ndef double(x):\n    return LyingInt(x)\n",
    "class Meta(type):\n    def __eq__(cls, other): return True\nclass C(metaclass=Meta): pass\ndef double(x):\n    return C\n",
    "def double(x):\n    return NotImplemented\n",
    "def double(x):\n    __builtins__['AssertionError'] = StopIteration\n    return x\n",
    "import asyncio\nb = asyncio.base_events.sys.modules['builtins']\nb.AssertionError = KeyboardInterrupt\n"
    "b.isinstance = lambda *a: True\ndef double(x):\n    return x\n",
    "import asyncio\niso = asyncio.base_events.sys.modules['optima_nb.jail']\n"
    "iso.encode_value = lambda v, depth=0: 4\ndef double(x):\n    return x\n",
    "import asyncio\niso = asyncio.base_events.sys.modules['optima_nb.jail']\n"
    "iso._run_job = lambda *a: {'t': 'result', 'ok': True, 'value': None}\ndef double(x):\n    return x\n",
    "def check(candidate):\n    pass\ndef double(x):\n    return x\n",
    "def double(x):\n    raise SystemExit(0)\n",
    "def double(x):\n    import gc\n    return x\n",
    "import asyncio\nasyncio.base_events.os._exit(0)\ndef double(x):\n    return 2 * x\n",
    "def double(x):\n    while True:\n        pass\n",
    "def double(x):\n    return bytearray(10**10)\n",
    "def double(x):\n    return (yield 2 * x)\n",
    "def double(x):\n    raise StopIteration\n",
], ids=["forge_before_ready", "forge_in_call", "forge_then_exit", "always_equal", "lying_int_subclass",
        "lying_metaclass", "not_implemented", "builtins_dict_override", "builtins_module_override",
        "patch_encoder_constant", "patch_runner_result", "own_check", "exit_in_call", "blocked_import_in_call",
        "exit_before_ready", "hang_in_call", "memory_in_call", "generator", "stop_iteration_ends_map"])
def test_forged_or_wrong_solutions_fail(solution):
    r = run_tests(solution, CHECK3, "double", limits=FAST)
    assert r.ok is False, (r.reason, r.stdout[-300:], r.stderr[-300:])
    r = run_tests(solution, CHECK3, "double", limits=SandboxLimits(wall_s=1.5, memory_mb=256, python_guards=False))
    assert r.ok is False, (r.reason, r.stderr[-300:])


def test_forged_result_line_in_a_program_is_a_protocol_error():
    code = FORGE_ALL_FDS.replace("{{", "{").replace("}}", "}") + "forge()\n"
    r = run_code(code, limits=FAST)
    assert r.ok is False and r.reason.startswith("protocol error"), r.reason


@pytest.mark.parametrize("solution,tests", [
    ("def f(x):\n    return (x, [x], {x: {x}}, x / 2, None, True, b'x', 1j)\n",
     "def check(candidate):\n    assert candidate(3) == (3, [3], {3: {3}}, 1.5, None, True, b'x', 1j)\n"
     "    assert type(candidate(3)[0]) is int and isinstance(candidate(1)[3], float)\n"),
    ("def f(x):\n    return [x, x]\n", "def check(candidate):\n    assert candidate(1) != (1, 1) and candidate(1) == [1, 1]\n"),
    ("import math\ndef f(x):\n    return math.sqrt(x)\n", "def check(candidate):\n    assert abs(candidate(2) - 1.41421356) < 1e-6\n"),
    ("def f(x):\n    return float('inf') if x else float('nan')\n",
     "import math\ndef check(candidate):\n    assert candidate(1) == math.inf and math.isnan(candidate(0))\n"),
    ("def f(x):\n    if x < 0:\n        raise ValueError('negative')\n    return x\n",
     "def check(candidate):\n    try:\n        candidate(-1)\n    except ValueError as e:\n        assert 'negative' in str(e)\n"
     "    else:\n        assert False\n"),
    ("def f(*xs, scale=1):\n    return sum(xs) * scale\n", "def check(candidate):\n    assert candidate(1, 2, scale=3) == 9\n"),
    ("def f(s):\n    return s[::-1]\n", "def check():\n    assert f('abc') == 'cba'\n"),                      # MBPP form
    ("def f(x):\n    return helper(x) + 1\n", "def check(candidate):\n    assert candidate(2) == helper(2) + 1\n"),   # helpers
    ("import re\ndef f(s):\n    return re.search('ab+', s)\n",                       # an opaque value keeps its truth
     "def check(candidate):\n    assert candidate('xabb')\n    assert not candidate('ac')\n"),
], ids=["types_round_trip", "list_is_not_tuple", "float_tolerance", "non_finite_floats", "expected_exception",
        "kwargs", "mbpp_form", "prompt_helpers", "match_object_truth"])
def test_correct_solutions_still_pass(solution, tests):
    r = run_tests(solution, tests, "f", helpers="def helper(x):\n    return 10 * x\n")
    assert r.ok, (r.reason, r.stderr[-800:])


def test_values_cross_as_plain_data():
    class Liar:
        def __eq__(self, other): return True
    assert isinstance(decode_value(encode_value(Liar())), Opaque)
    assert decode_value(json.loads(json.dumps(encode_value({(1, 2): {3}})))) == {(1, 2): {3}}
    assert decode_value({"$": "dict", "v": [[[1], 2]]}) != {}          # an unhashable key: opaque, not a crash


# ---- real problems: a wrong solution scores 0, the reference 1 ---------------------------------------------
DATA = Path(__file__).resolve().parent.parent / "data" / "aflow"


def _record(name, task_id):
    path = DATA / f"{name}_validate.jsonl"
    if not path.exists(): pytest.skip(f"{path} not found")
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if str(rec["task_id"]) == str(task_id): return rec
    pytest.skip(f"{task_id} not in {path}")


WRONG_135 = ("class Yes:\n    def __eq__(self, other): return True\n"
             "def can_arrange(arr):\n    return Yes()\n")
WRONG_802 = ("import asyncio\nb = asyncio.base_events.sys.modules['builtins']\nb.AssertionError = StopIteration\n"
             "def count_rotation(arr):\n    return 0\n")


def test_humaneval_135_and_mbpp_802_run_tests():
    he, mb = _record("humaneval", "HumanEval/135"), _record("mbpp", 802)
    he_tests = he["test"].rstrip().rsplit("\ncheck(", 1)[0] + "\n" if "\ncheck(" in he["test"] else he["test"]
    assert run_tests(he["prompt"] + he["canonical_solution"], he_tests, "can_arrange", helpers=he["prompt"]).ok
    assert not run_tests(WRONG_135, he_tests, "can_arrange", helpers=he["prompt"]).ok
    assert run_tests(mb["code"], mb["test"], "count_rotation").ok
    assert not run_tests(WRONG_802, mb["test"], "count_rotation").ok


def test_score_output_on_real_problems():
    executor = pytest.importorskip("optima_nb.workflow_executor")
    from optima_nb.benchmarks import load_aflow
    if not DATA.exists(): pytest.skip("no AFlow data")
    he = next(p for p in load_aflow("humaneval", DATA) if p.id == "HumanEval/135")
    mb = next(p for p in load_aflow("mbpp", DATA) if p.id.endswith("802"))
    sandbox = executor.SandboxConfig(code_wall_s=10)
    score = lambda p, out: asyncio.run(executor.score_output(p, out, sandbox))[0]
    assert score(he, f"```python\n{WRONG_135}```") == 0.0
    assert score(mb, f"```python\n{WRONG_802}```") == 0.0
    assert score(he, f"```python\n{he.question}{_record('humaneval', 'HumanEval/135')['canonical_solution']}```") == 1.0
    assert score(mb, f"```python\n{_record('mbpp', 802)['code']}\n```") == 1.0



# ---- an unprivileged parent: user namespace instead of root --------------------------------------------------
UNPRIVILEGED = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
NONROOT_SCRIPT = r"""
import json, sys
sys.path.insert(0, sys.argv[1])          # the folder holding optima_nb: its sandbox modules need only the standard library
import optima_nb.isolation as m
off = m.SandboxLimits(python_guards=False)
out = {"layers": m.run_code("x = 1").layers,
       "passwd": m.run_code("print(open('/etc/passwd').read())", limits=off).reason,
       "list_root": m.run_code("import os\nprint(os.listdir('/'))", limits=off).reason,
       "write_tmp": m.run_code("open('/tmp/optima-nonroot-escape', 'w')", limits=off).reason,
       "kill_parent": m.run_code("import os\nos.kill(os.getppid(), 9)", limits=off).reason,
       "tests_pass": m.run_tests("def f(x):\n    return 2 * x\n", "assert candidate(2) == 4", "f").ok,
       "tests_fail": m.run_tests("def f(x):\n    return x\n", "assert candidate(2) == 4", "f").ok}
print(json.dumps(out))
"""


def _unprivileged_python():
    "A Python 3.10+ that user 65534 can run (the project's may sit under /root), with setpriv; else None."
    import shutil, subprocess
    if not AS_ROOT or not shutil.which("setpriv"): return None
    for exe in ["/usr/bin/python3", "/usr/local/bin/python3"]:
        if not os.path.exists(exe): continue
        probe = subprocess.run(UNPRIVILEGED + [exe, "-c", "import sys; assert sys.version_info >= (3, 10)"],
                               capture_output=True, timeout=30)
        if probe.returncode == 0: return exe
    return None


def test_unprivileged_parent_uses_a_user_namespace():
    import subprocess
    import optima_nb.isolation as iso
    exe = _unprivileged_python()
    if exe is None: pytest.skip("needs root (to become an unprivileged user), setpriv and a Python that user can run")
    run = subprocess.run(UNPRIVILEGED + [exe, "-c", NONROOT_SCRIPT, str(Path(iso.__file__).parent.parent)], capture_output=True, text=True,
                         timeout=120, cwd="/")
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert {"userns", "netns", "pivot_root", "seccomp"} <= set(out["layers"]), out["layers"]
    assert out["passwd"].startswith("exception: FileNotFoundError"), out
    assert out["list_root"].startswith("exception: PermissionError"), out
    assert out["write_tmp"].startswith("exception: OSError: [Errno 30]"), out
    assert out["kill_parent"].startswith("exception: PermissionError"), out
    assert (out["tests_pass"], out["tests_fail"]) == (True, False)
    assert not Path("/tmp/optima-nonroot-escape").exists()


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the seccomp filter is x86_64 only")
def test_seccomp_refuses_kernel_attack_surface():
    "Guards off, raw system calls through ctypes: every one is refused with EPERM (clone3: ENOSYS)."
    code = ("import ctypes, os\nc = ctypes.CDLL(None, use_errno=True)\nc.syscall.restype = ctypes.c_long\n"
            "def f():\n    out = {}\n"
            "    for name, nr, args in [('ptrace', 101, (16, os.getppid(), 0, 0)), ('bpf', 321, (0, 0, 0)),\n"
            "                           ('perf_event_open', 298, (0, 0, -1, -1, 0)), ('keyctl', 250, (0, 0)),\n"
            "                           ('io_uring_setup', 425, (1, 0)), ('userfaultfd', 323, (0,)),\n"
            "                           ('unshare', 272, (0x10000000,)), ('setns', 308, (0, 0)),\n"
            "                           ('pidfd_open', 434, (os.getppid(), 0)), ('tkill', 200, (os.getppid(), 0)),\n"
            "                           ('clone_newuser', 56, (0x10000000 | 17, 0, 0, 0, 0)), ('clone3', 435, (0, 0)),\n"
            "                           ('kill_other', 62, (os.getppid(), 0)), ('tgkill_other', 234, (os.getppid(), os.getppid(), 0))]:\n"
            "        rc = c.syscall(nr, *args)\n        out[name] = [rc, ctypes.get_errno()]\n"
            "    out['kill_self'] = [c.syscall(62, os.getpid(), 0), 0]\n    return out\n")
    r = run_code(code, entry="f", limits=SandboxLimits(wall_s=5, python_guards=False))
    assert r.ok, (r.reason, r.stderr[-500:])
    expected = {name: [-1, 1] for name in r.value if name not in ("clone3", "kill_self")}
    assert {k: v for k, v in r.value.items() if k in expected} == expected, r.value
    assert r.value["clone3"] == [-1, 38] and r.value["kill_self"] == [0, 0], r.value
