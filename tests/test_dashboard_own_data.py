"""The dashboard's side of a user's own data (issue 20): a manifest typed as the data set, caption
and image pairs files typed as paths, each previewed, and the allowed folders guarding them all."""
from pathlib import Path

import pytest
from PIL import Image

from clip_icm import service
from dashboard import cached
from tests.folders import class_image

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "dashboard" / "app.py")


@pytest.fixture(autouse=True)
def clean_caches():
    cached.clear()
    yield
    cached.clear()


@pytest.fixture
def world(tmp_path):
    """A manifest of 2 domains x 2 classes x 4 images, a caption pairs file and an image pairs file."""
    data = tmp_path / "data"
    (data / "img").mkdir(parents=True)
    lines = ["path,label,domain"]
    for domain in ("day", "night"):
        for label, cls in enumerate(("cat", "dog")):
            for i in range(4):
                name = f"{domain}_{cls}_{i}.png"
                Image.fromarray(class_image(label, domain, i)).save(data / "img" / name)
                lines.append(f"img/{name},{cls},{domain}")
    (data / "m.csv").write_text("\n".join(lines) + "\n")
    (data / "night.csv").write_text("caption,caption_do,class\na photo of a cat.,a photo of a cat at night.,cat\n"
                                    "a photo of a dog.,a photo of a fox at night.,dog\n")
    (data / "copies").mkdir()
    for i in range(4):  # a retouched copy of each day cat, beside the data set
        Image.open(data / "img" / f"day_cat_{i}.png").rotate(90).save(data / "copies" / f"day_cat_{i}.png")
    (data / "cams.csv").write_text("path,path_do\n" + "".join(f"img/day_cat_{i}.png,copies/day_cat_{i}.png\n"
                                                               for i in range(4)))
    return data


def test_a_manifest_is_a_data_set_and_pairs_files_are_previewed(world, tmp_path):
    found = service.detect_folder(str(world / "m.csv"))
    assert found == {"datasets": [], "is_dataset": True, "path": str(world / "m.csv"), "problem": None,
                     "manifest": True}
    preview = service.pairs_preview(str(world / "night.csv"), "captions")
    assert (preview.name, preview.rows) == ("captions:night", 2)
    assert preview.examples[0] == ("a photo of a cat.", "a photo of a cat at night.", "at night")
    assert len(preview.notes) == 1 and "the class 'dog' is named in one caption only" in preview.notes[0]
    images = service.pairs_preview(str(world / "cams.csv"), "images")
    assert images.name == "image-pairs:cams" and images.examples[0][:2] == ("img/day_cat_0.png", "copies/day_cat_0.png")


def test_files_outside_the_allowed_folders_are_not_read_not_even_to_say_what_is_wrong(world, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    secret = elsewhere / "secret.csv"
    secret.write_text("password,hunter2\n")
    roots = (world.resolve(),)
    for call in (lambda: service.pairs_preview(str(secret), "captions", roots),
                 lambda: service.detect_folder(str(elsewhere / "m.csv"), roots)):
        with pytest.raises(service.ServiceError) as err:
            call()
        assert "outside the folders this dashboard may read" in str(err.value) and "hunter2" not in str(err.value)
    with pytest.raises(service.ServiceError, match="File not found"):
        service.pairs_preview(str(world / "absent.csv"), "captions", roots)
    with pytest.raises(service.ServiceError, match="lacks the column"):
        service.pairs_preview(str(world / "m.csv"), "captions", roots)


def test_the_explorer_embeds_a_manifest_with_caption_and_image_pairs_and_shows_them(world):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=600)
    at.query_params["page"] = "explorer"  # "/" opens the Story
    for key, value in {"ctl_source": "folder", "ctl_root": str(world / "m.csv"),
                       "ctl_own_captions": str(world / "night.csv"), "ctl_own_images": str(world / "cams.csv"),
                       "ctl_ops": ["invert"], "ctl_banks": []}.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.sidebar.selectbox(key="ctl_dataset").value == "(this manifest)"
    captions = [c.value.replace("\\", "") for c in at.sidebar.caption]  # Markdown-escaped: shown as typed
    assert "captions:night: 2 pairs" in captions and "image-pairs:cams: 4 pairs" in captions
    assert "a photo of a cat. → a photo of a cat **at** **night.**" in [m.value for m in at.sidebar.markdown]
    assert any("named in one caption only" in w.value for w in at.sidebar.warning)
    fitted = at.sidebar.multiselect(key="ctl_pairs").value
    assert "captions:night" in fitted and "image-pairs:cams" in fitted
    choice = service.InterventionChoice(text_pairs=(str(world / "night.csv"),), image_pairs=(str(world / "cams.csv"),))
    request = service.EmbeddingRequest(source="folder", root=str(world / "m.csv"), interventions=choice)
    emb = service.load_embeddings(request)
    texts = service.pair_examples(request, emb, "captions:night")
    assert [(e.before, e.after) for e in texts][0] == ("a photo of a cat.", "a photo of a cat at night.")
    images = service.pair_examples(request, emb, "image-pairs:cams")
    assert len(images) == 4 and images[0].caption == "img/day_cat_0.png" and images[0].after.size == (112, 112)


def test_uploads_become_paths_inside_the_allowed_folders(tmp_path, monkeypatch, world):
    import io
    import zipfile

    monkeypatch.setenv("CLIP_ICM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(service.DATA_ROOTS_VAR, str(tmp_path / "nowhere"))  # an operator's list without the cache
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(world.rglob("*")):
            if path.is_file():
                archive.write(path, f"upload/{path.relative_to(world)}")
    root = service.upload_data(buffer.getvalue(), "my data.zip")
    assert Path(root).name == "m.csv" and Path(root).parent.parent.parent == tmp_path / "cache" / "uploads"
    roots = service.data_roots(exposed=True)
    assert service.detect_folder(root, roots)["manifest"]  # uploads are always readable: they came through the page
    pairs = service.upload_pairs((world / "night.csv").read_bytes(), "night.csv")
    assert service.pairs_preview(pairs, "captions", roots).name == "captions:night"
    with pytest.raises(service.ServiceError, match="Could not unpack the upload: the zip entry '../x' would land"):
        bad = io.BytesIO()
        with zipfile.ZipFile(bad, "w") as archive:
            archive.writestr("../x", b"x")
        service.upload_data(bad.getvalue(), "bad.zip")
    with pytest.raises(service.ServiceError, match="Upload a .zip of the data set, or a manifest"):
        service.upload_data(b"x", "notes.txt")
    with pytest.raises(service.ServiceError, match="A pairs file is a .csv, .jsonl or .parquet table"):
        service.upload_pairs(b"x", "pairs.xlsx")


def test_a_pairs_file_or_manifest_edited_in_place_is_another_request(world):
    import os

    choice = service.InterventionChoice(text_pairs=(str(world / "night.csv"),))
    request = service.EmbeddingRequest(source="folder", root=str(world / "m.csv"), interventions=choice)
    before = request.key
    assert request.key == before  # stable while nothing changes
    for path in (world / "night.csv", world / "m.csv"):
        path.write_text(path.read_text() + "\n")
        os.utime(path, ns=(1, 1))  # whatever the clock's resolution
        assert request.key != before
        before = request.key
