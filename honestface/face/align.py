"""FFHQ-style face alignment and paste-back.

The FFHQ recipe (Karras et al., the FFHQ dataset script) turns landmarks into an oriented
square ("quad") around the face:

    eye_avg = (mean(left eye) + mean(right eye)) / 2,   eye_to_eye = right - left
    mouth_avg = (mouth left corner + mouth right corner) / 2, eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - rot90(eye_to_mouth);  x *= max(2 |eye_to_eye|, 1.8 |eye_to_mouth|) / |x|
    y = rot90(x);  c = eye_avg + 0.1 eye_to_mouth
    quad = [c - x - y, c - x + y, c + x + y, c + x - y]   (top-left, bottom-left, bottom-right, top-right)

and resamples the quad to an N x N crop. Here that resampling is one similarity
transform (a (2, 3) matrix, source pixel -> crop pixel, pixel centres at integer
coordinates), applied with kornia's differentiable ``warp_affine``. Paste-back warps the
(restored) crop with the inverse matrix and blends it in with a feathered mask that fades
to zero before the crop border, so no rectangle shows; faces partly outside the photo and
rotated faces need nothing special, and several faces are pasted one after the other.

Landmarks may be 68 points (iBUG order) or 5 points (insightface order: left eye, right
eye, nose, left mouth corner, right mouth corner).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import ImageError, NoFaceError
from ..image_io import check_image_batch

#: Fraction of the crop size over which the paste-back mask fades from 1 to 0, and the
#: margin kept at 0 along the crop border.
DEFAULT_FEATHER = 0.12
DEFAULT_MARGIN = 0.02


def _as_batch_points(landmarks) -> tuple[torch.Tensor, bool]:
    points = torch.as_tensor(landmarks)
    if not points.is_floating_point():
        points = points.float()
    single = points.dim() == 2
    if single:
        points = points.unsqueeze(0)
    if points.dim() != 3 or points.shape[-1] != 2 or points.shape[1] not in (5, 68):
        raise ImageError(f"landmarks must have shape (68, 2) or (5, 2), optionally batched; got {tuple(points.shape)}")
    if not torch.isfinite(points).all():
        raise NoFaceError("cannot align a face without landmarks (NaN landmarks)")
    return points, single


def _eyes_and_mouth(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    if points.shape[1] == 68:
        return points[:, 36:42].mean(1), points[:, 42:48].mean(1), points[:, 48], points[:, 54]
    return points[:, 0], points[:, 1], points[:, 3], points[:, 4]


def _rot90(v: torch.Tensor) -> torch.Tensor:
    """(x, y) -> (-y, x): rotate by +90 degrees in image coordinates (y down)."""
    return torch.stack([-v[..., 1], v[..., 0]], dim=-1)


def ffhq_quad(landmarks) -> torch.Tensor:
    """(B, 68|5, 2) or (68|5, 2) landmarks -> (B, 4, 2) or (4, 2) FFHQ quad corners."""
    points, single = _as_batch_points(landmarks)
    eye_left, eye_right, mouth_left, mouth_right = _eyes_and_mouth(points)
    eye_avg = (eye_left + eye_right) / 2
    eye_to_eye = eye_right - eye_left
    eye_to_mouth = (mouth_left + mouth_right) / 2 - eye_avg
    x = eye_to_eye - _rot90(eye_to_mouth)
    x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    x = x * torch.maximum(eye_to_eye.norm(dim=-1) * 2.0, eye_to_mouth.norm(dim=-1) * 1.8)[:, None]
    y = _rot90(x)
    centre = eye_avg + eye_to_mouth * 0.1
    quad = torch.stack([centre - x - y, centre - x + y, centre + x + y, centre + x - y], dim=1)
    return quad[0] if single else quad


def quad_to_affine(quad: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 4, 2) quad -> (B, 2, 3) matrix mapping source pixels to ``size`` x ``size`` crop pixels.

    Quad corners are pixel-edge positions of the crop corners (as in the FFHQ script,
    which passes ``quad + 0.5`` to PIL), so in pixel-centre coordinates
    ``crop = A (src - quad[0]) - 0.5``.
    """
    quad = quad.unsqueeze(0) if quad.dim() == 2 else quad
    # Three corners fix the similarity: top-left, bottom-left, top-right.
    src = torch.stack([quad[:, 0], quad[:, 1], quad[:, 3]], dim=1) + 0.5  # (B, 3, 2) continuous
    dst = torch.tensor([[0.0, 0.0], [0.0, size], [size, 0.0]], dtype=quad.dtype, device=quad.device)
    ones = torch.ones(quad.shape[0], 3, 1, dtype=quad.dtype, device=quad.device)
    src_h = torch.cat([src, ones], dim=-1)  # (B, 3, 3)
    # Solve M @ src_h^T = dst^T for M (2x3), in continuous coordinates.
    matrix = torch.linalg.solve(src_h, dst.expand(quad.shape[0], 3, 2)).transpose(1, 2)
    # Continuous -> pixel-centre coordinates on both sides: shift by 0.5.
    shift = matrix[:, :, :2].sum(-1) * 0.5 - 0.5
    return torch.cat([matrix[:, :, :2], (matrix[:, :, 2] + shift)[..., None]], dim=-1)


def alignment_affine(landmarks, size: int) -> torch.Tensor:
    """(B, 68|5, 2) landmarks -> (B, 2, 3) source -> aligned-crop pixel transform."""
    points, single = _as_batch_points(landmarks)
    matrix = quad_to_affine(ffhq_quad(points), size)
    return matrix[0] if single else matrix


def invert_affine(matrix: torch.Tensor) -> torch.Tensor:
    """Inverse of (..., 2, 3) affine matrices."""
    linear = matrix[..., :2]
    inverse = torch.linalg.inv(linear)
    return torch.cat([inverse, -(inverse @ matrix[..., 2:])], dim=-1)


def transform_points(points: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Apply (..., 2, 3) affines to (..., N, 2) points."""
    points = torch.as_tensor(points, dtype=matrix.dtype, device=matrix.device)
    return points @ matrix[..., :2].transpose(-1, -2) + matrix[..., 2].unsqueeze(-2)


def warp(images: torch.Tensor, matrix: torch.Tensor, size: tuple[int, int],
         padding_mode: str = "reflection") -> torch.Tensor:
    """Warp (B, C, H, W) by (B, 2, 3) source->target pixel affines to (B, C, *size).

    When the warp shrinks an image by more than 2x, the source is first average-pooled by
    an integer factor (matrix adjusted) so the bilinear resampling does not alias.
    """
    from kornia.geometry.transform import warp_affine

    dtype = images.dtype
    if dtype not in (torch.float32, torch.float64):  # half precision: resample in float32
        images = images.float()
    matrix = matrix.to(images.device, images.dtype)
    outputs = []
    for image, m in zip(images, matrix):
        image, m = image[None], m[None]
        scale = math.sqrt(abs(float(torch.linalg.det(m[0, :, :2]))))
        factor = int(1.0 / scale) if scale > 0 else 1
        if factor >= 2 and min(image.shape[-2:]) >= 2 * factor:
            image = F.avg_pool2d(image, factor, factor)
            # Pooled pixel j covers source pixels j*factor .. j*factor+factor-1.
            pool = torch.tensor([[factor, 0.0, (factor - 1) / 2], [0.0, factor, (factor - 1) / 2], [0, 0, 1.0]],
                                dtype=m.dtype, device=m.device)
            m = m @ pool
        outputs.append(warp_affine(image, m, dsize=size, mode="bilinear", padding_mode=padding_mode,
                                   align_corners=True))
    return torch.cat(outputs, dim=0).to(dtype)


def align_face(image: torch.Tensor, landmarks, size: int = 512,
               padding_mode: str = "reflection") -> tuple[torch.Tensor, torch.Tensor]:
    """FFHQ-style aligned crops of the faces given by ``landmarks``.

    Args:
        image: (3, H, W) one photo, or (B, 3, H, W) one photo per landmark set.
        landmarks: (68|5, 2) one face, or (K, 68|5, 2) several faces (with a (3, H, W)
            image all K are cut from it; with a batch, K must equal B).
        size: crop side in pixels.
        padding_mode: how the photo is extended where the quad leaves it ("reflection"
            as FFHQ does, "zeros" or "border").

    Returns:
        ``(crop, affine)``: (3, size, size) and (2, 3) for one face, (K, 3, size, size)
        and (K, 2, 3) for several. ``affine`` maps photo pixels to crop pixels.
    """
    single_image = torch.is_tensor(image) and image.dim() == 3
    images = check_image_batch(image, "image")
    points, single_face = _as_batch_points(landmarks)
    if images.shape[0] == 1 and points.shape[0] > 1:
        images = images.expand(points.shape[0], -1, -1, -1)
    if images.shape[0] != points.shape[0]:
        raise ImageError(f"{images.shape[0]} images but {points.shape[0]} landmark sets")
    matrix = alignment_affine(points.to(images.device, torch.float32), size)
    crops = warp(images.float(), matrix, (size, size), padding_mode)
    if single_face and single_image:
        return crops[0], matrix[0]
    return crops, matrix


def feathered_mask(size: int, feather: float = DEFAULT_FEATHER, margin: float = DEFAULT_MARGIN,
                   device=None, dtype=torch.float32) -> torch.Tensor:
    """(size, size) blending mask in crop space: 1 inside, smooth fall-off to 0 at the border.

    Each axis ramps with a smoothstep over ``feather * size`` pixels after a zero margin
    of ``margin * size``; corners are rounded by combining the two ramps as a product.
    """
    coords = torch.arange(size, device=device, dtype=dtype) + 0.5
    distance = torch.minimum(coords, size - coords)  # to the nearest edge along one axis
    t = ((distance - margin * size) / max(feather * size, 1e-6)).clamp(0, 1)
    ramp = t * t * (3 - 2 * t)
    return ramp[:, None] * ramp[None, :]


def paste_back(image: torch.Tensor, crops: torch.Tensor, affines: torch.Tensor, blend: float = 1.0,
               mask: torch.Tensor | None = None, feather: float = DEFAULT_FEATHER) -> torch.Tensor:
    """Put (restored) aligned crops back into the photo they were cut from.

    Args:
        image: (3, H, W) the original photo in [0, 1].
        crops: (3, S, S) or (K, 3, S, S) crops, in the frame given by ``affines``.
        affines: (2, 3) or (K, 2, 3) photo -> crop matrices from :func:`align_face`.
        blend: 0 keeps the photo, 1 uses the crops fully inside the mask.
        mask: optional (S, S) or (K, S, S) crop-space mask; default :func:`feathered_mask`.

    Returns:
        (3, H, W) the photo with every crop blended in (in order; later faces on top).
    """
    if not torch.is_tensor(image) or image.dim() != 3:
        raise ImageError(f"paste_back takes one (3, H, W) photo, got {getattr(image, 'shape', type(image))}")
    photo = check_image_batch(image, "image")
    crops = check_image_batch(crops, "crops")
    affines = affines.unsqueeze(0) if affines.dim() == 2 else affines
    if affines.shape != (crops.shape[0], 2, 3):
        raise ImageError(f"need one (2, 3) affine per crop: {crops.shape[0]} crops, affines {tuple(affines.shape)}")
    if not 0.0 <= blend <= 1.0:
        raise ImageError(f"blend must be in [0, 1], got {blend}")
    size = crops.shape[-1]
    if mask is None:
        mask = feathered_mask(size, feather, device=crops.device, dtype=crops.dtype)
    return paste_faces(image, crops, affines, mask, blend)[0]


def paste_faces(image: torch.Tensor, crops: torch.Tensor, affines: torch.Tensor, masks: torch.Tensor,
                blend: float = 1.0, inputs: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`paste_back` with explicit crop-space masks, also returning where it pasted.

    Args:
        image: (3, H, W) photo; crops: (K, 3, S, S); affines: (K, 2, 3) photo -> crop;
        masks: (S, S) or (K, S, S) crop-space masks in [0, 1].
        inputs: (K, 3, S, S) the aligned crops the restorer was given. With them only the
            *change* ``crops - inputs`` is warped back and added to the photo, so a face
            larger than S keeps the photo's detail finer than the crop can hold (and a face
            the restorer left alone is left exactly as it was); without them the restored
            crops replace the photo's pixels.

    Returns:
        ``(result (3, H, W), alpha (H, W))``: alpha is the combined weight of the pasted
        crops at each photo pixel (``1 - prod(1 - alpha_k)``), 0 where the photo is kept.
    """
    photo = check_image_batch(image, "image")
    crops = check_image_batch(crops, "crops")
    affines = affines.unsqueeze(0) if affines.dim() == 2 else affines
    size = crops.shape[-1]
    masks = masks.to(crops.device, crops.dtype)
    masks = masks.expand(crops.shape[0], size, size) if masks.dim() == 2 else masks
    height, width = photo.shape[-2:]
    inverse = invert_affine(affines.to(crops.device, crops.dtype))
    if inputs is not None:
        if inputs.shape != crops.shape:
            raise ImageError(f"inputs {tuple(inputs.shape)} must match the crops {tuple(crops.shape)}")
        crops = crops - inputs.to(crops.device, crops.dtype)
    warped = warp(torch.cat([crops, masks[:, None]], dim=1), inverse, (height, width), padding_mode="zeros")
    result = photo[0].to(crops.dtype)
    kept = torch.ones(height, width, dtype=crops.dtype, device=crops.device)
    for face in warped:
        alpha = (face[3:4] * blend).clamp(0, 1)
        if inputs is None:
            result = result * (1 - alpha) + face[:3] * alpha
        else:
            result = result + face[:3] * alpha
        kept = kept * (1 - alpha[0])
    return result.clamp(0, 1), 1 - kept
