"""A picture of a dataset: a grid of frames with their keypoints drawn over them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from letsplay.models.data.performer_render import draw_keypoints
from letsplay.models.data.readers import ClipSource
from letsplay.models.data.torch_dataset import open_sources


def preview_grid(sources: Path | str | list[ClipSource], n: int = 8, cols: int = 4, keypoints: bool = True,
                 pairs: bool = True, size: int = 256) -> np.ndarray:
    """RGB uint8 grid of ``n`` frames spread over the clips (evenly through the dataset).
    ``pairs``: each sample as the plain frame above the same frame with keypoints."""
    import cv2

    clips = open_sources(sources) if isinstance(sources, (str, Path)) else list(sources)
    if not clips:
        raise ValueError("no complete clips to preview")
    total = sum(c.n_frames for c in clips)
    tiles = []
    for j in range(n):
        g = int((j + 0.25 + 0.5 * ((j * 0.618) % 1.0)) * total / n)  # spread out, not all at one clip phase
        for c in clips:
            if g < c.n_frames:
                break
            g -= c.n_frames
        f = c.frames(g, 1)[0]
        kp, conf = c.keypoints()
        h, w = f.shape[:2]
        if (h, w) != (size, size):
            f = cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA)
        over = draw_keypoints(f.copy(), kp[g], conf[g]) if keypoints else f
        label = f"{c.id} #{g}"
        (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.35, 1)
        for img in (f, over):
            cv2.rectangle(img, (2, size - 9 - th), (6 + tw, size - 3), (0, 0, 0), -1)
            cv2.putText(img, label, (4, size - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(np.concatenate([f, over], axis=0) if pairs else over)
    th, tw = tiles[0].shape[:2]
    rows = int(np.ceil(len(tiles) / cols))
    grid = np.full((rows * th, cols * tw, 3), 255, np.uint8)
    for j, t in enumerate(tiles):
        r, c = divmod(j, cols)
        grid[r * th:(r + 1) * th, c * tw:(c + 1) * tw] = t
    return grid


def save_png(path: Path | str, rgb: np.ndarray) -> None:
    import cv2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        raise OSError(f"could not write {path}")
