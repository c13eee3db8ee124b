"""StreamedViews: the same samples and the same pixels as decoding everything up front, one frame at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from moegs.data.dataset import Dataset
from moegs.data.init_points import BACKGROUND_FRAMES, spread_indices
from moegs.data.views import StreamedViews
from moegs.errors import InputError
from tests.test_dataset import build_small


def decode_all(dataset: Dataset, name: str) -> torch.Tensor:
    """What the old TrainViews held: every frame of a camera as float32 [T, H, W, 3] in [0, 1]."""
    stack = np.stack([dataset.frame(name, i) for i in range(dataset.n_frames)])
    return torch.from_numpy(stack).float().div_(255.0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Dataset:
    return Dataset.load(build_small(tmp_path_factory.mktemp("views")), cache_mb=0)


@pytest.mark.parametrize("prefetch", [True, False])
def test_same_sequence_and_pixels_as_eager_decoding(dataset, prefetch) -> None:
    cameras = dataset.train_cameras
    eager = [decode_all(dataset, c.name) for c in cameras]
    views = StreamedViews(dataset, cameras, device="cpu", prefetch=prefetch)
    ours, reference = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    for step in range(12):
        limit = 1 + step % dataset.n_frames
        cam, frame = views.sample(ours, limit)
        expected = (int(torch.randint(len(cameras), (1,), generator=reference)),
                    int(torch.randint(limit, (1,), generator=reference)))
        assert (cam, frame) == expected and frame < limit
        torch.randn(3, generator=ours)  # other users of the generator (densification) interleave
        torch.randn(3, generator=reference)
        image = views.image(cam, frame)
        assert image.dtype == torch.float32 and image.device.type == "cpu"
        assert torch.equal(image, eager[cam][frame])
    views.close()


def test_image_of_another_view_than_sampled_and_errors(dataset) -> None:
    views = StreamedViews(dataset, dataset.train_cameras)
    cam, frame = views.sample(torch.Generator().manual_seed(0), dataset.n_frames)
    other = (cam + 1) % len(views.cameras)
    assert torch.equal(views.image(other, frame), decode_all(dataset, views.cameras[other].name)[frame])
    with pytest.raises(InputError, match="outside"):
        views.image(0, dataset.n_frames + 1)
    views.close()


def test_frames_move_as_uint8_and_convert_on_the_device(dataset) -> None:
    """On another device (``meta`` stands in for CUDA here) the image arrives there as float32."""
    views = StreamedViews(dataset, dataset.train_cameras, device="meta")
    cam, frame = views.sample(torch.Generator().manual_seed(1), dataset.n_frames)
    image = views.image(cam, frame)
    camera = views.cameras[cam]
    assert image.device.type == "meta" and image.dtype == torch.float32
    assert image.shape == (camera.height, camera.width, 3)
    views.close()


def test_background_is_the_temporal_median_of_spread_frames(dataset) -> None:
    """Each camera's background is the per-pixel median of the frames spread over the clip (kept as
    uint8, so it is the median rounded to 1/255)."""
    views = StreamedViews(dataset, dataset.train_cameras, prefetch=False)
    name = views.cameras[1].name
    index = spread_indices(dataset.n_frames, BACKGROUND_FRAMES)
    stack = np.stack([dataset.frame(name, i) for i in index]).astype(np.float64)
    expected = torch.from_numpy(np.median(stack, axis=0).round() / 255.0).float()
    background = views.background(1)
    assert background.shape == (views.cameras[1].height, views.cameras[1].width, 3)
    assert torch.allclose(background, expected, atol=1e-6)
    assert views.background(1) is not background and torch.equal(views.background(1), background)
