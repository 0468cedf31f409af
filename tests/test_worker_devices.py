"""Workers pinned to GPUs by the queues they serve (PREFLOOP_<QUEUE>_QUEUE_DEVICES)."""

from __future__ import annotations

import os

import pytest
from django.core.exceptions import ImproperlyConfigured

from prefloop.celery import pin_devices
from training.services.worker_devices import pin_worker_devices


@pytest.fixture
def pinned(settings):
    settings.PREFLOOP_QUEUE_DEVICES = {"gpu": "0,1", "train": "2", "refit": "cpu"}
    return settings


def test_a_worker_takes_the_gpus_of_its_queue(pinned):
    environ = {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}
    assert pin_worker_devices(["gpu"], environ) == "0,1" and environ["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert pin_worker_devices(["train"], environ) == "2" and environ["CUDA_VISIBLE_DEVICES"] == "2"
    # "cpu": no GPU at all, so a refit worker cannot load a second model into training's GPU.
    assert pin_worker_devices(["refit"], environ) == "cpu" and environ["CUDA_VISIBLE_DEVICES"] == ""
    untouched = {"CUDA_VISIBLE_DEVICES": "3"}
    assert pin_worker_devices(["default"], untouched) is None and untouched == {"CUDA_VISIBLE_DEVICES": "3"}


def test_a_worker_for_queues_pinned_apart_is_refused(pinned):
    with pytest.raises(ImproperlyConfigured, match="start one worker per queue"):
        pin_worker_devices(["gpu", "train"], {})
    pinned.PREFLOOP_QUEUE_DEVICES = {"gpu": "1", "train": "1", "refit": ""}
    assert pin_worker_devices(["gpu", "train", "refit"], {}) == "1"  # the same GPUs: one worker may serve both


def test_celery_starting_a_worker_pins_it_by_its_queues(pinned, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")  # restored after the test
    pin_devices(sender="train@host", conf=None, options={"queues": ["train"]})
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2"
