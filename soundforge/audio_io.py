"""Audio decoding shared by every engine: one place that turns a file into float32 samples.

libsndfile (through soundfile) reads WAV, AIFF, FLAC, OGG (Vorbis/Opus) and MP3 directly; what it
cannot read (M4A/AAC, WebM, Matroska, WMA...) is piped through an `ffmpeg` subprocess as raw
float32. The file's first bytes are sniffed first, so a file that is not audio at all gets a
"not audio" error rather than an "install ffmpeg" one, and a damaged WAV/FLAC/MP3 gets "corrupt or
truncated". Long files are decoded block by block, downmixed and resampled with a streaming soxr
resampler (`iter_decoded`), so a consumer that works block by block never holds the whole file.

Every path goes through `probe`, which holds the header to the `AudioLimits` (rate, channels,
duration, decoded-size budget) before a byte is decoded; the block readers then count the frames
they really produce against the same maximum and refuse NaN/infinite samples, so what a decode
costs is bounded by the file's real content, never by what its header claims. ffmpeg's stderr
is drained by a thread while its stdout is read (keeping only a bounded tail for the error
message), so a file that makes it write megabytes of complaints cannot block both pipes.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Generator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO

import numpy as np
import numpy.typing as npt
import soundfile
import soxr

from soundforge.audio_limits import DEFAULT_LIMITS, AudioLimits, NonFiniteAudioError
from soundforge.errors import AudioError, FfmpegMissingError

BLOCK_FRAMES = 1 << 18  # ~6 s at 44.1 kHz per decode block
FFMPEG_NATIVE_RATE = 44100  # decode rate when ffmpeg's header names none
FFMPEG_CHANNELS = 2  # channels ffmpeg decodes to (a mono stream stays mono)
# A stream that decodes to less than this share of the frames its header announces is truncated.
TRUNCATED_BELOW = 0.95
INITIAL_DECODE_FRAMES = 1 << 23  # `decode` trusts a header's length up to ~3 min at 44.1 kHz
STDERR_TAIL_LINES = 20  # what is kept of ffmpeg's stderr for an error message
# Bytes per sample of libsndfile's uncompressed subtypes: in an uncompressed container the frames
# can never exceed what the file holds, whatever the header says.
PCM_SAMPLE_BYTES = {
    "PCM_S8": 1, "PCM_U8": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4, "DOUBLE": 8,
    "ULAW": 1, "ALAW": 1,
}  # fmt: skip
PCM_CONTAINERS = frozenset({"WAV", "WAVEX", "RF64", "W64", "AIFF", "AU", "CAF"})

FloatArray = npt.NDArray[np.float32]

SOUNDFILE_FORMATS = frozenset({"wav", "aiff", "flac", "ogg", "mp3", "caf", "au", "w64"})
FFMPEG_FORMATS = frozenset({"mp4", "matroska", "asf", "aac", "amr", "wavpack", "ape"})
# ffmpeg's demuxers for the containers above and those soundfile reads (names as in
# `ffmpeg -demuxers`); none of them opens another file or URL.
FFMPEG_DEMUXERS = ("mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,asf,aac,amr,amrnb,amrwb,wv,ape,"
                   "mp3,ogg,flac,wav,w64,aiff,caf,au,mpegts")  # fmt: skip
TS_PACKET_BYTES = 188  # an MPEG transport stream (an HLS download): a 0x47 sync byte every 188


@dataclass(frozen=True)
class AudioInfo:
    """What a file holds, read from its header (for ffmpeg formats: estimated from its duration)."""

    path: Path
    sample_rate: int
    channels: int
    frames: int
    format: str
    decoder: str  # "soundfile" or "ffmpeg"
    limits: AudioLimits = DEFAULT_LIMITS

    @property
    def max_frames(self) -> int:
        """The most native frames a decode of this file may produce."""
        return self.limits.max_frames(self.sample_rate)

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def sniff_format(path: Path | str) -> str | None:
    """The container named by a file's first bytes ("wav", "flac", "mp3", "mp4", ...), or None
    when they are no audio signature we know. Reads at most 377 bytes (the sync bytes of three
    transport-stream packets); does not validate the rest."""
    with open(path, "rb") as handle:
        head = handle.read(2 * TS_PACKET_BYTES + 1)
    signatures = (
        (b"RIFF", 8, b"WAVE", "wav"), (b"RF64", 0, b"", "wav"), (b"riff", 0, b"", "w64"),
        (b"FORM", 8, b"AIF", "aiff"), (b"fLaC", 0, b"", "flac"), (b"OggS", 0, b"", "ogg"),
        (b"ID3", 0, b"", "mp3"), (b"caff", 0, b"", "caf"), (b".snd", 0, b"", "au"),
        (b"\x1aE\xdf\xa3", 0, b"", "matroska"), (b"0&\xb2u\x8ef\xcf\x11", 0, b"", "asf"),
        (b"#!AMR", 0, b"", "amr"), (b"wvpk", 0, b"", "wavpack"), (b"MAC ", 0, b"", "ape"),
    )  # fmt: skip
    for prefix, offset, marker, name in signatures:
        if head.startswith(prefix) and head[offset : offset + len(marker)] == marker:
            return name
    if head[4:8] == b"ftyp":
        return "mp4"
    if is_transport_stream(head):
        return "mpegts"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        # MPEG audio frame sync: layer bits 00 mean ADTS AAC, anything else MPEG-1/2 layer I-III.
        return "aac" if head[1] & 0x06 == 0 else "mp3"
    return None


def is_transport_stream(head: bytes) -> bool:
    """Whether a file's first bytes are three MPEG-TS packets (what an HLS download is): the
    0x47 sync byte at 0, 188 and 376."""
    sync_bytes = head[: 2 * TS_PACKET_BYTES + 1 : TS_PACKET_BYTES]
    return sync_bytes == b"GGG"


@contextlib.contextmanager
def _quiet_mpeg_decoder(container: str | None) -> Iterator[None]:
    """Silence libmpg123's own stderr lines ("Xing stream size off...") while an MP3 opens: the
    error we raise says it better. File descriptor 2 is swapped only for the open itself."""
    if container != "mp3":
        yield
        return
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if not path.is_file():
        raise AudioError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: file is empty (0 bytes)")


def ffmpeg_input(path: Path) -> list[str]:
    """ffmpeg's arguments for reading `path`, and nothing else: the absolute path behind the
    `file:` protocol (a name like `concat:a|b`, `http:...` or `-x` is never read as a protocol
    or an option), and only self-contained audio demuxers (`FFMPEG_DEMUXERS`), so a playlist
    (HLS, concat, ...) cannot make ffmpeg open other files or URLs."""
    return ["-format_whitelist", FFMPEG_DEMUXERS, "-i", f"file:{path.absolute()}"]


def ffmpeg_path() -> str | None:
    """The ffmpeg executable on PATH, or None."""
    return shutil.which("ffmpeg")


def probe(
    path: Path | str, *, count_frames: bool = True, limits: AudioLimits = DEFAULT_LIMITS
) -> AudioInfo:
    """Header facts of an audio file; `AudioError` when it is not decodable audio or asks for
    more than `limits` allow (`AudioLimitError`), `FfmpegMissingError` when it needs ffmpeg and
    ffmpeg is not installed.

    For ffmpeg formats, `count_frames` decodes the whole stream once to count its frames exactly
    (and so proves it decodes); without it `frames` is estimated from the container's duration,
    which is instant (callers that decode next anyway, like the analysis, pass False)."""
    path = Path(path)
    _check_readable(path)
    container = sniff_format(path)
    try:
        with _quiet_mpeg_decoder(container):
            info = soundfile.info(str(path))
    except (soundfile.LibsndfileError, RuntimeError, TypeError):
        if container in SOUNDFILE_FORMATS:
            raise AudioError(f"{path}: {container} file is corrupt or truncated") from None
        if container is None and ffmpeg_path() is None:
            raise AudioError(f"{path}: not an audio file (unrecognised format)") from None
        return _probe_with_ffmpeg(path, count_frames, limits)
    if info.frames <= 0 or info.samplerate <= 0:
        raise AudioError(f"{path}: audio stream holds no samples")
    # libsndfile reads a WAV/AIFF whose data chunk is cut short without complaint; its log says so.
    if re.search(r"\(should be \d+\)", str(info.extra_info)):
        raise AudioError(f"{path}: {container or 'audio'} file is truncated (data chunk cut short)")
    frames = int(info.frames)
    sample_bytes = PCM_SAMPLE_BYTES.get(str(info.subtype))
    if sample_bytes and info.channels > 0 and str(info.format) in PCM_CONTAINERS:
        # Uncompressed: whatever the header says, the file size bounds the frames.
        frames = min(frames, path.stat().st_size // (sample_bytes * int(info.channels)))
    limits.check_header(str(path), int(info.samplerate), int(info.channels), frames)
    return AudioInfo(
        path=path,
        sample_rate=int(info.samplerate),
        channels=int(info.channels),
        frames=frames,
        format=str(info.format),
        decoder="soundfile",
        limits=limits,
    )


def _probe_with_ffmpeg(path: Path, count_frames: bool, limits: AudioLimits) -> AudioInfo:
    executable = ffmpeg_path()
    if executable is None:
        raise FfmpegMissingError(f"{path.name}: this format (not WAV/FLAC/OGG/MP3)")
    # `ffmpeg -i FILE` with no output prints the stream header and exits 1; that is the probe.
    result = subprocess.run(
        [executable, "-nostdin", "-hide_banner", *ffmpeg_input(path)],
        capture_output=True, text=True, errors="replace", check=False,
    )  # fmt: skip
    if "Audio:" not in result.stderr:
        last = result.stderr.strip().splitlines()[-1:] or ["no audio stream"]
        raise AudioError(f"{path}: not an audio file we can decode ({last[0][:200]})")
    duration = re.search(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)", result.stderr)
    seconds = (
        int(duration[1]) * 3600 + int(duration[2]) * 60 + float(duration[3]) if duration else 0.0
    )
    stream = re.search(r"Audio: [^\n]*?(\d+) Hz, (mono)?", result.stderr)
    rate = int(stream[1]) if stream else FFMPEG_NATIVE_RATE
    channels = 1 if stream and stream[2] else FFMPEG_CHANNELS  # more than two: downmixed to two
    info = AudioInfo(path, rate, channels, round(seconds * rate), "ffmpeg", "ffmpeg", limits)
    limits.check_header(str(path), rate, channels, info.frames)
    if count_frames or info.frames == 0:
        frames = sum(block.shape[0] for block in _native_blocks(info, False, BLOCK_FRAMES))
        if frames == 0:
            raise AudioError(f"{path}: not an audio file we can decode (no audio samples)")
        info = replace(info, frames=frames)
    return info


class _StderrTail:
    """Reads a process's stderr to the end in a thread, keeping only its last lines: a pipe
    nobody reads fills at 64 KiB and blocks the writer, and ffmpeg may write megabytes."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._lines: collections.deque[bytes] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._thread = threading.Thread(target=self._drain, args=(stream,), daemon=True,
                                        name="ffmpeg-stderr")  # fmt: skip
        self._thread.start()

    def _drain(self, stream: IO[bytes]) -> None:
        while line := stream.readline(4096):
            if line.strip():
                self._lines.append(line)

    def last_line(self) -> str | None:
        """The last non-empty line (at most 200 characters), once the stream ended."""
        self._thread.join()
        if not self._lines:
            return None
        return self._lines[-1].decode(errors="replace").strip()[:200]


def _ffmpeg_blocks(info: AudioInfo, channels: int) -> Generator[FloatArray, None, None]:
    executable = ffmpeg_path()
    if executable is None:
        raise FfmpegMissingError(f"{info.path.name}: this format (not WAV/FLAC/OGG/MP3)")
    command = [
        executable, "-nostdin", "-hide_banner", "-loglevel", "error", *ffmpeg_input(info.path),
        "-vn", "-f", "f32le", "-acodec", "pcm_f32le",
        "-ac", str(channels), "-ar", str(info.sample_rate), "pipe:1",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    stderr = _StderrTail(process.stderr)
    bytes_per_frame = 4 * channels
    chunk_bytes = BLOCK_FRAMES * bytes_per_frame
    pending = b""
    try:
        while True:
            data = process.stdout.read(chunk_bytes)
            if not data:
                break
            data = pending + data
            usable = len(data) - len(data) % bytes_per_frame
            pending = data[usable:]
            if usable:
                yield np.frombuffer(data[:usable], dtype="<f4").reshape(-1, channels).copy()
        if process.wait() != 0:
            reason = stderr.last_line() or f"ffmpeg exit {process.returncode}"
            raise AudioError(f"{info.path}: not an audio file we can decode ({reason})")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        stderr.last_line()  # the drain thread ends at EOF, once the process is gone
        process.stderr.close()


def _soundfile_blocks(
    info: AudioInfo, block_frames: int
) -> Generator[FloatArray, None, None]:
    read = 0
    try:
        with _quiet_mpeg_decoder(sniff_format(info.path)):
            handle = soundfile.SoundFile(str(info.path))
        with handle:
            while True:
                block = handle.read(block_frames, dtype="float32", always_2d=True)
                if block.shape[0] == 0:
                    break
                read += block.shape[0]
                yield block
    except (soundfile.LibsndfileError, RuntimeError) as error:
        raise AudioError(f"{info.path}: audio data is corrupt or truncated ({error})") from None
    if read < TRUNCATED_BELOW * info.frames:
        raise AudioError(
            f"{info.path}: file is truncated (header announces {info.duration_s:.1f} s, "
            f"it holds {read / info.sample_rate:.1f} s)"
        )


def _native_blocks(info: AudioInfo, mono: bool, block_frames: int) -> Iterator[FloatArray]:
    """The decoder's blocks, each checked: no more frames in all than the limits allow (the
    header may have understated them) and only finite samples."""
    if info.decoder == "ffmpeg":
        # ffmpeg downmixes itself when asked for one channel (with the proper matrix for 5.1).
        blocks = _ffmpeg_blocks(info, 1 if mono else info.channels)
    else:
        blocks = _soundfile_blocks(info, block_frames)
    decoded = 0
    with contextlib.closing(blocks):
        for block in blocks:
            decoded += block.shape[0]
            if decoded > info.max_frames:
                raise info.limits.too_long(str(info.path), decoded / info.sample_rate)
            if block.size and not (np.isfinite(block.max()) and np.isfinite(block.min())):
                raise NonFiniteAudioError(str(info.path))
            yield downmix(block)[:, None] if mono and block.shape[1] > 1 else block


def iter_blocks(
    source: Path | str | AudioInfo, block_frames: int = BLOCK_FRAMES
) -> Iterator[FloatArray]:
    """Yield the file as float32 blocks shaped (frames, channels) at its native rate; `source`
    is a path (probed with the default limits) or what `probe` returned."""
    info = source if isinstance(source, AudioInfo) else probe(source, count_frames=False)
    yield from _native_blocks(info, mono=False, block_frames=block_frames)


def downmix(block: FloatArray) -> FloatArray:
    """Average the channels of a (frames, channels) block into shape (frames,).

    Summed column by column: `block.mean(axis=1)` is ten times slower on this layout."""
    mixed = block[:, 0].copy()
    for channel in range(1, block.shape[1]):
        mixed += block[:, channel]
    if block.shape[1] > 1:
        mixed *= np.float32(1.0 / block.shape[1])
    return mixed


def iter_decoded(
    info: AudioInfo,
    sample_rate: int | None = None,
    mono: bool = True,
    block_frames: int = BLOCK_FRAMES,
) -> Iterator[tuple[FloatArray, int]]:
    """Stream a probed file as `(samples, native_frames)` pairs: `samples` is shaped (frames,)
    when `mono` else (frames, channels), resampled to `sample_rate` (soxr HQ, streaming) when
    that differs from the file's rate; `native_frames` counts the source frames consumed, for
    progress. The resampler's tail comes last with `native_frames` 0."""
    target_rate = sample_rate or info.sample_rate
    channels = 1 if mono else info.channels
    resampler = (
        soxr.ResampleStream(info.sample_rate, target_rate, channels, dtype="float32", quality="HQ")
        if target_rate != info.sample_rate
        else None
    )
    for block in _native_blocks(info, mono, block_frames):
        samples = block if resampler is None else resampler.resample_chunk(block)
        yield (samples[:, 0] if mono else samples), block.shape[0]
    if resampler is not None:
        tail = resampler.resample_chunk(np.zeros((0, channels), dtype=np.float32), last=True)
        yield (tail[:, 0] if mono else tail), 0


def decode(
    path: Path | str,
    sample_rate: int | None = None,
    mono: bool = True,
    limits: AudioLimits = DEFAULT_LIMITS,
) -> tuple[FloatArray, int]:
    """Decode a whole file. `mono` downmixes to shape (frames,), else (channels, frames);
    `sample_rate` resamples (soxr, streaming) when it differs from the file's rate. The output
    is sized from the header only up to `INITIAL_DECODE_FRAMES` and grows with what really
    decodes, so a header that overstates the length costs nothing."""
    info = probe(path, count_frames=False, limits=limits)
    target_rate = sample_rate or info.sample_rate
    channels = 1 if mono else info.channels
    limits.check_budget(str(info.path), info.frames, info.sample_rate, target_rate, channels)
    expected = int(np.ceil(info.frames * target_rate / info.sample_rate)) + 64
    output = np.empty((min(expected, INITIAL_DECODE_FRAMES), channels), dtype=np.float32)
    written = 0
    for samples, _ in iter_decoded(info, target_rate, mono=mono):
        output = _append(output, written, samples.reshape(samples.shape[0], channels))
        written += samples.shape[0]
    if written == 0:
        raise AudioError(f"{info.path}: audio stream holds no samples")
    result = output[:written]
    if mono:
        return np.ascontiguousarray(result[:, 0]), target_rate
    return np.ascontiguousarray(result.T), target_rate


def _append(output: FloatArray, written: int, samples: FloatArray) -> FloatArray:
    """Copy `samples` after the first `written` rows of `output`, growing it when a length
    estimate (ffmpeg formats) fell short. Returns the (possibly new) output array."""
    needed = written + samples.shape[0]
    if needed > output.shape[0]:
        grown = np.empty((max(needed, int(output.shape[0] * 1.5)), output.shape[1]), np.float32)
        grown[:written] = output[:written]
        output = grown
    output[written:needed] = samples
    return output
