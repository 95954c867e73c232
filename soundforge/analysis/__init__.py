"""Audio analysis engine (the `analysis` extra): tempo and beats, key, energy, spectral shape,
MFCCs and chroma of one file, with bounded memory. Pure: no database.

    from soundforge.analysis import analyze, warm_up
    warm_up()                      # once per worker process (imports, filter banks)
    report = analyze("song.flac", progress=print)
    report.to_dict()               # the JSON / `features` document
    report.result_columns()        # the six analysis_results columns
"""

from soundforge.analysis.engine import ANALYSIS_SAMPLE_RATE, analyze, warm_up
from soundforge.analysis.report import RESULT_COLUMNS, AnalysisReport

__all__ = ["ANALYSIS_SAMPLE_RATE", "RESULT_COLUMNS", "AnalysisReport", "analyze", "warm_up"]
