"""Data with learnable structure, all offline: scikit-learn's bundled data sets, images made from
its digits, synthetic shapes to segment, and byte-level text from the data sets' descriptions."""

from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F

IMAGE_SIZE = 32
SEQ_LEN = 32


def _standardise(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean(0)) / (x.std(0) + 1e-6)


@cache
def tabular(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Standardised features and integer labels of a bundled scikit-learn classification set."""
    from sklearn import datasets

    loader = {"breast_cancer": datasets.load_breast_cancer, "wine": datasets.load_wine, "iris": datasets.load_iris, "digits": datasets.load_digits}[name]
    d = loader()
    x = torch.tensor(d.data, dtype=torch.float32)
    return _standardise(x), torch.tensor(d.target, dtype=torch.long)


@cache
def digit_pixels() -> tuple[torch.Tensor, torch.Tensor]:
    """Digits as 64 pixels in [0, 1] (the VAE's reconstruction target) and labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.tensor(d.data, dtype=torch.float32) / 16.0, torch.tensor(d.target, dtype=torch.long)


@cache
def digit_images() -> tuple[torch.Tensor, torch.Tensor]:
    """The 8x8 digits upsampled to 3 x 32 x 32 and normalised per channel, as an image model sees them."""
    pixels, labels = digit_pixels()
    img = F.interpolate(pixels.reshape(-1, 1, 8, 8), size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    img = (img - img.mean()) / img.std()
    return img.expand(-1, 3, -1, -1).contiguous(), labels


@cache
def digit_rows() -> tuple[torch.Tensor, torch.Tensor]:
    """Each digit as a sequence of its 8 rows of 8 pixels (a recurrent model's input)."""
    pixels, labels = digit_pixels()
    return (pixels.reshape(-1, 8, 8) - 0.3) / 0.4, labels


@cache
def shapes(n: int = 512, size: int = IMAGE_SIZE, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy images with a bright rectangle and a dark disc; per-pixel labels 0 background,
    1 rectangle, 2 disc (a segmentation task)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images = 0.3 * torch.randn(n, 1, size, size, generator=g)
    masks = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        x0, y0 = torch.randint(0, size - 10, (2,), generator=g).tolist()
        w, h = torch.randint(5, 10, (2,), generator=g).tolist()
        rect = (xx >= x0) & (xx < x0 + w) & (yy >= y0) & (yy < y0 + h)
        cx, cy = torch.randint(4, size - 4, (2,), generator=g).tolist()
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= 9
        images[i, 0][rect] += 1.0
        images[i, 0][disc] -= 1.0
        masks[i][rect] = 1
        masks[i][disc] = 2
    return images, masks


@cache
def _descriptions() -> tuple[bytes, ...]:
    from sklearn import datasets

    loaders = (datasets.load_iris, datasets.load_digits, datasets.load_breast_cancer, datasets.load_wine)
    return tuple(f().DESCR.encode("utf-8", "replace") for f in loaders)


@cache
def byte_corpus() -> torch.Tensor:
    """All four descriptions as one stream of bytes (token ids 0-255)."""
    return torch.tensor(list(b"\n".join(_descriptions())), dtype=torch.long)


@cache
def byte_windows(n: int = 1024, length: int = SEQ_LEN, seed: int = 0) -> torch.Tensor:
    """``n`` random windows of ``length`` bytes from the corpus (language modelling)."""
    corpus = byte_corpus()
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(corpus) - length, (n,), generator=g)
    return torch.stack([corpus[s : s + length] for s in starts.tolist()])


@cache
def byte_sources(n: int = 1024, length: int = SEQ_LEN, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows of ``length`` bytes labelled with the description they come from (4 classes)."""
    texts = [torch.tensor(list(t), dtype=torch.long) for t in _descriptions()]
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, len(texts), (n,), generator=g)
    windows = []
    for label in labels.tolist():
        text = texts[label]
        start = int(torch.randint(0, len(text) - length, (1,), generator=g))
        windows.append(text[start : start + length])
    return torch.stack(windows), labels


@cache
def counting_windows(n: int = 1024, length: int = SEQ_LEN, seed: int = 0) -> torch.Tensor:
    """Windows x_t = x_0 + t (mod 256) from random starts: every next byte is certain, so a language
    model can drive its loss to 0 (and its logits up)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 1), generator=g) + torch.arange(length)) % 256
