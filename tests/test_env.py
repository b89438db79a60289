import os
import subprocess
import sys

import pytest

from peerkd.env import HUGEPAGE_ENV

PROBE = (
    "import os, peerkd\n"
    "from numpy._core import multiarray as m\n"
    f"print(m._get_madvise_hugepage(), os.environ['{HUGEPAGE_ENV}'])"
)


@pytest.mark.parametrize(("exported", "want"), [(None, "False 0"), ("1", "True 1"), ("0", "False 0")])
def test_numpy_huge_page_advice_is_off_unless_the_user_exported_it(exported, want):
    # Prepare: a fresh interpreter's environment with or without the variable
    env = {k: v for k, v in os.environ.items() if k != HUGEPAGE_ENV}
    if exported is not None:
        env[HUGEPAGE_ENV] = exported
    # Execute: import peerkd there, read NumPy's setting and the variable children inherit
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    # Assert: off (and "0" for children) by default; a user's "1" is kept
    assert out.stdout.strip() == want
