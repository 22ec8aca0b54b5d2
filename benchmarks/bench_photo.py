"""Whole-photo throughput: faces per second on a batch of video-like frames, with the faces
of all frames batched together vs one photo at a time.

    python benchmarks/bench_photo.py [--weights honestface-nano.safetensors] [--frames 16]
                                     [--faces-per-frame 2] [--batch-size 8] [--repeats 3]
                                     [--device cpu] [--data ../shared/data]

Frames: ``--faces-per-frame`` real LFW photos (250 x 250, one person each) side by side,
``--frames`` of them. Faces are detected once (dlib HOG + dlib landmarks) and reused, so
both ways restore the same faces; detection is timed on its own. Timed (median of
``--repeats`` after one warm-up):

- batched: ``restore_whole_photos(pipeline, frames, faces=...)``: the faces of all frames
  go through the model in chunks of ``--batch-size``;
- per photo: one ``restore_whole_photos`` call per frame (its faces only).

Both include alignment, the model and the paste-back. Wall-clock and CPU time are both
given (on a machine shared with other work, CPU time is the steadier number). The
results of both ways are compared (they should agree to float precision).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def compose_frames(data: Path, frames: int, faces_per_frame: int):
    """(3, 250, 250 * faces_per_frame) frames of different LFW people, side by side."""
    import torch

    from honestface.image_io import load_image

    people = sorted(p for p in (data / "lfw").iterdir() if p.is_dir())
    photos = [sorted(person.glob("*.jpg"))[0] for person in people[: frames * faces_per_frame]]
    if len(photos) < frames * faces_per_frame:
        raise SystemExit(f"bench_photo: need {frames * faces_per_frame} LFW people in {data / 'lfw'}")
    images = [load_image(path) for path in photos]
    return [torch.cat(images[i * faces_per_frame:(i + 1) * faces_per_frame], dim=-1) for i in range(frames)]


def timed(function, repeats: int) -> tuple[float, float, object]:
    """Median wall-clock and CPU seconds over ``repeats`` runs after one warm-up, and the
    last result. CPU time (all threads of this process) is less sensitive than wall time
    to other programs sharing the machine."""
    result = function()
    walls, cpus = [], []
    for _ in range(repeats):
        started, cpu_started = time.perf_counter(), time.process_time()
        result = function()
        walls.append(time.perf_counter() - started)
        cpus.append(time.process_time() - cpu_started)
    return statistics.median(walls), statistics.median(cpus), result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="honestface-nano.safetensors")
    parser.add_argument("--data", default=str(REPO_ROOT.parent / "shared" / "data"))
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--faces-per-frame", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8, help="faces per forward pass (default: 8)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = parser.parse_args(argv)

    import torch

    from honestface.cli.restore import build_pipeline
    from honestface.face import load_face_detector
    from honestface.face.photo import detect_photo_faces
    from honestface.whole_photo import restore_whole_photos

    if args.threads:
        torch.set_num_threads(args.threads)
    frames = compose_frames(Path(args.data), args.frames, args.faces_per_frame)
    pipeline = build_pipeline(None, args.weights, device=args.device, batch_size=args.batch_size)
    detector = load_face_detector("dlib")
    started = time.perf_counter()
    faces = [detect_photo_faces(frame, detector, pipeline.landmark_backend) for frame in frames]
    detection = time.perf_counter() - started
    count = sum(1 for frame_faces in faces for face in frame_faces if face.selected)

    def batched():
        return restore_whole_photos(pipeline, frames, None, faces=faces)

    def per_photo():
        return [restore_whole_photos(pipeline, [frame], None, faces=[frame_faces])[0]
                for frame, frame_faces in zip(frames, faces)]

    height, width = frames[0].shape[-2:]
    print(f"{args.weights} ({pipeline.image_size} px) on {args.device}, {torch.get_num_threads()} threads: "
          f"{len(frames)} frames of {width}x{height}, {count} faces, batch size {args.batch_size}", flush=True)
    print(f"detection (dlib HOG + landmarks, once): {detection:.2f} s, {len(frames) / detection:.2f} frames/s",
          flush=True)
    batched_s, batched_cpu, batched_results = timed(batched, args.repeats)
    print(f"batched across frames : {batched_s:.2f} s, {count / batched_s:.2f} faces/s "
          f"(CPU time {batched_cpu:.2f} s, {count / batched_cpu:.2f} faces per CPU-second)", flush=True)
    single_s, single_cpu, single_results = timed(per_photo, args.repeats)
    print(f"one photo at a time   : {single_s:.2f} s, {count / single_s:.2f} faces/s "
          f"(CPU time {single_cpu:.2f} s, {count / single_cpu:.2f} faces per CPU-second)")
    difference = max(float((a.image - b.image).abs().max()) for a, b in zip(batched_results, single_results))
    print(f"speed-up {single_s / batched_s:.2f}x wall, {single_cpu / batched_cpu:.2f}x CPU; "
          f"largest pixel difference between the two: {difference:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
