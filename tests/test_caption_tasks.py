"""The captioning task: a task of several model batches stores each batch in a transaction of its
own while the model describes the next; what a failure part way leaves is stored or re-done."""
import threading

import pytest
from django.core.files.storage import default_storage

from captioning.inference import describe_ahead
from gallery import tasks
from gallery.ingest import ingest_bytes
from gallery.models import Caption, Image

pytestmark = pytest.mark.django_db


@pytest.fixture
def stored(photo, no_queue, settings):
    """Five pending images; the model describes two at a time."""
    settings.IMAGESEARCH_CAPTION_BATCH = 2
    return [ingest_bytes(photo(seed), f"{seed}.jpg").image.pk for seed in range(5)]


def statuses(ids) -> list[str]:
    by_id = dict(Image.objects.filter(pk__in=ids).values_list("pk", "status"))
    return [by_id[pk] for pk in ids]


def test_a_task_describes_and_stores_its_photos_a_batch_at_a_time(stored, fake_captioner, monkeypatch):
    described, stored_batches = [], []
    describe, store = fake_captioner.describe_arrays, tasks.add_model_captions
    monkeypatch.setattr(fake_captioner, "describe_arrays", lambda arrays: described.append(len(arrays)) or describe(arrays))
    monkeypatch.setattr(tasks, "add_model_captions", lambda batch, **kw: stored_batches.append(len(batch)) or store(batch, **kw))
    default_storage.delete(Image.objects.get(pk=stored[2]).file.name)

    assert tasks.caption_images(stored) == {"captioned": 4, "failed": 1, "skipped": 0}
    assert described == stored_batches == [2, 1, 1]
    assert statuses(stored) == ["done", "done", "failed", "done", "done"]
    assert "could not be read" in Image.objects.get(pk=stored[2]).error


def test_batches_stored_before_a_failure_stay_and_the_task_run_again_does_the_rest(stored, fake_captioner, monkeypatch):
    """A worker dying mid-task is re-delivered (acks_late): its stored batches are skipped, nothing is described twice."""
    describe, calls = fake_captioner.describe_arrays, []

    def fails_on_the_second_batch(arrays):
        calls.append(len(arrays))
        if len(calls) == 2:
            raise RuntimeError("the model failed")
        return describe(arrays)

    monkeypatch.setattr(fake_captioner, "describe_arrays", fails_on_the_second_batch)
    with pytest.raises(RuntimeError):
        tasks.caption_images(stored)
    assert statuses(stored) == ["done", "done", "processing", "processing", "processing"]

    monkeypatch.setattr(fake_captioner, "describe_arrays", describe)
    assert tasks.caption_images(stored) == {"captioned": 3, "failed": 0, "skipped": 2}
    assert statuses(stored) == ["done"] * 5
    assert [Caption.objects.filter(image_id=pk).count() for pk in stored] == [1] * 5


def test_describe_ahead_describes_the_next_batch_while_the_caller_handles_one():
    handled_first = threading.Event()

    class Model:
        def describe_arrays(self, arrays):
            if arrays == [2]:  # blocks for good unless the caller works on batch 1 meanwhile
                assert handled_first.wait(30), "the model waited for the caller"
            return [f"described {a}" for a in arrays]

    out = []
    for key, descriptions in describe_ahead(Model().describe_arrays, [("one", [1]), ("two", [2]), ("three", [3])]):
        out.append((key, descriptions))
        handled_first.set()
    assert out == [("one", ["described 1"]), ("two", ["described 2"]), ("three", ["described 3"])]
