"""The run report: its typed model (:class:`RunReport`, whose JSON schema is committed as
``docs/report.schema.json``) and the files and table a run shows it as (:class:`Report`).

It sits apart from the run that builds it because three readers need it and none should need
the run: the output cache (a reused output's report), ``optimize bench`` and build systems.
"""

from .model import RunReport, report_schema
from .render import Report

__all__ = ["Report", "RunReport", "report_schema"]
