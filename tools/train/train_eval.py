"""Evaluation for train_mesanet.py: held-out NLL and perplexity in windows, and sampling."""

from __future__ import annotations


import torch

@torch.no_grad()
def window_nll(model, windows):
    """windows: LongTensor [b, L] on device; returns (sum NLL of tokens 1..L-1, count)."""
    logits = model(input_ids=windows, use_cache=False).logits.float()
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    nll = -logp.gather(-1, windows[:, 1:, None]).squeeze(-1)
    return float(nll.double().sum()), int(nll.numel())


@torch.no_grad()
def heldout_ppl(model, tokens, window, batch, device):
    n = len(tokens)
    full = n // window
    rest = n - full * window
    total, count = 0.0, 0
    t = torch.tensor(tokens, dtype=torch.long)
    for i in range(0, full, batch):
        j = min(full, i + batch)
        w = t[i * window:j * window].view(j - i, window).to(device)
        s, c = window_nll(model, w)
        total += s
        count += c
    if rest >= 2:
        s, c = window_nll(model, t[full * window:][None].to(device))
        total += s
        count += c
    return total, count, full + (1 if rest >= 2 else 0)


@torch.no_grad()
def generate(model, prompt_ids, n_new, eos, device, temperature=0.0, top_p=1.0, gen=None):
    ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    out = model(input_ids=ids, use_cache=True)
    pkv = out.past_key_values
    new = []
    for i in range(n_new):
        logits = out.logits[0, -1].float()
        if temperature <= 0:
            tok = int(torch.argmax(logits))
        else:
            probs = torch.softmax(logits / temperature, dim=-1)
            sp, si = torch.sort(probs, descending=True)
            keep = (torch.cumsum(sp, 0) - sp) < top_p
            sp = torch.where(keep, sp, torch.zeros_like(sp))
            sp = sp / sp.sum()
            tok = int(si[torch.multinomial(sp, 1, generator=gen)])
        new.append(tok)
        if tok == eos or i + 1 == n_new:
            break
        out = model(input_ids=torch.tensor([[tok]], dtype=torch.long, device=device),
                    past_key_values=pkv, use_cache=True)
        pkv = out.past_key_values
    return new
