"""DINO, SwAV and MoCo-v2*: losses against hand computations, pair definitions, Sinkhorn, queues,
EMA, centring, schedules, frozen layers, multi-crop forward and every backbone x method."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowssl import backbones
from lowssl.config import ConfigError
from lowssl.pretrain.methods import (
    DINO,
    DinoConfig,
    MoCo,
    MocoConfig,
    SwAV,
    SwavConfig,
    build_method,
    get_method,
    method_name,
    methods,
    multicrop_forward,
    register_method,
)
from lowssl.pretrain.methods.dino import DINOLoss
from lowssl.pretrain.methods.moco import MoCoLoss
from lowssl.pretrain.methods.swav import SwAVLoss, sinkhorn

B, N_LOCAL = 2, 3
FEATURE_DIM = 8
# Every registered method at its registration's smoke sizes (pretrain/methods/__init__.py): a new
# method is in every registry-parametrised test below without an edit here.
TINY = {name: get_method(name).smoke_config() for name in methods()}
# alpha = 0.4 (the paper's), P_gg / (P_gg + P_gl) given as a number, and None (Eq. 2 literally).
EQ2_DINO_SWAV = 2 / (2 + 2 * N_LOCAL)
EQ2_MOCO = 1 / (1 + N_LOCAL)


class TinyBackbone(nn.Module):
    """Conv + global pooling: any resolution in, (batch, FEATURE_DIM) out; no BN, so deterministic."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, FEATURE_DIM, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x)).mean(dim=(2, 3))


def tiny(method_class, cfg, family="cnn"):
    torch.manual_seed(0)
    return method_class(TinyBackbone(), FEATURE_DIM, family, cfg)


def make_views(n_local=N_LOCAL, batch=B, global_px=8, local_px=4):
    torch.manual_seed(1)
    return [torch.randn(batch, 3, global_px, global_px) for _ in range(2)] + [
        torch.randn(batch, 3, local_px, local_px) for _ in range(n_local)
    ]


def hand_combine(gg, gl, alpha):
    """Eq. 3 from explicit lists of per-pair losses; alpha None -> the plain mean (Eq. 2)."""
    if alpha is None:
        return sum(gg + gl) / (len(gg) + len(gl))
    return alpha * sum(gg) / len(gg) + (1 - alpha) * sum(gl) / len(gl)


def cross_entropy(target_probs, logits):
    """Mean over samples of -sum_k p_k log softmax(logits)_k, written out sample by sample."""
    total = 0.0
    for p, z in zip(target_probs.tolist(), logits.tolist(), strict=True):
        log_norm = math.log(sum(math.exp(v) for v in z))
        total += -sum(pk * (zk - log_norm) for pk, zk in zip(p, z, strict=True))
    return total / len(target_probs)


# ---------------------------------------------------------------- losses against hand values


@pytest.mark.parametrize("alpha", [0.4, EQ2_DINO_SWAV, None])
def test_dino_loss_matches_hand_computation(alpha):
    cfg = DinoConfig(alpha=alpha, out_dim=5).for_family("cnn")
    loss_fn = DINOLoss(cfg)
    torch.manual_seed(0)
    student = torch.randn((2 + N_LOCAL) * B, 5)
    # Teacher logits and centre on the scale of the temperature, so the centring visibly matters.
    teacher = torch.randn(2 * B, 5) * 0.05
    center = torch.randn(1, 5) * 0.05
    loss_fn.center.copy_(center)
    epoch = 10
    temp = 0.04 + 0.03 * 10 / 49

    gg, gl = [], []
    for t in range(2):  # the teacher sees the globals only
        q = [[math.exp(v) for v in row] for row in ((teacher[t * B : (t + 1) * B] - center) / temp).tolist()]
        q = torch.tensor([[v / sum(row) for v in row] for row in q])
        for s in range(2 + N_LOCAL):
            if s == t:
                continue
            pair = cross_entropy(q, student[s * B : (s + 1) * B] / 0.1)
            (gg if s < 2 else gl).append(pair)
    assert (len(gg), len(gl)) == DINOLoss.pair_counts(N_LOCAL) == (2, 2 * N_LOCAL)

    loss, terms = loss_fn(student, teacher, epoch)
    assert loss.item() == pytest.approx(hand_combine(gg, gl, alpha), rel=1e-5)
    assert terms["loss_gg"].item() == pytest.approx(sum(gg) / 2, rel=1e-5)
    assert terms["loss_gl"].item() == pytest.approx(sum(gl) / len(gl), rel=1e-5)
    assert terms["teacher_temp"] == pytest.approx(temp)
    if alpha != 0.4:  # Eq. 2 is the plain mean over all pairs
        assert loss.item() == pytest.approx(sum(gg + gl) / len(gg + gl), rel=1e-5)


@pytest.mark.parametrize("alpha", [0.4, EQ2_DINO_SWAV, None])
def test_swav_loss_matches_hand_computation(alpha):
    torch.manual_seed(0)
    scores = torch.randn((2 + N_LOCAL) * B, 4)
    codes = [torch.softmax(torch.randn(B, 4), dim=1) for _ in range(2)]

    gg, gl = [], []
    for i, q in enumerate(codes):  # codes come from the globals only
        for v in range(2 + N_LOCAL):
            if v == i:
                continue
            pair = cross_entropy(q, scores[v * B : (v + 1) * B] / 0.1)
            (gg if v < 2 else gl).append(pair)
    assert (len(gg), len(gl)) == SwAVLoss.pair_counts(N_LOCAL) == (2, 2 * N_LOCAL)

    loss, terms = SwAVLoss(temperature=0.1, alpha=alpha)(scores, codes)
    assert loss.item() == pytest.approx(hand_combine(gg, gl, alpha), rel=1e-5)
    assert terms["loss_gg"].item() == pytest.approx(sum(gg) / 2, rel=1e-5)
    if alpha != 0.4:
        assert loss.item() == pytest.approx(sum(gg + gl) / len(gg + gl), rel=1e-5)


@pytest.mark.parametrize("alpha", [0.4, EQ2_MOCO, None])
def test_moco_loss_matches_hand_computation(alpha):
    torch.manual_seed(0)
    queries = F.normalize(torch.randn((1 + N_LOCAL) * B, 4), dim=1)  # global 2, then the locals
    keys = F.normalize(torch.randn(B, 4), dim=1)  # global 1 through the key encoder
    queue = F.normalize(torch.randn(5, 4), dim=1)

    gg, gl = [], []
    for j in range(1 + N_LOCAL):
        pair = 0.0
        for b in range(B):
            q = queries[j * B + b]
            logits = [float(q @ keys[b]) / 0.2] + [float(q @ n) / 0.2 for n in queue]
            pair += -(logits[0] - math.log(sum(math.exp(v) for v in logits))) / B
        (gg if j == 0 else gl).append(pair)
    assert (len(gg), len(gl)) == MoCoLoss.pair_counts(N_LOCAL) == (1, N_LOCAL)

    loss, terms = MoCoLoss(temperature=0.2, alpha=alpha)(queries, keys, queue)
    assert loss.item() == pytest.approx(hand_combine(gg, gl, alpha), rel=1e-5)
    assert terms["loss_gg"].item() == pytest.approx(gg[0], rel=1e-5)
    if alpha != 0.4:
        assert loss.item() == pytest.approx(sum(gg + gl) / len(gg + gl), rel=1e-5)


@pytest.mark.parametrize("n_local", [0, 6, 10])
def test_pair_definitions(n_local):
    assert tiny(DINO, TINY["dino"]).pair_counts(n_local) == (2, 2 * n_local)  # teacher on 2 globals
    assert tiny(SwAV, TINY["swav"]).pair_counts(n_local) == (2, 2 * n_local)  # codes of 2 globals
    assert tiny(MoCo, TINY["moco"]).pair_counts(n_local) == (1, n_local)  # one key: global 1


# ---------------------------------------------------------------- SwAV: Sinkhorn and queue


def test_sinkhorn_is_doubly_stochastic():
    torch.manual_seed(0)
    n, k = 12, 6
    scores = F.normalize(torch.randn(n, 16), dim=1) @ F.normalize(torch.randn(k, 16), dim=1).t()
    # SwAV's 3 iterations end on the sample normalisation: every sample's code sums to 1 exactly.
    codes = sinkhorn(scores, epsilon=0.05, n_iterations=3)
    assert codes.shape == (n, k) and (codes >= 0).all()
    torch.testing.assert_close(codes.sum(dim=1), torch.ones(n), atol=1e-5, rtol=0)
    # Iterated to convergence, every prototype also receives n / k (equipartition).
    codes = sinkhorn(scores, epsilon=0.05, n_iterations=100)
    torch.testing.assert_close(codes.sum(dim=1), torch.ones(n), atol=1e-3, rtol=0)
    torch.testing.assert_close(codes.sum(dim=0), torch.full((k,), n / k), atol=1e-3, rtol=0)


def test_swav_queue_starts_at_its_epoch_and_is_prepended_when_full():
    cfg = SwavConfig(hidden_dim=12, out_dim=6, n_prototypes=10, queue_length=4, queue_start_epoch=1)
    method = tiny(SwAV, cfg)
    views = make_views()
    method(views, epoch=0)
    assert not method.queue.any()  # before queue_start_epoch the queue is untouched
    used = [method(views, epoch=1).terms["queue_used"] for _ in range(3)]
    assert used == [0.0, 0.0, 1.0]  # 4 slots, batch 2: full after two steps
    # Newest first: the first B rows of queue i are global i's latest embeddings.
    with torch.no_grad():
        embeddings = multicrop_forward(method.student_backbone, method.projection_head, views)
    torch.testing.assert_close(method.queue[0, :B], embeddings[:B])
    torch.testing.assert_close(method.queue[1, :B], embeddings[B : 2 * B])


def test_swav_codes_use_the_queued_scores_then_keep_the_batch_rows():
    method = tiny(SwAV, TINY["swav"])
    torch.manual_seed(0)
    queue = F.normalize(torch.randn(4, method.cfg.out_dim), dim=1)
    embeddings = F.normalize(torch.randn(B, method.cfg.out_dim), dim=1)
    scores = method.prototypes(embeddings).detach()
    with_queue = torch.cat([method.prototypes(queue), scores]).detach()
    codes = method.assign(scores, embeddings, queue.clone(), queue_full=True)
    torch.testing.assert_close(codes, sinkhorn(with_queue, 0.05, 3)[-B:])


def test_prototypes_are_normalised():
    method = tiny(SwAV, TINY["swav"])
    method.normalize_prototypes()
    torch.testing.assert_close(method.prototypes.weight.norm(dim=1), torch.ones(method.cfg.n_prototypes))


def test_swav_linear_layers_are_normal_0_01():
    method = build_method("swav", "resnet18", SwavConfig(n_prototypes=3000))
    assert method.prototypes.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert method.projection_head.mlp[0].weight.std().item() == pytest.approx(0.01, rel=0.05)


# ---------------------------------------------------------------- MoCo: queue


def test_moco_enqueue_wraps_around_the_end():
    method = tiny(MoCo, MocoConfig(hidden_dim=12, out_dim=6, queue_length=5))
    old = method.queue.clone()
    method.queue_ptr.fill_(3)
    keys = torch.arange(4 * 6, dtype=torch.float32).reshape(4, 6)
    method.enqueue(keys)
    torch.testing.assert_close(method.queue[[3, 4, 0, 1]], keys)
    torch.testing.assert_close(method.queue[2], old[2])
    assert method.queue_ptr.item() == 2
    more = -torch.arange(7 * 6, dtype=torch.float32).reshape(7, 6)  # more keys than slots: newest 5
    method.enqueue(more)
    torch.testing.assert_close(method.queue[[2, 3, 4, 0, 1]], more[2:])
    assert method.queue_ptr.item() == 2


def test_moco_loss_uses_the_queue_before_enqueueing_the_keys():
    method = tiny(MoCo, TINY["moco"])
    views = make_views()
    old_queue = method.queue.clone()
    out = method(views, epoch=0)
    with torch.no_grad():
        keys = method.teacher_head(method.teacher_backbone(views[0]))
        queries = multicrop_forward(method.student_backbone, method.student_head, views[1:])
    expected, _ = method.criterion(queries, keys, old_queue)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    torch.testing.assert_close(method.queue[:B], keys)
    torch.testing.assert_close(method.queue[B:], old_queue[B:])
    assert method.queue_ptr.item() == B


# ---------------------------------------------------------------- EMA, centre, schedules


@pytest.mark.parametrize("method_class", [DINO, MoCo])
def test_ema_update(method_class):
    method = tiny(method_class, TINY[method_class.name])
    with torch.no_grad():
        for p in [*method.student_backbone.parameters(), *method.student_head.parameters()]:
            p.add_(torch.randn_like(p))
    teacher = [p.clone() for p in [*method.teacher_backbone.parameters(), *method.teacher_head.parameters()]]
    student = [p.clone() for p in [*method.student_backbone.parameters(), *method.student_head.parameters()]]
    method.update_teacher(0.9)
    updated = [*method.teacher_backbone.parameters(), *method.teacher_head.parameters()]
    assert len(updated) == len(student) > 0
    for new, t, s in zip(updated, teacher, student, strict=True):
        torch.testing.assert_close(new, 0.9 * t + 0.1 * s)
        assert not new.requires_grad


def test_teacher_momentum_schedules():
    dino = tiny(DINO, TINY["dino"])
    assert dino.teacher_momentum(0, 100) == pytest.approx(0.996)
    assert dino.teacher_momentum(50, 100) == pytest.approx(0.998)  # cosine midpoint
    assert dino.teacher_momentum(100, 100) == pytest.approx(1.0)
    moco = tiny(MoCo, TINY["moco"])
    assert moco.teacher_momentum(0, 100) == moco.teacher_momentum(99, 100) == 0.999
    assert tiny(SwAV, TINY["swav"]).student_teacher_pairs() == []


def test_dino_center_update():
    loss_fn = DINOLoss(DinoConfig(out_dim=5).for_family("cnn"))
    torch.manual_seed(0)
    center = torch.randn(1, 5)
    loss_fn.center.copy_(center)
    teacher = torch.randn(2 * B, 5)
    loss_fn(torch.randn(4 * B, 5), teacher, epoch=0)
    torch.testing.assert_close(loss_fn.center, center * 0.9 + teacher.mean(dim=0, keepdim=True) * 0.1)
    assert "criterion.center" in tiny(DINO, TINY["dino"]).state_dict()


def test_teacher_temperature_schedule():
    cnn = DINOLoss(DinoConfig().for_family("cnn"))  # 0.04 -> 0.07 over 50 epochs
    assert cnn.teacher_temp(0) == pytest.approx(0.04)
    assert cnn.teacher_temp(25) == pytest.approx(0.04 + 0.03 * 25 / 49)
    assert cnn.teacher_temp(49) == pytest.approx(0.07)
    assert cnn.teacher_temp(50) == cnn.teacher_temp(199) == 0.07
    vit = DINOLoss(DinoConfig().for_family("vit"))  # over 30 epochs
    assert vit.teacher_temp(15) == pytest.approx(0.04 + 0.03 * 15 / 29)
    assert vit.teacher_temp(29) == pytest.approx(0.07)
    assert vit.teacher_temp(30) == 0.07


def test_dino_family_defaults():
    cnn, vit = DinoConfig().for_family("cnn"), DinoConfig().for_family("vit")
    assert (cnn.out_dim, cnn.use_bn_in_head, cnn.norm_last_layer, cnn.warmup_teacher_temp_epochs) == (
        4096,
        True,
        True,
        50,
    )
    assert (vit.out_dim, vit.use_bn_in_head, vit.norm_last_layer, vit.warmup_teacher_temp_epochs) == (
        65536,
        False,
        False,
        30,
    )
    assert DinoConfig(out_dim=16).for_family("vit").out_dim == 16  # explicit values win
    fixed = tiny(DINO, TINY["dino"], "cnn").student_head.last_layer.parametrizations.weight.original0
    assert not fixed.requires_grad and torch.all(fixed == 1)  # g fixed to 1
    trained = tiny(DINO, TINY["dino"], "vit").student_head.last_layer.parametrizations.weight.original0
    assert trained.requires_grad
    assert not any(
        isinstance(m, nn.BatchNorm1d) for m in tiny(DINO, TINY["dino"], "vit").student_head.modules()
    )


# ---------------------------------------------------------------- frozen layers in epoch 0


@pytest.mark.parametrize(
    "method_class, family, frozen",
    [
        (DINO, "vit", lambda m: m.student_head.last_layer),  # vit: g trained too, so both get grads
        (DINO, "cnn", lambda m: m.student_head.last_layer),
        (SwAV, "cnn", lambda m: m.prototypes),
    ],
)
def test_frozen_layer_gradients(method_class, family, frozen):
    method = tiny(method_class, TINY[method_class.name], family)
    for epoch, expect_grad in [(0, False), (1, True)]:
        method.zero_grad(set_to_none=True)
        method.normalize_prototypes()
        method(make_views(), epoch).loss.backward()
        method.cancel_frozen_gradients(epoch)
        trainable = [p for p in frozen(method).parameters() if p.requires_grad]
        assert trainable
        for p in trainable:
            assert (p.grad is not None and p.grad.abs().sum() > 0) == expect_grad
        assert method.student_backbone.conv.weight.grad.abs().sum() > 0


def test_moco_freezes_nothing():
    method = tiny(MoCo, TINY["moco"])
    method(make_views(), 0).loss.backward()
    method.cancel_frozen_gradients(0)
    assert all(p.grad is not None for p in method.student_head.parameters())


# ---------------------------------------------------------------- multi-crop forward, registry


def test_multicrop_forward_one_pass_per_resolution_group():
    torch.manual_seed(0)
    backbone, head = TinyBackbone(), nn.Linear(FEATURE_DIM, 4)
    calls = []
    backbone.register_forward_hook(lambda module, args, result: calls.append(tuple(args[0].shape)))
    views = make_views(n_local=3, batch=2, global_px=8, local_px=4)
    out = multicrop_forward(backbone, head, views)
    assert calls == [(4, 3, 8, 8), (6, 3, 4, 4)]
    with torch.no_grad():
        torch.testing.assert_close(out, torch.cat([head(backbone(v)) for v in views]))


def test_build_method_rejects_unknown_names_and_wrong_configs():
    with pytest.raises(ConfigError, match="'byol'.*dino, moco, swav"):
        build_method("byol", "resnet18")
    with pytest.raises(ConfigError, match="'dnio'.*Did you mean 'dino'"):
        build_method("dnio", "resnet18")
    with pytest.raises(TypeError, match="DinoConfig"):
        build_method("dino", "resnet18", SwavConfig())
    assert methods() == ["dino", "moco", "swav"]


@pytest.mark.parametrize("name", methods())
def test_registry_round_trips_a_config_to_its_method(name):
    entry = get_method(name)
    assert entry.name == name == entry.method_class.name
    assert entry.config_class is entry.method_class.config_class
    assert method_name(entry.smoke_config()) == name
    with pytest.raises(ValueError, match="already registered"):
        register_method(entry.method_class, entry.smoke_values)


@pytest.mark.parametrize("name", methods())
def test_forward_under_an_initialised_process_group(name, tmp_path):
    """The all-reduce / all-gather paths run (world size 1) and change nothing."""
    views = make_views()
    method_class = get_method(name).method_class
    plain = tiny(method_class, TINY[name])(views, epoch=0).loss
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        distributed = tiny(method_class, TINY[name])(views, epoch=0).loss
    finally:
        torch.distributed.destroy_process_group()
    assert distributed.item() == pytest.approx(plain.item(), rel=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("method_name", methods())
@pytest.mark.parametrize("backbone_name", backbones.available())
def test_every_backbone_and_method_trains_one_step(backbone_name, method_name):
    torch.manual_seed(0)
    method = build_method(method_name, backbone_name, get_method(method_name).smoke_config(alpha=0.4))
    views = make_views(n_local=2, batch=2, global_px=32, local_px=16)
    method.normalize_prototypes()
    out = method(views, epoch=1)
    out.loss.backward()
    method.cancel_frozen_gradients(1)
    method.update_teacher(method.teacher_momentum(0, 10))

    assert torch.isfinite(out.loss)
    alpha = out.terms["alpha"]
    assert alpha == pytest.approx(0.4)
    assert out.loss.item() == pytest.approx(
        alpha * out.terms["loss_gg"] + (1 - alpha) * out.terms["loss_gl"], rel=1e-5
    )
    grads = [p.grad for p in method.student_backbone.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", methods())
def test_forward_networks_are_the_passes_forward_makes(name):
    method = tiny(get_method(name).method_class, TINY[name])
    views = make_views()
    student, teacher = method.forward_networks(views)
    assert student.shape[0] % B == 0 and student.shape[0] <= len(views) * B and student.requires_grad
    assert teacher is None or (teacher.shape[0] % B == 0 and not teacher.requires_grad)
    # forward is the same passes plus the loss: its gradient reaches the student backbone.
    method(views, epoch=1).loss.backward()
    assert method.student_backbone.conv.weight.grad.abs().sum() > 0


def test_forward_networks_rows_as_the_papers_methods_define_them():
    """Rows per sample: DINO student all views, teacher the globals; MoCo queries global 2 + locals,
    keys global 1; SwAV the student on all views, no teacher."""
    views = make_views()
    rows = {DINO: (2 + N_LOCAL, 2), MoCo: (1 + N_LOCAL, 1), SwAV: (2 + N_LOCAL, None)}
    for method_class, (student_rows, teacher_rows) in rows.items():
        student, teacher = tiny(method_class, TINY[method_class.name]).forward_networks(views)
        assert student.shape[0] == student_rows * B
        assert (teacher is None) if teacher_rows is None else teacher.shape[0] == teacher_rows * B
