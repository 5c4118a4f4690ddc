"""Importing this module installs :func:`common.errors.report_uncaught` as ``sys.excepthook``.

Every bundle config imports it first (``$import common.error_hook``), so that ``python -m monai.bundle run ...``
ends a failed run with the cause and its fix as the last printed line and the exit status documented in
:mod:`common.errors`. Library code imports :mod:`common.errors` instead, which changes nothing on import.
"""

from common.errors import install_error_hook

install_error_hook()
