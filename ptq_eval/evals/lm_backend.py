"""An lm-eval model backend for the model in memory, registered with lm-eval as `ptq_eval`.

It is lm-eval's own `HFLM` (the same tokenization, truncation, request building and text generation) with
the scoring of its loglikelihood requests replaced by `loglikelihood.score_requests`: the output head only
where a continuation is scored, a context shared by several continuations read once, and all of a rolling
task's windows packed together. Per-document answers equal HFLM's up to float rounding (tested).
"""

from __future__ import annotations

import numpy as np
from lm_eval import utils
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from ptq_eval.evals.loglikelihood import score_requests

DEFAULT_BATCH = 16  # rows a pass when lm-eval's batch size is `auto`


@register_model("ptq_eval")
class PackedLM(HFLM):
    """HFLM whose loglikelihood and loglikelihood_rolling requests are scored by ptq-eval's packed scorer."""

    def _rows_per_pass(self) -> int:
        return self.batch_size if isinstance(self.batch_size, int) else DEFAULT_BATCH

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        if self.backend != "causal":
            return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)
        pairs = [(context, continuation) for _, context, continuation in requests]
        answers = score_requests(self.model, pairs, self.max_length, self._rows_per_pass())
        for (key, _, _), answer in zip(requests, answers, strict=True):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, answer)
        return answers

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """lm-eval's rolling windows of every document, scored in one packed pass and summed per document."""
        windows, owners = [], []
        for owner, request in enumerate(requests):
            (text,) = request.args
            rolling = utils.get_rolling_token_windows(
                token_list=self.tok_encode(text), prefix_token=self.prefix_token_id, max_seq_len=self.max_length,
                context_len=1,
            )  # fmt: skip
            for context, continuation in map(utils.make_disjoint_window, rolling):
                windows.append((None, context, continuation))
                owners.append(owner)
        totals = np.zeros(len(requests))
        np.add.at(totals, owners, [logprob for logprob, _ in self._loglikelihood_tokens(windows)])
        for request, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, float(total))
        return [float(total) for total in totals]
