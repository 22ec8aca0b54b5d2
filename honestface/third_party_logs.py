"""Third-party log lines that would mislead a HonestFace user, silenced at their source.

diffusers imports ``bitsandbytes`` whenever it is installed (for its quantizers; pyiqa, the
``metrics`` extra, requires it). On CPUs with AVX512-BF16, bitsandbytes then asks the
``kernels`` package for an optional 4-bit CPU matmul kernel from the Hugging Face Hub; offline
or without ``trust_remote_code`` that fails and bitsandbytes logs "Failed to load CPU
gemm_4bit_forward from kernels-community ... Set trust_remote_code=True". HonestFace never runs
4-bit layers, so the line is noise that reads as our failure and as a request to trust remote
code. Only that record of that logger is dropped; every other warning still shows.
"""

from __future__ import annotations

import logging

#: (logger name, start of the unformatted message) of each silenced record.
SILENCED_RECORDS: tuple[tuple[str, str], ...] = (
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward from kernels-community"),
)


class _DropRecord(logging.Filter):
    """Drops the records of one logger whose message starts with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def silence_third_party_noise() -> None:
    """Attach the filters (idempotent). A filter on the named logger works whether or not the
    package that owns it has been imported yet: ``getLogger`` returns the same object later."""
    for name, prefix in SILENCED_RECORDS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropRecord) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(_DropRecord(prefix))
