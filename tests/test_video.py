"""Video reading and writing with PyAV (audio kept), and temporal landmark smoothing."""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import numpy as np
import pytest
import torch

from honestface.errors import HonestFaceError
from honestface.video import LandmarkSmoother, VideoReader, VideoWriter, is_video, smooth_landmarks

av = pytest.importorskip("av", reason="PyAV (the 'video' extra) is not installed")

AUDIO_RATE = 16000


def tone(seconds: float, frequency: float = 440.0) -> np.ndarray:
    """(1, samples) float32 mono sine wave."""
    t = np.arange(int(seconds * AUDIO_RATE)) / AUDIO_RATE
    return (0.3 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)[None]


def write_test_clip(path, frames: list[torch.Tensor], fps: int = 5, audio: np.ndarray | None = None,
                    audio_codec: str = "aac", video_codec: str = "libx264", display_rotation: float | None = None,
                    hflip: bool = False, vflip: bool = False) -> None:
    """Encode (3, H, W) frames (and a mono tone) with PyAV directly, as a camera or editor would.

    ``display_rotation`` (counter-clockwise degrees, FFmpeg's convention) and the flips go
    into the container's display matrix: how players turn the stored frames to show them.
    """
    height, width = frames[0].shape[-2:]
    with av.open(str(path), "w") as container:
        video = container.add_stream(video_codec, rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"crf": "12"}
        if display_rotation is not None:
            video.set_display_rotation(display_rotation, hflip=hflip, vflip=vflip)
        sound = None
        if audio is not None:
            sound = container.add_stream(audio_codec, rate=AUDIO_RATE)
            sound.layout = "mono"
        for i, image in enumerate(frames):
            array = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts = i
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        if sound is not None:
            samples = audio if audio_codec != "pcm_s16le" else (audio * 32767).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(samples, format="fltp" if samples.dtype == np.float32 else "s16",
                                               layout="mono")
            frame.sample_rate, frame.pts = AUDIO_RATE, 0
            for packet in sound.encode(frame):
                container.mux(packet)
            for packet in sound.encode():
                container.mux(packet)


def read_audio(path) -> tuple[str, np.ndarray]:
    """(codec name, mono samples as float) of a file's first audio stream."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        chunks = [frame.to_ndarray().astype(np.float32).reshape(-1) for frame in container.decode(stream)]
        samples = np.concatenate(chunks)
        if samples.size and np.abs(samples).max() > 2:
            samples = samples / 32767
        return stream.codec_context.name, samples


def gradient_frames(count: int, height: int = 48, width: int = 64) -> list[torch.Tensor]:
    """Frames that differ from each other (a moving ramp), smooth enough for lossy codecs."""
    ys = torch.linspace(0, 1, height)[:, None]
    xs = torch.linspace(0, 1, width)[None, :]
    return [torch.stack([(0.5 + 0.3 * torch.sin(2 * torch.pi * (xs + i * 0.15))).expand(height, width),
                         (ys * 0.8 + 0.1).expand(height, width),
                         torch.full((height, width), 0.2 + 0.1 * i)]) for i in range(count)]


def test_is_video():
    assert is_video("clip.MP4") and is_video("a/b.webm") and not is_video("photo.jpg")


def test_round_trip_keeps_frames_timestamps_and_audio(tmp_path):
    frames = gradient_frames(5)
    source = tmp_path / "clip.mp4"
    write_test_clip(source, frames, audio=tone(1.0))
    with VideoReader(source) as reader:
        info = reader.info
        decoded = list(reader)
    assert (info.width, info.height, info.fps, info.has_audio) == (64, 48, Fraction(5), True)
    assert (info.rotation, info.mirrored) == (0, False)  # no display matrix: frames as stored
    assert len(decoded) == 5
    for original, frame in zip(frames, decoded):
        assert frame.image.shape == (3, 48, 64)
        assert (frame.image - original).abs().mean() < 0.03  # lossy codec, same picture

    # write them back, brightened, with the source's audio
    out = tmp_path / "out" / "clip.mp4"
    with VideoWriter(out, info, audio_from=source) as writer:
        for frame in decoded:
            writer.write((frame.image * 0.5).clamp(0, 1), frame.pts)
    assert writer.audio == "copied"
    with VideoReader(out) as reader:
        again = list(reader)
        assert reader.info.has_audio and reader.info.fps == Fraction(5)
    assert [float(f.pts * reader.info.time_base) for f in again] == [float(f.pts * info.time_base) for f in decoded]
    for frame, written in zip(decoded, again):
        assert (written.image - frame.image * 0.5).abs().mean() < 0.03
    codec, samples = read_audio(out)
    _, original = read_audio(source)
    assert codec == "aac" and samples.shape == original.shape and np.array_equal(samples, original)  # copied bit-exact


def test_audio_the_container_cannot_hold_is_re_encoded(tmp_path):
    source = tmp_path / "clip.mkv"  # PCM audio: fine in Matroska, not in WebM
    write_test_clip(source, gradient_frames(3), audio=tone(0.6), audio_codec="pcm_s16le")
    with VideoReader(source) as reader:
        info, frames = reader.info, list(reader)
    out = tmp_path / "clip.webm"
    with VideoWriter(out, info, audio_from=source) as writer:
        for frame in frames:
            writer.write(frame.image, frame.pts)
    assert writer.audio == "re-encoded (libopus)"
    with av.open(str(out)) as container:
        assert container.streams.video[0].codec_context.name == "vp9"
        rate = container.streams.audio[0].codec_context.sample_rate
    codec, samples = read_audio(out)
    assert codec == "opus"
    assert abs(samples.size / rate - 0.6) < 0.05
    # the tone is still there: same dominant frequency
    window = samples[rate // 10: rate // 10 + 8192]
    peak = np.abs(np.fft.rfft(window)).argmax() * rate / window.size
    assert abs(peak - 440) < 10


def test_odd_sized_video_without_audio(tmp_path):
    frames = [f[:, :47, :63] for f in gradient_frames(3)]
    source = tmp_path / "odd.mkv"
    info = None
    # write the source with the project's writer (no audio), read it back at its size
    from honestface.video import VideoInfo

    info = VideoInfo(path=source, width=63, height=47, fps=Fraction(10), frames=3, time_base=Fraction(1, 10),
                     has_audio=False)
    with VideoWriter(source, info) as writer:
        for frame in frames:
            writer.write(frame)
    assert writer.audio == "none"
    with VideoReader(source) as reader:
        assert (reader.info.width, reader.info.height, reader.info.has_audio) == (63, 47, False)
        decoded = list(reader)
    assert len(decoded) == 3
    assert (decoded[1].image - frames[1]).abs().mean() < 0.03


def test_unreadable_video_is_a_clear_error(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all")
    with pytest.raises(HonestFaceError, match="cannot read video .*broken.mp4"):
        VideoReader(bad)
    with pytest.raises(HonestFaceError, match="not found"):
        VideoReader(tmp_path / "missing.mp4")


def test_missing_pyav_names_the_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_av(name, *args, **kwargs):
        if name == "av":
            raise ImportError("No module named 'av'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_av)
    from honestface.video import require_av

    with pytest.raises(HonestFaceError, match=r"honestface\[video\]"):
        require_av()


# ----------------------------------------------------------------------------- smoothing
@dataclasses.dataclass
class Face:
    landmarks: np.ndarray | None
    name: str = ""


def _face_points(centre: tuple[float, float], scale: float = 40.0) -> np.ndarray:
    grid = np.stack(np.meshgrid(np.linspace(-1, 1, 17), np.linspace(-1, 1, 4)), -1).reshape(-1, 2)[:68]
    return (grid * scale + np.asarray(centre)).astype(np.float32)


def test_smoothing_reduces_jitter_and_keeps_faces_apart():
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(40):
        left = Face(_face_points((100, 100)) + rng.normal(0, 2.0, (68, 2)).astype(np.float32), "left")
        right = Face(_face_points((300, 110)) + rng.normal(0, 2.0, (68, 2)).astype(np.float32), "right")
        frames.append([left, right] if rng.random() < 0.5 else [right, left])  # detector order varies
    smoother = LandmarkSmoother(radius=3)
    out = []
    for i, faces in enumerate(frames):
        out += smoother.push(i, faces)
    out += smoother.flush()
    assert [key for key, _ in out] == list(range(40))
    for name, centre in (("left", (100, 100)), ("right", (300, 110))):
        truth = _face_points(centre)
        before = np.mean([np.abs(f.landmarks - truth).mean() for faces in frames for f in faces if f.name == name])
        after = np.mean([np.abs(f.landmarks - truth).mean() for _, faces in out for f in faces if f.name == name])
        assert after < 0.6 * before  # jitter reduced, faces not mixed (that would move them 100+ px)
    # the input faces are not modified
    assert all(f.landmarks is not None for faces in frames for f in faces)


def test_smoothing_leaves_still_faces_and_lone_faces_alone():
    still = [[Face(_face_points((50, 60)))] for _ in range(5)]
    for i in range(5):
        np.testing.assert_allclose(smooth_landmarks(still, i, radius=2)[0].landmarks, still[i][0].landmarks, atol=1e-4)
    lone = [[], [Face(_face_points((50, 60))), Face(None)], [Face(_face_points((400, 60)))]]
    result = smooth_landmarks(lone, 1, radius=2)
    np.testing.assert_allclose(result[0].landmarks, lone[1][0].landmarks)  # the other face is too far away
    assert result[1].landmarks is None
    assert smooth_landmarks(lone, 1, radius=0)[0] is lone[1][0]
    with pytest.raises(HonestFaceError):
        LandmarkSmoother(-1)


# ----------------------------------------------------------------------------- display rotation
PERSON = "Alvaro_Uribe"


def displayed(stored: torch.Tensor, rotation: float, hflip: bool = False, vflip: bool = False) -> torch.Tensor:
    """What a player shows for a (3, H, W) stored frame with this display matrix: FFmpeg's
    rotation turns the picture counter-clockwise (``torch.rot90`` on (H, W) turns
    counter-clockwise too), then the mirrors apply (as ``ffmpeg -autorotate`` does)."""
    image = torch.rot90(stored, k=round(rotation / 90) % 4, dims=(1, 2))
    if hflip:
        image = image.flip(2)
    if vflip:
        image = image.flip(1)
    return image


def stored_as_a_phone_does(upright: torch.Tensor, rotation: int) -> torch.Tensor:
    """The frame a phone stores so that ``rotation`` in its display matrix shows ``upright``."""
    return torch.rot90(upright, k=-(rotation // 90), dims=(1, 2))


def marked_picture(height: int = 48, width: int = 64) -> torch.Tensor:
    """(3, H, W) grey picture with a red top-left, green top-right and blue bottom-left corner."""
    image = torch.full((3, height, width), 0.2)
    image[:, :12, :16] = torch.tensor([1.0, 0.1, 0.1])[:, None, None]
    image[:, :12, -16:] = torch.tensor([0.1, 1.0, 0.1])[:, None, None]
    image[:, -12:, :16] = torch.tensor([0.1, 0.1, 1.0])[:, None, None]
    return image


def face_picture(shared_data) -> torch.Tensor:
    """(3, 208, 160) portrait crop of a real LFW photo, the face in the middle."""
    from honestface.image_io import load_image

    return load_image(shared_data / "lfw" / PERSON / f"{PERSON}_0001.jpg")[:, 21:229, 45:205]


def display_matrix_of(path) -> bytes | None:
    """The display-matrix side data of the first decoded frame of a file (None without one)."""
    with av.open(str(path)) as container:
        frame = next(container.decode(container.streams.video[0]))
        side_data = frame.side_data.get("DISPLAYMATRIX")
        return None if side_data is None else bytes(side_data)


def test_marked_corners_come_out_where_players_show_them(tmp_path):
    """A phone's portrait clip: the upright picture stored turned, the display matrix saying
    -90 (players turn it clockwise); the reader gives the upright picture back."""
    upright = marked_picture(64, 48)  # portrait, red corner top-left
    clip = tmp_path / "phone.mp4"
    write_test_clip(clip, [stored_as_a_phone_does(upright, -90)] * 2, display_rotation=-90)
    with VideoReader(clip) as reader:
        info, frames = reader.info, list(reader)
    assert (info.width, info.height, info.rotation, info.mirrored) == (48, 64, -90, False)
    image = frames[0].image
    assert image.shape == (3, 64, 48)
    assert image[:, 2:10, 2:14].mean(dim=(1, 2)).tolist() == pytest.approx([1.0, 0.1, 0.1], abs=0.05)  # red
    assert image[:, 2:10, -14:-2].mean(dim=(1, 2)).tolist() == pytest.approx([0.1, 1.0, 0.1], abs=0.05)  # green
    assert image[:, -10:-2, 2:14].mean(dim=(1, 2)).tolist() == pytest.approx([0.1, 0.1, 1.0], abs=0.05)  # blue


@pytest.mark.parametrize(("rotation", "hflip", "vflip", "reported"), [
    (None, False, False, (0, False)),
    (90, False, False, (90, False)),
    (-90, False, False, (-90, False)),
    (270, False, False, (-90, False)),
    (180, False, False, (180, False)),
    (90, True, False, (90, True)),
    (0, False, True, (0, True)),
])
def test_every_display_matrix_orientation(tmp_path, rotation, hflip, vflip, reported):
    stored = marked_picture()
    clip = tmp_path / "clip.mp4"
    write_test_clip(clip, [stored, stored * 0.8], display_rotation=rotation, hflip=hflip, vflip=vflip)
    with VideoReader(clip) as reader:
        info, frames = reader.info, list(reader)
    expected = [displayed(f, rotation or 0, hflip, vflip) for f in (stored, stored * 0.8)]
    assert (info.width, info.height) == (expected[0].shape[2], expected[0].shape[1])
    assert (info.rotation, info.mirrored) == reported
    assert len(frames) == 2
    for frame, truth in zip(frames, expected):
        assert frame.image.shape == truth.shape
        assert (frame.image - truth).abs().mean() < 0.02


@pytest.mark.parametrize(("rotation", "suffix"), [(-90, ".mov"), (-90, ".mp4"), (90, ".mp4"), (180, ".mp4")])
def test_phone_clip_of_a_real_face_is_read_upright_and_written_upright(shared_data, tmp_path, rotation, suffix):
    upright = face_picture(shared_data)  # (3, 208, 160)
    frames = [upright, torch.roll(upright, shifts=(1, 2), dims=(1, 2))]
    clip = tmp_path / f"phone{suffix}"  # iPhones record QuickTime, Android phones MP4
    write_test_clip(clip, [stored_as_a_phone_does(f, rotation) for f in frames], audio=tone(0.4),
                    display_rotation=rotation)
    with VideoReader(clip) as reader:
        info, decoded = reader.info, list(reader)
    assert (info.width, info.height, info.rotation, info.has_audio) == (160, 208, rotation, True)
    for frame, truth in zip(decoded, frames):
        assert frame.image.shape == (3, 208, 160)
        assert (frame.image - truth).abs().mean() < 0.03  # the upright source, up to the codec

    out = tmp_path / f"out{suffix}"
    with VideoWriter(out, info, audio_from=clip) as writer:
        for frame in decoded:
            writer.write(frame.image, frame.pts)
    assert writer.audio == "copied"
    assert display_matrix_of(out) is None  # upright pixels, nothing for a player to turn
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == (160, 208)
    with VideoReader(out) as reader:
        assert (reader.info.width, reader.info.height, reader.info.rotation) == (160, 208, 0)
        again = list(reader)
    for frame, truth in zip(again, frames):
        assert (frame.image - truth).abs().mean() < 0.04
    assert np.array_equal(read_audio(out)[1], read_audio(clip)[1])


def test_display_matrix_that_is_not_a_quarter_turn_is_a_clear_error(tmp_path):
    clip = tmp_path / "tilted.mp4"
    write_test_clip(clip, [marked_picture()], display_rotation=72)
    with pytest.raises(HonestFaceError, match=r"tilted.mp4: .*72.0 degrees; only quarter turns"):
        VideoReader(clip)


@pytest.mark.parametrize("rotation", [-90, 180])
def test_restore_cli_on_a_phone_clip(shared_data, tmp_path, capsys, detector, rotation):
    """``honestface restore`` on a phone clip (portrait: -90; upside down: 180): the face is
    found in every frame (it is not in the stored frames as they are), the output is
    upright at the displayed size with no display matrix, and the audio is kept."""
    from honestface.cli import main
    from honestface.face.photo import detect_photo_faces

    upright = face_picture(shared_data)
    frames = [upright, torch.roll(upright, shifts=(1, 2), dims=(1, 2)), torch.roll(upright, shifts=(2, 3), dims=(1, 2))]
    stored = [stored_as_a_phone_does(f, rotation) for f in frames]
    assert detect_photo_faces(stored[0], detector) == []  # as decoded without the matrix: no face
    clip = tmp_path / "clip.mp4"
    write_test_clip(clip, stored, audio=tone(0.6), display_rotation=rotation)
    out = tmp_path / "out"
    assert main(["restore", str(clip), "-o", str(out), "--weights", "honestface-nano.safetensors",
                 "--no-progress", "--smooth", "1", "--fidelity", "off"]) == 0
    printed = capsys.readouterr().out
    assert (f"clip.mp4: video, 3 frames (turned upright: display rotation {rotation} deg); 3 face(s) restored, "
            "0 frame(s) without a face written unchanged; audio copied") in printed
    assert display_matrix_of(out / "clip.mp4") is None
    with VideoReader(out / "clip.mp4") as reader:
        info, result = reader.info, list(reader)
    assert (info.width, info.height, info.rotation, info.has_audio) == (160, 208, 0, True)
    assert len(result) == 3
    for frame, truth in zip(result, frames):
        difference = (frame.image - truth).abs()
        centre, border = difference[:, 70:150, 40:120].mean(), difference[:, :30].mean()
        assert border < 0.03  # upright: the background is where it is in the upright source
        assert centre > 1.5 * border  # the face was restored
    assert np.array_equal(read_audio(out / "clip.mp4")[1], read_audio(clip)[1])
