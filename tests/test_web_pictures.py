"""The analysis pictures: the engine keeps per-frame curves at about two points a second, and
the track page draws the chroma and MFCC heat maps, the beat grid and the energy and spectral
curves from them as SVG; an older report without curves still gets what it allows."""

from __future__ import annotations

from pathlib import Path

from soundforge.analysis.engine import analyze
from soundforge.web.pictures import analysis_pictures
from tests.audio_synth import write_test_song


def test_the_analysis_keeps_two_points_a_second_and_every_picture_draws(tmp_path: Path) -> None:
    song = write_test_song(tmp_path / "song.wav", seconds=8.0, tempo=120.0, key="A minor")
    report = analyze(song)
    curves = report.curves
    assert 0.4 <= curves["step_s"] <= 0.6
    points = len(curves["rms"])
    assert abs(points - report.duration / curves["step_s"]) <= 1
    assert len(curves["centroid"]) == len(curves["rolloff"]) == len(curves["chroma"]) == points
    assert {len(frame) for frame in curves["chroma"]} == {12}
    assert {len(frame) for frame in curves["mfcc"]} == {13}
    titles = [title for title, _ in analysis_pictures(report.to_dict())]
    assert titles == ["Chroma over time", "Beat grid", "Energy (RMS) over time",
                      "Spectral centroid and rolloff", "MFCC over time"]  # fmt: skip
    pictures = dict(analysis_pictures(report.to_dict()))
    assert pictures["Chroma over time"].count("<rect") == points * 12
    assert pictures["Beat grid"].count("<line") == report.beat_count
    assert "<script" not in "".join(pictures.values())


def test_a_report_without_curves_still_draws_its_beats_and_mean_bars() -> None:
    features = {"duration": 4.0, "beats": [0.5, 1.0, 1.5], "chroma": [0.2] * 12,
                "mfcc": [-100.0] + [5.0] * 12}  # fmt: skip
    titles = [title for title, _ in analysis_pictures(features)]
    assert titles == ["Chroma (mean)", "Beat grid", "MFCC (mean)"]
    assert analysis_pictures(None) == [] and analysis_pictures({}) == []
