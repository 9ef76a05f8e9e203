"""Run every notebook in nbs/ as one pytest test (nbdev's own runner, honouring `#| slow` and `#| eval: false`).

Set OPTIMA_TEST_FLAGS="slow" to also run the cells that use the real embedded model.
"""
import os
from pathlib import Path

import pytest
from nbdev import test as nbdev_test  # import the module, not test_nb, or pytest collects it

NBS = Path(__file__).resolve().parent.parent / "nbs"
NOTEBOOKS = sorted(p for p in NBS.glob("*.ipynb") if not p.name.startswith("_"))
FLAGS = os.environ.get("OPTIMA_TEST_FLAGS", "").split()


def test_notebooks_exist():
    assert NOTEBOOKS, f"no notebooks found in {NBS}"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook(nb, monkeypatch):
    monkeypatch.chdir(NBS)
    ok, elapsed = nbdev_test.test_nb(nb, skip_flags=["slow"] if "slow" not in FLAGS else [],
                                     force_flags=FLAGS, do_print=False, showerr=True, basepath=NBS.parent)
    assert ok, f"{nb.name} failed (see the traceback above)"
