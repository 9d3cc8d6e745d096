"""A PACS as a run's input (``medseg run --input ENDPOINT``): the endpoint, the query keys and/or id list that
find the studies (``medseg.pacs.query``), and the on-disk cache they are retrieved into (``medseg.pacs.retrieve``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from medseg.errors import ConfigError
from medseg.pacs.endpoints import Endpoint, parse_endpoint
from medseg.pacs.query import parse_query, read_id_list, record_query
from medseg.pacs.retrieve import default_cache_dir


@dataclass
class PacsInput:
    """Everything ``medseg run --input ENDPOINT`` needs to find and fetch its studies."""

    endpoint: Endpoint
    filters: dict = field(default_factory=dict)
    id_list: tuple | None = None  # (keyword, [(row, value)])
    id_list_file: str = ""
    cache_dir: str = ""
    cache_max_bytes: int | None = None

    def to_record(self) -> dict:
        """What run.json keeps: the endpoint without credentials, the query with identifying values hashed."""
        rec = {
            **self.endpoint.to_record(),
            "query": record_query(self.filters),
            "cache": self.cache_dir,
            "cache_max_gb": round(self.cache_max_bytes / 1024**3, 3) if self.cache_max_bytes else None,
        }
        if self.id_list is not None:
            rec["id_list"] = {"column": self.id_list[0], "rows": len(self.id_list[1])}
        return rec

    def context(self, modalities=()) -> dict:
        """The part the readers need (``RunContext.pacs``: picklable)."""
        return {
            "endpoint": self.endpoint,
            "cache": self.cache_dir,
            "max_bytes": self.cache_max_bytes,
            "modalities": tuple(modalities or ()),
        }


def pacs_input(spec: str, *, query=None, accessions=None, cache=None, cache_max_gb=None) -> PacsInput:
    """Check a PACS input (endpoint spec, ``--query`` items, ``--accessions`` CSV, cache folder and limit)."""
    ep = parse_endpoint(spec, what="--input")
    filters = parse_query(query)
    id_list = read_id_list(accessions) if accessions else None
    if not filters and id_list is None:
        raise ConfigError(
            f"--input {ep.display}: give --query KEY=VALUE (e.g. StudyDate=20260101-20260131, modality=CT) "
            "or --accessions FILE.csv; medseg does not segment a whole archive unasked"
        )
    max_bytes = None
    if cache_max_gb is not None:
        try:
            gb = float(cache_max_gb)
        except (TypeError, ValueError):
            gb = -1.0
        if not gb > 0:
            raise ConfigError(f"--cache-max-gb must be a positive number of GB, not {cache_max_gb!r}")
        max_bytes = int(gb * 1024**3)
    cache_dir = Path(cache).expanduser() if cache else default_cache_dir()
    if cache_dir.exists() and not cache_dir.is_dir():
        raise ConfigError("--cache names a file; give a folder for the study cache", path=cache_dir)
    return PacsInput(
        ep, filters, id_list, str(Path(accessions).resolve()) if accessions else "", str(cache_dir.resolve()), max_bytes
    )
