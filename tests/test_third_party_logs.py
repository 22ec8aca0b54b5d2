"""The one third-party log record HonestFace silences, and only that one."""

from __future__ import annotations

import logging

import honestface  # noqa: F401  (importing the package attaches the filters)
from honestface.third_party_logs import SILENCED_RECORDS, silence_third_party_noise

BNB_LOGGER = "bitsandbytes.backends.cpu.ops"
BNB_MESSAGE = ("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you already "
               "`pip install kernels` and the kernels >= 0.11.1")


def test_bitsandbytes_kernel_message_is_dropped_other_warnings_pass(caplog) -> None:
    logger = logging.getLogger(BNB_LOGGER)
    with caplog.at_level(logging.WARNING):
        logger.warning(BNB_MESSAGE, "Kernel repository 'kernels-community/quantization-bitsandbytes' could not "
                       "verify publisher trust status. Set trust_remote_code=True")
        logger.warning("bitsandbytes: some other problem a user must see")
        logging.getLogger("bitsandbytes.cextension").warning("Failed to load CPU gemm_4bit_forward elsewhere")
    messages = [(record.name, record.getMessage()) for record in caplog.records]
    assert messages == [(BNB_LOGGER, "bitsandbytes: some other problem a user must see"),
                        ("bitsandbytes.cextension", "Failed to load CPU gemm_4bit_forward elsewhere")]


def test_filters_are_attached_once() -> None:
    silence_third_party_noise()
    silence_third_party_noise()
    for name, _ in SILENCED_RECORDS:
        assert len(logging.getLogger(name).filters) == 1
