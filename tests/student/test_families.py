"""Size families and the vision zoo: members within 10 % of N/(j+1), shapes found on the data, models the
batched engine can stack."""

import pytest
import torch
from torch.func import functional_call, stack_module_state, vmap

from peerkd.errors import ConfigError
from peerkd.student.families import TOLERANCE, expand, parse_member
from peerkd.student.models import (
    MODELS,
    build_model,
    check_modality,
    default_student,
    expand_students,
    model_size,
    num_parameters,
)

WORLDS = {"text28": ((32,), 28), "text103": ((32,), 103), "mnist": ((1, 28, 28), 10), "digits": ((1, 8, 8), 10)}
FAMILIES = [
    ("family:tlm:8", "text28"),
    ("family:tlm:8", "text103"),
    ("family:tlm:8:tlm", "text103"),
    ("family:resnet:8", "mnist"),
    ("family:resnet:4:cnn_large", "mnist"),
    ("family:vit:8", "mnist"),
    ("family:vit:4", "digits"),
]


@pytest.mark.parametrize(("family", "world"), FAMILIES)
def test_every_member_is_within_ten_percent_of_its_share_of_the_reference(family, world):
    # Prepare: the family's members and the reference's count on this data.
    shape, classes = WORLDS[world]
    members = expand_students([family])
    ref = model_size(parse_member(members[0])[1], shape, classes)
    # Execute / Assert: member j (divisor j + 1) has N/(j + 1) parameters, to 10 %; sizes step down.
    counts = []
    for j, name in enumerate(members, start=2):
        assert parse_member(name)[2] == j
        counts.append(num_parameters(build_model(name, shape, classes, seed=0)))
        assert abs(counts[-1] - ref / j) <= TOLERANCE * ref / j, (name, counts[-1], ref / j)
    assert counts == sorted(counts, reverse=True)


def test_the_family_syntax_and_its_errors():
    assert expand("family:tlm:2", MODELS) == ["tlm@tlm_large:2", "tlm@tlm_large:3"]
    assert expand("family:vit:n:vit", MODELS, clients=3) == ["vit@vit:2", "vit@vit:3", "vit@vit:4"]
    assert expand_students(["family:resnet:1", "mlp64"]) == ("resnet@resnet20:2", "mlp64")
    for bad, says in [
        ("family:gru:2", "is not a size family"),
        ("family:tlm:0", "k = 0 peers"),
        ("family:tlm:2:nope", "unknown reference model 'nope'"),
        ("family:tlm:n", "is not a size family"),  # n needs the run's clients
    ]:
        with pytest.raises(ConfigError, match=says) as err:
            expand_students([bad]) if bad != "family:tlm:n" else expand(bad, MODELS)
        assert err.value.field == "students"
    with pytest.raises(ConfigError, match="unknown value 'mlp7'"):
        expand_students(["mlp7"])
    with pytest.raises(ConfigError, match=r"no resnet of about 1,829 parameters on this data \(nearest 26% off\)"):
        build_model("resnet@cnn:2", (1, 8, 8), 10, seed=0)  # 3,658 / 2: between two ResNet widths


def test_members_follow_the_modality():
    check_modality("tlm@tlm:3", text=True)
    with pytest.raises(ConfigError, match="is a language model"):
        check_modality("tlm@tlm:3", text=False)
    with pytest.raises(ConfigError, match="is not a language model"):
        check_modality("resnet@resnet20:2", text=True)
    with pytest.raises(ConfigError, match=r"needs image \(C,H,W\) inputs"):
        build_model("vit", (40,), 10, seed=0)
    assert default_student(text=True) == "tlm"


@pytest.mark.parametrize("name", ["resnet8", "vit", "resnet@resnet20:4"])
def test_vision_models_stack_for_the_batched_engine(name):
    # Prepare: three students of one architecture, their parameters stacked (no buffers).
    models = [build_model(name, (1, 8, 8), 10, seed=s) for s in range(3)]
    assert not list(models[0].buffers())
    params, _ = stack_module_state(models)
    x = torch.randn(3, 5, 1, 8, 8)
    # Execute: one vmapped call; Assert: each student's slice equals its own forward.
    out = vmap(lambda p, xb: functional_call(models[0], p, (xb,)))(params, x)
    for i, m in enumerate(models):
        torch.testing.assert_close(out[i], m(x[i]), rtol=1e-4, atol=1e-5)
