"""Batch runs: declarative pipelines, resumable run directories, failure isolation, local and Ray engines.

- ``settings``        pipelines/*.yaml -> checked settings (one ``*Settings`` dataclass per stage) and the
                      registry of stage types (``Stage``, ``STAGE_TYPES``, ``load_pipeline``)
- ``inputs``          a folder, manifest or PACS query -> cases with fingerprints
- ``rundir``          the run directory: layout, state records, status/failures tables
- ``model``           the run's model: its summary, its predictor loaded once (``keep_predictors``)
- ``case_work``       the per-case work shared by the engines: read (scan/select/convert), segment, write
- ``training_stages`` the run-level plan and train stages
- ``local``           the default engine (threads: reading overlaps inference)
- ``ray_engine``      the Ray engine (optional extra ``medseg[ray]``)
- ``run``             ``PipelineRun`` (``RunSettings``): checks, skip/redo decisions, engine, cohort outputs;
                      ``run_pipeline`` is its one-call form
"""

from medseg.runner.run import PipelineRun, RunResult, RunSettings, run_pipeline

__all__ = ["run_pipeline", "PipelineRun", "RunSettings", "RunResult"]
