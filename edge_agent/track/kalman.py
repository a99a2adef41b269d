"""A batched constant-velocity Kalman filter on (cx, cy, w, h) for every track at once.

State per track: cx, cy, w, h and their velocities per frame. Noise is proportional to the
box's longer side (ByteTrack uses the height; this also suits wide boxes such as cars), so the
filter behaves the same on normalized or pixel boxes. All tracks are predicted and corrected
with a few numpy operations, never a loop per track.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]

POS_WEIGHT = 1.0 / 20  # ByteTrack's std of position, relative to the box size
VEL_WEIGHT = 1.0 / 160  # ByteTrack's std of velocity, relative to the box size
_H = np.hstack([np.eye(4), np.zeros((4, 4))])
_EYE8 = np.eye(8)
_SHIFT = np.eye(8, k=4)  # position += dt x velocity
_DIAG = np.arange(8)  # the diagonal, as fancy indices
for _constant in (_H, _EYE8, _SHIFT, _DIAG):
    _constant.setflags(write=False)  # shared by every tracker: never written
del _constant


def xyxy_to_cxcywh(xyxy: npt.NDArray[np.floating]) -> Array:
    """(N,4) xyxy boxes as (N,4) centre x, centre y, width, height."""
    b = np.asarray(xyxy, np.float64)
    out = np.empty_like(b)
    np.subtract(b[:, 2:], b[:, :2], out=out[:, 2:])
    np.add(b[:, :2], out[:, 2:] / 2, out=out[:, :2])
    return out


def cxcywh_to_xyxy(c: Array) -> Array:
    """(N,4) centre/size boxes as xyxy."""
    half = c[:, 2:4] / 2
    out = np.empty((len(c), 4), c.dtype)
    np.subtract(c[:, :2], half, out=out[:, :2])
    np.add(c[:, :2], half, out=out[:, 2:])
    return out


def _scale(mean: Array) -> Array:
    """(N,1) the longer side of each state's box: the scale of its noise (broadcasts over
    the four coordinates)."""
    return np.maximum(np.maximum(mean[:, 2], mean[:, 3]), 1e-6)[:, None]


def initiate(boxes: Array) -> tuple[Array, Array]:
    """States for new tracks from (N,4) cxcywh measurements: zero velocity, wide covariance."""
    n = len(boxes)
    mean = np.hstack([boxes, np.zeros((n, 4))])
    size = _scale(mean)
    std = np.empty((n, 8))
    std[:, :4] = 2 * POS_WEIGHT * size
    std[:, 4:] = 10 * VEL_WEIGHT * size
    cov = np.zeros((n, 8, 8))
    cov[:, _DIAG, _DIAG] = std**2
    return mean, cov


def predict(mean: Array, cov: Array, dt: float) -> tuple[Array, Array]:
    """Advance every state by dt frames."""
    f = _EYE8 + dt * _SHIFT
    size = _scale(mean)
    q = np.empty((len(mean), 8))
    q[:, :4] = POS_WEIGHT * size
    q[:, 4:] = VEL_WEIGHT * size
    q **= 2
    q *= max(dt, 1.0)
    new_mean = mean @ f.T
    new_cov = f @ cov @ f.T
    new_cov[:, _DIAG, _DIAG] += q
    return new_mean, new_cov


def correct(mean: Array, cov: Array, boxes: Array) -> tuple[Array, Array]:
    """Correct (N,8) states with (N,4) cxcywh measurements, pairwise."""
    r = (POS_WEIGHT * _scale(mean)) ** 2
    s = cov[:, :4, :4].copy()
    s[:, _DIAG[:4], _DIAG[:4]] += r
    pht = cov[:, :, :4]  # P H^T
    # K = P H^T S^-1, solved as S K^T = (P H^T)^T since S is symmetric.
    gain = np.linalg.solve(s, np.transpose(pht, (0, 2, 1))).transpose(0, 2, 1)
    innovation = boxes - mean[:, :4]
    new_mean = mean + np.einsum("nij,nj->ni", gain, innovation)
    new_cov = cov - gain @ (_H @ cov)
    return new_mean, new_cov
