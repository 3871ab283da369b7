"""pytest plugin (entry-point group ``pytest11``): assertion rewriting for :mod:`mmldm.testing`.

pytest rewrites the ``assert`` statements of test modules only; the contract checks a plugin's test
suite inherits live in :mod:`mmldm.testing`, an installed module, so without this plugin a failing
check would show a bare ``AssertionError`` (plus the message the check carries). pytest imports the
modules of ``pytest11`` entry points before it collects tests, which is early enough to register
:mod:`mmldm.testing` for rewriting: this module must therefore not import it (nor torch), or the
registration comes too late and pytest warns that the module "cannot be rewritten".
"""

from __future__ import annotations

import pytest

pytest.register_assert_rewrite("mmldm.testing")
