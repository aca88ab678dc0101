"""A job's output format, without a server: encoded once (shared/backends/images.py: encode_image),
read back whatever the format (decode_image, the judge's), named by the record (the api's media type,
sniffing only as a fallback), and the OpenAI request's fields onto the Job contract."""

from __future__ import annotations

import io

import pytest
from PIL import Image
from pydantic import ValidationError

from services.worker import encode_all
from shared.backends.images import decode_image, encode_image
from shared.images_api import ApiError, ImagesRequest, image_format, jobs_for, sniff_format
from shared.schemas import MEDIA_TYPES, Job, JobRecord, JobState


def noisy(mode: str = "RGB") -> Image.Image:
    image = Image.effect_noise((64, 64), 64).convert(mode)
    return image


@pytest.mark.parametrize("fmt, pil", [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")])
def test_each_format_encodes_and_decodes(fmt, pil):
    data = encode_image(noisy(), fmt, 80)
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == pil and image.size == (64, 64)
    assert decode_image(data).format == pil
    assert sniff_format(data) == fmt


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_compression_is_the_lossy_encoders_quality(fmt):
    image = noisy()
    sizes = [len(encode_image(image, fmt, level)) for level in (5, 50, 100)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[2]
    assert encode_image(image, fmt) == encode_image(image, fmt, 100)  # OpenAI's default


def test_png_is_lossless_and_ignores_compression():
    image = noisy()
    assert encode_image(image, "png", 0) == encode_image(image, "png", 100)
    assert decode_image(encode_image(image, "png")).tobytes() == image.tobytes()


def test_an_image_with_alpha_becomes_a_jpeg():
    assert decode_image(encode_image(noisy("RGBA"), "jpeg")).mode == "RGB"


def test_bad_formats_and_levels_are_refused():
    with pytest.raises(ValueError, match="unknown output format"):
        encode_image(noisy(), "gif")
    with pytest.raises(ValueError, match="0-100"):
        encode_image(noisy(), "jpeg", 101)
    gif = io.BytesIO()
    noisy().save(gif, format="GIF")
    with pytest.raises(Exception, match="cannot identify"):
        decode_image(gif.getvalue())


def test_the_worker_encodes_each_image_in_its_jobs_format():
    jobs = [Job(prompt="a", output_format="jpeg"), Job(prompt="b", output_format="webp"), Job(prompt="c")]
    failed = RuntimeError("the model raised")
    encoded = encode_all([noisy(), noisy(), failed], jobs)
    assert [sniff_format(data) for data in encoded[:2]] == ["jpeg", "webp"] and encoded[2] is failed
    assert sniff_format(encode_all([noisy()])[0]) == "png"  # no jobs: png, as before


def test_the_job_contract_bounds():
    job = Job(prompt="a")
    assert (job.output_format, job.output_compression, job.quality) == ("png", None, "auto")
    assert Job(prompt="a", output_format="webp", output_compression=0, quality="high").record_fields(1.0)[
        "output_format"] == "webp"
    for bad in ({"output_format": "gif"}, {"output_compression": -1}, {"output_compression": 101},
                {"quality": "hd"}, {"quality": "best"}):
        with pytest.raises(ValidationError):
            Job(prompt="a", **bad)


def test_the_record_names_the_format_and_the_bytes_are_a_fallback():
    record = JobRecord(job_id="j", state=JobState.done, output_format="webp")
    assert image_format(record, b"\x89PNG\r\n\x1a\n...") == "webp"
    older = JobRecord(job_id="j", state=JobState.done)
    assert image_format(older, encode_image(noisy(), "jpeg")) == "jpeg"
    assert image_format(older, b"something else") == "png"
    assert set(MEDIA_TYPES) == {"png", "jpeg", "webp"}


def test_an_openai_request_becomes_jobs_with_its_format_and_quality():
    request = ImagesRequest(prompt="a fox", output_format="jpeg", output_compression=30, quality="standard")
    (job,) = jobs_for(request, "acme", 6.0, 10, iter(["a"]).__next__)
    assert (job.output_format, job.output_compression, job.quality) == ("jpeg", 30, "medium")
    (hd,) = jobs_for(ImagesRequest(prompt="a fox", quality="hd"), "acme", 6.0, 10, iter(["b"]).__next__)
    assert (hd.output_format, hd.quality) == ("png", "high")
    with pytest.raises(ApiError) as error:
        jobs_for(ImagesRequest(prompt="a fox", quality="ultra"), "acme", 6.0, 10, iter(["c"]).__next__)
    assert error.value.status == 400 and error.value.param == "quality"
