"""Logging set-up, with pydicom kept quiet: its warnings can quote values read
from a dataset (patient names included), and no patient data goes to the logs."""

import logging
import warnings

import pydicom.config


def setup_logging(level: str) -> None:
    logger = logging.getLogger("dicomsvc")
    logger.setLevel(level.upper())
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    quiet_pydicom()
    # aiosqlite's debug lines quote statements' parameters: never below WARNING
    logging.getLogger("aiosqlite").setLevel(logging.WARNING)


def quiet_pydicom() -> None:
    # Don't validate values while reading: invalid ones are kept as they are, silently.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
