"""The task-specific part of the one training loop: how a batch becomes a loss, and what validation reports.

An objective is an `nn.Module` around the model so that DDP wraps it (gradient sync hooks are armed in DDP's
forward). It returns a loss *sum* and the number of targets it covers; the loop divides by the targets of the whole
optimizer step across all workers, so gradient accumulation and uneven batches weigh every target equally.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tuneforge.data.collate import IGNORE_INDEX
from tuneforge.metrics import classification_summary, perplexity
from tuneforge.models.padding_free import rows_attend_within_themselves

# Architectures whose logits are exactly lm_head(final hidden state): for these the loss is computed on target
# positions only, skipping the vocabulary projection of every prompt and pad token.
PLAIN_HEAD_MODEL_TYPES = frozenset(
    {"llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "phi3", "gemma", "gpt2",
     "gpt_neox", "olmo", "olmo2", "starcoder2", "smollm3", "stablelm"}
)


def unwrap_peft(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class FrozenHeadTokenLosses(torch.autograd.Function):
    """Cross-entropy of each row of `hidden @ weight.T` against `targets` (fp32, one value per target), for a frozen
    output layer (LoRA).

    Chunk by chunk of rows, the forward pass computes the losses *and* d(loss)/d(hidden) (softmax minus one-hot,
    times the weight); backward only scales those rows by the incoming gradients. The [targets, vocab] logits, their
    fp32 copy and the softmax gradient never exist in full: with a 49k vocabulary that memory traffic cost more than
    a quarter of a CPU training step (bench/train_vs_hf.py). The weight's own gradient is never computed.
    """

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                want_grad: bool, chunk: int) -> torch.Tensor:
        losses = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if want_grad else None
        for start in range(0, hidden.shape[0], chunk):
            rows = slice(start, start + chunk)
            logits = (hidden[rows].to(weight.dtype) @ weight.t()).float()
            wanted = targets[rows]
            log_norm = torch.logsumexp(logits, dim=-1)
            losses[rows] = log_norm - logits.gather(1, wanted[:, None]).squeeze(1)
            if want_grad:
                probabilities = logits.sub_(log_norm[:, None]).exp_()
                probabilities[torch.arange(len(wanted), device=wanted.device), wanted] -= 1.0
                grad_hidden[rows] = (probabilities.to(weight.dtype) @ weight).to(hidden.dtype)
        ctx.save_for_backward(grad_hidden if want_grad else hidden.new_empty(0))
        return losses

    @staticmethod
    def backward(ctx: Any, grad_losses: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (grad_hidden,) = ctx.saved_tensors
        return grad_hidden * grad_losses[:, None].to(grad_hidden.dtype), None, None, None, None


# [512, vocab] fp32 logits per chunk (100 MB at a 49k vocabulary): smaller chunks re-read the whole head weight
# per chunk and ran its matmuls at half speed on CPU (64 rows: 48-55 GFLOP/s; 512: 82-89; SmolLM2's head).
HEAD_CHUNK_ROWS = 512


class CausalLMObjective(nn.Module):
    """Next-token cross-entropy on target positions."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        hf_model = unwrap_peft(model)
        self.plain_head = (
            getattr(hf_model.config, "model_type", None) in PLAIN_HEAD_MODEL_TYPES
            and hf_model.get_output_embeddings() is not None
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                position_ids: torch.Tensor | None = None, row_lengths: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor]:
        losses, selected = self.token_losses(input_ids, attention_mask, labels, position_ids, row_lengths)
        return losses.sum(), selected.sum()

    def token_losses(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                     position_ids: torch.Tensor | None = None, row_lengths: torch.Tensor | None = None,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy (fp32) of every target token, in row-major order, and the [rows, length - 1] mask of where
        the targets are."""
        targets = labels[:, 1:]
        selected = targets != IGNORE_INDEX
        if self.plain_head:
            hf_model = unwrap_peft(self.model)
            hidden = self.hidden_states(hf_model, input_ids, position_ids, row_lengths)
            head = hf_model.get_output_embeddings()
            if self.frozen_head(head):
                losses = FrozenHeadTokenLosses.apply(
                    hidden[:, :-1][selected], self.head_weight(head), targets[selected],
                    torch.is_grad_enabled() and hidden.requires_grad, HEAD_CHUNK_ROWS)
                return losses, selected
            logits = head(hidden[:, :-1][selected])
        else:
            if row_lengths is not None:
                raise RuntimeError("padding-free batches need a decoder with a plain output layer")
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1][selected]
        return F.cross_entropy(logits.float(), targets[selected], reduction="none"), selected

    @staticmethod
    def hidden_states(hf_model: nn.Module, input_ids: torch.Tensor, position_ids: torch.Tensor | None,
                      row_lengths: torch.Tensor | None) -> torch.Tensor:
        if row_lengths is None:
            # Training batches are padded on the right, and in these causal decoders no real token attends to a
            # later position, so no real token can see a pad: the mask changes nothing that is scored. Without it
            # SDPA takes its causal (and grouped-query) fast path.
            return hf_model.base_model(input_ids=input_ids, attention_mask=None, use_cache=False)[0]
        with rows_attend_within_themselves(hf_model.config):  # a padding-free batch: rows end to end
            return hf_model.base_model(input_ids=input_ids, position_ids=position_ids, use_cache=False,
                                       row_lengths=row_lengths.tolist())[0]

    def eval_batch(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, None]:
        loss_sum, count = self(**batch)
        return loss_sum, count, None

    @staticmethod
    def frozen_head(head: nn.Module) -> bool:
        return isinstance(head, nn.Linear) and head.bias is None and not head.weight.requires_grad

    def head_weight(self, head: nn.Linear) -> torch.Tensor:
        """The frozen head's weight in the autocast dtype, cast once rather than at every step."""
        dtype = torch.get_autocast_dtype(head.weight.device.type) if torch.is_autocast_enabled(head.weight.device.type) \
            else head.weight.dtype
        cached = getattr(self, "_head_cache", None)
        if cached is None or cached[0] is not head.weight or cached[1].dtype != dtype:
            self._head_cache = (head.weight, head.weight.detach().to(dtype))
        return self._head_cache[1]

    @staticmethod
    def target_count(batch: dict[str, torch.Tensor]) -> float:
        return float((batch["labels"][:, 1:] != IGNORE_INDEX).sum())

    @staticmethod
    def summarize(loss_sum: float, count: float, _extra: dict[str, Any]) -> dict[str, float]:
        loss = loss_sum / max(count, 1.0)
        return {"eval_loss": loss, "eval_perplexity": perplexity(loss)}


class ClassificationObjective(nn.Module):
    """Cross-entropy over classes, optionally class-weighted; validation adds accuracy and weighted P/R/F1."""

    def __init__(self, model: nn.Module, class_weights: list[float] | None = None):
        super().__init__()
        self.model = model
        weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.register_buffer("class_weights", weights, persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, **extra: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loss_sum, count, _ = self.scored(input_ids, attention_mask, labels, **extra)
        return loss_sum, count

    def scored(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, **extra: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits
        losses = F.cross_entropy(logits.float(), labels, reduction="none")
        weights = self.class_weights[labels] if self.class_weights is not None else torch.ones_like(losses)
        return (losses * weights).sum(), weights.sum(), logits

    def eval_batch(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        loss_sum, count, logits = self.scored(**batch)
        return loss_sum, count, logits.argmax(-1)

    def target_count(self, batch: dict[str, torch.Tensor]) -> float:
        if self.class_weights is None:
            return float(batch["labels"].numel())
        return float(self.class_weights.cpu()[batch["labels"]].sum())

    @staticmethod
    def summarize(loss_sum: float, count: float, extra: dict[str, Any]) -> dict[str, float]:
        metrics = {"eval_loss": loss_sum / max(count, 1.0)}
        metrics.update(classification_summary(extra["y_true"], extra["y_pred"], prefix="eval_"))
        return metrics


class TokenClassificationObjective(nn.Module):
    """Cross-entropy over the labelled tokens (a word's first subword, or all with label_all_tokens), optionally
    class-weighted; validation adds entity-level precision / recall / F1 (strict span match, as seqeval) and word
    accuracy."""

    def __init__(self, model: nn.Module, labels: list[str], scheme: str, class_weights: list[float] | None = None):
        super().__init__()
        self.model, self.labels, self.scheme = model, list(labels), scheme
        weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.register_buffer("class_weights", weights, persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                **extra: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loss_sum, count, _ = self.scored(input_ids, attention_mask, labels, **extra)
        return loss_sum, count

    def scored(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
               **extra: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits
        selected = labels != IGNORE_INDEX
        targets = labels[selected]
        losses = F.cross_entropy(logits[selected].float(), targets, reduction="none")
        weights = self.class_weights[targets] if self.class_weights is not None else torch.ones_like(losses)
        return (losses * weights).sum(), weights.sum(), logits

    def eval_batch(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        loss_sum, count, logits = self.scored(**batch)
        return loss_sum, count, logits.argmax(-1)

    def target_count(self, batch: dict[str, torch.Tensor]) -> float:
        labels = batch["labels"][batch["labels"] != IGNORE_INDEX]
        if self.class_weights is None:
            return float(labels.numel())
        return float(self.class_weights.cpu()[labels.cpu()].sum())

    def summarize(self, loss_sum: float, count: float, extra: dict[str, Any]) -> dict[str, float]:
        from tuneforge.data.tokens import entity_scores, token_accuracy

        true_tags, pred_tags = [], []
        for truth, guess in zip(extra["y_true"], extra["y_pred"], strict=True):
            kept = [(t, p) for t, p in zip(truth, guess, strict=True) if t != IGNORE_INDEX]
            if kept:
                true_tags.append([self.labels[t] for t, _ in kept])
                pred_tags.append([self.labels[p] for _, p in kept])
        scores = entity_scores(true_tags, pred_tags, self.scheme)
        return {"eval_loss": loss_sum / max(count, 1.0), "eval_precision": scores["precision"],
                "eval_recall": scores["recall"], "eval_f1": scores["f1"],
                "eval_accuracy": token_accuracy(true_tags, pred_tags)}
