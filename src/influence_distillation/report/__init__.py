"""Reports: a page per run (`influence-distill report`), two runs compared, and the demo's page built from the same
sections."""

from influence_distillation.report.run_report import build_report, write_run_report

__all__ = ["build_report", "write_run_report"]
