"""User errors (clip_icm.errors) against bugs: every config refuses a bad value when it is built,
front ends show user errors as one line, and anything else surfaces as the bug it is."""
import pytest

from clip_icm import evaluation, scm, service
from clip_icm.backend import ModelConfig
from clip_icm.cli import main
from clip_icm.errors import InvalidInput, UnknownName, UserError
from clip_icm.evaluation import EvalConfig
from clip_icm.pipeline import DataConfig, InterventionConfig


@pytest.mark.parametrize("build, message", [
    (lambda: ModelConfig(device="tpu"), "unknown device 'tpu'"),
    (lambda: ModelConfig(precision="fp8"), "precision must be auto, fp32, bf16 or fp16"),
    (lambda: ModelConfig(batch_size=0), "batch_size must be >= 1"),
    (lambda: DataConfig(val_fraction=1.0), "val_fraction must be in"),
    (lambda: DataConfig(dataset="PACS"), "needs a root"),
    (lambda: InterventionConfig(image=("greyscale",)), "available: colour_jitter"),
    (lambda: InterventionConfig(templates="ensembel"), "available: ensemble, single"),
    (lambda: InterventionConfig(n_pairs=0), "n_pairs must be at least 1"),
    (lambda: EvalConfig(methods=("icm", "magic")), "unknown projection method 'magic'"),
    (lambda: EvalConfig(lam_mode="relativ"), "unknown lam scale 'relativ'; available: absolute, relative"),
    (lambda: EvalConfig(protocol="relesed"), "available: ours, released"),
    (lambda: EvalConfig(n_components=0), "at least 1"),
    (lambda: scm.SCMConfig(n_classes=1), "n_classes must be >= 2"),
])
def test_every_config_refuses_a_bad_value_when_it_is_built(build, message):
    with pytest.raises(InvalidInput, match=message) as info:
        build()
    assert isinstance(info.value, (UserError, ValueError))


def test_an_unknown_name_is_a_key_error_and_a_value_error_with_an_unquoted_message():
    with pytest.raises(UnknownName) as info:
        EvalConfig(prompts="captions")
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
    assert str(info.value) == "unknown zero-shot prompt set 'captions'; available: classes, usual_look"


@pytest.mark.parametrize("bug", [KeyError("a missing dict key"), RuntimeError("a broken invariant"),
                                 ValueError("numpy said so")])
def test_a_bug_in_the_library_is_not_turned_into_a_service_message(monkeypatch, bug):
    def broken(*args, **kwargs):
        raise bug

    monkeypatch.setattr(evaluation, "evaluate_split", broken)
    emb = scm.make_embedding_set(scm.SCMConfig(), n_per_domain=20)
    with pytest.raises(type(bug)) as info:
        service.evaluate(emb, "sketch", EvalConfig(n_components=4))
    assert not isinstance(info.value, service.ServiceError)


def test_a_user_error_in_the_library_is_a_service_message(monkeypatch):
    def refused(*args, **kwargs):
        raise InvalidInput("K is too large for these pairs")

    monkeypatch.setattr(evaluation, "evaluate_split", refused)
    emb = scm.make_embedding_set(scm.SCMConfig(), n_per_domain=20)
    with pytest.raises(service.ServiceError, match="Could not evaluate: K is too large for these pairs"):
        service.evaluate(emb, "sketch", EvalConfig(n_components=4))


def test_the_cli_prints_a_user_error_as_one_line_and_lets_a_bug_raise(monkeypatch, capsys):
    import clip_icm.scm as scm_module

    assert main(["playground", "--classes", "1"]) == 1
    assert capsys.readouterr().err.strip() == "error: n_classes must be >= 2, got 1"

    def broken(*args, **kwargs):
        raise KeyError("a missing dict key")

    monkeypatch.setattr(scm_module, "run_playground", broken)
    with pytest.raises(KeyError, match="a missing dict key"):
        main(["playground"])
