"""Video in and out for whole-photo restoration, and temporal smoothing of face landmarks.

Frames are decoded and encoded with PyAV (FFmpeg's libraries, from PyPI as ``av``; the
``video`` extra: ``pip install 'honestface[video]'``). PyAV is imported only when a
video is read or written, so the rest of the package works without it.

- :class:`VideoReader` yields the frames of the first video stream as (3, H, W) float RGB
  tensors in [0, 1] with their presentation timestamps, upright: as players show them.
  Phones record portrait video as landscape frames plus a display matrix (FFmpeg's
  ``AV_FRAME_DATA_DISPLAYMATRIX`` side data, the MP4/MOV ``tkhd`` matrix); the reader
  turns (and mirrors) each frame by it, as ``ffmpeg``/``ffplay`` do, and
  :class:`VideoInfo` gives the displayed size and the rotation that was applied.
- :class:`VideoWriter` encodes frames (H.264 in MP4/MOV/MKV/AVI, VP9 in WebM) at the
  source's timestamps and copies the audio track of a source file into the output,
  interleaved with the video. The audio packets are copied as they are (no re-encoding);
  a codec the output container cannot hold is re-encoded (AAC, Opus for WebM).
  Frames are stored as they are given, with no display matrix: a restored phone video is
  written upright (portrait frames), so every player, editor and decoder shows it the
  same way, including those that ignore display matrices.
- :class:`LandmarkSmoother` averages each face's landmarks over neighbouring frames (a
  centred Gaussian window, faces followed from frame to frame by their position) so the
  aligned crops, and with them the restored faces, do not jitter from frame to frame.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from .errors import HonestFaceError

#: File suffixes treated as videos (lower case).
VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".mkv", ".avi", ".webm")

#: The extra that installs PyAV.
VIDEO_EXTRA = "video"

#: Output video encoder per container suffix (anything else: H.264).
VIDEO_CODECS = {".webm": "libvpx-vp9"}
#: Audio encoder used when the source's audio codec cannot be copied into the container.
AUDIO_FALLBACK_CODECS = {".webm": "libopus"}
DEFAULT_VIDEO_CODEC = "libx264"
DEFAULT_AUDIO_CODEC = "aac"
#: Constant-quality setting of the encoders (x264: visually lossless at about 18).
DEFAULT_CRF = 18


def is_video(path: str | Path) -> bool:
    """Whether ``path`` names a video by its suffix."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def require_av():
    """The ``av`` module, or a :class:`HonestFaceError` naming the extra that installs it."""
    try:
        import av
    except ImportError as error:
        raise HonestFaceError(f"reading and writing video needs PyAV: pip install 'honestface[{VIDEO_EXTRA}]' "
                              "(or pip install av)") from error
    return av


@dataclass
class VideoInfo:
    """What the first video stream of a file is."""

    path: Path
    width: int
    height: int
    fps: Fraction  # average frame rate
    frames: int  # frame count stored in the container; 0 when unknown
    time_base: Fraction  # unit of the frames' timestamps
    has_audio: bool
    # Display rotation of the source, applied to the frames: counter-clockwise degrees by
    # which players turn the stored picture (FFmpeg's convention; 0, 90, 180 or -90; a
    # portrait phone video is usually -90). ``width``/``height`` are the displayed size.
    rotation: int = 0
    mirrored: bool = False  # the matrix also mirrors the picture (applied too; ``rotation`` is then FFmpeg's reading)


@dataclass
class VideoFrame:
    """One decoded frame."""

    image: torch.Tensor  # (3, H, W) float RGB in [0, 1]
    pts: int | None  # presentation timestamp in ``VideoInfo.time_base`` units
    index: int  # position in the stream, from 0


#: FFmpeg's display matrix holds its 2x2 linear part in 16.16 fixed point.
_DISPLAY_MATRIX_ONE = 1 << 16


@dataclass(frozen=True)
class DisplayOrientation:
    """How a stored frame is shown: a quarter-turn and mirror from the stream's display matrix.

    Applied in this order to an (H, W, ...) picture: swap rows and columns if
    ``transpose``, then mirror left-right if ``flip_x`` and top-bottom if ``flip_y``.
    """

    transpose: bool = False
    flip_x: bool = False
    flip_y: bool = False
    rotation: int = 0  # counter-clockwise degrees, as FFmpeg reports the matrix
    mirrored: bool = False

    @classmethod
    def from_display_matrix(cls, matrix: Sequence[int]) -> "DisplayOrientation":
        """The orientation of FFmpeg's 3x3 display matrix (9 integers, row-major).

        A stored pixel at (x, y), y pointing down, is shown at (m0 x + m3 y, m1 x + m4 y)
        plus a translation, which is how ``ffmpeg -autorotate`` reads it (``transpose``,
        ``hflip``, ``vflip``). Raises :class:`HonestFaceError` for a matrix that is not a
        quarter turn (with or without a mirror).
        """
        m = np.asarray(matrix, dtype=np.float64)[:9] / _DISPLAY_MATRIX_ONE
        linear = np.array([[m[0], m[3]], [m[1], m[4]]])  # (x', y') = linear @ (x, y)
        scale = np.abs(linear).max()
        signs = np.round(linear / scale) if scale > 0 else np.zeros((2, 2))
        if scale == 0 or np.abs(linear / scale - signs).max() > 0.01 or abs(np.linalg.det(signs)) != 1:
            angle = -math.degrees(math.atan2(m[1], m[0])) if scale > 0 else float("nan")
            raise HonestFaceError(f"the video's display matrix turns the picture by {angle:.1f} degrees; only "
                                  "quarter turns (with or without a mirror) are supported")
        # av_display_rotation_get(): each column normalised, counter-clockwise degrees
        rotation = -math.degrees(math.atan2(m[1] / math.hypot(m[1], m[4]), m[0] / math.hypot(m[0], m[3])))
        rotation = int(round(rotation)) % 360
        return cls(transpose=bool(signs[0, 0] == 0), flip_x=bool(signs[0].sum() < 0), flip_y=bool(signs[1].sum() < 0),
                   rotation=rotation - 360 if rotation > 180 else rotation, mirrored=bool(np.linalg.det(signs) < 0))

    @classmethod
    def of_frame(cls, frame) -> "DisplayOrientation":
        """The orientation of a decoded PyAV frame (none without display-matrix side data)."""
        side_data = frame.side_data.get("DISPLAYMATRIX") if frame is not None else None
        if side_data is None:
            return cls()
        return cls.from_display_matrix(np.frombuffer(bytes(side_data), dtype=np.int32))

    def size(self, width: int, height: int) -> tuple[int, int]:
        """Displayed (width, height) of a stored picture of ``width`` x ``height``."""
        return (height, width) if self.transpose else (width, height)

    def apply(self, array: np.ndarray) -> np.ndarray:
        """The displayed picture of a stored (H, W, ...) array."""
        if self.transpose:
            array = array.swapaxes(0, 1)
        if self.flip_x:
            array = array[:, ::-1]
        if self.flip_y:
            array = array[::-1]
        return array


def _open(path: Path, mode: str = "r"):
    av = require_av()
    try:
        return av.open(str(path), mode)
    except (av.FFmpegError, OSError, ValueError) as error:
        verb = "read" if mode == "r" else "write"
        raise HonestFaceError(f"cannot {verb} video {path}: {error}") from error


class VideoReader:
    """Frames of the first video stream of ``path``, in order, upright.

    Use as a context manager (or call :meth:`close`); ``info`` describes the stream as it
    is displayed. The display matrix of the first frame (the stream's, which decoders
    attach to every frame) turns every frame; it is read by decoding that frame here.

    Raises:
        HonestFaceError: PyAV missing, the file unreadable, no video stream in it, or a
            display matrix that is not a quarter turn.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise HonestFaceError(f"video file not found: {self.path}")
        av = require_av()
        self._container = _open(self.path)
        if not self._container.streams.video:
            self._container.close()
            raise HonestFaceError(f"{self.path} has no video stream")
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = stream.average_rate or stream.guessed_rate or Fraction(25)
        self._stream = stream
        # the display matrix reaches Python only on decoded frames: decode the first one now
        self._frames = self._container.decode(stream)
        try:
            self._first = next(self._frames, None)
        except av.FFmpegError as error:
            self._container.close()
            raise HonestFaceError(f"cannot decode frame 0 of {self.path}: {error}") from error
        try:
            self.orientation = DisplayOrientation.of_frame(self._first)
        except HonestFaceError as error:
            self._container.close()
            raise HonestFaceError(f"{self.path}: {error}") from error
        width, height = self.orientation.size(int(stream.codec_context.width), int(stream.codec_context.height))
        self.info = VideoInfo(path=self.path, width=width, height=height, fps=Fraction(fps),
                              frames=int(stream.frames or 0),
                              time_base=Fraction(stream.time_base or Fraction(1, int(round(fps)))),
                              has_audio=bool(self._container.streams.audio),
                              rotation=self.orientation.rotation, mirrored=self.orientation.mirrored)

    def __iter__(self) -> Iterator[VideoFrame]:
        av = require_av()
        index = 0
        try:
            frame, self._first = self._first, None
            while frame is not None:
                array = self.orientation.apply(frame.to_ndarray(format="rgb24"))  # (H, W, 3) uint8, displayed
                image = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float().div_(255.0)
                yield VideoFrame(image=image, pts=frame.pts, index=index)
                index += 1
                frame = next(self._frames, None)
        except av.FFmpegError as error:
            raise HonestFaceError(f"cannot decode frame {index} of {self.path}: {error}") from error

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class VideoWriter:
    """Encode frames to ``path`` and carry over the audio of ``audio_from``.

    Args:
        path: output file; its suffix picks the container (and the codec, see
            :data:`VIDEO_CODECS`).
        info: the source's :class:`VideoInfo` (size, frame rate, time base).
        audio_from: a file whose first audio stream is copied into the output (usually
            the source video); None writes no audio.
        crf: constant-quality factor of the encoder (lower is better and larger).

    Frames are written with :meth:`write` at their source timestamps; audio packets are
    muxed alongside, up to the time of the last video frame, so the file is interleaved.
    The frames are stored as given (``info.width`` x ``info.height``, the displayed size
    of a :class:`VideoReader`'s source) with no display matrix, whatever ``info.rotation``
    says: the output plays upright everywhere.
    """

    def __init__(self, path: str | Path, info: VideoInfo, audio_from: str | Path | None = None,
                 crf: int = DEFAULT_CRF) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.info = info
        suffix = self.path.suffix.lower()
        self._container = _open(self.path, "w")
        codec = VIDEO_CODECS.get(suffix, DEFAULT_VIDEO_CODEC)
        stream = self._container.add_stream(codec, rate=info.fps)
        stream.width, stream.height = info.width, info.height
        # 4:2:0 needs even sides; odd-sized sources keep full chroma instead of being cropped
        even = info.width % 2 == 0 and info.height % 2 == 0
        stream.pix_fmt = "yuv420p" if even else "yuv444p"
        stream.time_base = info.time_base
        stream.codec_context.time_base = info.time_base
        stream.options = {"crf": str(crf)} if codec != "libvpx-vp9" else {"crf": str(crf + 12), "b": "0"}
        self._video = stream
        self._written = 0
        self._last_time = -math.inf
        self._audio_source = None
        self._audio_packets: Iterator | None = None
        self._pending_audio = None
        self.audio = "none"  # "copied", "re-encoded (<codec>)" or "none"
        if audio_from is not None:
            self._open_audio(Path(audio_from), suffix)

    # ------------------------------------------------------------------ audio
    def _open_audio(self, source: Path, suffix: str) -> None:
        container = _open(source)
        if not container.streams.audio:
            container.close()
            return
        in_audio = container.streams.audio[0]
        self._audio_source, self._in_audio = container, in_audio
        if in_audio.codec_context.name in self._container.supported_codecs:
            self._out_audio = self._container.add_stream_from_template(in_audio)
            self._transcode = False
            self.audio = "copied"
        else:
            self._open_audio_encoder(in_audio, suffix)
        self._audio_packets = iter(container.demux(in_audio))

    def _open_audio_encoder(self, in_audio, suffix: str) -> None:
        codec = AUDIO_FALLBACK_CODECS.get(suffix, DEFAULT_AUDIO_CODEC)
        rate = in_audio.codec_context.sample_rate or 48000
        if codec == "libopus" and rate not in (8000, 12000, 16000, 24000, 48000):
            rate = 48000
        self._out_audio = self._container.add_stream(codec, rate=rate)
        self._out_audio.layout = in_audio.codec_context.layout
        self._transcode = True
        self.audio = f"re-encoded ({codec})"

    def _mux_audio_until(self, seconds: float) -> None:
        """Mux the source's audio packets that start before ``seconds``."""
        if self._audio_packets is None:
            return
        while True:
            packet = self._pending_audio or next(self._audio_packets, None)
            self._pending_audio = None
            if packet is None:
                self._audio_packets = None
                return
            if packet.dts is None and packet.pts is None:  # the demuxer's final empty packet
                continue
            start = float((packet.pts if packet.pts is not None else packet.dts) * packet.time_base)
            if start > seconds:
                self._pending_audio = packet
                return
            self._mux_audio_packet(packet)

    def _mux_audio_packet(self, packet) -> None:
        if not self._transcode:
            packet.stream = self._out_audio
            self._container.mux(packet)
            return
        for frame in packet.decode():
            frame.pts = None  # the encoder numbers its own samples
            for out in self._out_audio.encode(frame):
                self._container.mux(out)

    # ------------------------------------------------------------------ video
    def write(self, image: torch.Tensor, pts: int | None = None) -> None:
        """Encode one (3, H, W) frame in [0, 1]; ``pts`` in ``info.time_base`` units
        (default: the frame's position at the constant frame rate)."""
        av = require_av()
        if tuple(image.shape) != (3, self.info.height, self.info.width):
            raise HonestFaceError(f"frame of shape {tuple(image.shape)} does not fit the video "
                                  f"({self.info.width}x{self.info.height})")
        if pts is None:
            pts = int(round(self._written / (self.info.fps * self.info.time_base)))
        array = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0).round().astype(np.uint8)
        frame = av.VideoFrame.from_ndarray(array, format="rgb24")
        frame.pts = pts
        frame.time_base = self.info.time_base
        for packet in self._video.encode(frame):
            self._container.mux(packet)
        self._written += 1
        self._last_time = float(pts * self.info.time_base)
        self._mux_audio_until(self._last_time + float(1 / self.info.fps))

    def close(self) -> None:
        """Flush the encoder, copy the remaining audio and finish the file."""
        if self._container is None:
            return
        try:
            for packet in self._video.encode():
                self._container.mux(packet)
            self._mux_audio_until(math.inf)
            if self._audio_source is not None and self._transcode:
                for packet in self._out_audio.encode():
                    self._container.mux(packet)
        finally:
            self._container.close()
            self._container = None
            if self._audio_source is not None:
                self._audio_source.close()

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ----------------------------------------------------------------------------- smoothing
#: Faces in neighbouring frames are the same face when their landmark centres are closer
#: than this fraction of the face's size (the spread of its landmarks).
TRACK_DISTANCE = 0.5


def _face_centre_and_size(landmarks: np.ndarray) -> tuple[np.ndarray, float]:
    centre = landmarks.mean(axis=0)
    size = float(np.linalg.norm(landmarks.max(axis=0) - landmarks.min(axis=0)))
    return centre, max(size, 1.0)


def smooth_landmarks(frames: Sequence[Sequence], target: int, radius: int, sigma: float | None = None) -> list:
    """The faces of ``frames[target]`` with their landmarks averaged over the neighbouring frames.

    Args:
        frames: per frame, the faces found in it (objects with a ``landmarks`` attribute,
            an (N, 2) array in photo pixels or None, e.g. :class:`~honestface.face.photo.PhotoFace`).
        target: the frame whose faces are smoothed.
        radius: frames on each side that take part.
        sigma: width of the Gaussian weights in frames (default ``radius / 2``).

    Returns:
        Copies of ``frames[target]``'s faces (``dataclasses.replace``) with smoothed
        landmarks; faces without landmarks are returned as they are. In every other frame
        a face is the one whose landmark centre is nearest, within :data:`TRACK_DISTANCE`
        of the face's size and with the same number of points; frames without it are left
        out of its average.
    """
    sigma = sigma if sigma is not None else max(radius / 2.0, 0.5)
    smoothed = []
    for face in frames[target]:
        points = getattr(face, "landmarks", None)
        if points is None or radius <= 0 or not np.isfinite(points).all():
            smoothed.append(face)
            continue
        points = np.asarray(points, dtype=np.float64)
        centre, size = _face_centre_and_size(points)
        total, weight_sum = points.copy(), 1.0
        for offset in range(-radius, radius + 1):
            other = target + offset
            if offset == 0 or not 0 <= other < len(frames):
                continue
            best, best_distance = None, TRACK_DISTANCE * size
            for candidate in frames[other]:
                theirs = getattr(candidate, "landmarks", None)
                if theirs is None or np.shape(theirs) != points.shape or not np.isfinite(theirs).all():
                    continue
                distance = float(np.linalg.norm(np.asarray(theirs).mean(axis=0) - centre))
                if distance < best_distance:
                    best, best_distance = np.asarray(theirs, dtype=np.float64), distance
            if best is not None:
                weight = math.exp(-0.5 * (offset / sigma) ** 2)
                total += weight * best
                weight_sum += weight
        averaged = (total / weight_sum).astype(np.float32)
        smoothed.append(dataclasses.replace(face, landmarks=averaged))
    return smoothed


class LandmarkSmoother:
    """Streaming :func:`smooth_landmarks`: frames' faces go in, smoothed ones come out
    ``radius`` frames later (all of the rest at :meth:`flush`), in order.

    ``push(key, faces)`` returns the ``(key, smoothed_faces)`` pairs now ready; ``key`` is
    anything the caller needs to match them to its frames (e.g. the frame itself).
    """

    def __init__(self, radius: int) -> None:
        if radius < 0:
            raise HonestFaceError(f"smoothing radius must be at least 0 frames, got {radius}")
        self.radius = int(radius)
        self._window: deque = deque()  # (key, faces), at most 2 * radius + 1
        self._next = 0  # position in the window of the next frame to emit

    def push(self, key, faces: Sequence) -> list[tuple[object, list]]:
        self._window.append((key, list(faces)))
        ready = []
        while self._next < len(self._window) and len(self._window) - 1 - self._next >= self.radius:
            ready.append(self._emit())
        return ready

    def flush(self) -> list[tuple[object, list]]:
        ready = []
        while self._next < len(self._window):
            ready.append(self._emit())
        return ready

    def _emit(self) -> tuple[object, list]:
        frames = [faces for _, faces in self._window]
        key = self._window[self._next][0]
        result = (key, smooth_landmarks(frames, self._next, self.radius))
        self._next += 1
        while self._next > self.radius:  # frames no longer needed as past context
            self._window.popleft()
            self._next -= 1
        return result


__all__ = [
    "DEFAULT_CRF",
    "DisplayOrientation",
    "LandmarkSmoother",
    "TRACK_DISTANCE",
    "VIDEO_EXTRA",
    "VIDEO_SUFFIXES",
    "VideoFrame",
    "VideoInfo",
    "VideoReader",
    "VideoWriter",
    "is_video",
    "require_av",
    "smooth_landmarks",
]
