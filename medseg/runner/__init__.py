"""Batch runs: declarative pipelines, resumable run directories, failure isolation, local and Ray engines.

- ``pipeline``   pipelines/*.yaml -> checked stage settings (``load_pipeline``)
- ``inputs``     a folder or manifest -> cases with fingerprints
- ``rundir``     the run directory: layout, state records, status/failures tables
- ``stages``     per-case work shared by the engines: read (scan/select/convert), segment, write
- ``learn``      run-level plan and train stages
- ``local``      the default engine (threads: reading overlaps inference)
- ``ray_engine`` the Ray engine (optional extra ``medseg[ray]``)
- ``core``       ``run_pipeline``: checks, skip/redo decisions, engine, cohort outputs
"""

from medseg.runner.core import RunResult, run_pipeline

__all__ = ["run_pipeline", "RunResult"]
