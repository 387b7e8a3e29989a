"""CAM colour maps and overlays for TensorBoard and figures."""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
import torch

from tool.camutils import max_norm


def colorize(heat: np.ndarray) -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 RGB JET colour map."""
    heat8 = np.clip(np.rint(heat * 255), 0, 255).astype(np.uint8)
    return cv2.applyColorMap(heat8, cv2.COLORMAP_JET)[:, :, ::-1]


def cam_overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a (H, W) map in [0, 1] over an (H, W, 3) uint8 image."""
    if cam.shape != image.shape[:2]:
        cam = cv2.resize(cam.astype(np.float32), (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    blended = (1 - alpha) * image.astype(np.float32) + alpha * colorize(cam).astype(np.float32)
    return blended.astype(np.uint8)


def cam_panel(
    image_chw: np.ndarray, cams: np.ndarray, label: np.ndarray, denormalize: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """One image (normalised, (3, H, W)) beside the overlays of its present classes -> (3, H, k*W) uint8.

    ``cams`` (foreground classes, h, w) are raw scores; each present class is max-normalised for display.
    ``denormalize`` undoes the network's normalisation (its ``Net.denormalize``).
    """
    image = denormalize(np.transpose(image_chw, (1, 2, 0)))
    tiles = [image]
    normed = max_norm(torch.from_numpy(np.ascontiguousarray(cams, dtype=np.float32))).numpy()
    for k in np.flatnonzero(label > 0):
        tiles.append(cam_overlay(image, normed[k]))
    return np.transpose(np.concatenate(tiles, axis=1), (2, 0, 1))


def seg_panel(
    image_chw: np.ndarray,
    label: np.ndarray,
    pred: np.ndarray,
    palette: np.ndarray,
    denormalize: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    """A normalised (3, H, W) image beside its (H, W) label and prediction in ``palette`` colours: (3, H, 3W).
    ``denormalize`` undoes the network's normalisation (its ``Net.denormalize``)."""
    image = denormalize(np.transpose(image_chw, (1, 2, 0)))
    tiles = [image, palette[label.astype(np.uint8)], palette[pred.astype(np.uint8)]]
    return np.transpose(np.concatenate(tiles, axis=1), (2, 0, 1))
