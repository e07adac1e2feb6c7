"""The preference losses equal TRL 1.16's, loss, gradient and logged rewards within 1e-5 in fp32, checked by calling
TRL's own code: DPOTrainer._compute_loss and KTOTrainer._compute_loss on a fake fused-LM-head model, ORPOTrainer's and
CPOTrainer's get_batch_loss_metrics / odds_ratio_loss / cpo_loss on given log-probs. Each trainer is a stand-in
holding just the attributes TRL's method reads."""

from __future__ import annotations

import itertools
import math
import warnings
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from trl import DPOTrainer, KTOTrainer

from tuneforge.models.preference_losses import PreferenceLossSettings, kto_losses, pair_losses

with warnings.catch_warnings():  # trl.experimental warns on import that its API may change: the version is pinned
    warnings.simplefilter("ignore")
    from trl.experimental.cpo import CPOTrainer
    from trl.experimental.orpo import ORPOTrainer

IGNORED = -100  # TRL's label of a position that is not scored
SINGLE_PROCESS = SimpleNamespace(device=torch.device("cpu"), gather=lambda t: t, gather_for_metrics=lambda t: t)


def close(actual, expected, atol: float = 1e-5) -> None:
    torch.testing.assert_close(torch.as_tensor(actual, dtype=torch.float64),
                               torch.as_tensor(expected, dtype=torch.float64), atol=atol, rtol=0)


def make_batch(seed: int, rows: int, answer_length: int | None = None) -> SimpleNamespace:
    """Rows of prompt + answer, right-padded, with random per-token log-probs (of each position's next token)."""
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(1, 5, (rows,), generator=g)
    answer = (torch.full((rows,), answer_length) if answer_length else torch.randint(1, 9, (rows,), generator=g))
    end = prompt + answer
    position = torch.arange(int(end.max()))
    return SimpleNamespace(
        input_ids=torch.randint(0, 100, (rows, len(position)), generator=g),
        attention_mask=(position < end[:, None]).long(),
        completion_mask=((position >= prompt[:, None]) & (position < end[:, None])).long(),
        answer_tokens=answer,
        per_token=-3 * torch.rand(rows, len(position) - 1, generator=g),
        noise=torch.randn(rows, generator=g),
    )


def leaf(batch: SimpleNamespace) -> torch.Tensor:
    """A fresh copy of the per-token log-probs to differentiate: one for TRL, one for us."""
    return batch.per_token.clone().requires_grad_()


def summed_logps(per_token: torch.Tensor, batch: SimpleNamespace) -> torch.Tensor:
    return per_token.masked_fill(batch.completion_mask[:, 1:] == 0, 0.0).sum(1)


class FusedHeadModel:
    """What a model with TRL's fused LM head returns: each label's log-prob, zero where the label is ignored."""

    def __init__(self, per_token: torch.Tensor):
        self.per_token = per_token

    def __call__(self, labels, fused_lm_head, **inputs):
        assert fused_lm_head
        zeros = torch.zeros_like(self.per_token, requires_grad=False)
        return SimpleNamespace(log_probs=self.per_token.masked_fill(labels[:, 1:] == IGNORED, 0.0),
                               entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())


def trainer_stub(**attributes) -> SimpleNamespace:
    return SimpleNamespace(model=SimpleNamespace(training=True), accelerator=SINGLE_PROCESS, aux_loss_enabled=False,
                           _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1,
                           **attributes)


def paired(per_token: torch.Tensor, batch: SimpleNamespace) -> tuple[torch.Tensor, ...]:
    """chosen_logps, rejected_logps, chosen_tokens, rejected_tokens: rows are the chosen answers, then the rejected."""
    return (*summed_logps(per_token, batch).chunk(2), *batch.answer_tokens.chunk(2))


def averaged(per_token: torch.Tensor, batch: SimpleNamespace) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token averaged answer log-probs, chosen then rejected, as ORPO's and CPO's get_batch_logps give them."""
    return (summed_logps(per_token, batch) / batch.answer_tokens).chunk(2)


# ---- DPO and IPO: DPOTrainer._compute_loss ----------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("beta", [0.1, 0.5])
@pytest.mark.parametrize("loss_type, trl_loss_type", [("dpo", "sigmoid"), ("ipo", "ipo")])
def test_dpo_and_ipo_equal_trl(seed, beta, loss_type, trl_loss_type):
    batch = make_batch(seed, rows=2 * 4)
    ref_chosen, ref_rejected = (summed_logps(batch.per_token, batch) + 2 * batch.noise).chunk(2)
    trainer = trainer_stub(loss_types=[trl_loss_type], loss_weights=[1.0], beta=beta, f_divergence_type="reverse_kl",
                           ld_alpha=None, precompute_ref_logps=True, use_weighting=False)
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
              "completion_mask": batch.completion_mask, "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
    trl_tokens = leaf(batch)
    trl_loss = DPOTrainer._compute_loss(trainer, FusedHeadModel(trl_tokens), inputs, return_outputs=False)
    trl_loss.backward()

    our_tokens = leaf(batch)
    ours = pair_losses(PreferenceLossSettings(loss_type=loss_type, beta=beta), *paired(our_tokens, batch),
                       ref_chosen_logps=ref_chosen, ref_rejected_logps=ref_rejected)
    ours.losses.mean().backward()

    close(ours.losses.mean(), trl_loss)
    close(our_tokens.grad, trl_tokens.grad)
    metrics = trainer._metrics["train"]
    close(ours.chosen_rewards.mean(), metrics["rewards/chosen"][-1])
    close(ours.rejected_rewards.mean(), metrics["rewards/rejected"][-1])
    assert not ours.chosen_rewards.requires_grad and not ours.rejected_rewards.requires_grad


@pytest.mark.parametrize("seed", [0, 1])
def test_conservative_dpo_equals_trl_cpo_sigmoid_on_log_ratios(seed):
    """TRL 1.x's DPO "sigmoid" dropped label smoothing; CPO's "sigmoid" kept the same formula on policy log-probs,
    so fed the log-ratios it is exactly conservative DPO."""
    batch = make_batch(seed, rows=2 * 4)
    ref_chosen, ref_rejected = (summed_logps(batch.per_token, batch) + batch.noise).chunk(2)
    settings = PreferenceLossSettings(loss_type="dpo", beta=0.3, label_smoothing=0.1)
    trainer = SimpleNamespace(loss_type="sigmoid", alpha=0.0, beta=0.3, label_smoothing=0.1, accelerator=SINGLE_PROCESS)
    trl_tokens = leaf(batch)
    chosen, rejected, _, _ = paired(trl_tokens, batch)
    trl_losses, trl_chosen_rewards, _ = CPOTrainer.cpo_loss(trainer, chosen - ref_chosen, rejected - ref_rejected)
    trl_losses.mean().backward()

    our_tokens = leaf(batch)
    ours = pair_losses(settings, *paired(our_tokens, batch), ref_chosen_logps=ref_chosen,
                       ref_rejected_logps=ref_rejected)
    ours.losses.mean().backward()

    close(ours.losses, trl_losses)
    close(our_tokens.grad, trl_tokens.grad)
    close(ours.chosen_rewards, trl_chosen_rewards)


def test_dpo_at_step_zero_is_ln2():
    """Policy == reference: every log-ratio is 0, and -log sigmoid(0) = ln 2."""
    logps = -torch.rand(6) * 40
    tokens = torch.randint(1, 20, (6,))
    ours = pair_losses(PreferenceLossSettings(loss_type="dpo"), logps[:3], logps[3:], tokens[:3], tokens[3:],
                       ref_chosen_logps=logps[:3].clone(), ref_rejected_logps=logps[3:].clone())
    close(ours.losses, torch.full((3,), math.log(2)), atol=1e-4)


# ---- ORPO: ORPOTrainer.get_batch_loss_metrics and odds_ratio_loss ------------------------------------------------

class ORPOStub:
    """ORPOTrainer's own loss methods around a given forward output (the average log-probs and the NLL)."""

    get_batch_loss_metrics = ORPOTrainer.get_batch_loss_metrics
    odds_ratio_loss = ORPOTrainer.odds_ratio_loss
    accelerator = SINGLE_PROCESS
    aux_loss_enabled = False

    def __init__(self, beta: float, forward_output: tuple = ()):
        self.beta, self.forward_output = beta, forward_output

    def concatenated_forward(self, model, batch):
        return self.forward_output


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_orpo_equals_trl_for_equally_long_answers(seed, beta):
    """The whole loss through TRL's get_batch_loss_metrics, whose NLL term is a token-weighted batch mean: with
    equally long answers that is the mean of our per-answer means. Its NLL here is over the answer tokens."""
    batch = make_batch(seed, rows=2 * 4, answer_length=5)
    trl_tokens = leaf(batch)
    chosen_avg, rejected_avg = averaged(trl_tokens, batch)
    chosen_sums, _, chosen_tokens, _ = paired(trl_tokens, batch)
    nll = -chosen_sums.sum() / chosen_tokens.sum()
    no_logits = torch.zeros(1)
    trl_loss, metrics = ORPOStub(beta, (chosen_avg, rejected_avg, no_logits, no_logits, nll)).get_batch_loss_metrics(
        model=None, batch={})
    trl_loss.backward()
    matches_trls_batch(PreferenceLossSettings(loss_type="orpo", beta=beta), batch, trl_tokens, trl_loss, metrics)


def matches_trls_batch(settings, batch, trl_tokens, trl_loss, metrics) -> None:
    """Our mean loss over the batch, its gradient per token log-prob and the mean rewards equal what TRL's
    get_batch_loss_metrics gave (trl_tokens.grad holds TRL's gradient)."""
    our_tokens = leaf(batch)
    ours = pair_losses(settings, *paired(our_tokens, batch))
    ours.losses.mean().backward()
    close(ours.losses.mean(), trl_loss)
    close(our_tokens.grad, trl_tokens.grad)
    close(ours.chosen_rewards.mean(), metrics["rewards/chosen"])
    close(ours.rejected_rewards.mean(), metrics["rewards/rejected"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_orpo_odds_ratio_equals_trl_at_any_lengths(seed):
    """Per pair: our loss is the chosen answer's mean token NLL minus TRL's odds_ratio_loss term (beta * log
    sigmoid(log odds)), at varied answer lengths; the rewards are TRL's per pair."""
    batch = make_batch(seed, rows=2 * 4)
    trl_tokens = leaf(batch)
    chosen_avg, rejected_avg = averaged(trl_tokens, batch)
    trl_odds, trl_chosen_rewards, trl_rejected_rewards, _, _ = ORPOStub(0.2).odds_ratio_loss(chosen_avg, rejected_avg)
    trl_losses = -chosen_avg - trl_odds
    trl_losses.sum().backward()

    our_tokens = leaf(batch)
    ours = pair_losses(PreferenceLossSettings(loss_type="orpo", beta=0.2), *paired(our_tokens, batch))
    ours.losses.sum().backward()

    close(ours.losses, trl_losses)
    close(our_tokens.grad, trl_tokens.grad)
    close(ours.chosen_rewards, trl_chosen_rewards)
    close(ours.rejected_rewards, trl_rejected_rewards)


def test_orpo_is_finite_when_an_answer_is_certain():
    """An average log-prob of 0 or within fp32 rounding of it: TRL's log1mexp gives -inf or a NaN gradient (TRL issue
    #1473); ours stays finite, and equals TRL's wherever TRL's is finite."""
    values = [0.0, -1e-12, -1e-3, -50.0]
    chosen, rejected = (torch.tensor(v) for v in zip(*itertools.product(values, values)))
    ones = torch.ones(len(chosen), dtype=torch.long)
    settings = PreferenceLossSettings(loss_type="orpo", beta=0.1)
    our_chosen, our_rejected = chosen.clone().requires_grad_(), rejected.clone().requires_grad_()
    ours = pair_losses(settings, our_chosen, our_rejected, ones, ones)
    ours.losses.sum().backward()
    assert torch.isfinite(ours.losses).all()
    assert torch.isfinite(our_chosen.grad).all() and torch.isfinite(our_rejected.grad).all()

    trl_chosen, trl_rejected = chosen.clone().requires_grad_(), rejected.clone().requires_grad_()
    trl_odds = ORPOStub(0.1).odds_ratio_loss(trl_chosen, trl_rejected)[0]
    (-trl_chosen - trl_odds).sum().backward()
    assert trl_chosen.grad.isnan().any()  # what the clamp is for
    far = (chosen <= -1e-3) & (rejected <= -1e-3)
    close(ours.losses[far], (-trl_chosen - trl_odds)[far])
    close(our_chosen.grad[far], trl_chosen.grad[far])
    close(our_rejected.grad[far], trl_rejected.grad[far])


# ---- SimPO: CPOTrainer.get_batch_loss_metrics with loss_type "simpo", alpha 0, cpo_alpha 0 -----------------------

class CPOStub:
    get_batch_loss_metrics = CPOTrainer.get_batch_loss_metrics
    cpo_loss = CPOTrainer.cpo_loss
    accelerator = SINGLE_PROCESS
    aux_loss_enabled = False
    loss_type = "simpo"
    alpha = 0.0  # no AlphaPO reward transform
    cpo_alpha = 0.0  # no NLL term: plain SimPO

    def __init__(self, settings: PreferenceLossSettings, forward_output: tuple):
        self.beta, self.simpo_gamma = settings.beta, settings.simpo_gamma
        self.label_smoothing, self.forward_output = settings.label_smoothing, forward_output

    def concatenated_forward(self, model, batch):
        return self.forward_output


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("beta, simpo_gamma", [(2.0, 0.5), (0.1, 1.4)])
def test_simpo_equals_trl(seed, label_smoothing, beta, simpo_gamma):
    settings = PreferenceLossSettings(loss_type="simpo", beta=beta, simpo_gamma=simpo_gamma,
                                      label_smoothing=label_smoothing)
    batch = make_batch(seed, rows=2 * 4)
    trl_tokens = leaf(batch)
    no_logits = torch.zeros(1)
    forward_output = (*averaged(trl_tokens, batch), no_logits, no_logits, torch.tensor(0.0))
    trl_loss, metrics = CPOStub(settings, forward_output).get_batch_loss_metrics(model=None, batch={})
    trl_loss.backward()
    matches_trls_batch(settings, batch, trl_tokens, trl_loss, metrics)


# ---- KTO: KTOTrainer._compute_loss --------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kl_shift", [0.5, -0.5])  # the KL estimate above 0, and below it (clamped to 0)
@pytest.mark.parametrize("weights", [(1.0, 1.0), (1.33, 0.7)])
def test_kto_equals_trl(seed, kl_shift, weights):
    rows = 8
    batch = make_batch(seed, rows)
    g = torch.Generator().manual_seed(1000 + seed)
    desirable = torch.rand(rows, generator=g) < 0.5
    desirable[:2] = torch.tensor([True, False])  # both kinds in every batch
    ref_logps = summed_logps(batch.per_token, batch) + batch.noise
    kl_logps = -5 + 2 * torch.randn(rows, generator=g)
    ref_kl_logps = kl_logps - kl_shift + 0.1 * torch.randn(rows, generator=g)
    settings = PreferenceLossSettings(loss_type="kto", beta=0.1, desirable_weight=weights[0],
                                      undesirable_weight=weights[1])
    trainer = trainer_stub(loss_type="kto", beta=0.1, desirable_weight=weights[0], undesirable_weight=weights[1],
                           calculate_KL=True, precompute_ref_logps=True,
                           _compute_kl_logps=lambda model, batch: kl_logps)  # TRL's runs the model under no_grad
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
              "completion_mask": batch.completion_mask, "label": desirable, "ref_logps": ref_logps,
              "ref_KL_logps": ref_kl_logps}
    trl_tokens = leaf(batch)
    trl_loss = KTOTrainer._compute_loss(trainer, FusedHeadModel(trl_tokens), inputs, return_outputs=False)
    trl_loss.backward()

    our_tokens = leaf(batch)
    our_kl_logps = kl_logps.clone().requires_grad_()
    losses, rewards, kl = kto_losses(settings, summed_logps(our_tokens, batch), ref_logps, desirable, our_kl_logps,
                                     ref_kl_logps)
    losses.mean().backward()

    # TRL's losses are the desirable rows', then the undesirable rows': compare the mean, and gradients per row
    close(losses.mean(), trl_loss)
    close(our_tokens.grad, trl_tokens.grad)
    assert our_kl_logps.grad is None  # the KL reference point is detached
    metrics = trainer._metrics["train"]
    close(kl, metrics["kl"][-1])
    assert (kl > 0) == (kl_shift > 0)
    close(rewards[desirable].mean(), metrics["rewards/chosen"][-1])
    close(rewards[~desirable].mean(), metrics["rewards/rejected"][-1])
    assert not rewards.requires_grad


# ---- settings ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, key", [
    ({"loss_type": "xpo"}, "loss_type"),
    ({"beta": 0.0}, "beta"),
    ({"beta": -0.1}, "beta"),
    ({"beta": float("nan")}, "beta"),
    ({"label_smoothing": 0.5}, "label_smoothing"),
    ({"label_smoothing": -0.1}, "label_smoothing"),
    ({"loss_type": "ipo", "label_smoothing": 0.1}, "label_smoothing"),
    ({"loss_type": "kto", "desirable_weight": 0.0}, "desirable_weight"),
    ({"loss_type": "kto", "undesirable_weight": -1.0}, "undesirable_weight"),
])
def test_bad_settings_are_refused_naming_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key) as refused:
        PreferenceLossSettings(**kwargs)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("loss_type", ["dpo", "ipo"])
def test_a_loss_that_needs_the_reference_refuses_to_run_without(loss_type):
    logps, tokens = -torch.rand(2), torch.ones(2, dtype=torch.long)
    with pytest.raises(ValueError, match="ref_chosen_logps, ref_rejected_logps"):
        pair_losses(PreferenceLossSettings(loss_type=loss_type), logps, logps, tokens, tokens)
    with pytest.raises(ValueError, match="ref_rejected_logps"):
        pair_losses(PreferenceLossSettings(loss_type=loss_type), logps, logps, tokens, tokens,
                    ref_chosen_logps=logps)


def test_kto_and_the_pair_losses_refuse_each_others_entry_point():
    logps, tokens, desirable = -torch.rand(2), torch.ones(2, dtype=torch.long), torch.tensor([True, False])
    with pytest.raises(ValueError, match="kto_losses"):
        pair_losses(PreferenceLossSettings(loss_type="kto"), logps, logps, tokens, tokens, logps, logps)
    with pytest.raises(ValueError, match="pair_losses"):
        kto_losses(PreferenceLossSettings(loss_type="dpo"), logps, logps, desirable, logps, logps)
    with pytest.raises(ValueError, match="ref_kl_logps"):
        kto_losses(PreferenceLossSettings(loss_type="kto"), logps, logps, desirable, logps, None)
