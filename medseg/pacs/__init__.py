"""DICOM networking: a PACS as a run's input (query + retrieve) and as its output (export), and ``medseg listen``.

- ``endpoints``: parse and check an endpoint spec (``dicomweb+http://HOST:PORT/dicom-web``,
  ``dimse://AET@HOST:PORT``); ``PacsError`` (exit code 3) for a server that cannot be reached or refuses.
- ``query``: QIDO-RS / C-FIND at study level with query keys, or a CSV of AccessionNumbers / StudyInstanceUIDs.
- ``retrieve``: WADO-RS / C-GET / C-MOVE of one study into a bounded on-disk cache, atomically.
- ``export``: send a case's DICOM objects (SEG, RTSTRUCT) by STOW-RS or C-STORE, with retries, recorded per case.
- ``source``: a PACS as a run's input (``PacsInput``: endpoint, query keys / id list, study cache).
- ``keys``: salted hashes that name studies and query values (one salt for scan, query, retrieve and the spool).
- ``spool``: ``medseg listen``'s durable store of received instances (the listener itself is ``medseg.service``).

The libraries are pynetdicom (DIMSE) and dicomweb-client (DICOMweb): ``pip install 'medseg[pacs]'``.
Nothing here writes a patient name, ID or birth date anywhere but into DICOM files: studies are named by
salted hashes of their UIDs (``medseg.io.dicom.scan.pseudonym``).
"""

from medseg.pacs.endpoints import Endpoint, PacsError, is_endpoint, parse_endpoint  # noqa: F401
