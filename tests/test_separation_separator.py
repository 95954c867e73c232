"""Separator behaviour beyond equivalence: progress, abort, formats, input conversion, the
per-process model cache and the errors a user can cause."""

from __future__ import annotations

from pathlib import Path

import pytest
import soundfile
import torch

from soundforge.errors import AudioError, ConfigError, JobAbortedError
from soundforge.separation import (
    STEM_NAMES,
    ModelNotFoundError,
    Separator,
    UnknownModelError,
    loading,
    write_local_repo,
)
from soundforge.separation.separator import CPU_AUTO_BATCH
from soundforge.separation.stem_files import clip_divisor
from soundforge.storage import TEMP_PREFIX
from tests.test_separation_support import read_stem, write_mix


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_local_repo(tmp_path_factory.mktemp("repo"), "htdemucs", size="tiny")


@pytest.fixture(scope="module")
def song(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mix(tmp_path_factory.mktemp("song") / "song.wav", seconds=5.0)


def test_progress_goes_from_0_to_100_per_segment_never_decreasing(
    repo: Path, song: Path, tmp_path: Path
) -> None:
    reported: list[float] = []
    Separator(repo=repo, shifts=0).separate(song, tmp_path, progress=reported.append)
    assert reported[0] == 0.0 and reported[-1] == 100.0
    assert reported == sorted(reported)
    assert len(reported) >= 5  # 5 s in 2 s segments, 25 % overlap: 4 segments, plus 0 and 100


def test_abort_between_segments_raises_and_leaves_no_files(
    repo: Path, song: Path, tmp_path: Path
) -> None:
    segments_done: list[float] = []

    def should_abort() -> bool:
        return len(segments_done) >= 3  # 0 %, then two segments

    with pytest.raises(JobAbortedError):
        Separator(repo=repo, shifts=0).separate(
            song, tmp_path, progress=segments_done.append, should_abort=should_abort
        )
    assert list(tmp_path.iterdir()) == []
    assert segments_done[-1] < 100.0


def test_default_format_is_flac_16_bit_44100_stereo_and_wav_by_setting(
    repo: Path, song: Path, tmp_path: Path
) -> None:
    flac = Separator(repo=repo, shifts=0).separate(song, tmp_path / "flac")
    wav = Separator(repo=repo, shifts=0, stem_format="wav").separate(song, tmp_path / "wav")
    assert {path.name for path in flac.values()} == {f"{s}.flac" for s in STEM_NAMES["htdemucs"]}
    for stems, container in ((flac, "FLAC"), (wav, "WAV")):
        for path in stems.values():
            info = soundfile.info(str(path))
            assert (info.format, info.subtype) == (container, "PCM_16")
            assert (info.samplerate, info.channels, info.frames) == (44100, 2, 5 * 44100)
    assert not any(path.name.startswith(TEMP_PREFIX) for path in tmp_path.rglob("*"))


def test_mono_22050_hz_input_becomes_stereo_44100_hz_stems(repo: Path, tmp_path: Path) -> None:
    song = write_mix(tmp_path / "mono.flac", seconds=3.0, sample_rate=22050, channels=1)
    stems = Separator(repo=repo, shifts=0).separate(song, tmp_path / "out")
    assert read_stem(stems["drums"]).shape == (3 * 44100, 2)


def test_six_stem_model_adds_guitar_and_piano(tmp_path: Path) -> None:
    repo = write_local_repo(tmp_path / "repo", "htdemucs_6s", size="tiny")
    song = write_mix(tmp_path / "song.wav", seconds=2.0)
    stems = Separator("htdemucs_6s", repo=repo, shifts=0).separate(song, tmp_path / "out")
    assert list(stems) == ["drums", "bass", "other", "vocals", "guitar", "piano"]
    assert all(path.is_file() for path in stems.values())


def test_model_is_loaded_once_per_process_and_reloaded_when_the_repo_changes(
    tmp_path: Path,
) -> None:
    repo = write_local_repo(tmp_path / "repo", "htdemucs", size="tiny", seed=1)
    first, second = Separator(repo=repo), Separator(repo=repo, shifts=0)
    assert first.model is second.model
    write_local_repo(repo, "htdemucs", size="tiny", seed=2)
    assert Separator(repo=repo).model is not first.model


def test_unknown_model_name_is_rejected() -> None:
    with pytest.raises(UnknownModelError, match="htdemucs, htdemucs_ft, htdemucs_6s, mdx_extra"):
        Separator("htdemucs_v9")


def test_missing_weights_error_says_where_to_put_them(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"htdemucs\.yaml.*955717e8-8726e21a\.th"):
        Separator(repo=tmp_path)
    repo = write_local_repo(tmp_path / "repo", "htdemucs", size="tiny")
    for weights in repo.glob("*.th"):
        weights.unlink()
    with pytest.raises(ModelNotFoundError, match="incomplete"):
        Separator(repo=repo)


def test_without_repo_weights_come_from_demucs_torch_hub_cache_never_the_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loading, "_load_from_hf_cache", lambda name: None)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    loading.clear_cache()
    with pytest.raises(ModelNotFoundError, match=r"download https://.*955717e8-8726e21a\.th "
                       rf"into {tmp_path / 'hub' / 'checkpoints'}"):  # fmt: skip
        Separator()
    repo = write_local_repo(tmp_path / "repo", "htdemucs", size="tiny")
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    next(repo.glob("*.th")).rename(tmp_path / "hub" / "checkpoints" / "955717e8-8726e21a.th")
    assert Separator().stem_names == STEM_NAMES["htdemucs"]
    loading.clear_cache()


def test_non_audio_input_raises_audio_error_before_creating_anything(
    repo: Path, tmp_path: Path
) -> None:
    bogus = tmp_path / "notes.wav"
    bogus.write_text("not audio at all " * 100)
    with pytest.raises(AudioError):
        Separator(repo=repo).separate(bogus, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_clip_protection_divides_like_demucs_rescale() -> None:
    assert clip_divisor(0.5) == 1.0
    assert clip_divisor(0.999) == pytest.approx(1.00899)  # demucs rescales just below 1 too
    assert clip_divisor(2.0) == pytest.approx(2.02)


def test_separate_many_equals_one_by_one_and_leaves_no_temporaries(
    repo: Path, song: Path, tmp_path: Path
) -> None:
    other = write_mix(tmp_path / "other.wav", seconds=3.0, seed=4)
    separator = Separator(repo=repo, shifts=0, stem_format="wav")
    together = separator.separate_many([(song, tmp_path / "a"), (other, tmp_path / "b")])
    alone = [separator.separate(song, tmp_path / "a1"), separator.separate(other, tmp_path / "b1")]
    for many, one in zip(together, alone, strict=True):
        assert list(many) == list(STEM_NAMES["htdemucs"])
        for stem in many:
            assert (read_stem(many[stem]) == read_stem(one[stem])).all()
    assert not any(path.name.startswith(TEMP_PREFIX) for path in tmp_path.rglob("*"))


@pytest.mark.parametrize("songs_together", [1, 2])
def test_separate_many_stops_at_a_bad_file_and_cleans_up_the_others(
    repo: Path, song: Path, tmp_path: Path, songs_together: int
) -> None:
    bogus = tmp_path / "bogus.wav"
    bogus.write_text("not audio " * 200)
    separator = Separator(repo=repo, shifts=0, songs_together=songs_together)
    with pytest.raises(AudioError):
        separator.separate_many([(song, tmp_path / "a"), (bogus, tmp_path / "b"),
                                 (song, tmp_path / "c")])  # fmt: skip
    assert not any(path.name.startswith(TEMP_PREFIX) for path in tmp_path.rglob("*"))
    assert not (tmp_path / "c").exists()


def test_cpu_batch_defaults_to_one_segment_and_fp16_falls_back_to_fp32(repo: Path) -> None:
    separator = Separator(repo=repo, precision="fp16")
    assert separator.precision == "fp32"
    assert separator.batch.size == CPU_AUTO_BATCH == 1
    assert separator.workers is None  # one segment on every core: no segment threads
    assert Separator(repo=repo, batch_size=3).batch.size == 3
    with pytest.raises(ConfigError, match="batch size"):
        Separator(repo=repo, batch_size=-1)
