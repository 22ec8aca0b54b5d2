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

Both work on face regions: a face is cut from (and pasted into) the part of the photo its
crop covers, converted to float there alone, so memory grows with the faces, not with
the photo's megapixels. A photo may be float in [0, 1] or 8-bit (uint8, values 0-255);
pasting into an 8-bit photo writes 8-bit values.

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


def pool_factor(matrix: torch.Tensor) -> int:
    """Integer factor by which :func:`warp` average-pools the source of a (2, 3) source ->
    target affine before resampling (1: no pooling)."""
    scale = math.sqrt(abs(float(torch.linalg.det(matrix[:, :2].double()))))
    return max(1, int(1.0 / scale)) if scale > 0 else 1


def _as_float(region: torch.Tensor) -> torch.Tensor:
    """A photo region in float [0, 1] (uint8 values are divided by 255)."""
    return region.float() / 255.0 if region.dtype == torch.uint8 else region.float()


#: Rows of a photo region converted to float at a time (pooling for alignment, blending
#: for paste-back), so a face filling a 60 MP photo needs no float copy of it.
STRIP_ROWS = 1024


def _pooled_float(region: torch.Tensor, factor: int) -> torch.Tensor:
    """(3, h, w) region (uint8 or float) -> (1, 3, h // factor, w // factor) float block
    means, computed a strip of rows at a time."""
    rows = max(factor, STRIP_ROWS // factor * factor)
    strips = [F.avg_pool2d(_as_float(region[:, top:top + rows])[None], factor, factor)
              for top in range(0, region.shape[-2] // factor * factor, rows)]
    return torch.cat(strips, dim=-2)


def crop_region(matrix: torch.Tensor, size: tuple[int, int], height: int, width: int,
                step: int = 1, margin: int = 2) -> tuple[int, int, int, int] | None:
    """Part of a (height, width) source a warp by ``matrix`` (source -> target pixels, (2, 3))
    to a target of ``size`` (h, w) reads: the bounding box of the target's footprint grown by
    ``margin`` source pixels (bilinear taps), edges snapped outwards to multiples of ``step``
    (so pooling by ``step`` sees the same blocks as on the whole source), clipped.

    Returns:
        ``(left, top, right, bottom)`` (right / bottom exclusive), or None when the
        footprint misses the source.
    """
    target_h, target_w = size
    corners = torch.tensor([[-0.5, -0.5], [target_w - 0.5, -0.5], [-0.5, target_h - 0.5],
                            [target_w - 0.5, target_h - 0.5]], dtype=torch.float64)
    source = transform_points(corners, invert_affine(matrix.detach().double().cpu()))
    pad = margin + step
    left = max(0, int(math.floor((float(source[:, 0].min()) - pad) / step)) * step)
    top = max(0, int(math.floor((float(source[:, 1].min()) - pad) / step)) * step)
    right = min(width, int(math.ceil((float(source[:, 0].max()) + pad) / step)) * step)
    bottom = min(height, int(math.ceil((float(source[:, 1].max()) + pad) / step)) * step)
    if right <= left or bottom <= top:
        return None
    return left, top, right, bottom


def _shift_source(matrix: torch.Tensor, left: int, top: int) -> torch.Tensor:
    """(2, 3) source -> target affine for a source cropped at (left, top)."""
    offset = matrix[:, :2] @ torch.tensor([float(left), float(top)], dtype=matrix.dtype, device=matrix.device)
    return torch.cat([matrix[:, :2], (matrix[:, 2] + offset)[:, None]], dim=1)


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
        factor = pool_factor(m[0])
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
        image: (3, H, W) one photo, or (B, 3, H, W) one photo per landmark set; float in
            [0, 1] or uint8 (only each face's region is converted to float).
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
    if images.shape[0] != points.shape[0] and images.shape[0] != 1:
        raise ImageError(f"{images.shape[0]} images but {points.shape[0]} landmark sets")
    matrix = alignment_affine(points.to(images.device, torch.float32), size)
    height, width = images.shape[-2:]
    crops = []
    for i, m in enumerate(matrix):
        photo = images[i if images.shape[0] > 1 else 0]
        # only the part of the photo the crop covers is read (and converted to float)
        region = crop_region(m, (size, size), height, width, step=pool_factor(m))
        if region is None:  # the face lies wholly outside the photo
            region = (0, 0, width, height)
        left, top, right, bottom = region
        matrix_here, factor = _shift_source(m, left, top), pool_factor(m)
        if factor >= 2 and min(bottom - top, right - left) >= 2 * factor:
            # pooled strip by strip (what warp would do on the whole region, in less memory);
            # pooled pixel j covers region pixels j*factor .. j*factor+factor-1
            source = _pooled_float(photo[:, top:bottom, left:right], factor)
            pool = torch.tensor([[factor, 0.0, (factor - 1) / 2], [0.0, factor, (factor - 1) / 2], [0, 0, 1.0]],
                                dtype=matrix_here.dtype, device=matrix_here.device)
            matrix_here = matrix_here @ pool
        else:
            source = _as_float(photo[:, top:bottom, left:right])[None]
        crops.append(warp(source, matrix_here[None], (size, size), padding_mode)[0])
    crops = torch.stack(crops)
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


def region_in_target(inverse: torch.Tensor, size: int, height: int, width: int,
                     margin: int = 2) -> tuple[int, int, int, int] | None:
    """Part of a (height, width) photo that a ``size`` crop covers once warped back by
    ``inverse`` (crop -> photo pixels, (2, 3)): the bounding box of the crop's corners,
    grown by ``margin`` pixels, clipped; None when it misses the photo."""
    corners = torch.tensor([[-0.5, -0.5], [size - 0.5, -0.5], [-0.5, size - 0.5], [size - 0.5, size - 0.5]],
                           dtype=torch.float64)
    points = transform_points(corners, inverse.detach().double().cpu())
    left = max(0, int(math.floor(float(points[:, 0].min()))) - margin)
    top = max(0, int(math.floor(float(points[:, 1].min()))) - margin)
    right = min(width, int(math.ceil(float(points[:, 0].max()))) + margin + 1)
    bottom = min(height, int(math.ceil(float(points[:, 1].max()))) + margin + 1)
    if right <= left or bottom <= top:
        return None
    return left, top, right, bottom


def _shift_target(matrix: torch.Tensor, left: int, top: int) -> torch.Tensor:
    """(2, 3) source -> target affine for a target cropped at (left, top)."""
    shift = torch.tensor([float(left), float(top)], dtype=matrix.dtype, device=matrix.device)
    return torch.cat([matrix[:, :2], (matrix[:, 2] - shift)[:, None]], dim=1)


def paste_faces(image: torch.Tensor, crops: torch.Tensor, affines: torch.Tensor, masks: torch.Tensor,
                blend: float = 1.0, inputs: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`paste_back` with explicit crop-space masks, also returning where it pasted.

    Args:
        image: (3, H, W) photo, float in [0, 1] or uint8; crops: (K, 3, S, S);
        affines: (K, 2, 3) photo -> crop; masks: (S, S) or (K, S, S) crop-space masks in [0, 1].
        inputs: (K, 3, S, S) the aligned crops the restorer was given. With them only the
            *change* ``crops - inputs`` is warped back and added to the photo, so a face
            larger than S keeps the photo's detail finer than the crop can hold (and a face
            the restorer left alone is left exactly as it was); without them the restored
            crops replace the photo's pixels.

    Returns:
        ``(result (3, H, W), alpha (H, W))``: result in the photo's dtype (uint8 in, uint8
        out; only the faces' regions are computed in float), alpha is the combined weight of the pasted
        crops at each photo pixel (``1 - prod(1 - alpha_k)``), 0 where the photo is kept.
    """
    photo = check_image_batch(image, "image")[0]
    crops = check_image_batch(crops, "crops")
    affines = affines.unsqueeze(0) if affines.dim() == 2 else affines
    size = crops.shape[-1]
    masks = masks.to(crops.device, crops.dtype)
    masks = masks.expand(crops.shape[0], size, size) if masks.dim() == 2 else masks
    height, width = photo.shape[-2:]
    if inputs is not None:
        if inputs.shape != crops.shape:
            raise ImageError(f"inputs {tuple(inputs.shape)} must match the crops {tuple(crops.shape)}")
        crops = crops - inputs.to(crops.device, crops.dtype)
    eight_bit = photo.dtype == torch.uint8
    inverse = invert_affine(affines.to(crops.device, torch.float32))
    result = photo.clone() if eight_bit else photo.to(crops.dtype).clamp(0, 1)
    kept = torch.ones(height, width, dtype=torch.float32, device=crops.device)
    for crop, mask, matrix in zip(crops, masks, inverse):
        # only the region the crop covers is blended (in float), in order: later faces on top
        corners = region_in_target(matrix, size, height, width)
        if corners is None:
            continue
        left, top, right, bottom = corners
        layers = torch.cat([crop, mask[None]])[None]
        for strip in range(top, bottom, STRIP_ROWS):  # a strip of rows at a time: bounded memory
            end = min(bottom, strip + STRIP_ROWS)
            face = warp(layers, _shift_target(matrix, left, strip)[None], (end - strip, right - left),
                        padding_mode="zeros")[0].float()
            alpha = (face[3:4] * blend).clamp(0, 1)
            here = _as_float(result[:, strip:end, left:right])
            if inputs is None:
                blended = (here * (1 - alpha) + face[:3] * alpha).clamp(0, 1)
            else:
                blended = (here + face[:3] * alpha).clamp(0, 1)
            if eight_bit:
                result[:, strip:end, left:right] = (blended * 255.0).round().to(torch.uint8)
            else:
                result[:, strip:end, left:right] = blended.to(result.dtype)
            kept[strip:end, left:right] *= 1 - alpha[0]
    return result, kept.neg_().add_(1)
