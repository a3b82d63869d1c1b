"""A small synthetic dataset in the Amazon 2018 file format, with structure a model can learn.

Lets the whole pipeline (download from ``file://``, parsing, 5-core, features, training, DPO) run
offline in seconds, and gives tests a signal to detect: items form clusters (shared brand family,
title words and image colour), users prefer 1-3 clusters, and the next item is usually in the same
cluster and often the cluster's *next* item in a fixed chain, so order matters. Realistic wrinkles
are planted on purpose: day-granular timestamps with same-day ties, users and items under 5
interactions, items without image or metadata, HTML entities in titles, repeated (user, item) pairs.
"""

from __future__ import annotations

import colorsys
import gzip
import io
import math
from bisect import bisect_right
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import accumulate
from pathlib import Path

import numpy as np
import orjson
from PIL import Image

REVIEWS_FILE = "Demo_5.json.gz"
META_FILE = "meta_Demo.json.gz"
IMAGES_DIR = "images"
DAY_S = 86_400
_SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "do", "gu", "shi", "ber",
              "lan", "mor", "qui", "tas", "vel", "zon")


@dataclass(frozen=True)
class DemoShape:
    """How the synthetic users behave; the defaults give ~11 actions per user and keep >= 75%
    of users and >= 80% of items after 5-core filtering."""

    mean_actions_per_user: float = 11.0
    max_actions_per_user: int = 60
    short_user_fraction: float = 0.08  # users with 2-4 actions (removed by 5-core)
    p_same_cluster: float = 0.85  # next action stays in the current cluster
    p_chain_step: float = 0.6  # ... and then takes the cluster chain's next item
    p_random_cluster: float = 0.1  # a cluster switch goes outside the user's preferences
    rare_item_fraction: float = 0.03  # long-tail items seen only 1-3 times
    no_image_fraction: float = 0.05
    no_meta_fraction: float = 0.01
    no_brand_fraction: float = 0.03
    html_title_fraction: float = 0.05
    duplicate_pairs: int = 12  # users who review an item a second time
    popularity_sigma: float = 0.6  # log-normal spread of item popularity within a cluster
    median_gap_days: float = 3.0
    gap_sigma: float = 1.6  # log-normal gaps: hours to months
    same_day_fraction: float = 0.06
    max_gap_days: float = 150.0
    first_day: str = "2014-01-01"
    last_day: str = "2018-09-30"
    image_noise: float = 14.0  # per-pixel std (0-255 scale)


def generate_demo_dataset(
    out_dir: Path,
    *,
    n_users: int = 2000,
    n_items: int = 1000,
    n_clusters: int = 20,
    seed: int = 0,
    image_size: int = 32,
    shape: DemoShape | None = None,
) -> dict[str, str]:
    """Write ``Demo_5.json.gz``, ``meta_Demo.json.gz`` and ``images/<asin>.png`` into ``out_dir``;
    same seed, same bytes. Returns ``{"reviews": ..., "meta": ..., "images": ...}`` paths."""
    shape = shape or DemoShape()
    if n_clusters < 1 or n_items < 2 * n_clusters or n_users < 1:
        raise ValueError(f"demo dataset: need n_users >= 1 and n_items >= 2 * n_clusters; got "
                         f"n_users={n_users}, n_items={n_items}, n_clusters={n_clusters}.")
    out_dir = Path(out_dir).resolve()
    images_dir = out_dir / IMAGES_DIR
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    catalog = _Catalog(rng, n_items, n_clusters, shape)
    histories = _user_histories(rng, catalog, n_users, shape)
    reviews = _review_lines(rng, catalog, histories)
    meta = _meta_lines(rng, catalog, images_dir, image_size, shape)

    reviews_path, meta_path = out_dir / REVIEWS_FILE, out_dir / META_FILE
    _write_gzip(reviews_path, reviews)
    _write_gzip(meta_path, meta)
    return {"reviews": str(reviews_path), "meta": str(meta_path), "images": str(images_dir)}


class _Catalog:
    """Items, their clusters, popularity, per-cluster chains and the clusters' look and words."""

    def __init__(self, rng: np.random.Generator, n_items: int, n_clusters: int,
                 shape: DemoShape) -> None:
        self.n_clusters = n_clusters
        self.asins = [f"D{index:09d}" for index in range(n_items)]
        self.cluster = rng.permutation(np.arange(n_items) % n_clusters)
        n_rare = int(round(shape.rare_item_fraction * n_items))
        self.rare = set(rng.choice(n_items, size=n_rare, replace=False).tolist())
        popularity = rng.lognormal(0.0, shape.popularity_sigma, size=n_items)
        self.members: list[list[int]] = []  # common items per cluster, in chain (asin) order
        self.cumulative: list[list[float]] = []
        self.chain_next: dict[int, int] = {}
        for c in range(n_clusters):
            members = [i for i in np.flatnonzero(self.cluster == c).tolist() if i not in self.rare]
            self.members.append(members)
            self.cumulative.append(list(accumulate(popularity[members].tolist())))
            for position, item in enumerate(members):
                self.chain_next[item] = members[(position + 1) % len(members)]
        words = _pseudo_words(rng, n_clusters * 8 + 8)
        self.cluster_words = [words[8 * c : 8 * c + 6] for c in range(n_clusters)]
        self.brands = [[f"{words[8 * c + 6].title()}", f"{words[8 * c + 7].title()} Labs"]
                       for c in range(n_clusters)]
        groups = words[n_clusters * 8 :]
        self.category = [["Demo", groups[c % len(groups)].title(), f"{words[8 * c].title()} Line"]
                         for c in range(n_clusters)]
        golden = (math.sqrt(5) - 1) / 2
        self.hue = [(c * golden) % 1.0 for c in range(n_clusters)]

    def popular_item(self, rng: np.random.Generator, cluster: int) -> int:
        cumulative = self.cumulative[cluster]
        return self.members[cluster][bisect_right(cumulative, rng.random() * cumulative[-1])]


def _user_histories(rng: np.random.Generator, catalog: _Catalog, n_users: int,
                    shape: DemoShape) -> list[tuple[list[int], list[int]]]:
    """(items, day-granular timestamps) per user, in time order, from the cluster Markov chain."""
    first = int(datetime.fromisoformat(shape.first_day).replace(tzinfo=timezone.utc).timestamp())
    last = int(datetime.fromisoformat(shape.last_day).replace(tzinfo=timezone.utc).timestamp())
    long_mean = (shape.mean_actions_per_user - 3 * shape.short_user_fraction) / (
        1 - shape.short_user_fraction)
    histories = []
    for _ in range(n_users):
        if rng.random() < shape.short_user_fraction:
            length = int(rng.integers(2, 5))
        else:
            length = min(4 + int(rng.geometric(1.0 / (long_mean - 4))), shape.max_actions_per_user)
        preferred = rng.choice(catalog.n_clusters, size=int(rng.integers(1, 4)), replace=False)
        weights = rng.dirichlet(np.ones(len(preferred)))
        cluster = int(preferred[np.searchsorted(np.cumsum(weights), rng.random() * 0.999999)])
        items: list[int] = []
        seen: set[int] = set()
        item = catalog.popular_item(rng, cluster)
        for _step in range(length):
            item = _unseen(catalog, item, seen)
            items.append(item)
            seen.add(item)
            if rng.random() < shape.p_same_cluster:
                if rng.random() < shape.p_chain_step:
                    item = catalog.chain_next[item]
                else:
                    item = catalog.popular_item(rng, cluster)
            else:
                if rng.random() < shape.p_random_cluster:
                    cluster = int(rng.integers(catalog.n_clusters))
                else:
                    cluster = int(preferred[np.searchsorted(np.cumsum(weights),
                                                            rng.random() * 0.999999)])
                item = catalog.popular_item(rng, cluster)
        histories.append((items, _timestamps(rng, len(items), first, last, shape)))
    _plant_rare_items(rng, catalog, histories)
    _plant_duplicates(rng, histories, shape)
    return histories


def _unseen(catalog: _Catalog, item: int, seen: set[int]) -> int:
    """Walk the item's cluster chain to the first item the user has not had yet."""
    start = item
    while item in seen:
        item = catalog.chain_next[item]
        if item == start:  # whole cluster seen: any unseen common item
            return next(i for i in catalog.chain_next if i not in seen)
    return item


def _timestamps(rng: np.random.Generator, n: int, first: int, last: int,
                shape: DemoShape) -> list[int]:
    gaps = np.exp(rng.normal(math.log(shape.median_gap_days * DAY_S), shape.gap_sigma, size=n))
    gaps = np.minimum(gaps, shape.max_gap_days * DAY_S)
    gaps[rng.random(n) < shape.same_day_fraction] = 0.0
    gaps[0] = 0.0
    span = gaps.sum()
    room = last - first
    if span > room / 2:  # keep every history inside the date range
        gaps *= room / 2 / span
        span = gaps.sum()
    start = first + rng.random() * (room - span)
    times = start + np.cumsum(gaps)
    return ((times // DAY_S) * DAY_S).astype(np.int64).tolist()  # Amazon times are whole days


def _plant_rare_items(rng: np.random.Generator, catalog: _Catalog,
                      histories: list[tuple[list[int], list[int]]]) -> None:
    """Each long-tail item is inserted 1-3 times into random histories (same day as a neighbour)."""
    for item in sorted(catalog.rare):
        for user in rng.choice(len(histories), size=int(rng.integers(1, 4)), replace=False):
            items, times = histories[user]
            position = int(rng.integers(1, len(items) + 1))
            items.insert(position, item)
            times.insert(position, times[position - 1])


def _plant_duplicates(rng: np.random.Generator, histories: list[tuple[list[int], list[int]]],
                      shape: DemoShape) -> None:
    """A few users review an item they already had again, later (as in the real dumps)."""
    for user in rng.choice(len(histories), size=min(shape.duplicate_pairs, len(histories)),
                           replace=False):
        items, times = histories[user]
        items.append(items[int(rng.integers(len(items)))])
        times.append(times[-1] + DAY_S * int(rng.integers(1, 30)))


def _review_lines(rng: np.random.Generator, catalog: _Catalog,
                  histories: list[tuple[list[int], list[int]]]) -> list[bytes]:
    """2018-format review lines, grouped by item like the real 5-core files."""
    user_ids = _reviewer_ids(rng, len(histories))
    events = sorted((item, time, user) for user, (items, times) in enumerate(histories)
                    for item, time in zip(items, times))
    lines = []
    for item, time, user in events:
        words = catalog.cluster_words[int(catalog.cluster[item])]
        text = " ".join(rng.choice(words, size=int(rng.integers(6, 16))).tolist())
        day = datetime.fromtimestamp(time, tz=timezone.utc)
        lines.append(orjson.dumps({
            "overall": float(rng.integers(1, 6)),
            "verified": bool(rng.random() < 0.9),
            "reviewTime": f"{day.month:02d} {day.day}, {day.year}",
            "reviewerID": user_ids[user],
            "asin": catalog.asins[item],
            "reviewerName": f"Demo User {user}",
            "reviewText": text.capitalize() + ".",
            "summary": " ".join(rng.choice(words, size=3).tolist()).title(),
            "unixReviewTime": time,
        }))
    return lines


def _meta_lines(rng: np.random.Generator, catalog: _Catalog, images_dir: Path, image_size: int,
                shape: DemoShape) -> list[bytes]:
    """2018-format metadata lines (plus the PNG of each item that has an image)."""
    lines = []
    for item, asin in enumerate(catalog.asins):
        c = int(catalog.cluster[item])
        draw = rng.random(4)
        words = catalog.cluster_words[c]
        brand = catalog.brands[c][int(rng.integers(2))]
        title_words = rng.choice(words, size=3, replace=False).tolist()
        joiner = " &amp; " if draw[0] < shape.html_title_fraction else " "
        title = f"{brand} {title_words[0].title()} {title_words[1]}{joiner}{title_words[2]}"
        if draw[2] < shape.no_meta_fraction:
            continue  # an item that appears in reviews but has no metadata line
        urls: list[str] = []
        if draw[1] >= shape.no_image_fraction:
            path = images_dir / f"{asin}.png"
            path.write_bytes(_image_png(rng, catalog.hue[c], c, image_size, shape.image_noise))
            urls = [path.as_uri()]
        record = {
            "category": catalog.category[c],
            "description": [" ".join(rng.choice(words, size=12).tolist()).capitalize() + "."],
            "title": title,
            "also_buy": [],
            "brand": brand,
            "imageURL": urls,
            "imageURLHighRes": urls,
            "asin": asin,
        }
        if draw[3] < shape.no_brand_fraction:
            del record["brand"]
        lines.append(orjson.dumps(record))
    return lines


def _image_png(rng: np.random.Generator, hue: float, cluster: int, size: int,
               noise: float) -> bytes:
    """Cluster colour and stripe direction, per-item brightness and pixel noise."""
    rgb = np.array(colorsys.hsv_to_rgb(hue, 0.75, 0.9)) * 255.0
    angle = cluster * 0.7
    yy, xx = np.mgrid[0:size, 0:size] / size
    stripes = np.sin(2 * math.pi * 3 * (xx * math.cos(angle) + yy * math.sin(angle)))
    shade = 0.8 + 0.15 * stripes + rng.normal(0.0, 0.05)
    pixels = shade[..., None] * rgb + rng.normal(0.0, noise, size=(size, size, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def _reviewer_ids(rng: np.random.Generator, n: int) -> list[str]:
    alphabet = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"))
    ids: list[str] = []
    taken: set[str] = set()
    while len(ids) < n:
        candidate = "A" + "".join(rng.choice(alphabet, size=13).tolist())
        if candidate not in taken:
            taken.add(candidate)
            ids.append(candidate)
    return ids


def _pseudo_words(rng: np.random.Generator, n: int) -> list[str]:
    words: list[str] = []
    while len(words) < n:
        word = "".join(rng.choice(_SYLLABLES, size=int(rng.integers(2, 4))).tolist())
        if word not in words:
            words.append(word)
    return words


def _write_gzip(path: Path, lines: list[bytes]) -> None:
    """Byte-for-byte reproducible gzip: no file name, mtime 0."""
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                                mtime=0) as out:
        out.write(b"\n".join(lines) + b"\n")
