"""MP4 video for LeRobot video datasets, through PyAV only.

Encoding follows LeRobot's `encode_video_frames`: AV1 with `libsvtav1`, `yuv420p`, GOP 2 (`g=2`, so any frame is
at most one frame after a keyframe: cheap random access), CRF 30, preset 12; pts = i / fps. A v3.0 video file
holds many episodes back to back: `concat_videos` remuxes per-episode files without re-encoding (LeRobot's
`concatenate_video_files`), and each episode records its `from_timestamp` / `to_timestamp` in that file.

Decoding follows LeRobot's `decode_video_frames_pyav`: seek to the keyframe at or before the first requested
timestamp, decode forward until the last one, and take for each request the nearest decoded frame, which must lie
within `tolerance_s` (LeRobot's training default 1e-4 s) or the call fails naming the file and the timestamp.
H.264 files decode the same way (dtype "video" does not fix the codec). `VideoReader` keeps a few containers open
per process so consecutive samples do not re-open files.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from latentvla.data.decoding import DECODE_COUNTS
from latentvla.data.errors import DatasetFormatError

CODEC = "libsvtav1"  # LeRobot's default encoder; decoded by libdav1d
PIX_FMT = "yuv420p"
GOP = 2
CRF = 30
PRESET = 12
TOLERANCE_S = 1e-4  # LeRobot's default `tolerance_s` for training
_OPEN_CONTAINERS = 8  # per process


def _av():
    try:
        import av
    except ImportError as e:  # pragma: no cover - CI installs the [video] extra
        raise ImportError("video datasets need PyAV: pip install 'latentvla[video]' (or pip install av)") from e
    av.logging.set_level(av.logging.ERROR)
    return av


def _error(path: Path, what: str) -> Exception:
    return DatasetFormatError(f"{path}: {what}")


def encode_video(
    frames: np.ndarray, path: str | Path, fps: int, *, codec: str = CODEC, crf: int = CRF, gop: int = GOP
) -> None:
    """Encode uint8 `(T, H, W, 3)` RGB frames to an MP4 with LeRobot's settings (pts = i / fps)."""
    av = _av()
    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its banner to stderr unless told errors only
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"encode_video needs uint8 (T, H, W, 3) frames, got {frames.dtype} {frames.shape}.")
    options = {"g": str(gop), "crf": str(crf)}
    if codec == "libsvtav1":
        options["preset"] = str(PRESET)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=int(fps), options=options)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], PIX_FMT
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def concat_videos(inputs: list[Path], output: str | Path, durations: list[float]) -> None:
    """Remux MP4s (same codec and size) into one, episode k starting at sum(durations[:k]) seconds."""
    av = _av()
    with av.open(str(output), "w") as out:
        out_stream, offset_s = None, 0.0
        for path, duration in zip(inputs, durations):
            with av.open(str(path)) as src:
                stream = src.streams.video[0]
                if out_stream is None:
                    out_stream = out.add_stream_from_template(stream, opaque=True)
                shift = round(offset_s / stream.time_base)
                for packet in src.demux(stream):
                    if packet.dts is None:  # the demuxer's end-of-stream marker
                        continue
                    packet.pts, packet.dts = packet.pts + shift, packet.dts + shift
                    packet.stream = out_stream
                    out.mux(packet)
            offset_s += duration


def video_feature(shape: list[int], fps: int) -> dict[str, Any]:
    """info.json `features` entry of a camera written by `encode_video` (LeRobot's `video.*` info keys)."""
    height, width, channels = (int(x) for x in shape)
    info = {
        "video.height": height,
        "video.width": width,
        "video.codec": "av1",
        "video.pix_fmt": PIX_FMT,
        "video.is_depth_map": False,
        "video.fps": int(fps),
        "video.channels": channels,
        "has_audio": False,
    }
    return {
        "dtype": "video",
        "shape": [height, width, channels],
        "names": ["height", "width", "channels"],
        "info": info,
    }


def probe(path: str | Path) -> dict[str, Any]:
    """LeRobot's `video.*` feature info of a video file (video_utils.get_video_info)."""
    av = _av()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        return {
            "video.height": int(ctx.height),
            "video.width": int(ctx.width),
            "video.codec": stream.codec_context.codec.name.replace("libdav1d", "av1").replace("libsvtav1", "av1"),
            "video.pix_fmt": ctx.pix_fmt,
            "video.is_depth_map": False,
            "video.fps": int(round(float(stream.average_rate or stream.guessed_rate))),
            "video.channels": 3,
            "has_audio": bool(container.streams.audio),
        }


class VideoReader:
    """Frames at timestamps from MP4 files, one seek + forward decode per call; a few containers kept open."""

    def __init__(self, max_open: int = _OPEN_CONTAINERS) -> None:
        self.max_open = max_open
        self._open: OrderedDict[Path, Any] = OrderedDict()
        # Our own single-thread swscale context, not PyAV's: `frame.to_ndarray(format=...)` goes through one cached
        # reformatter per thread with a slice-thread pool (PyAV >= 17). A DataLoader worker forked from a process
        # that had used it inherits the context without its threads and waits forever on the first frame (seen
        # with av 18.1.1). Parallelism comes from the workers, as for the decoder.
        self._rgb = _av().video.reformatter.VideoReformatter()

    def _container(self, path: Path) -> Any:
        if path in self._open:
            self._open.move_to_end(path)
            return self._open[path]
        av = _av()
        if not Path(path).is_file():
            raise _error(path, "video file is missing; the dataset is incomplete.")
        try:
            container = av.open(str(path))
        except av.error.FFmpegError as e:
            raise _error(path, f"cannot open video ({e}); the file is corrupt.") from e
        if not container.streams.video:
            container.close()
            raise _error(path, "has no video stream.")
        container.streams.video[0].thread_count = 1  # parallelism comes from DataLoader workers
        self._open[path] = container
        while len(self._open) > self.max_open:
            self._open.popitem(last=False)[1].close()
        return container

    def close(self) -> None:
        while self._open:
            self._open.popitem()[1].close()

    def decode(self, path: Path, timestamps: list[float], tolerance_s: float = TOLERANCE_S) -> list[np.ndarray]:
        """uint8 `(H, W, 3)` frames nearest to `timestamps` (seconds), each within `tolerance_s`."""
        av = _av()
        container = self._container(path)
        stream = container.streams.video[0]
        first, last = min(timestamps), max(timestamps)
        times, frames = [], []
        try:
            container.seek(max(0, int(first / stream.time_base)), stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                DECODE_COUNTS["video"] += 1
                if frame.pts is None:
                    continue
                t = float(frame.pts * stream.time_base)
                if t >= first - tolerance_s:
                    times.append(t)
                    frames.append(self._rgb.reformat(frame, format="rgb24", threads=1).to_ndarray())
                if t >= last - tolerance_s:
                    break
        except av.error.FFmpegError as e:
            self._open.pop(path, None)
            raise _error(path, f"cannot decode the frame at timestamp {first:.4f}s ({e}).") from e
        out = []
        for ts in timestamps:
            if not times:
                raise _error(path, f"no frame at timestamp {ts:.4f}s (the video ends before it).")
            j = int(np.argmin(np.abs(np.asarray(times) - ts)))
            if abs(times[j] - ts) > tolerance_s:
                raise _error(
                    path,
                    f"no frame at timestamp {ts:.4f}s: the nearest decoded frame is at {times[j]:.4f}s, outside "
                    f"the tolerance of {tolerance_s}s (do the video and the data's timestamps disagree?).",
                )
            out.append(frames[j])
        return out
