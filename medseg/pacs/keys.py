"""How the PACS layer names studies and query values without identifying anyone: salted hashes.

One salt for all of medseg (``MEDSEG_KEY_SALT``, default ``medseg.io.dicom.scan.DEFAULT_SALT``), so a study
has the same key in ``medseg dicom scan``, in a PACS run (``query``, ``retrieve``) and in ``medseg listen``'s
spool.
"""

from __future__ import annotations

import hashlib
import os

from medseg.io.dicom.scan import DEFAULT_SALT, pseudonym


def salt() -> str:
    return os.environ.get("MEDSEG_KEY_SALT", DEFAULT_SALT)


def study_key(study_uid: str) -> str:
    """The case id of a study: ``st`` + salted SHA-256 of its StudyInstanceUID (``medseg dicom scan``'s study key)."""
    return pseudonym(str(study_uid), prefix="st")


def hashed(value: str, prefix: str = "q") -> str:
    """``prefix`` + 10 hex digits of the salted SHA-256 of ``value`` (query values, fingerprints)."""
    return prefix + hashlib.sha256(f"{salt()}\x00{value}".encode()).hexdigest()[:10]
